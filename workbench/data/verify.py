"""Check a local DQN-Replay copy before building a store: ``python -m workbench.data.verify ROOT``.

Per game and run (``{ROOT}/{Game}/{run}/replay_logs/``) it reports the checkpoints present and:

* **files**: every checkpoint has all six files the reader needs (``$store$_observation``,
  ``$store$_action``, ``$store$_reward``, ``$store$_terminal``, ``add_count``, ``invalid_range``:
  :data:`workbench.data.dqn_replay.FILE_DTYPES`); no partial download (``.tmp``, ``.gstmp``, ...)
  lies beside them;
* **readable and whole** (cheap, no decompression of the payload): the ``.npy`` header is parsed
  by the reader (:func:`workbench.data.dqn_replay.open_npy_gz`: magic, dtype, shape, no pickles)
  and checked against the dtype and shape DQN-Replay holds; the gzip trailer's length field
  (ISIZE, the uncompressed size mod 2**32) must equal header + payload bytes. A file cut short by
  an interrupted download ends in compressed data, not in its trailer, so its length field is
  wrong (a false pass has odds of 2**-32). ``--full`` decompresses every file instead (checks
  each CRC; about as slow as a build);
* **numbering**: DQN-Replay numbers checkpoints ``0..N-1``. A copy numbered ``1..N`` (a
  renumbering tool, a one-based download script) is reported as renumbered; a build would read
  it as a run missing checkpoint 0;
* **missing checkpoints**: gaps and missing ends, from the reader's own rule
  (:func:`workbench.data.dqn_replay.run_checkpoints`: a run whose last file is a ring dump lacks
  its final dump; a public run holds ``0..50``).

An **RL Unplugged** copy (its own ``{Game}/run_{R}-XXXXX-of-NNNNN`` files, or a TFDS-prepared
``rlu_atari_checkpoints_ordered`` / ``rlu_atari`` dataset; :mod:`workbench.data.sources.rlu_source`)
is recognized and checked per run instead: shard files present (a missing one named, with the
run's shard count), and every record of every file read through (gzip, the TFRecord framing and
length CRC, the data CRC where ``google-crc32c`` is installed, the ``tf.train.Example``): a file
cut short fails there, since gzip files carry no size to check cheaply. Checkpoints in the report
are shard numbers.

``--write-manifest`` writes :data:`MANIFEST_NAME` beside the data (per file: size and sha256) once
the copy has no problem; later runs compare every listed file against it and name each one that
is missing, changed in size (truncated) or changed in content. ``--sizes-only`` skips the
content hashes. Exit 0 when the copy is complete (and unchanged, where a manifest exists), 2
naming each problem otherwise.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench.data import dqn_replay as dr
from workbench.data.sources import NoSourceData, SourceError
from workbench.data.sources import tfrecord as tfr
from workbench.data.sources.rlu_source import RluSource
from workbench.fileio import atomic_write_json, read_json, sha256_file

__all__ = ["MANIFEST_NAME", "Report", "RunReport", "check_file", "main", "verify_root"]

#: the manifest of a verified copy, at the root of the copy
MANIFEST_NAME = "workbench-sha256.json"
MANIFEST_FORMAT = "workbench-dqn-replay-sha256/1"
_COMPLETE_RE = re.compile(r"^(?:\$store\$_)?([a-z_]+)_ckpt\.(\d+)\.gz$")
_ANY_CKPT_RE = re.compile(r"_ckpt\.(\d+)\.gz")  # a checkpoint file, complete or a partial download's name
_OPTIONAL = ("episode_end_indices",)  # newer writers' pickle: never opened (see dqn_replay)


@dataclass
class RunReport:
    """What one run of the copy holds."""

    game: str
    run: str
    replay_logs: str
    checkpoints: list[int]  # ids with all their files present and readable
    expected: int | None  # the run should hold 0..expected-1 (None: unknown)
    expected_is_lower_bound: bool
    missing: list[int]
    renumbered: bool
    files: int  # files checked
    problems: list[str] = field(default_factory=list)


@dataclass
class Report:
    """The result of :func:`verify_root`: per run, and every problem in words."""

    root: str
    runs: list[RunReport]
    problems: list[str]
    manifest: str  # what happened with MANIFEST_NAME, in words
    manifest_files: int = 0
    kind: str = "dqn_replay"  # or "rlu": RL Unplugged's files (checkpoints are its shards)

    @property
    def ok(self) -> bool:
        return not self.problems


def _npy_header_bytes(path: Path) -> int:
    """Bytes of the ``.npy`` magic + header at the start of the decompressed file."""
    with gzip.open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 10:
        raise dr.DQNReplayError(f"{path}: truncated file (no complete npy header)")
    if head[6] == 1:
        return 10 + int.from_bytes(head[8:10], "little")
    return 12 + int.from_bytes(head[8:12], "little")


def check_file(path: str | os.PathLike, key: str, full: bool = False) -> tuple[int, ...]:
    """Check one checkpoint file; returns its shape. Raises :class:`~workbench.data.dqn_replay.DQNReplayError`
    naming the file: unreadable, wrong dtype or shape, or a length that shows it truncated.

    Cheap by default (header and gzip trailer); ``full`` decompresses the whole payload (CRC)."""
    path = Path(path)
    try:
        with dr.open_npy_gz(path) as s:  # the reader's header parsing: magic, dtype, shape, no pickles
            dtype, shape = s.dtype, tuple(s.shape)
            if full:
                for _ in s.chunks():  # reads to the end: gzip checks the CRC and length trailer
                    pass
        want = dr.FILE_DTYPES[key]
        if dtype != want:
            raise dr.DQNReplayError(f"{path}: dtype {dtype} but DQN-Replay {key} files hold {want}")
        if key == "add_count" and shape != ():
            raise dr.DQNReplayError(f"{path}: add_count must be a 0-d array, got shape {shape}")
        if key in ("action", "reward", "terminal", "invalid_range") and len(shape) != 1:
            raise dr.DQNReplayError(f"{path}: {key} must be 1-d, got shape {shape}")
        if key == "observation" and shape[1:] not in dr.FRAME_SHAPES:
            raise dr.DQNReplayError(f"{path}: observation rows must be one of {list(dr.FRAME_SHAPES)}, got {shape}")
        size = _npy_header_bytes(path) + int(np.prod(shape, dtype=object)) * dtype.itemsize
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = int.from_bytes(f.read(4), "little")
    except (OSError, EOFError, zlib.error) as exc:
        raise dr.DQNReplayError(f"{path}: unreadable ({exc})") from None
    if isize != size % (1 << 32):
        raise dr.DQNReplayError(
            f"{path}: truncated or damaged: its gzip trailer records {isize} bytes (mod 2**32), its npy header "
            f"promises {size} ({path.stat().st_size} bytes on disk); download it again")
    return shape


def _scan(d: Path) -> tuple[dict[int, dict[str, Path]], list[str]]:
    """(checkpoint -> {key: path}, stray or partial file names) of a replay_logs folder."""
    present: dict[int, dict[str, Path]] = {}
    stray: list[str] = []
    for p in sorted(d.iterdir()):
        m = _COMPLETE_RE.match(p.name)
        if m and (m.group(1) in dr.FILE_DTYPES or m.group(1) in _OPTIONAL) and p.is_file():
            present.setdefault(int(m.group(2)), {})[m.group(1)] = p
        elif _ANY_CKPT_RE.search(p.name):
            stray.append(p.name)
    return present, stray


def _first_dump(d: Path, c: int) -> bool | None:
    """Whether checkpoint ``c`` looks like a run's first dump (its ring never wrapped:
    ``add_count <= capacity``); None when unreadable."""
    try:
        with dr.open_npy_gz(d / dr.file_name("terminal", c)) as s:
            capacity = s.rows
        return int(dr.load_npy_gz(d / dr.file_name("add_count", c))) <= capacity
    except dr.DQNReplayError:
        return None


def _check_run(root: Path, game: str, run: str, full: bool) -> RunReport:
    d = root / game / run / "replay_logs"
    where = f"{game}/{run}"
    problems: list[str] = []
    present, stray = _scan(d)
    for name in stray:
        problems.append(f"{where}: {d / name} is a partial download or a stray file: finish the download or remove it")
    good: list[int] = []
    files = 0
    for c in sorted(present):
        have = present[c]
        lacking = [dr.file_name(k, c) for k in dr.FILE_DTYPES if k not in have]
        if lacking:
            problems.append(f"{where}: checkpoint {c} is incomplete: missing {lacking} in {d}")
        rows: dict[str, int] = {}
        bad = False
        for key, path in sorted(have.items()):
            if key in _OPTIONAL:
                continue
            files += 1
            try:
                shape = check_file(path, key, full)
            except dr.DQNReplayError as exc:
                problems.append(f"{where}: {exc}")
                bad = True
                continue
            if key in dr.STORE_KEYS:
                rows[key] = shape[0]
        if len(set(rows.values())) > 1:
            problems.append(f"{where}: checkpoint {c} files disagree on rows: {rows} in {d}")
            bad = True
        if not lacking and not bad:
            good.append(c)

    ids = sorted(present)
    renumbered = False
    expected: int | None = None
    lower_bound = False
    missing: list[int] = []
    if ids and 0 not in ids and ids == list(range(1, len(ids) + 1)) and _first_dump(d, 1) is not False:
        renumbered = True
        problems.append(
            f"{where}: checkpoints are numbered 1..{len(ids)}: a renumbered copy (DQN-Replay numbers them 0..N-1, and "
            f"checkpoint 1 here holds a run's first dump); rename each checkpoint i to i-1 in {d}")
    elif ids:
        try:
            rc = dr.run_checkpoints(d)
            expected, lower_bound, missing = rc.expected, not rc.end_known, list(rc.missing)
            note = f" ({rc.end_note})" if rc.end_note else ""
        except dr.DQNReplayError:  # an incomplete checkpoint (reported above): count over 0..last
            expected = ids[-1] + 1
            missing = sorted(set(range(expected)) - set(ids))
            note = ""
        if missing:
            more = " (and any after them)" if lower_bound else ""
            problems.append(f"{where}: missing checkpoints {dr.format_ids(missing)}{more} of "
                            f"0..{expected - 1}{note}; splits that need them refuse this run")
    else:
        problems.append(f"{where}: no checkpoint files in {d}")
    return RunReport(game, run, str(d), good, expected, lower_bound, missing, renumbered, files, problems)


def _rlu_copy(root: Path) -> RluSource | None:
    """The RL Unplugged copy at ``root``, or None when there is none (a SourceError about a
    broken copy is raised as a DQNReplayError naming it)."""
    try:
        return RluSource(root)
    except NoSourceData:
        return None
    except SourceError as exc:
        raise dr.DQNReplayError(str(exc)) from None


def _check_rlu(rlu: RluSource, games: set[str]) -> list[RunReport]:
    """Per run of an RL Unplugged copy: shards present and missing, and every record of every
    file read (framing, length CRC, data CRC where google-crc32c is installed, an Example)."""
    reports = []
    for r in rlu.copies(games):
        where = f"{r.game}/{r.run}"
        problems = []
        good = []
        for f in r.files:
            try:
                n = 0
                for off, data in tfr.records(f.path):
                    tfr.decode_example(data, f"{f.rel} at byte {off}")
                    n += 1
                if n == 0:
                    raise SourceError(f"{f.rel}: no records (an empty file)")
                good.append(f.shard)
            except SourceError as exc:
                problems.append(f"{where}: {exc}")
        if r.missing_shards:
            n = r.files[0].shards
            problems.append(f"{where}: missing shard files {dr.format_ids(r.missing_shards)} of 0..{n - 1} "
                            f"({r.folder}/run_{r.run}-XXXXX-of-{n:05d}): download them, or build from the "
                            "checkpoints present")
        shards = r.files[0].shards if r.layout == "episodes" else None
        reports.append(RunReport(r.game, r.run, str(rlu.root / r.folder), sorted(set(good)), shards, False,
                                 list(r.missing_shards), False, len(r.files), problems))
    return reports


def _data_files(root: Path, games: Sequence[str]) -> dict[str, Path]:
    """Every checkpoint file of ``games`` (relative name -> path), partial downloads excluded."""
    out = {}
    for g in games:
        for run in dr.list_runs(root, g):
            present, _ = _scan(root / g / run / "replay_logs")
            for have in present.values():
                for p in have.values():
                    out[p.relative_to(root).as_posix()] = p
    return out


def _compare_manifest(
    root: Path, manifest: dict[str, Any], sizes_only: bool, add_new: bool, on_disk: dict[str, Path],
    in_games: Callable[[str], bool],
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(problems, entries of the files that match) against a manifest's ``files``; with
    ``add_new``, entries for files the manifest does not list yet are hashed and added.
    ``in_games(rel)``: whether a listed file belongs to the games checked."""
    problems: list[str] = []
    fresh: dict[str, dict[str, Any]] = {}
    listed = {k: v for k, v in manifest.get("files", {}).items() if in_games(k)}
    for rel, rec in sorted(listed.items()):
        p = root / rel
        if not p.is_file():
            problems.append(f"{p}: listed in {MANIFEST_NAME} ({rec['size']} bytes) but missing")
            continue
        size = p.stat().st_size
        if size != rec["size"]:
            cut = " (truncated)" if size < rec["size"] else ""
            problems.append(f"{p}: changed: {size} bytes, {MANIFEST_NAME} records {rec['size']}{cut}")
            continue
        if not sizes_only:
            digest = sha256_file(p)
            if digest != rec["sha256"]:
                problems.append(f"{p}: changed: its sha256 differs from the one {MANIFEST_NAME} records")
                continue
        fresh[rel] = dict(rec)
    for rel in sorted(set(on_disk) - set(listed)) if add_new else ():
        fresh[rel] = {"size": on_disk[rel].stat().st_size, "sha256": sha256_file(on_disk[rel])}
    return problems, fresh


def verify_root(
    root: str | os.PathLike, games: Sequence[str] | None = None, *, write_manifest: bool = False, full: bool = False,
    sizes_only: bool = False,
) -> Report:
    """Check a DQN-Replay copy (see the module docstring); never raises for a problem in the data
    (it is in the report) but does for a root or a game that does not exist."""
    root = Path(root)
    if not root.is_dir():
        raise dr.DQNReplayError(f"{root} does not exist or is not a folder")
    rlu = _rlu_copy(root) if not dr.list_games(root) else None
    if rlu is not None:
        try:
            chosen = {rlu.canonical(g) for g in games} if games else set(rlu.games())
        except SourceError as exc:
            raise dr.DQNReplayError(str(exc)) from None
        runs = _check_rlu(rlu, chosen)
        on_disk = {f.rel: f.path for r in rlu.copies(chosen) for f in r.files}
        game_dirs = sorted(chosen)
        folders = {r.folder for r in rlu.copies(chosen)}

        def in_games(rel: str) -> bool:
            return rel.rsplit("/", 1)[0] in folders
        kind = "rlu"
    else:
        game_dirs = [dr.game_dir(root, g).name for g in games] if games else dr.list_games(root)
        if not game_dirs:
            raise dr.DQNReplayError(f"{root} holds no DQN-Replay game ({{Game}}/{{run}}/replay_logs/) and no RL "
                                    "Unplugged Atari files")
        runs = [_check_run(root, g, r, full) for g in game_dirs for r in dr.list_runs(root, g)]
        on_disk = _data_files(root, game_dirs)

        def in_games(rel: str) -> bool:
            return rel.split("/")[0] in game_dirs
        kind = "dqn_replay"
    problems = [p for r in runs for p in r.problems]

    mpath = root / MANIFEST_NAME
    old: dict[str, Any] | None = read_json(mpath) if mpath.is_file() else None
    n_files = 0
    if old is not None:
        if old.get("format") != MANIFEST_FORMAT:
            raise dr.DQNReplayError(f"{mpath} is not a {MANIFEST_FORMAT} manifest (format {old.get('format')!r})")
        drift, fresh = _compare_manifest(root, old, sizes_only, write_manifest, on_disk, in_games)
        problems += drift
        n_files = len(fresh)
        status = (f"compared with {mpath}: " + ("unchanged" if not drift else f"{len(drift)} files missing or changed")
                  + (" (sizes only)" if sizes_only else ""))
    else:
        fresh = {}
        status = f"no {MANIFEST_NAME} (write one with --write-manifest)"
    if write_manifest:
        if problems:
            status += f"; {MANIFEST_NAME} not written: fix the problems first"
        else:
            if old is None:
                fresh = {rel: {"size": p.stat().st_size, "sha256": sha256_file(p)} for rel, p in on_disk.items()}
            others = {k: v for k, v in (old or {}).get("files", {}).items() if not in_games(k)}
            atomic_write_json(mpath, {"format": MANIFEST_FORMAT, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                      "files": {**others, **fresh}})
            n_files = len(fresh)
            status = f"wrote {mpath} ({len(fresh)} files of {len(game_dirs)} games)"
    return Report(str(root), runs, problems, status, n_files, kind)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _describe(r: RunReport) -> str:
    held = dr.format_ids(r.checkpoints) if r.checkpoints else "none"
    of = "" if r.expected is None else f" of 0..{r.expected - 1}" + (" or more" if r.expected_is_lower_bound else "")
    state = "ok" if not r.problems else _count(len(r.problems), "problem")
    return f"{r.game}/{r.run}: checkpoints {held}{of} complete; {r.files} files checked: {state}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workbench.data.verify ROOT [--games G[,G]] [--write-manifest]``."""
    ap = argparse.ArgumentParser(
        prog="python -m workbench.data.verify",
        description="Check a local DQN-Replay copy ({Game}/{run}/replay_logs/): every checkpoint's files present, "
                    "readable and of the right length, numbered 0..N-1, none missing; and, with a "
                    f"{MANIFEST_NAME} beside the data, unchanged. Exit 0 when complete, 2 naming each problem.",
    )
    ap.add_argument("root", help="DQN-Replay root folder")
    ap.add_argument("--games", help="comma-separated games (default: every game under ROOT)")
    ap.add_argument("--write-manifest", action="store_true",
                    help=f"write {MANIFEST_NAME} (size and sha256 of every file) when no problem is found")
    ap.add_argument("--full", action="store_true", help="decompress every file (checks each CRC; slow)")
    ap.add_argument("--sizes-only", action="store_true", help="compare sizes, not sha256, with the manifest")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    a = ap.parse_args(argv)
    games = [g.strip() for g in a.games.split(",") if g.strip()] if a.games else None
    try:
        rep = verify_root(a.root, games, write_manifest=a.write_manifest, full=a.full, sizes_only=a.sizes_only)
    except (dr.DQNReplayError, FileNotFoundError, ValueError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps({**asdict(rep), "ok": rep.ok}, indent=2))
    else:
        for r in rep.runs:
            print(_describe(r))
        for p in rep.problems:
            print(f"problem: {p}")
        print(f"manifest: {rep.manifest}")
        print("verify: ok" if rep.ok else f"verify: {_count(len(rep.problems), 'problem')}")
    return 0 if rep.ok else 2


if __name__ == "__main__":
    sys.exit(main())

"""Reader (and writer) of DQN-Replay checkpoint files, with Dopamine's sampling semantics.

Layout of a DQN-Replay root: ``{Game}/{run}/replay_logs/`` holding, per checkpoint ``i``, the
gzipped ``np.save`` files ``$store$_{observation,action,reward,terminal}_ckpt.i.gz``,
``add_count_ckpt.i.gz`` and ``invalid_range_ckpt.i.gz`` (plus, from newer writers, a pickled
``episode_end_indices_ckpt.i.gz`` that we never unpickle: terminal flags already mark every
episode end, see ``docs`` and ``shared/notes/dqn_replay_format.md``).

Everything here streams one file at a time and reads ``.npy`` payloads chunk by chunk with
``allow_pickle=False`` semantics (object dtypes are refused), so a 7 GB observation file never has
to sit in memory twice (or at all, for :func:`read_transitions` and the store builder).
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import os
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from workbench.fileio import disk_full, is_disk_full
from workbench.games import canonical_game
from workbench.geometry import ATARI, GEOMETRIES, STACK

STACK_SIZE = STACK
#: Observation row shapes a DQN-Replay file may hold: one per suite (Atari's 84x84 is the public data's).
FRAME_SHAPES = tuple(g.frame_shape for g in GEOMETRIES.values())
STORE_KEYS = ("observation", "action", "reward", "terminal")
#: dtype each file must have in the public data (and what Dopamine writes).
FILE_DTYPES = {
    "observation": np.dtype(np.uint8),
    "action": np.dtype(np.int32),
    "reward": np.dtype(np.float32),
    "terminal": np.dtype(np.uint8),
    "add_count": np.dtype(np.int64),
    "invalid_range": np.dtype(np.int64),
}
_CHUNK_BYTES = 1 << 24  # 16 MiB of decompressed payload per read: bounded memory, few calls
_CKPT_RE = re.compile(r"^(?:\$store\$_)?([a-z_]+)_ckpt\.(\d+)\.gz$")
# what an interrupted download (gsutil, wget, curl) or an interrupted write leaves next to a file
_PARTIAL_RE = re.compile(r"^(?:\$store\$_)?[a-z_]+_ckpt\.\d+\.gz(?:\.tmp|\.part|\.gstmp|\.download|_\.gstmp)$")
# np.lib.format refuses headers above this length unless told otherwise (max_header_size)
MAX_HEADER_BYTES = 10_000
# deflate cannot compress better than about 1032:1; a header claiming more is lying
_MAX_DEFLATE_RATIO = 1032


class DQNReplayError(ValueError):
    """A bad name or a missing, truncated or corrupt DQN-Replay file (the message names it)."""


# ----------------------------------------------------------------------------------------------
# Names and discovery


def file_name(key: str, checkpoint: int) -> str:
    """On-disk file name of one array of one checkpoint (``$store$_`` prefix for the store keys)."""
    if key in STORE_KEYS:
        return f"$store$_{key}_ckpt.{checkpoint}.gz"
    if key in ("add_count", "invalid_range", "episode_end_indices"):
        return f"{key}_ckpt.{checkpoint}.gz"
    valid = list(STORE_KEYS) + ["add_count", "invalid_range", "episode_end_indices"]
    raise DQNReplayError(f"unknown DQN-Replay array {key!r}; valid: {valid}")


def _canonical(game: str) -> str:
    """Canonical CamelCase name from the game registry (unchanged when the registry lacks it)."""
    try:
        return canonical_game(game)
    except (ValueError, TypeError):  # unknown to the registry: let directory matching report what exists
        return game


def list_games(root: str | os.PathLike) -> list[str]:
    """Games (directory names) under a DQN-Replay root that contain at least one run."""
    root = Path(root)
    if not root.is_dir():
        raise DQNReplayError(f"DQN-Replay root {str(root)!r} does not exist or is not a directory")
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and any((r / "replay_logs").is_dir() for r in p.iterdir() if r.is_dir())
    )


def _match_name(name: str, choices: Sequence[str], what: str, where: str) -> str:
    if name in choices:
        return name
    folded = {c.lower().replace("_", ""): c for c in choices}
    key = name.lower().replace("_", "")
    if key in folded:
        return folded[key]
    raise DQNReplayError(f"unknown {what} {name!r} in {where}; available: {list(choices)}")


def game_dir(root: str | os.PathLike, game: str) -> Path:
    """Directory of one game; an unknown game is an error listing the games that exist."""
    games = list_games(root)
    return Path(root) / _match_name(_canonical(game), games, "game", str(root))


def list_runs(root: str | os.PathLike, game: str) -> list[str]:
    """Run names (e.g. ``'1'``..``'5'``) of one game, numerically sorted where numeric."""
    g = game_dir(root, game)
    runs = [r.name for r in g.iterdir() if r.is_dir() and (r / "replay_logs").is_dir()]
    return sorted(runs, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s))


def run_dir(root: str | os.PathLike, game: str, run: str | int) -> Path:
    """``{root}/{Game}/{run}/replay_logs``; unknown names are errors listing what exists."""
    g = game_dir(root, game)
    runs = list_runs(root, game)
    return g / _match_name(str(run), runs, "run", str(g)) / "replay_logs"


def _scan(d: Path) -> tuple[dict[int, set[str]], list[str]]:
    """(checkpoint -> the array files present, names of partial downloads/writes) of a replay_logs dir."""
    if not d.is_dir():
        raise DQNReplayError(f"replay_logs directory {str(d)!r} does not exist")
    present: dict[int, set[str]] = {}
    partial: list[str] = []
    for p in d.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and m.group(1) in FILE_DTYPES:
            present.setdefault(int(m.group(2)), set()).add(m.group(1))
        elif _PARTIAL_RE.match(p.name):
            partial.append(p.name)
    return present, partial


def _check_complete(d: Path, c: int, files: set[str], partial: list[str]) -> None:
    missing = [file_name(k, c) for k in FILE_DTYPES if k not in files]
    if missing:
        raise DQNReplayError(f"missing DQN-Replay file: {d / missing[0]} (checkpoint {c} is incomplete; "
                             f"missing {missing})")
    mine = sorted(n for n in partial if f"_ckpt.{c}.gz" in n)
    if mine:
        raise DQNReplayError(f"checkpoint {c} in {d} has incomplete downloads or writes {mine}: finish or remove them")


#: A public DQN-Replay run: ring dumps 0..49 and the final partial dump 50 of a 1,000,000-row ring
#: (``shared/notes/dqn_replay_format.md``; a few runs miss 50).
PUBLIC_CAPACITY = 1_000_000
PUBLIC_CHECKPOINTS = 51


class IncompleteRunWarning(UserWarning):
    """A run lacks checkpoints, none of which the split asked of it needs (the warning names them)."""


def format_ids(ids: Sequence[int]) -> str:
    """``[0..9, 12, 40..49]``: consecutive ids as ranges."""
    out, ids = [], sorted(ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}..{ids[j]}")
        i = j + 1
    return "[" + ", ".join(out) + "]"


class RunCheckpoints(list[int]):
    """The complete checkpoints of one run (a sorted list of ids), and the ids the run should hold.

    A run should hold checkpoints ``0..expected-1`` (Dopamine and batch_rl number their dumps from
    0); ``missing`` are those of them that are not on disk. ``end_known`` is False when the run's
    last checkpoint is absent and its number cannot be known (``expected`` is then a lower bound):
    see :func:`run_checkpoints`. Splits count over ``0..expected-1``, never over what is present
    (:meth:`workbench.data.splits.Split.choose`)."""

    def __init__(self, replay_logs: Path, present: Sequence[int], expected: int, end_known: bool,
                 end_note: str = "") -> None:
        super().__init__(sorted(present))
        self.replay_logs = replay_logs
        self.expected = expected
        self.end_known = end_known
        self.end_note = end_note
        self.missing: tuple[int, ...] = tuple(sorted(set(range(expected)) - set(self)))

    def describe(self) -> str:
        """What the run holds and lacks, in words (for error messages)."""
        last = f"0..{self.expected - 1}" if self.end_known else f"0..{self.expected - 1} or more"
        text = f"the run holds checkpoints {format_ids(self)} of {last}"
        if self.missing:
            text += f"; missing: {format_ids(self.missing)}"
        if self.end_note:
            text += f" ({self.end_note})"
        return text

    def choices(self, splits: bool = True) -> str:
        """The selections this run can still serve (``splits``), other runs of its game, or the fix."""
        have = set(self) if splits else set()
        head = 0
        while head in have:
            head += 1
        tail = 0
        while self.end_known and self.expected - 1 - tail in have:
            tail += 1
        out = []
        if head:
            out.append(f"first:K with K <= {head}")
        if tail:
            out.append(f"last:F with round(F * {self.expected}) <= {tail} (F <= {tail / self.expected:.4g})")
        game = self.replay_logs.parent.parent
        others = sorted(r.name for r in game.iterdir() if r.is_dir() and (r / "replay_logs").is_dir()
                        and r != self.replay_logs.parent) if game.is_dir() else []
        options = [", ".join(out) + " of this run"] if out else []
        if others:
            options.append(f"another run of {game.name}: {others}")
        options.append("download the missing checkpoints' files")
        return "valid choices: " + "; ".join(options[:-1]) + ("; or " if len(options) > 1 else "") + options[-1]


def _end_of_run(d: Path, last: int) -> tuple[int, bool, str]:
    """(expected checkpoint count, whether it is known, why) from the layout of the last checkpoint.

    batch_rl's logged buffer (the public data's writer) dumps the ring after every add that leaves
    ``add_count % capacity == capacity - 1`` -- dump ``k`` has ``add_count == (k+1) * capacity - 1``
    -- and always ends a run with ``log_final_buffer``, a dump with ``add_count`` set to the cursor.
    So when the last checkpoint present is a ring dump, the run's final dump (at least) is missing,
    and how many dumps came between is unknown (a public run has 0..50). Other layouts (buffers
    saved on their own, like ``shared/fixtures/dqn_replay``, and the recorder's) do not mark their
    last checkpoint: the largest id present ends the run."""
    cap_path, add_path = d / file_name("terminal", last), d / file_name("add_count", last)
    with open_npy_gz(cap_path) as s:
        _check_array(cap_path, s.dtype, s.shape, "terminal", None)
        capacity = s.rows
    with open_npy_gz(add_path) as s:
        _check_array(add_path, s.dtype, s.shape, "add_count", None)
        add_count = int(s.read_all())
    if capacity >= 2 and add_count == (last + 1) * capacity - 1:
        expected = max(last + 2, PUBLIC_CHECKPOINTS if capacity == PUBLIC_CAPACITY else 0)
        return expected, False, (
            f"checkpoint {last} is a ring dump (add_count {add_count} = ({last}+1) * {capacity} - 1): batch_rl "
            f"ends every run with a final partial dump, so checkpoint {last + 1} and any after it are missing"
            + ("; a public DQN-Replay run holds 0..50" if capacity == PUBLIC_CAPACITY else "")
        )
    return last + 1, True, ""


def run_checkpoints(replay_logs: str | os.PathLike) -> RunCheckpoints:
    """The complete checkpoints of a run and the ids it should hold (missing ones are not errors here).

    Every checkpoint present must be complete (all six files, no partial download beside them).
    The run should hold ``0..N-1``: ids start at 0; ``N`` is the largest id present + 1, unless
    the layout shows the end is missing (:func:`_end_of_run`: batch_rl's ring dump as the last
    file; then ``N`` is a lower bound: at least one more, 51 for a public-size ring)."""
    d = Path(replay_logs)
    present, partial = _scan(d)
    for c in sorted(present):
        _check_complete(d, c, present[c], partial)
    found = sorted(present)
    if not found:
        return RunCheckpoints(d, [], 0, True)
    expected, known, note = _end_of_run(d, found[-1])
    return RunCheckpoints(d, found, expected, known, note)


def list_checkpoints(replay_logs: str | os.PathLike) -> RunCheckpoints:
    """Checkpoint numbers of a ``replay_logs`` directory, each verified complete.

    A checkpoint is complete when all six of its files are there (and no partial download of
    one lies next to them). A checkpoint with a file absent, or a number missing between the
    first and the last, is an error naming it: dropping it would silently shift every split
    counted from the end (``last:``). Checkpoints missing at either end (from 0 up to the first
    present, after the last present one where the layout shows it, see :func:`run_checkpoints`)
    are recorded in the result's ``missing``: a split that needs them refuses the run, one that
    does not records a warning (:meth:`workbench.data.splits.Split.choose`)."""
    run = run_checkpoints(replay_logs)
    gaps = [c for c in run.missing if run and run[0] < c < run[-1]]
    if gaps:
        raise DQNReplayError(f"{run.replay_logs} lacks checkpoints {format_ids(gaps)} between {run[0]} and {run[-1]} "
                             f"(all files absent): {run.describe()}; {run.choices(splits=False)}")
    return run


def check_checkpoint(replay_logs: str | os.PathLike, checkpoint: int) -> None:
    """Raise if ``checkpoint`` is not a complete checkpoint of the run (listing those there are)."""
    d = Path(replay_logs)
    present, partial = _scan(d)
    if not isinstance(checkpoint, (int, np.integer)) or int(checkpoint) not in present:
        raise DQNReplayError(f"unknown checkpoint {checkpoint!r} in {str(replay_logs)!r}; available: {sorted(present)}")
    _check_complete(d, int(checkpoint), present[int(checkpoint)], partial)


# ----------------------------------------------------------------------------------------------
# Streaming .npy.gz files


class _HashingReader(io.RawIOBase):
    """File wrapper that feeds every byte read into a sha256 (checksum without a second pass)."""

    def __init__(self, f: io.BufferedReader, h: hashlib._Hash | None) -> None:
        self._f, self._h = f, h

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        if self._h is not None and n:
            self._h.update(memoryview(b)[:n])
        return n


def _read_exact(f: io.BufferedIOBase, n: int, path: Path, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise DQNReplayError(f"{path}: truncated file ({what}: expected {n} bytes, got {len(data)})")
    return data


def _read_npy_header(f: io.BufferedIOBase, path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    magic = _read_exact(f, 8, path, "npy magic")
    if magic[:6] != b"\x93NUMPY":
        raise DQNReplayError(f"{path}: not an np.save file (bad magic {magic[:6]!r})")
    major = magic[6]
    hlen_size = 2 if major == 1 else 4
    hlen = int.from_bytes(_read_exact(f, hlen_size, path, "npy header length"), "little")
    if hlen > MAX_HEADER_BYTES:  # refused before reading (a 4 GB "header" would be allocated)
        raise DQNReplayError(f"{path}: npy header of {hlen} bytes is longer than numpy's cap of {MAX_HEADER_BYTES}")
    header = _read_exact(f, hlen, path, "npy header").decode("latin1")
    try:
        d = ast.literal_eval(header)  # a dict literal of str/bool/tuple: never executes code
        dtype = np.dtype(d["descr"])
        shape = tuple(int(s) for s in d["shape"])
        fortran = bool(d["fortran_order"])
        if any(n < 0 for n in shape):
            raise ValueError("negative dimension")
    except Exception as e:
        raise DQNReplayError(f"{path}: corrupt npy header {header[:200]!r} ({e})") from None
    if dtype.hasobject:
        raise DQNReplayError(f"{path}: object arrays are refused (allow_pickle=False)")
    if fortran and len(shape) > 1:
        raise DQNReplayError(f"{path}: Fortran-ordered arrays are not DQN-Replay data")
    return dtype, shape


@dataclass
class NpyStream:
    """An open ``.npy.gz`` file positioned at its payload; iterate to get row chunks."""

    path: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    _gz: gzip.GzipFile
    _raw: BinaryIO
    _hash: hashlib._Hash | None

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    def chunks(self, chunk_bytes: int = _CHUNK_BYTES) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, rows_array)`` covering the payload in order, then verify the end."""
        row_shape = self.shape[1:] if self.shape else ()
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        total = self.rows
        step = max(1, chunk_bytes // max(row_bytes, 1))
        try:
            for start in range(0, total, step):
                n = min(step, total - start)
                data = _read_exact(self._gz, n * row_bytes, self.path, f"payload rows {start}..{start + n}")
                arr = np.frombuffer(data, dtype=self.dtype).reshape((n,) + row_shape)
                yield start, arr
            # Reading past the payload makes gzip check its CRC and length trailer: a truncated or
            # corrupt tail is an error, and trailing garbage after the array is refused.
            if self._gz.read(1):
                raise DQNReplayError(f"{self.path}: unexpected data after the array payload")
            while self._raw.read(1 << 20):  # hash any raw bytes gzip has not pulled yet
                pass
        except (EOFError, OSError, zlib.error, gzip.BadGzipFile) as e:
            raise DQNReplayError(f"{self.path}: truncated or corrupt gzip stream ({e})") from None

    def read_all(self) -> np.ndarray:
        out = np.empty(self.shape, dtype=self.dtype)
        flat = out.reshape((self.rows,) + self.shape[1:]) if self.shape else out.reshape(1)
        for start, arr in self.chunks():
            flat[start : start + len(arr)] = arr
        return out

    def sha256(self) -> str | None:
        """Checksum of the compressed file; valid once :meth:`chunks` has been exhausted."""
        return None if self._hash is None else self._hash.hexdigest()

    def close(self) -> None:
        self._gz.close()
        self._raw.close()

    def __enter__(self) -> NpyStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_npy_gz(path: str | os.PathLike, *, hash: bool = False) -> NpyStream:
    """Open a gzipped ``np.save`` file for streaming; missing/corrupt files raise naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DQNReplayError(f"missing DQN-Replay file: {path}")
    raw = open(path, "rb")
    h = hashlib.sha256() if hash else None
    reader = io.BufferedReader(_HashingReader(raw, h), buffer_size=1 << 20)
    gz = gzip.GzipFile(fileobj=reader, mode="rb")
    try:
        dtype, shape = _read_npy_header(gz, path)
        claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize  # python ints: no overflow
        if claimed > _MAX_DEFLATE_RATIO * path.stat().st_size + (1 << 16):
            raise DQNReplayError(
                f"{path}: header claims shape {shape} ({claimed} bytes), more than a gzip file of "
                f"{path.stat().st_size} bytes can hold; refused before allocating"
            )
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile) as e:
        gz.close()
        raw.close()
        raise DQNReplayError(f"{path}: truncated or corrupt gzip stream ({e})") from None
    except DQNReplayError:
        gz.close()
        raw.close()
        raise
    return NpyStream(path, dtype, shape, gz, reader, h)


def load_npy_gz(path: str | os.PathLike) -> np.ndarray:
    """Load a whole (small) gzipped ``np.save`` file."""
    with open_npy_gz(path) as s:
        return s.read_all()


def _check_array(path: Path, dtype: np.dtype, shape: tuple[int, ...], key: str, rows: int | None) -> None:
    if dtype != FILE_DTYPES[key]:
        raise DQNReplayError(f"{path}: dtype {dtype} but DQN-Replay {key} files hold {FILE_DTYPES[key]}")
    if key == "add_count" and shape != ():
        raise DQNReplayError(f"{path}: add_count must be a 0-d array, got shape {shape}")
    if key in ("action", "reward", "terminal", "invalid_range") and len(shape) != 1:
        raise DQNReplayError(f"{path}: {key} must be 1-d, got shape {shape}")
    if key == "observation" and shape[1:] not in FRAME_SHAPES:
        raise DQNReplayError(f"{path}: observation rows must be one of {list(FRAME_SHAPES)}, got shape {shape}")
    if rows is not None and key in STORE_KEYS and shape[0] != rows:
        raise DQNReplayError(f"{path}: {shape[0]} rows but the checkpoint's other files have {rows}")


# ----------------------------------------------------------------------------------------------
# One checkpoint


@dataclass
class CheckpointMeta:
    """The small arrays of one checkpoint (everything but observations: ~6 bytes per row)."""

    path: Path
    checkpoint: int
    action: np.ndarray  # int32 (N,)
    reward: np.ndarray  # float32 (N,)
    terminal: np.ndarray  # uint8 (N,)
    add_count: int
    invalid_range: np.ndarray  # int64
    sha256: dict[str, str]  # file name -> checksum of the files read so far

    @property
    def capacity(self) -> int:
        return len(self.terminal)

    @property
    def is_full(self) -> bool:
        return self.add_count >= self.capacity

    @property
    def cursor(self) -> int:
        """Next slot the ring buffer would write (Dopamine: ``add_count % capacity``)."""
        return self.add_count % self.capacity

    @property
    def written(self) -> int:
        """Rows ``[0, written)`` are this checkpoint's data: every slot once the ring is full, else
        the ``add_count`` slots before the cursor (see :func:`used_rows`)."""
        return used_rows(self.add_count, self.capacity)

    def time_order(self) -> np.ndarray:
        """Slots in chronological order (oldest first): the ring unrolled from the cursor."""
        if self.is_full:
            return np.roll(np.arange(self.capacity, dtype=np.int64), -self.cursor)
        return np.arange(self.cursor, dtype=np.int64)

    def valid_mask(self, stack_size: int = STACK_SIZE, update_horizon: int = 3) -> np.ndarray:
        return valid_transition_mask(self.terminal, self.add_count, self.invalid_range, stack_size, update_horizon)


def used_rows(add_count: int, capacity: int) -> int:
    """How many slots, from slot 0, hold a checkpoint's data: the rows a reader can use.

    Dopamine allocates its ring with ``np.empty`` (``OutOfGraphReplayBuffer._create_storage``) and
    writes slot ``cursor() = add_count % capacity`` on every add (``_add_transition``). Until the
    ring is full (``is_full``: ``add_count >= capacity``) only slots ``[0, add_count)`` were written;
    the slots at and after the cursor hold whatever memory held (one Dopamine-written file has an
    action of 33,615,906 there). Dopamine never reads them: ``is_valid_transition`` refuses
    ``index >= cursor() - update_horizon`` and ``get_range`` asserts ``end_index <= cursor()``.
    batch_rl's logged buffer dumps the ring when ``add_count % capacity == capacity - 1`` (so its
    first checkpoint has ``add_count = capacity - 1``: the last slot was never written) and writes
    its final partial dump with ``add_count`` set to the cursor (``log_final_buffer``: the slots
    after it hold the previous lap, a previous checkpoint's rows). So: ``capacity`` rows once the
    ring is full (every slot was written; the cursor's slot holds the oldest row, which the store
    builder keeps as context), else ``add_count``.
    """
    return capacity if add_count >= capacity else max(int(add_count), 0)


def load_checkpoint_meta(replay_logs: str | os.PathLike, checkpoint: int, *, hash: bool = False) -> CheckpointMeta:
    """Load action, reward, terminal, add_count and invalid_range of one checkpoint.

    Values are checked on the rows a reader can use (:func:`used_rows`); the other slots of a ring
    that has not wrapped were never written for this checkpoint (``np.empty`` garbage, or the
    previous lap in a final partial dump): they are not checked, and are returned as zeros so no
    consumer can see what they held.

    ``episode_end_indices`` is never unpickled (a downloaded pickle can run code); the terminal
    flags mark every episode end, so it carries no extra information.
    """
    d = Path(replay_logs)
    check_checkpoint(d, checkpoint)
    arrays: dict[str, np.ndarray] = {}
    sums: dict[str, str] = {}
    rows = None
    for key in ("terminal", "action", "reward", "add_count", "invalid_range"):
        path = d / file_name(key, checkpoint)
        with open_npy_gz(path, hash=hash) as s:
            _check_array(path, s.dtype, s.shape, key, rows)
            arrays[key] = s.read_all()
            if hash:
                sums[path.name] = s.sha256()  # type: ignore[assignment]
        if key == "terminal":
            rows = len(arrays[key])
    # The observation file's header must agree too (cheap: decompress 128 bytes).
    opath = d / file_name("observation", checkpoint)
    with open_npy_gz(opath) as s:
        _check_array(opath, s.dtype, s.shape, "observation", rows)
    add_count = int(arrays["add_count"])
    if add_count < 0:
        raise DQNReplayError(f"{d / file_name('add_count', checkpoint)}: negative add_count {add_count}")
    if rows == 0:
        raise DQNReplayError(f"checkpoint {checkpoint} in {d} is empty (0 rows in {file_name('terminal', checkpoint)})")
    written = used_rows(add_count, len(arrays["terminal"]))
    check_rows(d, checkpoint, arrays["action"], arrays["reward"], arrays["terminal"], rows=written)
    for key in ("action", "reward", "terminal"):
        arrays[key][written:] = 0  # never this checkpoint's data (see used_rows); read_all's arrays are ours
    return CheckpointMeta(
        d, int(checkpoint), arrays["action"], arrays["reward"], arrays["terminal"], add_count,
        arrays["invalid_range"].astype(np.int64), sums,
    )


def check_rows(d: Path, checkpoint: int, action: np.ndarray, reward: np.ndarray, terminal: np.ndarray,
               num_actions: int | None = None, *, rows: int | None = None) -> None:
    """Values DQN-Replay can hold: clipped finite rewards, actions in the minimal set, 0/1 terminals.

    Only rows ``[0, rows)`` are checked (default: all): the rows a reader can use, see :func:`used_rows`.
    An error names the file, the array, the first bad row and how many there are."""
    if rows is not None:
        action, reward, terminal = action[:rows], reward[:rows], terminal[:rows]
    bad = ~np.isfinite(reward) | (reward < -1.0) | (reward > 1.0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DQNReplayError(f"{d / file_name('reward', checkpoint)}: reward {float(reward[i])} at row {i} is not a "
                             f"clipped reward in [-1, 1] ({int(bad.sum())} such rows)")
    top = num_actions if num_actions is not None else 256
    bad = (action < 0) | (action >= top)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DQNReplayError(f"{d / file_name('action', checkpoint)}: action {int(action[i])} at row {i} is outside "
                             f"the minimal action set 0..{top - 1} ({int(bad.sum())} such rows)")
    bad = terminal > 1
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DQNReplayError(f"{d / file_name('terminal', checkpoint)}: terminal {int(terminal[i])} at row {i} is not "
                             f"a terminal flag 0 or 1 ({int(bad.sum())} such rows)")


def load_checkpoint(replay_logs: str | os.PathLike, checkpoint: int) -> dict[str, np.ndarray]:
    """All arrays of one checkpoint in memory (for small checkpoints: the real ones are 7 GB).

    Returns ``observation``, ``action``, ``reward``, ``terminal``, ``add_count``, ``invalid_range``;
    slots that are not the checkpoint's data (:func:`used_rows`) are zeros in every array.
    Prefer :func:`load_checkpoint_meta` + :func:`stream_observations` for real data.
    """
    meta = load_checkpoint_meta(replay_logs, checkpoint)
    obs = load_npy_gz(Path(replay_logs) / file_name("observation", checkpoint))
    obs[meta.written :] = 0
    return {
        "observation": obs, "action": meta.action, "reward": meta.reward, "terminal": meta.terminal,
        "add_count": np.array(meta.add_count, dtype=np.int64), "invalid_range": meta.invalid_range,
    }


def stream_observations(
    replay_logs: str | os.PathLike, checkpoint: int, *, hash: bool = False, chunk_bytes: int = _CHUNK_BYTES
) -> NpyStream:
    """Open one checkpoint's observation file for chunked reading (``with ... as s: s.chunks()``)."""
    path = Path(replay_logs) / file_name("observation", checkpoint)
    s = open_npy_gz(path, hash=hash)
    _check_array(path, s.dtype, s.shape, "observation", None)
    return s


# ----------------------------------------------------------------------------------------------
# Dopamine's sampling rule


def valid_transition_mask(
    terminal: np.ndarray, add_count: int, invalid_range: np.ndarray, stack_size: int = STACK_SIZE,
    update_horizon: int = 3,
) -> np.ndarray:
    """Vectorized Dopamine ``is_valid_transition`` for every slot of a checkpoint, for a reader
    with ``update_horizon`` (which may exceed the writer's).

    A slot t is a valid transition start when (not full) ``stack_size-1 <= t < cursor-update_horizon``;
    t is not in ``invalid_range``; (full) t is not in the reader's invalid range around the cursor;
    and no terminal is among the ``stack_size-1`` slots before t (ring-indexed), i.e. its state
    stack does not cross an earlier episode end.

    Why the reader's range too: the file's ``invalid_range`` is the *writer's*. The public data was
    written by a DQN agent (update horizon 1), so a full checkpoint's range is ``[c-1 .. c+2]``
    around its cursor ``c``; a 3-step reader starting at ``c-3`` or ``c-2`` would read slot ``c``,
    which holds a row from the ring's previous lap (Dopamine itself returns those wrong).
    """
    n = len(terminal)
    t = np.asarray(terminal).astype(bool)
    valid = np.ones(n, dtype=bool)
    if add_count < n:  # ring not yet full: only the written, fully-followed slots count
        cursor = add_count
        valid[: min(stack_size - 1, n)] = False
        valid[max(cursor - update_horizon, 0) :] = False
    elif n:
        valid[dopamine_invalid_range(add_count % n, n, stack_size, update_horizon)] = False
    inv = np.asarray(invalid_range, dtype=np.int64)
    inv = inv[(inv >= 0) & (inv < n)]
    valid[inv] = False
    for k in range(1, stack_size):
        valid &= ~np.roll(t, k)  # roll by k: position i sees terminal[i-k] (wraps like the ring)
    return valid


def dopamine_invalid_range(
    cursor: int, capacity: int, stack_size: int = STACK_SIZE, update_horizon: int = 3
) -> np.ndarray:
    """Dopamine's ``invalid_range``: slots around the write cursor that are not transition starts."""
    return np.array(
        [(cursor - update_horizon + i) % capacity for i in range(stack_size + update_horizon)], dtype=np.int64
    )


def discount_vector(gamma: float, n_step: int) -> np.ndarray:
    """``gamma**k`` for k < n_step in float32, computed like Dopamine (float64 pow, then cast)."""
    return np.array([gamma**k for k in range(n_step)], dtype=np.float32)


def nstep_targets(
    rewards: np.ndarray, terminals: np.ndarray, gamma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n-step returns truncated at the first terminal, from (B, n) reward/terminal windows.

    Returns ``(returns float32 (B,), length int64 (B,), terminal bool (B,))`` where ``length`` is
    n, or 1 + the offset of the first terminal. Sums run left to right in float32 like Dopamine's
    ``np.sum(discounts * rewards)`` on a 3-vector, so results agree bit for bit.
    """
    n = rewards.shape[1]
    term = terminals.astype(bool)
    is_term = np.asarray(term.any(axis=1))  # (asarray only narrows the stub's "scalar or array" type)
    length = np.where(is_term, term.argmax(axis=1) + 1, n).astype(np.int64)
    disc = discount_vector(gamma, n)
    inside = np.arange(n)[None, :] < length[:, None]
    terms = np.where(inside, disc[None, :] * rewards.astype(np.float32), np.float32(0))
    out = np.zeros(len(rewards), dtype=np.float32)
    for k in range(n):
        out += terms[:, k]
    return out, length, is_term


def read_transitions(
    run_dir: str | os.PathLike, checkpoint: int, indices: Sequence[int] | np.ndarray, n_step: int = 3,
    gamma: float = 0.99,
) -> dict[str, np.ndarray]:
    """Dopamine's ``sample_transition_batch(indices=...)`` (stack 4) on one DQN-Replay checkpoint.

    ``run_dir`` is a ``replay_logs`` directory (or its parent run directory). Returns
    ``state``/``next_state`` uint8 (B, 84, 84, 4) channels last, oldest first; ``action`` int32;
    ``reward`` float32 n-step discounted return truncated at the first terminal; ``terminal`` uint8
    (1 when an episode ended within the n steps: ``next_state`` is then the stack after the
    terminal, meaningless). Invalid indices raise. Observations are streamed, keeping only the
    frames the requested stacks need.
    """
    d = Path(run_dir)
    if d.name != "replay_logs" and (d / "replay_logs").is_dir():
        d = d / "replay_logs"
    if not isinstance(n_step, (int, np.integer)) or n_step < 1:
        raise DQNReplayError(f"n_step must be a positive int, got {n_step!r}")
    meta = load_checkpoint_meta(d, checkpoint)
    n = meta.capacity
    idx = np.asarray(indices)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise DQNReplayError(f"indices must be a 1-d integer array, got dtype {idx.dtype} shape {idx.shape}")
    idx = idx.astype(np.int64)
    out_of_range = (idx < 0) | (idx >= n)
    if out_of_range.any():
        raise DQNReplayError(
            f"indices {idx[out_of_range][:10].tolist()} out of range [0, {n}) of checkpoint {checkpoint}"
        )
    valid = meta.valid_mask(STACK_SIZE, n_step)
    if not valid[idx].all():
        bad = idx[~valid[idx]]
        raise DQNReplayError(
            f"invalid transition indices {bad[:10].tolist()} in checkpoint {checkpoint} of {d} (in invalid_range "
            f"{meta.invalid_range.tolist()}, beyond the write cursor, or the state stack crosses a terminal)"
        )
    window = (idx[:, None] + np.arange(n_step)[None, :]) % n
    ret, length, is_term = nstep_targets(meta.reward[window], meta.terminal[window], gamma)
    next_idx = (idx + length) % n
    offs = np.arange(-(STACK_SIZE - 1), 1)
    s_rows = (idx[:, None] + offs) % n
    ns_rows = (next_idx[:, None] + offs) % n
    need = np.unique(np.concatenate([s_rows.ravel(), ns_rows.ravel()]))
    with stream_observations(d, checkpoint) as s:
        if s.rows != n:
            raise DQNReplayError(f"{s.path}: {s.rows} rows but the checkpoint's other files have {n}")
        frames = np.empty((len(need),) + tuple(s.shape[1:]), dtype=np.uint8)
        for start, arr in s.chunks():
            lo, hi = np.searchsorted(need, [start, start + len(arr)])
            frames[lo:hi] = arr[need[lo:hi] - start]
    def pos(rows: np.ndarray) -> np.ndarray:
        """Positions of ring rows among the streamed frames (``need`` is sorted and unique)."""
        return np.searchsorted(need, rows)

    state = np.moveaxis(frames[pos(s_rows)], 1, -1)  # (B, 4, 84, 84) -> (B, 84, 84, 4)
    next_state = np.moveaxis(frames[pos(ns_rows)], 1, -1)
    return {
        "state": np.ascontiguousarray(state),
        "action": meta.action[idx].astype(np.int32),
        "reward": ret,
        "next_state": np.ascontiguousarray(next_state),
        "terminal": is_term.astype(np.uint8),
    }


# ----------------------------------------------------------------------------------------------
# Writing (recorder, synthetic data for tests and benchmarks)


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def write_npy_gz(
    path: str | os.PathLike, array: np.ndarray | None = None, *, dtype: np.dtype | None = None,
    shape: tuple[int, ...] | None = None, chunks: Callable[[], Iterator[np.ndarray]] | None = None,
    compresslevel: int = 1,
) -> None:
    """Write a gzipped ``np.save`` file atomically, from an array or from a chunk generator.

    With ``chunks`` the payload is streamed (``dtype`` and ``shape`` give the header), so a
    7 GB synthetic observation file never sits in memory.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if array is not None:
        array = np.require(array, requirements="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        dtype, shape = array.dtype, array.shape
    assert dtype is not None and shape is not None
    try:
        _write_npy_gz(tmp, path, array, np.dtype(dtype), tuple(shape), chunks, compresslevel)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # never leave a partial file behind
        if is_disk_full(exc):
            need = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            raise disk_full(path.parent, need, path.name) from None
        raise
    os.replace(tmp, path)


def _write_npy_gz(
    tmp: Path, path: Path, array: np.ndarray | None, dtype: np.dtype, shape: tuple[int, ...],
    chunks: Callable[[], Iterator[np.ndarray]] | None, compresslevel: int,
) -> None:
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=compresslevel, mtime=0) as gz:
        gz.write(_npy_header(dtype, shape))
        if array is not None:
            # .data is the array's own buffer as a memoryview: written without a copy
            gz.write(array.tobytes() if array.ndim == 0 else array.reshape(-1).data.cast("B"))
        else:
            written = 0
            for c in chunks():  # type: ignore[misc]
                c = np.ascontiguousarray(c, dtype=dtype)
                gz.write(c.reshape(-1).data.cast("B"))
                written += c.nbytes
            expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if written != expected:
                raise ValueError(f"{path}: chunks gave {written} bytes, header promises {expected}")
        gz.flush()
        raw.flush()
        os.fsync(raw.fileno())


def write_checkpoint(
    replay_logs: str | os.PathLike, checkpoint: int, *, observation: np.ndarray | None, action: np.ndarray,
    reward: np.ndarray, terminal: np.ndarray, add_count: int, invalid_range: np.ndarray | None = None,
    observation_chunks: Callable[[], Iterator[np.ndarray]] | None = None, update_horizon: int = 3,
    frame_shape: tuple[int, int] = ATARI.frame_shape,
) -> None:
    """Write one checkpoint in DQN-Replay's on-disk format (no ``episode_end_indices``, like the
    public data). ``invalid_range`` defaults to Dopamine's, around ``add_count % capacity``."""
    d = Path(replay_logs)
    d.mkdir(parents=True, exist_ok=True)
    n = len(terminal)
    if invalid_range is None:
        invalid_range = dopamine_invalid_range(add_count % n, n, STACK_SIZE, update_horizon)
    try:
        # observation first: by far the largest, so a full disk stops the write before the rest
        opath = d / file_name("observation", checkpoint)
        if observation is not None:
            write_npy_gz(opath, np.asarray(observation, dtype=np.uint8))
        else:
            write_npy_gz(opath, dtype=np.dtype(np.uint8), shape=(n, *frame_shape), chunks=observation_chunks)
        write_npy_gz(d / file_name("action", checkpoint), np.asarray(action, dtype=np.int32))
        write_npy_gz(d / file_name("reward", checkpoint), np.asarray(reward, dtype=np.float32))
        write_npy_gz(d / file_name("terminal", checkpoint), np.asarray(terminal, dtype=np.uint8))
        write_npy_gz(d / file_name("add_count", checkpoint), np.array(add_count, dtype=np.int64))
        write_npy_gz(d / file_name("invalid_range", checkpoint), np.asarray(invalid_range, dtype=np.int64))
    except BaseException:
        # all six files or none: a half-written checkpoint would be read as an incomplete one
        for key in FILE_DTYPES:
            (d / file_name(key, checkpoint)).unlink(missing_ok=True)
        raise


def synthetic_episode_rows(
    rng: np.random.Generator, rows: int, num_actions: int = 4, mean_episode: int = 400, start_padding: bool = True
) -> dict[str, np.ndarray]:
    """Row arrays of synthetic play with DQN-Replay semantics: 3 zero padding rows before every
    episode, clipped rewards, a terminal on each episode's last row (``observation`` excluded)."""
    action = np.zeros(rows, dtype=np.int32)
    reward = np.zeros(rows, dtype=np.float32)
    terminal = np.zeros(rows, dtype=np.uint8)
    real = np.zeros(rows, dtype=bool)  # False on padding rows
    pos = 0 if start_padding else -(STACK_SIZE - 1)
    while pos < rows:
        pos += STACK_SIZE - 1  # padding rows: zeros everywhere
        length = int(rng.integers(mean_episode // 2, mean_episode * 3 // 2 + 1))
        lo, hi = max(pos, 0), min(pos + length, rows)
        if hi > lo:
            real[lo:hi] = True
            action[lo:hi] = rng.integers(0, num_actions, hi - lo)
            reward[lo:hi] = rng.choice(np.array([0, 0, 0, 0, 1, -1], dtype=np.float32), hi - lo)
            if pos + length <= rows:
                terminal[pos + length - 1] = 1
        pos += length
    return {"action": action, "reward": reward, "terminal": terminal, "real": real}


def synthetic_frames(rows: np.ndarray, real: np.ndarray, salt: int = 0) -> np.ndarray:
    """Deterministic (len(rows), 84, 84) frames: row id written into the pixels (so a test can
    tell which row a frame came from), zero on padding rows; compresses well."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros((len(rows), *ATARI.frame_shape), dtype=np.uint8)
    code = rows + salt * 7919
    out[:, 0, 0:4] = np.stack([(code >> (8 * k)) & 0xFF for k in range(4)], axis=1).astype(np.uint8)
    out[:, 1:, :] = ((code % 251) + 1).astype(np.uint8)[:, None, None]
    out[~np.asarray(real, dtype=bool)] = 0
    return out


def frame_row_id(frames: np.ndarray, salt: int = 0) -> np.ndarray:
    """Invert :func:`synthetic_frames`: the row id encoded in each frame's first 4 pixels."""
    f = np.asarray(frames)[..., 0, 0:4].astype(np.int64)
    code = f[..., 0] | (f[..., 1] << 8) | (f[..., 2] << 16) | (f[..., 3] << 24)
    return code - salt * 7919


def write_synthetic_run(
    replay_logs: str | os.PathLike, checkpoints: int, rows: int, *, seed: int = 0, num_actions: int = 4,
    mean_episode: int = 400, salt: int = 0,
) -> None:
    """A synthetic run in the real on-disk format: ``checkpoints`` checkpoints of ``rows`` rows
    each, consecutive (checkpoint i holds rows [i*rows, (i+1)*rows) of one stream, full ring with
    cursor 0 like the fixtures), frames encoding their global row id (see :func:`frame_row_id`).
    Observation files are streamed, so a 1M-row checkpoint needs no 7 GB in memory."""
    rng = np.random.default_rng(seed)
    stream = synthetic_episode_rows(rng, rows * checkpoints, num_actions, mean_episode)
    for c in range(checkpoints):
        sl = slice(c * rows, (c + 1) * rows)
        real = stream["real"][sl]

        def chunks(c: int = c, real: np.ndarray = real) -> Iterator[np.ndarray]:
            step = 2048
            for a in range(0, rows, step):
                b = min(a + step, rows)
                yield synthetic_frames(np.arange(c * rows + a, c * rows + b), real[a:b], salt)

        write_checkpoint(
            replay_logs, c, observation=None, observation_chunks=chunks, action=stream["action"][sl],
            reward=stream["reward"][sl], terminal=stream["terminal"][sl], add_count=(c + 1) * rows,
        )

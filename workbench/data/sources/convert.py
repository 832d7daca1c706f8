"""Episodes of a :class:`~workbench.data.sources.Source` -> DQN-Replay runs per game.

``python -m workbench.data.sources convert --source {minari,rlu} PATH --out ROOT [--games G[,G]]
[--rows-per-checkpoint 1000000] [--rlu-last-step decision|terminal-frame]`` (:func:`main`) writes,
per game and run (``1`` for a source without runs, such as Minari; RL Unplugged's own runs)::

    ROOT/
      .workbench-converted-source   marks a folder this converter made (it writes nowhere else)
      source_info.json              the source's provenance and limits, the preprocessing, and per game
                                    every episode's provenance and rows (written after each game)
      {Game}/{run}/replay_logs/     checkpoints in DQN-Replay's files (dqn_replay.write_checkpoint)
      {Game}/{run}/source/checkpoint_<N>.npz   per row of checkpoint N: raw_reward (float64, unclipped),
                                    truncated (uint8: 1 on an episode's last row when it ended by a time
                                    limit or a cut, not by game over), episode (int64 index into
                                    source_info.json's episodes, -1 on padding rows), step (int64 step of
                                    the episode, -1 on padding rows), and meta (JSON: where the checkpoint
                                    starts and ends in the episode stream)

Rows follow DQN-Replay's semantics (``shared/notes/dqn_replay_format.md``): before every episode 3
all-zero padding rows (observation, action, reward, terminal 0); row t holds the frame action t
was taken at, the action (minimal-set index), the reward clipped to [-1, 1] (``np.clip``, as
Dopamine) and terminal 1 on the episode's last row, whether the game ended or the episode was
truncated (DQN-Replay has no truncation flag; ``truncated`` in the side file keeps the
difference). Frames go through :func:`workbench.data.sources.preprocess.dqn_frames` (ALE's
grayscale, ``cv2.INTER_AREA`` to 84x84; the pooling of two emulator frames cannot be redone).

Where the source records the checkpoint each episode was played by (RL Unplugged), checkpoint
``N`` holds exactly the episodes of the source's checkpoint ``N``, whole. Otherwise (Minari)
checkpoints 0, 1, ... are consecutive slices of ``rows_per_checkpoint`` rows of the game's row
stream, the last one shorter. Either way each is a full ring with its write cursor at slot 0
(``add_count`` a multiple of its length, larger than the previous checkpoint's), so readers take
its rows in order and ``build_store`` reads every split unchanged. As in the public data, the few
rows around each checkpoint boundary are not transition starts (a transition never reads across
checkpoints).

Resumable: every file is written to a temporary name and renamed; a checkpoint counts as done
when its side file (written after its six DQN-Replay files) is there and records the same place
in the episode stream, so a rerun skips done checkpoints (reading only the small arrays of their
episodes) and rewrites any other. A rerun against a different source or checkpoint size is
refused, as is an ``--out`` folder that holds anything and was not made by this converter.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.data import dqn_replay as dr
from workbench.data.sources import Episode, Source, SourceError
from workbench.data.sources.minari_source import MinariSource
from workbench.data.sources.preprocess import OUT_SHAPE, PREPROCESSING, dqn_frames
from workbench.data.sources.rlu_source import LAST_STEPS, RluSource
from workbench.fileio import atomic_write_json, read_json
from workbench.games import canonical_game

__all__ = ["FORMAT", "INFO_NAME", "MARKER", "RUN", "SOURCES", "convert", "main", "open_source"]

FORMAT = "workbench-converted-source/1"
MARKER = ".workbench-converted-source"
INFO_NAME = "source_info.json"
RUN = "1"
PAD = dr.STACK_SIZE - 1  # zero rows before every episode
DEFAULT_ROWS = dr.PUBLIC_CAPACITY
MIN_ROWS = 8
FRAME_CHUNK = 1024  # source frames read and preprocessed at once

#: source name on the command line -> constructor taking the source's path
SOURCES: dict[str, Callable[..., Source]] = {"minari": MinariSource, "rlu": RluSource}
#: options a source kind accepts (keyword -> the command line's flag)
OPTIONS = {"rlu": {"last_step": "--rlu-last-step"}}


def open_source(kind: str, path: str | os.PathLike, **options: Any) -> Source:
    """The source of kind ``kind`` (a key of :data:`SOURCES`) read from ``path``; ``options`` are the
    kind's own (:data:`OPTIONS`)."""
    if kind not in SOURCES:
        raise SourceError(f"unknown source {kind!r}; available: {sorted(SOURCES)}")
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(OPTIONS.get(kind, {})))
    if unknown:
        flags = [OPTIONS[k][o] for k in OPTIONS for o in OPTIONS[k] if o in unknown]
        raise SourceError(f"{', '.join(flags or unknown)} applies to another source kind, not {kind!r}")
    return SOURCES[kind](path, **given)


@dataclass
class _Piece:
    """Rows ``[lo, hi)`` of one episode's padded rows (rows < PAD are padding; row r >= PAD is step r - PAD)."""

    episode: Episode
    index: int  # the episode's index in the game's stream (source_info.json's episodes)
    lo: int
    hi: int

    @property
    def steps(self) -> tuple[int, int]:
        return max(self.lo, PAD) - PAD, max(self.hi, PAD) - PAD


def _rows(pieces: Sequence[_Piece]) -> dict[str, np.ndarray]:
    """Every array of one checkpoint but the frames (DQN-Replay's and the side file's)."""
    n = sum(p.hi - p.lo for p in pieces)
    out: dict[str, np.ndarray] = {
        "action": np.zeros(n, np.int32), "reward": np.zeros(n, np.float32), "terminal": np.zeros(n, np.uint8),
        "raw_reward": np.zeros(n, np.float64), "truncated": np.zeros(n, np.uint8),
        "episode": np.full(n, -1, np.int64), "step": np.full(n, -1, np.int64),
    }
    at = 0
    for p in pieces:
        a, b = p.steps
        at += max(0, min(p.hi, PAD) - p.lo)  # padding rows stay zero
        sl = slice(at, at + b - a)
        ep = p.episode
        out["action"][sl] = ep.action[a:b]
        out["raw_reward"][sl] = ep.reward[a:b]
        out["reward"][sl] = np.clip(ep.reward[a:b], -1.0, 1.0)
        out["episode"][sl] = p.index
        out["step"][sl] = np.arange(a, b)
        if b == len(ep) and b > a:  # the episode's last row: terminal, whatever ended it
            out["terminal"][at + b - a - 1] = 1
            out["truncated"][at + b - a - 1] = 0 if ep.ended_by_game_over else 1
        at += b - a
    return out


def _frames(pieces: Sequence[_Piece]) -> Iterator[np.ndarray]:
    """The checkpoint's 84x84 rows, streamed (padding zeros, then each piece's preprocessed frames)."""
    for p in pieces:
        pad = max(0, min(p.hi, PAD) - p.lo)
        if pad:
            yield np.zeros((pad, *OUT_SHAPE), np.uint8)
        a, b = p.steps
        for s in range(a, b, FRAME_CHUNK):
            e = min(s + FRAME_CHUNK, b)
            raw = np.asarray(p.episode.frames(s, e))
            if len(raw) != e - s:
                raise SourceError(f"episode {p.episode.provenance}: asked for frames {s}..{e}, got {len(raw)}")
            yield dqn_frames(raw)


def _side_path(side: Path, c: int) -> Path:
    return side / f"checkpoint_{c}.npz"


def _write_side(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        payload: dict[str, Any] = {"meta": np.array(json.dumps(meta, sort_keys=True)), **arrays}
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["meta"][()]))
    except (OSError, ValueError, KeyError):
        return None  # unreadable: rewritten


def _complete(rl: Path, side: Path, c: int, meta: dict[str, Any]) -> bool:
    have = _read_meta(_side_path(side, c)) if _side_path(side, c).is_file() else None
    if have is None:
        return False
    if have != meta:
        raise SourceError(f"{_side_path(side, c)} records checkpoint {c} as {have}, but the source now gives {meta}: "
                          "the source changed since the conversion began; convert into a new folder")
    return all((rl / dr.file_name(k, c)).is_file() for k in dr.FILE_DTYPES)


def _write_checkpoint(rl: Path, side: Path, c: int, pieces: Sequence[_Piece], meta: dict[str, Any]) -> None:
    for k in dr.FILE_DTYPES:  # leftovers of an interrupted write of this checkpoint
        for name in (dr.file_name(k, c), dr.file_name(k, c) + ".tmp"):
            (rl / name).unlink(missing_ok=True)
    _side_path(side, c).unlink(missing_ok=True)
    rows = _rows(pieces)
    dr.write_checkpoint(
        rl, c, observation=None, observation_chunks=lambda: _frames(pieces), action=rows["action"],
        reward=rows["reward"], terminal=rows["terminal"], add_count=int(meta["add_count"]),
    )
    _write_side(_side_path(side, c), {k: rows[k] for k in ("raw_reward", "truncated", "episode", "step")}, meta)


def _convert_game(source: Source, game: str, root: Path, n: int, say: Callable[[str], None]) -> dict[str, Any]:
    episodes: list[dict[str, Any]] = []
    pieces: list[_Piece] = []
    runs: dict[str, dict[str, Any]] = {}  # run -> checkpoints written (ids), rows
    state: dict[str, Any] = {"run": None, "c": 0, "filled": 0, "rows": 0, "add_count": 0, "given": None,
                             "written": 0, "skipped": 0}

    def folders(run: str) -> tuple[Path, Path]:
        return root / game / run / "replay_logs", root / game / run / "source"

    def flush() -> None:
        run, c, cap = state["run"], state["c"], state["filled"]
        rl, side = folders(run)
        # a full ring (cursor at slot 0) whose count grew by at least its length: see the module doc
        add_count = cap * -(-(state["add_count"] + cap) // cap)
        meta = {
            "checkpoint": c, "rows": cap, "first_row": state["rows"] - cap, "add_count": add_count,
            "first": [pieces[0].index, pieces[0].lo], "last": [pieces[-1].index, pieces[-1].hi],
        }
        where = f"{game} run {run}" if run != RUN or len(runs) > 1 else game
        if _complete(rl, side, c, meta):
            state["skipped"] += 1
            say(f"{where}: checkpoint {c} ({cap} rows) already converted")
        else:
            _write_checkpoint(rl, side, c, pieces, meta)
            state["written"] += 1
            say(f"{where}: checkpoint {c} ({cap} rows) written")
        runs[run]["checkpoints"].append(c)
        runs[run]["rows"] += cap
        state["c"], state["filled"], state["add_count"] = c + 1, 0, add_count
        pieces.clear()

    for idx, ep in enumerate(source.episodes(game)):
        run, given = (ep.run or RUN), ep.checkpoint is not None
        if state["given"] is None:
            state["given"] = given
        elif state["given"] != given:
            raise SourceError(f"{game}: episode {ep.provenance} {'has' if given else 'lacks'} a checkpoint id unlike "
                              "the episodes before it")
        if run != state["run"]:
            if state["filled"]:
                flush()
            if run in runs:
                raise SourceError(f"{game}: the source gives run {run} again after run {state['run']}: runs must "
                                  "come one after the other")
            runs[run] = {"checkpoints": [], "rows": 0}
            state.update(run=run, c=0, filled=0, rows=0, add_count=0)
            for d in folders(run):
                d.mkdir(parents=True, exist_ok=True)
        if given and (not pieces or ep.checkpoint != state["c"]):
            if state["filled"]:
                flush()
            done = runs[run]["checkpoints"]
            if done and ep.checkpoint <= done[-1]:
                raise SourceError(f"{game} run {run}: checkpoint {ep.checkpoint} comes after checkpoint {done[-1]}: "
                                  "the source must give checkpoints in increasing order")
            state["c"] = int(ep.checkpoint)  # type: ignore[arg-type]
        length = PAD + len(ep)
        episodes.append({
            "provenance": ep.provenance, "run": run, "first_row": state["rows"], "steps": len(ep),
            "terminated": ep.ended_by_game_over, "truncated": not ep.ended_by_game_over,
            "return": float(np.sum(ep.reward)), "clipped_return": float(np.sum(np.clip(ep.reward, -1.0, 1.0))),
        })
        if given:  # the source's checkpoint: whole episodes, however many rows
            pieces.append(_Piece(ep, idx, 0, length))
            state["filled"] += length
            state["rows"] += length
            continue
        pos = 0
        while pos < length:
            take = min(length - pos, n - state["filled"])
            pieces.append(_Piece(ep, idx, pos, pos + take))
            pos += take
            state["filled"] += take
            state["rows"] += take
            if state["filled"] == n:
                flush()
    if state["filled"]:
        flush()
    if not episodes:
        raise SourceError(f"the source holds no episodes of {game}")
    for run, ri in runs.items():
        rl = folders(run)[0]
        ckpts = dr.run_checkpoints(rl)  # complete ones; a gap the source has stays (the builder names it)
        if list(ckpts) != ri["checkpoints"]:
            raise SourceError(f"{rl} holds checkpoints {dr.format_ids(ckpts)} but the source gives "
                              f"{dr.format_ids(ri['checkpoints'])}: remove the folder and convert again")
    return {
        "complete": True, "runs": runs, "checkpoints": sum(len(r["checkpoints"]) for r in runs.values()),
        "checkpoint_ids": "source" if state["given"] else "rows_per_checkpoint",
        "rows": sum(r["rows"] for r in runs.values()), "episodes": episodes,
        "episodes_terminated": sum(e["terminated"] for e in episodes),
        "episodes_truncated": sum(e["truncated"] for e in episodes),
        "steps": sum(e["steps"] for e in episodes), "padding_rows": PAD * len(episodes),
        "written": state["written"], "skipped": state["skipped"],
    }


def _json_normal(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True))


def _claim(out: Path) -> None:
    """Refuse a folder this converter did not make unless it is new or empty; mark it as ours."""
    if out.exists() and not out.is_dir():
        raise SourceError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        listing = ", ".join(sorted(p.name for p in out.iterdir())[:8])
        raise SourceError(f"{out} is not empty and was not made by this converter (no {MARKER}); it holds: {listing}. "
                          "Choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("Made by python -m workbench.data.sources convert; a rerun may rewrite it.\n")


def convert(
    source: Source, out: str | os.PathLike, games: Sequence[str] | None = None, *,
    rows_per_checkpoint: int = DEFAULT_ROWS, progress: bool = True,
) -> dict[str, Any]:
    """Write ``games`` (default: all the source has) of ``source`` under ``out`` in the DQN-Replay
    layout (module doc); returns what ``source_info.json`` holds. Resumes an interrupted
    conversion of the same source; games added by a later call join the same folder."""
    if not isinstance(rows_per_checkpoint, int) or isinstance(rows_per_checkpoint, bool) or \
            rows_per_checkpoint < MIN_ROWS:
        raise SourceError(f"rows_per_checkpoint must be an int >= {MIN_ROWS}, got {rows_per_checkpoint!r}")
    out = Path(out)
    available = source.games()
    chosen = []
    for g in games or available:
        try:
            name = canonical_game(g)
        except ValueError:
            name = g
        if name not in available:
            raise SourceError(f"game {g!r} is not in the {source.kind} source; games: {available}")
        if name not in chosen:
            chosen.append(name)
    plan = _json_normal({"format": FORMAT, "source": source.provenance(), "rows_per_checkpoint": rows_per_checkpoint,
                         "preprocessing": PREPROCESSING})
    _claim(out)
    info_path = out / INFO_NAME
    if info_path.is_file():
        info = read_json(info_path)
        if info.get("plan") != plan:
            raise SourceError(f"{out} holds a conversion of another source or checkpoint size ({info_path} differs): "
                              "convert into a new folder")
    else:
        info = {"plan": plan, "limits": source.limits(), "games": {}}
        atomic_write_json(info_path, info)

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    for g in chosen:
        info["games"][g] = {"complete": False}  # until its last checkpoint is written
        atomic_write_json(info_path, info)
        info["games"][g] = _convert_game(source, g, out, rows_per_checkpoint, say)
        atomic_write_json(info_path, info)
    return info


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workbench.data.sources {convert,info} --source KIND PATH ...``; exit 2 on a bad source or folder."""
    ap = argparse.ArgumentParser(
        prog="python -m workbench.data.sources",
        description="Convert another public Atari offline dataset into the DQN-Replay layout that "
                    "python -m workbench.data.build reads.",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    cv = sub.add_parser("convert", help="write the source's episodes as {OUT}/{Game}/1/replay_logs/")
    info = sub.add_parser("info", help="print the source's games, limits and provenance (JSON)")
    for p in (cv, info):
        p.add_argument("--source", nargs=2, metavar=("KIND", "PATH"), required=True,
                       help=f"source kind ({', '.join(sorted(SOURCES))}) and its local folder")
    cv.add_argument("--out", required=True, help="root to write (new or empty, or an interrupted conversion)")
    cv.add_argument("--games", nargs="+", help="games to convert (comma- or space-separated; default: all)")
    cv.add_argument("--rows-per-checkpoint", type=int, default=DEFAULT_ROWS,
                    help=f"rows per checkpoint of a source without checkpoints (Minari; default {DEFAULT_ROWS:,}, "
                         "as the public data); RL Unplugged keeps its own checkpoints")
    for p in (cv, info):
        p.add_argument("--rlu-last-step", choices=LAST_STEPS, default=None,
                       help="rlu: the last step of a game-over episode is a decision (default, as the .gz files) "
                            "or only the terminal frame (TFDS's RLDS reading: dropped)")
    cv.add_argument("--no-progress", action="store_true", help="no line per checkpoint")
    args = ap.parse_args(argv)
    try:
        source = open_source(args.source[0], args.source[1], last_step=args.rlu_last_step)
        if args.command == "info":
            print(json.dumps({"games": source.games(), "limits": source.limits(), "source": source.provenance()},
                             indent=2, sort_keys=True))
            return 0
        games = [g for item in args.games for g in item.split(",") if g] if args.games else None
        result = convert(source, args.out, games, rows_per_checkpoint=args.rows_per_checkpoint,
                         progress=not args.no_progress)
    except (SourceError, dr.DQNReplayError, OSError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    for g, gi in result["games"].items():
        if not gi.get("complete"):
            continue
        where = ", ".join(f"{Path(args.out) / g / r / 'replay_logs'} ({dr.format_ids(ri['checkpoints'])})"
                          for r, ri in gi["runs"].items())
        print(f"{g}: {gi['checkpoints']} checkpoints, {gi['rows']} rows, {len(gi['episodes'])} episodes "
              f"({gi['episodes_terminated']} ended by game over) -> {where}")
    return 0

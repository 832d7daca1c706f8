"""Builds a replay store (layout: :mod:`workbench.data.store`) from a DQN-Replay root.

``build_store`` runs in steps that each read on their own:

1. :func:`_plan_game` -- per source checkpoint (a *block*), which rows are new and which of them
   are valid transition starts (:func:`_valid_positions`, the rule that makes every returned
   transition exact);
2. :func:`_assign_samples` -- for subsampled splits, how many starts each block contributes, and
   where each block's rows go in the game's arrays;
3. :func:`_start_or_resume` -- the ``.build`` directory: resume an interrupted build of the same
   plan, restart anything else;
4. :func:`_convert_block` -- one checkpoint (one observation file) into the store, then a marker;
5. :func:`_finish_game` and the manifest, written last.

Valid starts. Rows of a checkpoint are put in chronological order (the ring unrolled from its
write cursor). A chronological position ``i`` is a start when Dopamine's rule holds for the
*reader's* horizon ``n_step`` (no terminal among the 3 rows before it; not in the file's
``invalid_range``, nor in the n-step range around the cursor -- the public files' range is the
1-step one of the DQN agent that wrote them) AND every row it reads, ``i-3 .. i+n_step``, is a row
of this checkpoint. So a transition never reads across a checkpoint, a run or the stale slot at
the cursor, whatever the file's ``invalid_range`` says. Rows a checkpoint shares with the previous
one of its run (``add_count`` grew by less than the capacity, e.g. a recorder's final partial dump)
are not starts again.

Subsampling selects *transition starts*, never rows. ``unit="episodes"`` (JOWA's 10% and 5k
splits, MGDT's fine-tuning 1%) takes whole episode pieces of the chosen checkpoints in a seeded
random order until the budget is met, the last piece cut to its first starts (:func:`_take_episodes`).
``unit="transitions"`` (Scaled QL's fine-tuning 1%, ``fraction:F``, ``n:N``) selects them
uniformly without replacement among all valid starts of the chosen checkpoints (exact simple
random sample: per-checkpoint counts are drawn from the multivariate hypergeometric
distribution, then starts within each checkpoint), and stores only the rows their stacks,
n-step windows and sequence segments need (``[p-3, p+context_after]``, union over starts).
Why starts and not whole rows: a kept row is useless unless its 3 predecessors and n successors
are kept too, so sampling rows and flagging "valid" ones would silently bias the sample toward
long kept runs; sampling starts keeps the distribution exactly uniform over transitions and
costs at most ``4 + context_after`` frames per start (about 69% of the rows for a uniform 10%
sample with the default context of 7, 11% for 1%; whole episodes keep about the sample itself).

Memory: each observation file is streamed chunk by chunk straight into the output file with
positioned writes (no memmap writes, so dirty pages never inflate RSS); the largest resident
objects are one checkpoint's small arrays (~14 bytes per row).

Parallel builds (``workers=N``, :func:`_convert_parallel`): the parent plans, creates and
preallocates every array, then N spawned processes convert one checkpoint each at a time, and
finish each game (its index arrays and the digests of its arrays) once its blocks are done. Blocks
tile their game's rows (:func:`_check_disjoint`), so concurrent writers never touch the same row;
each block's markers are its own files. The result does not depend on N or on the order blocks
finish. Command line: ``python -m workbench.data.build ROOT --games G --out STORE [--dry-run]``
(:func:`main`).

Distributed builds (``--executor slurm|local``, :func:`build_store_distributed`): one submitit job
per game (:func:`build_game_job`; the executor of :func:`workbench.executors.make_executor`), each
writing only its game's folder, its ``.build/done/{game}__*`` markers and ``.build/games/{game}.json``;
the submitting process then merges the games' summaries into the manifest.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import submitit

from workbench.data import dqn_replay as dr
from workbench.data.sources import SourceError
from workbench.data.sources.convert import INFO_NAME, SOURCES, convert, open_source
from workbench.data.splits import GRAMMAR, PRESETS, Split, StoreError, parse_runs, parse_split
from workbench.data.store import EP_BEGINS, EP_ENDS, FORMAT_VERSION, STACK, STORE_ARRAYS
from workbench.executors import ExecutorSpec, make_executor
from workbench.fileio import (
    DiskFullError,
    LockHeld,
    acquire_flock,
    atomic_write_json,
    check_free_space,
    disk_full,
    is_disk_full,
    preallocate,
    read_json,
    release_flock,
    sha256_file,
)
from workbench.games import canonical_game, geometry_of, num_actions
from workbench.progress import progress_bar

__all__ = ["build_game_job", "build_store", "build_store_distributed", "main", "plan_store"]

# Small arrays of planned checkpoints are kept for the conversion pass while they fit this budget
# (test-sized data); real 1M-row checkpoints are re-read (a few MB each, cheap).
META_CACHE_BYTES = 64 << 20
_SMALL = {"action": np.uint8, "reward": np.float32, "terminal": np.uint8, "block": np.int32, "slot": np.int32}


@dataclass
class _Block:
    """The plan for one source checkpoint (one block of consecutive store rows)."""

    game: str
    run: str
    checkpoint: int
    capacity: int
    add_count: int
    fresh: int  # newest rows not already in the previous checkpoint
    run_start: bool  # the ring began empty here: its first rows are the run's initial padding
    row_start: int = 0
    rows: int = 0
    starts: int = 0
    files: dict[str, str] = field(default_factory=dict)


class _Sources:
    """Reads checkpoint metadata of a DQN-Replay root, caching small checkpoints between passes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[tuple[str, str, int], dr.CheckpointMeta] = {}
        self._budget = META_CACHE_BYTES
        #: per "game/run": the checkpoints a split chose, those the run lacks, its warnings (manifest)
        self.selections: dict[str, dict[str, Any]] = {}

    def replay_logs(self, game: str, run: str) -> Path:
        return self.root / game / run / "replay_logs"

    def meta(self, game: str, run: str, checkpoint: int) -> dr.CheckpointMeta:
        key = (game, run, checkpoint)
        if key in self._cache:
            return self._cache[key]
        meta = dr.load_checkpoint_meta(self.replay_logs(game, run), checkpoint, hash=True)
        if 10 * meta.capacity <= self._budget:
            self._budget -= 10 * meta.capacity
            self._cache[key] = meta
        return meta

    def pop(self, game: str, run: str, checkpoint: int) -> dr.CheckpointMeta:
        """The metadata for the conversion pass (dropped from the cache: it is needed once more)."""
        meta = self._cache.pop((game, run, checkpoint), None)
        return meta if meta is not None else dr.load_checkpoint_meta(self.replay_logs(game, run), checkpoint, hash=True)


# ----------------------------------------------------------------------------------------------
# Which rows and starts of one checkpoint


def _valid_positions(meta: dr.CheckpointMeta, fresh: int, n_step: int) -> np.ndarray:
    """Chronological positions of one checkpoint that are exact ``n_step`` transition starts."""
    order = meta.time_order()
    n = len(order)
    valid = meta.valid_mask(STACK, n_step)[order]  # Dopamine's rule, with the reader's horizon
    pos = np.arange(n)
    # every row read -- stack p-3..p, n-step window and next stack up to p+n_step -- is in this checkpoint
    valid &= (pos >= STACK - 1) & (pos + n_step < n)
    valid[: n - min(fresh, n)] = False  # stale rows: starts of the previous checkpoint
    return np.flatnonzero(valid)


def _block_selection(
    meta: dr.CheckpointMeta, fresh: int, n_step: int, context_after: int, pick: int | np.ndarray | None,
    rng: np.random.Generator | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(kept chronological positions, start indices into the kept positions).

    ``pick``: None keeps every start; an int draws that many starts uniformly with ``rng``; an
    (K, 2) array keeps the starts at chronological positions ``[lo, hi)`` of each row (whole
    episodes, see :func:`_episode_pieces`)."""
    n = len(meta.time_order())
    cand = _valid_positions(meta, fresh, n_step)
    if pick is None:  # all rows from the first stack on
        keep_lo = max(n - min(fresh, n) - (STACK - 1), 0)
        return np.arange(keep_lo, n), cand - keep_lo
    if isinstance(pick, np.ndarray):
        inside = np.zeros(n + 1, dtype=np.int32)
        np.add.at(inside, pick[:, 0], 1)
        np.add.at(inside, pick[:, 1], -1)
        chosen = cand[np.cumsum(inside[:-1])[cand] > 0]
    else:
        chosen = np.sort(rng.choice(cand, size=pick, replace=False)) if pick else cand[:0]  # type: ignore[union-attr]
    mark = np.zeros(n + 1, dtype=np.int32)  # difference array: union of the windows [p-3, p+context_after]
    np.add.at(mark, np.maximum(chosen - (STACK - 1), 0), 1)
    np.add.at(mark, np.minimum(chosen + context_after + 1, n), -1)
    keep = np.flatnonzero(np.cumsum(mark[:-1]) > 0)
    return keep, np.searchsorted(keep, chosen)


def _episode_pieces(meta: dr.CheckpointMeta, fresh: int, n_step: int) -> np.ndarray:
    """(K, 2) chronological ``[lo, hi)`` of one checkpoint's episode pieces: maximal runs of
    consecutive valid starts, cut after each terminal (an episode's starts, or the part of it this
    checkpoint holds)."""
    cand = _valid_positions(meta, fresh, n_step)
    if not len(cand):
        return np.zeros((0, 2), dtype=np.int64)
    term = meta.terminal[meta.time_order()][cand].astype(bool)
    new_piece = np.ones(len(cand), dtype=bool)
    new_piece[1:] = (np.diff(cand) != 1) | term[:-1]
    first = np.flatnonzero(new_piece)
    last = np.append(first[1:], len(cand)) - 1
    return np.stack([cand[first], cand[last] + 1], axis=1).astype(np.int64)


def _padding_mask(terminal_chrono: np.ndarray, run_start: bool) -> np.ndarray:
    """Padding rows of one checkpoint in chronological order: the 3 rows after each terminal,
    and the first 3 rows when the ring started empty (Dopamine pads before every episode)."""
    n = len(terminal_chrono)
    pad = np.zeros(n, dtype=bool)
    t = np.flatnonzero(terminal_chrono)
    for k in range(1, STACK):
        i = t + k
        pad[i[i < n]] = True
    if run_start:
        pad[: STACK - 1] = True
    return pad


def _episodes(terminal: np.ndarray, brk: np.ndarray, pad: np.ndarray, pred_pad: np.ndarray) -> np.ndarray:
    """Episodes among one block's kept rows: (E, 3) [first, end, flags], block-local rows.

    Pieces are cut where the source is not contiguous (``brk``) and after terminals; leading
    padding rows are dropped. ``flags & EP_BEGINS`` when the row before the first real row is a
    padding row in the source (a true episode start), ``flags & EP_ENDS`` when the piece ends
    with a terminal. ``pred_pad[i]``: the source row before kept row i is padding.
    """
    n = len(terminal)
    cuts = np.union1d(np.flatnonzero(brk), np.flatnonzero(terminal) + 1)
    cuts = np.union1d(cuts[(cuts > 0) & (cuts < n)], [0, n]).astype(np.int64)
    out = []
    for s, e in itertools.pairwise(cuts):
        real = np.flatnonzero(~pad[s:e])
        if not len(real):
            continue
        f = int(s + real[0])
        flags = (EP_BEGINS if pred_pad[f] else 0) | (EP_ENDS if terminal[e - 1] else 0)
        out.append((f, int(e), flags))
    return np.array(out, dtype=np.int64).reshape(-1, 3)


# ----------------------------------------------------------------------------------------------
# Steps of the build


def _check_args(root: Path, games: Sequence[str], split: Split | str, n_step: int, context_after: int) -> Split:
    split = parse_split(split)
    if not isinstance(split, Split):
        raise StoreError(f"split must be a Split or one of {sorted(PRESETS)}, got {split!r}")
    if not isinstance(n_step, int) or n_step < 1:
        raise StoreError(f"n_step must be an int >= 1, got {n_step!r}")
    if not isinstance(context_after, int) or context_after < n_step:
        raise StoreError(f"context_after must be an int >= n_step ({n_step}), got {context_after!r}")
    if not games:
        raise StoreError(f"no games given; available: {dr.list_games(root)}")
    return split


def _stable_id(s: str) -> int:
    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:4], "little")


def _block_rng(seed: int, b: _Block) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 1, _stable_id(b.game), _stable_id(b.run), b.checkpoint]))


def _plan_game(sources: _Sources, game: str, runs: Sequence[str | int], split: Split, n_step: int) -> list[_Block]:
    """One block per chosen checkpoint of each run, sized for keeping all its valid starts."""
    blocks = []
    for r in runs:
        rdir = dr.run_dir(sources.root, game, r)  # an unknown run lists those that exist
        run = rdir.parent.name
        ckpts = dr.list_checkpoints(rdir)  # every checkpoint complete, no gaps: splits count right
        try:
            n_actions: int | None = num_actions(game)
        except ValueError:  # not a registry game (synthetic data): only the 0..255 bound applies
            n_actions = None
        chosen = split.choose(ckpts)
        sources.selections[f"{game}/{run}"] = chosen.provenance()
        for c in chosen:
            meta = sources.meta(game, run, c)
            if n_actions is not None:
                dr.check_rows(rdir, c, meta.action, meta.reward, meta.terminal, n_actions)
            fresh, run_start = meta.add_count, meta.add_count <= meta.capacity
            if c - 1 in ckpts:
                prev_add = int(dr.load_npy_gz(rdir / dr.file_name("add_count", c - 1)))
                grew = meta.add_count - prev_add
                # One growing ring dumped twice: only the newest `grew` slots are new. A count that
                # did not grow means independently written buffers (as in ../shared/fixtures/dqn_replay).
                if 0 < grew < meta.capacity:
                    fresh = grew
                # A count that fell is a logged run's final partial dump (add_count reset to the
                # cursor): its ring did not start empty.
                run_start = run_start and prev_add <= meta.add_count
            b = _Block(
                game, run, c, meta.capacity, meta.add_count, min(fresh, meta.capacity), run_start,
                files=dict(meta.sha256),
            )
            kept, starts = _block_selection(meta, b.fresh, n_step, 0, None, None)
            b.rows, b.starts = len(kept), len(starts)
            blocks.append(b)
    return blocks


def _assign_samples(
    sources: _Sources, plan: dict[str, list[_Block]], split: Split, seed: int, n_step: int, context_after: int,
) -> dict[tuple[str, str, int], int | np.ndarray | None]:
    """Per-block sample (None: all starts; an int: that many uniform starts; (K, 2) position
    ranges: whole episodes), and each block's first row in its game's arrays.

    ``unit="transitions"``: an exact uniform sample without replacement over all starts of a game
    (per-block counts from the multivariate hypergeometric distribution, then starts within each
    block). ``unit="episodes"``: the game's episode pieces in a seeded random order, taken whole
    until the budget is met, the last one cut to its first starts so the count is exact."""
    samples: dict[tuple[str, str, int], int | np.ndarray | None] = {}
    for g, blocks in plan.items():
        counts = [b.starts for b in blocks]  # all valid starts of each block
        total = int(sum(counts))
        want = split.sample_size(total)
        per: list[int | np.ndarray | None]
        if want is None:
            per = [None] * len(blocks)
        else:
            if want > total:
                raise StoreError(
                    f"{g}: split asks for {want} transitions but the chosen checkpoints hold {total} valid starts"
                )
            rng = np.random.default_rng(np.random.SeedSequence([seed, 0, _stable_id(g)]))
            if split.unit == "episodes":
                per = list(_take_episodes(sources, blocks, want, n_step, rng))
            else:
                per = [int(k) for k in rng.multivariate_hypergeometric(np.array(counts, dtype=np.int64), want)] \
                    if counts else []
        row = 0
        for b, n in zip(blocks, per):
            samples[(g, b.run, b.checkpoint)] = n
            if n is not None:  # sizes depend on the sampled starts: redo the selection
                meta = sources.meta(g, b.run, b.checkpoint)
                kept, starts = _block_selection(meta, b.fresh, n_step, context_after, n, _block_rng(seed, b))
                b.rows, b.starts = len(kept), len(starts)
            b.row_start = row
            row += b.rows
    return samples


def _take_episodes(
    sources: _Sources, blocks: list[_Block], want: int, n_step: int, rng: np.random.Generator,
) -> list[np.ndarray]:
    """Per block, the (K, 2) position ranges of the episode pieces drawn for a budget of ``want``
    starts: pieces of all blocks in a random order, whole until the budget, the last one cut."""
    if want == 0:
        return [np.zeros((0, 2), dtype=np.int64) for _ in blocks]
    pieces = [_episode_pieces(sources.meta(b.game, b.run, b.checkpoint), b.fresh, n_step) for b in blocks]
    owner = np.concatenate([np.full(len(p), i, dtype=np.int64) for i, p in enumerate(pieces)])
    ranges = np.concatenate(pieces) if pieces else np.zeros((0, 2), dtype=np.int64)
    order = rng.permutation(len(ranges))
    lengths = ranges[order, 1] - ranges[order, 0]
    taken = int(np.searchsorted(np.cumsum(lengths), want))  # pieces order[:taken + 1] reach the budget
    chosen = ranges[order[: taken + 1]].copy()
    chosen[-1, 1] = chosen[-1, 0] + (want - int(lengths[:taken].sum()))  # the last piece, cut to fit
    chosen_owner = owner[order[: taken + 1]]
    return [chosen[chosen_owner == i] for i in range(len(blocks))]


def _log(log_path: Path | None, **event: Any) -> None:
    if log_path is None:
        return
    with open(log_path, "a") as f:
        f.write(json.dumps({"time": time.time(), **event}) + "\n")


def _start_or_resume(out: Path, plan_json: dict, game_dirs: list[str], params: dict, log_path: Path | None) -> Path:
    """The ``.build`` directory: kept when it holds the same plan (resume), else started afresh."""
    build = out / ".build"
    old_plan = build / "plan.json"
    if old_plan.exists() and json.loads(old_plan.read_text()) == plan_json:
        _log(log_path, event="build_resume", out=str(out))
        return build
    shutil.rmtree(build, ignore_errors=True)
    for g in game_dirs:
        shutil.rmtree(out / g, ignore_errors=True)
    (build / "done").mkdir(parents=True)
    atomic_write_json(old_plan, plan_json)
    _log(log_path, event="build_start", out=str(out), **{k: v for k, v in params.items() if k != "split"})
    return build


def _open_game_arrays(gdir: Path, rows: int, frame_shape: tuple[int, int]) -> dict[str, np.memmap]:
    """Create (or reopen, when resuming) a game's arrays; frames are written by positioned writes."""
    arrays = {}
    for name, dt in list(_SMALL.items()) + [("frames", np.uint8)]:
        p = gdir / f"{name}.npy"
        shape = (rows, *frame_shape) if name == "frames" else (rows,)
        if p.exists():
            try:
                a = np.lib.format.open_memmap(p, mode="r+")
                ok = a.shape == shape and a.dtype == np.dtype(dt)
            except (ValueError, OSError):  # a file cut short by a kill: recreate it
                ok = False
            if not ok:
                p.unlink()
        if not p.exists():
            if rows == 0:  # open_memmap refuses empty arrays
                np.save(p, np.zeros(shape, dtype=dt))
            else:
                np.lib.format.open_memmap(p, mode="w+", dtype=dt, shape=shape)
                # Reserve the blocks now: a memory-mapped write into a sparse file on a full disk is
                # SIGBUS, not an error; this way a full disk stops here, naming the folder and size.
                fd = os.open(p, os.O_RDWR)
                try:
                    preallocate(fd, os.fstat(fd).st_size, p, f"the store's {name} array")
                except BaseException:
                    p.unlink(missing_ok=True)
                    raise
                finally:
                    os.close(fd)
        if name != "frames":
            arrays[name] = np.lib.format.open_memmap(p, mode="r+") if rows else np.load(p)
    return arrays


def _data_offset(path: Path) -> int:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        return f.tell()


def _copy_frames(rdir: Path, checkpoint: int, kept: np.ndarray, frames_path: Path, row_start: int, bar) -> str:
    """Stream one observation file into rows ``row_start + i`` <- slot ``kept[i]``; returns its sha256."""
    with dr.stream_observations(rdir, checkpoint, hash=True) as s:
        dest = np.full(s.rows, -1, dtype=np.int64)
        dest[kept] = np.arange(len(kept)) + row_start
        base = _data_offset(frames_path)
        store_shape = np.load(frames_path, mmap_mode="r").shape[1:]
        if tuple(s.shape[1:]) != tuple(store_shape):
            raise StoreError(f"{s.path}: frames of shape {tuple(s.shape[1:])}, but the store's games hold "
                             f"{tuple(store_shape)} (one suite per store; is this game's data from another suite?)")
        frame_bytes = int(np.prod(s.shape[1:]))
        fd = os.open(frames_path, os.O_WRONLY)
        try:
            for a, chunk in s.chunks():
                d = dest[a : a + len(chunk)]
                idx = np.flatnonzero(d >= 0)
                if len(idx):
                    # contiguous runs: consecutive slots going to consecutive rows -> one write each
                    cut = np.flatnonzero((np.diff(idx) != 1) | (np.diff(d[idx]) != 1)) + 1
                    for lo, hi in zip(np.r_[0, cut], np.r_[cut, len(idx)]):
                        i0, i1 = idx[lo], idx[hi - 1] + 1
                        try:
                            os.pwrite(fd, chunk[i0:i1].data, base + int(d[i0]) * frame_bytes)
                        except OSError as exc:
                            if is_disk_full(exc):
                                raise disk_full(frames_path.parent, (i1 - i0) * frame_bytes, "store frames") from None
                            raise
                    bar.update(len(idx))
            os.fsync(fd)
        finally:
            os.close(fd)
        return s.sha256()  # type: ignore[return-value]


def _convert_block(
    sources: _Sources, b: _Block, bi: int, pick: int | np.ndarray | None, seed: int, n_step: int, context_after: int,
    arrays: dict[str, np.memmap], gdir: Path, build: Path, bar,
) -> None:
    """Write one checkpoint's rows into the game's arrays, then its starts, segment ends,
    episodes and a completion marker under ``build/done``."""
    g = b.game
    rdir = sources.replay_logs(g, b.run)
    meta = sources.pop(g, b.run, b.checkpoint)
    if meta.sha256 != b.files:
        raise StoreError(f"source files of {g} run {b.run} checkpoint {b.checkpoint} changed during the build")
    keep, starts = _block_selection(meta, b.fresh, n_step, context_after, pick, _block_rng(seed, b))
    assert len(keep) == b.rows
    order = meta.time_order()
    kept = order[keep]  # ring slots, chronological
    sl = slice(b.row_start, b.row_start + b.rows)
    if b.rows and int(meta.action[kept].max()) > 255:
        raise StoreError(f"{rdir}: action index {int(meta.action.max())} does not fit a minimal action set")
    arrays["action"][sl] = meta.action[kept].astype(np.uint8)
    arrays["reward"][sl] = meta.reward[kept]
    arrays["terminal"][sl] = meta.terminal[kept]
    arrays["block"][sl] = bi
    arrays["slot"][sl] = kept.astype(np.int32)
    obs_sha = _copy_frames(rdir, b.checkpoint, kept, gdir / "frames.npy", b.row_start, bar)
    for a in arrays.values():
        a.flush()
    # segments: kept rows that are consecutive in the source (positions differ by one)
    brk = np.ones(len(keep), dtype=bool)
    brk[1:] = keep[1:] != keep[:-1] + 1
    seg_id = np.cumsum(brk) - 1
    seg_end = np.append(np.flatnonzero(brk)[1:], len(keep))
    pad = _padding_mask(meta.terminal[order], run_start=b.run_start)
    pred_pad = np.where(keep > 0, pad[np.maximum(keep - 1, 0)], False)
    eps = _episodes(meta.terminal[kept], brk, pad[keep], pred_pad)
    stem = build / "done" / f"{g}__{b.run}__{b.checkpoint}"
    np.save(f"{stem}.starts.npy", starts + b.row_start)
    np.save(f"{stem}.segend.npy", seg_end[seg_id[starts]] + b.row_start)
    eps[:, :2] += b.row_start
    np.save(f"{stem}.episodes.npy", eps)
    files = dict(meta.sha256)
    files[dr.file_name("observation", b.checkpoint)] = obs_sha
    actions_max = int(meta.action[kept].max()) if b.rows else 0
    atomic_write_json(Path(f"{stem}.json"), {"files": files, "actions_max": actions_max})


STORE_MARKER = ".workbench-store"  # written first: the builder deletes and rewrites only in marked folders


def _num_actions(game: str, actions_seen_max: int) -> tuple[int, str]:
    """(action count, where it came from): the game registry, else the largest action seen + 1."""
    try:
        return num_actions(game), "games"
    except ValueError:  # not a registry game (synthetic data)
        return actions_seen_max + 1, "data"


def _finish_game(gdir: Path, build: Path, g: str, blocks: list[_Block]) -> dict[str, Any]:
    """Concatenate per-block starts/segment ends/episodes; summarize the game for the manifest."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("starts", "segend", "episodes")}
    actions_max = 0
    files: dict[str, dict[str, str]] = {}
    for b in blocks:
        stem = build / "done" / f"{g}__{b.run}__{b.checkpoint}"
        for k, part in parts.items():
            part.append(np.load(f"{stem}.{k}.npy"))
        m = json.loads(Path(f"{stem}.json").read_text())
        actions_max = max(actions_max, m["actions_max"])
        files[f"{b.run}/{b.checkpoint}"] = m["files"]
    starts = np.concatenate(parts["starts"]).astype(np.int64) if blocks else np.zeros(0, np.int64)
    segend = np.concatenate(parts["segend"]).astype(np.int64) if blocks else np.zeros(0, np.int64)
    eps = np.concatenate(parts["episodes"]) if blocks else np.zeros((0, 3), np.int64)
    for name, arr in (("starts", starts), ("start_seg_end", segend), ("episodes", eps)):
        tmp = gdir / f"{name}.tmp.npy"
        np.save(tmp, arr)
        os.replace(tmp, gdir / f"{name}.npy")
    na, source = _num_actions(g, actions_max)
    return {
        "rows": int(sum(b.rows for b in blocks)), "starts": len(starts), "episodes": len(eps),
        "num_actions": na, "num_actions_source": source,
        "blocks": [
            {"run": b.run, "checkpoint": b.checkpoint, "row_start": b.row_start, "rows": b.rows, "starts": b.starts,
             "capacity": b.capacity, "add_count": b.add_count, "fresh_rows": b.fresh,
             "source_files_sha256": files[f"{b.run}/{b.checkpoint}"]}
            for b in blocks
        ],
        "starts_sha256": sha256_file(gdir / "starts.npy"),
        # every array's digest: ReplayStore.verify (python -m workbench.data.store --verify) checks them
        "arrays_sha256": {name: sha256_file(gdir / f"{name}.npy") for name in STORE_ARRAYS},
    }


# ----------------------------------------------------------------------------------------------
# Parallel conversion (workers > 1)

#: Start method of the conversion workers. Never fork: a forked copy of a parent that holds
#: threads (tqdm's monitor, a caller's) and open memory maps is unsafe; spawn works everywhere.
MP_START = "spawn"

_WORKER_PROGRESS: Any = None  # in a conversion worker: the parent's queue of converted row counts


def _init_worker(progress: Any) -> None:
    global _WORKER_PROGRESS
    _WORKER_PROGRESS = progress
    parent = mp.parent_process()
    if parent is not None:  # a worker never outlives its build (a killed parent leaves no idle workers)
        threading.Thread(target=_exit_with_parent, args=(parent,), name="exit-with-parent", daemon=True).start()


def _exit_with_parent(parent: Any) -> None:
    parent.join()  # returns once the parent is gone (its sentinel pipe closes)
    os._exit(1)  # mid-block: no marker was written, so a resumed build converts the block again


class _QueueBar:
    """A worker's progress bar: row counts go to the parent, which owns the real bar."""

    def update(self, n: int) -> None:
        if _WORKER_PROGRESS is not None and n:
            _WORKER_PROGRESS.put(int(n))


def _convert_job(
    root: str, b: _Block, bi: int, pick: int | np.ndarray | None, seed: int, n_step: int, context_after: int,
    gdir: str, build: str, game_rows: int,
) -> tuple[int, int | None]:
    """One block in a worker process (one checkpoint at a time: the worker's memory is that of the
    sequential builder). The parent created and preallocated the game's arrays; this block writes
    only its rows ``[row_start, row_start + rows)`` (memory-mapped small arrays, positioned writes
    of frames) and its own marker files. Returns the worker's pid and peak RSS in KiB (for the log)."""
    g = Path(gdir)
    arrays = {name: np.lib.format.open_memmap(g / f"{name}.npy", mode="r+") if game_rows else np.load(g / f"{name}.npy")
              for name in _SMALL}
    _convert_block(_Sources(Path(root)), b, bi, pick, seed, n_step, context_after, arrays, g, Path(build), _QueueBar())
    del arrays
    return os.getpid(), _peak_rss_kb()


def _peak_rss_kb() -> int | None:
    """This process's peak resident memory (Linux ``VmHWM``, which -- unlike ``ru_maxrss`` -- does
    not carry the parent's peak across fork + exec); None where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), None)
    except OSError:
        return None


def _check_disjoint(plan: dict[str, list[_Block]]) -> None:
    """Every game's blocks tile its rows ``[0, rows)`` in order: concurrent writers never share a row."""
    for g, blocks in plan.items():
        row = 0
        for b in blocks:
            if b.row_start != row or b.rows < 0:
                raise AssertionError(f"{g}: block {b.run}/{b.checkpoint} starts at row {b.row_start}, expected {row}")
            row += b.rows


def _drain(progress: Any, bar: Any, block: bool = False) -> int:
    """Move the row counts workers reported onto the bar; returns how many rows were read."""
    got = 0
    while True:
        try:
            n = progress.get(timeout=1.0) if block else progress.get_nowait()
        except queue.Empty:
            return got
        bar.update(n)
        got += n
        block = False


def _convert_parallel(
    root: Path, jobs: list[tuple[_Block, int, int | np.ndarray | None]], workers: int, seed: int, n_step: int,
    context_after: int, out: Path, build: Path, blocks: dict[str, list[_Block]], bar: Any, log_path: Path | None,
) -> dict[str, dict[str, Any]]:
    """Convert ``jobs`` (block, index in its game, sample) in ``workers`` processes, and finish each
    game (:func:`_finish_game`: its starts and episodes, and the digest of every array -- a read of
    the whole game) in the same pool as soon as its last block is done, games in parallel. Returns
    the games' summaries. Log lines and the progress bar stay in this (the parent) process. A
    worker's error stops the build: work not started is cancelled, running blocks finish (their
    markers stay valid for a resume)."""
    game_rows = {g: sum(b.rows for b in bl) for g, bl in blocks.items()}
    left = dict.fromkeys(blocks, 0)
    for b, _, _ in jobs:
        left[b.game] += 1
    ctx = mp.get_context(MP_START)
    progress = ctx.Queue()
    ex = cf.ProcessPoolExecutor(max_workers=max(1, min(workers, max(len(jobs), len(blocks)))), mp_context=ctx,
                                initializer=_init_worker, initargs=(progress,))
    pending: dict[cf.Future, tuple[str, _Block | None]] = {}
    infos: dict[str, dict[str, Any]] = {}
    expected = sum(b.rows for b, _, _ in jobs)
    shown = 0

    def finish(g: str) -> None:
        pending[ex.submit(_finish_game, out / g, build, g, blocks[g])] = (g, None)

    try:
        for b, bi, pick in jobs:
            f = ex.submit(_convert_job, str(root), b, bi, pick, seed, n_step, context_after, str(out / b.game),
                          str(build), game_rows[b.game])
            pending[f] = (b.game, b)
        for g in blocks:
            if not left[g]:  # every block done before (a resumed build)
                finish(g)
        while pending:
            done, _ = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
            shown += _drain(progress, bar)
            for f in done:
                g, blk = pending.pop(f)
                result: Any = f.result()  # a worker's exception is raised here
                if blk is None:
                    infos[g] = result
                    continue
                pid, peak_kb = result
                _log(log_path, event="checkpoint_done", game=g, run=blk.run, checkpoint=blk.checkpoint, rows=blk.rows,
                     starts=blk.starts, worker=pid, worker_peak_rss_kb=peak_kb)
                left[g] -= 1
                if not left[g]:
                    finish(g)
        while shown < expected:  # counts still in the queue's pipe
            got = _drain(progress, bar, block=True)
            if not got:
                break
            shown += got
    except BaseException:
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        ex.shutdown(wait=True)
        progress.close()
        progress.join_thread()
    return infos


# ----------------------------------------------------------------------------------------------
# The builder


@dataclass
class _Plan:
    """Everything decided before a byte is written: blocks, samples, parameters."""

    root: Path
    split: Split
    game_dirs: list[str]
    frame_bytes: int
    frame_shape: tuple[int, int]
    sources: _Sources
    blocks: dict[str, list[_Block]]
    available: dict[str, int]
    samples: dict[tuple[str, str, int], int | np.ndarray | None]
    params: dict[str, Any]
    plan_json: dict[str, Any]

    @property
    def total_rows(self) -> int:
        return sum(b.rows for bl in self.blocks.values() for b in bl)

    @property
    def disk_bytes(self) -> int:
        """Free space a build needs: frames plus (at most) 32 bytes a row for the other arrays."""
        return self.total_rows * (self.frame_bytes + 32) + (1 << 20)


def _make_plan(
    root: Path, games: Sequence[str], runs: Sequence[str | int], split: Split | str, seed: int, n_step: int,
    context_after: int,
) -> _Plan:
    split = _check_args(root, games, split, n_step, context_after)
    game_dirs = [dr.game_dir(root, g).name for g in games]  # unknown games list those that exist
    geometry = geometry_of(game_dirs)  # one suite per store: one frame shape
    if len(set(game_dirs)) != len(game_dirs):
        raise StoreError(f"duplicate games in {list(games)}")

    sources = _Sources(root)
    plan = {g: _plan_game(sources, g, runs, split, n_step) for g in game_dirs}
    available = {g: int(sum(b.starts for b in bl)) for g, bl in plan.items()}  # before the split's sample
    samples = _assign_samples(sources, plan, split, seed, n_step, context_after)
    params = {
        "format_version": FORMAT_VERSION, "source_root": str(root.resolve()), "games": game_dirs,
        "runs": [str(r) for r in runs], "split": split.manifest_params(), "seed": seed, "n_step": n_step,
        "stack_size": STACK, "context_after": context_after,
    }
    plan_json = {"params": params, "blocks": {g: [asdict(b) for b in bl] for g, bl in plan.items()}}
    return _Plan(root, split, game_dirs, geometry.frame_bytes, geometry.frame_shape, sources, plan, available,
                 samples, params, plan_json)


def plan_store(
    root: str | os.PathLike, games: Sequence[str], runs: Sequence[str | int] = (1,),
    split: Split | str = "near_optimal", *, seed: int = 0, n_step: int = 3, context_after: int = 7,
) -> dict[str, Any]:
    """What :func:`build_store` would build, as JSON-ready data, without writing anything: per game
    and run the checkpoints chosen (and those the run lacks), rows kept, transition starts, the
    rows the build reads (``rows_read``: every row of every chosen checkpoint) and the disk space
    the store needs (``disk_bytes``: frames plus at most 32 bytes a row; the build refuses to start
    with less free space)."""
    p = _make_plan(Path(root), games, runs, split, seed, n_step, context_after)
    out_games = {}
    for g, blocks in p.blocks.items():
        rows = sum(b.rows for b in blocks)
        per_run = {}
        for key, sel in p.sources.selections.items():  # "game/run" (folder names)
            game, _, run = key.partition("/")
            if game != g:
                continue
            rb = [b for b in blocks if b.run == run]
            per_run[run] = {
                "checkpoints": sel["checkpoints"], "missing_checkpoints": sel["missing_checkpoints"],
                "warnings": sel["warnings"], "rows": sum(b.rows for b in rb), "starts": sum(b.starts for b in rb),
            }
        out_games[g] = {
            "runs": per_run, "rows": rows, "starts": sum(b.starts for b in blocks),
            "transitions_available": p.available[g], "frames_bytes": rows * p.frame_bytes,
            "disk_bytes": rows * (p.frame_bytes + 32),
        }
    return {
        "root": p.params["source_root"], "games": p.game_dirs, "runs": p.params["runs"], "split": p.split.label,
        "split_params": p.params["split"], "seed": seed, "n_step": n_step, "context_after": context_after,
        "rows": p.total_rows, "starts": sum(g["starts"] for g in out_games.values()),
        # every row of every chosen checkpoint: a build decompresses each one whole, whatever it keeps
        "rows_read": sum(b.capacity for blocks in p.blocks.values() for b in blocks),
        "frame_bytes_per_row": p.frame_bytes, "frames_bytes": p.total_rows * p.frame_bytes,
        "disk_bytes": p.disk_bytes, "per_game": out_games,
    }


#: rows of one observation file a dry run decompresses to measure this machine's read rate
SAMPLE_ROWS = 20_000


def measure_read_rate(root: str | os.PathLike, plan: dict[str, Any], sample_rows: int = SAMPLE_ROWS,
                      ) -> dict[str, Any]:
    """Time the decompression of ``sample_rows`` rows of the plan's first observation file and
    scale it to every row the build reads (a build decompresses each chosen checkpoint whole,
    whatever it keeps): ``core_hours`` is a lower bound for one process (it leaves out writing the
    kept rows and the digests), to divide by the workers of a parallel build."""
    root = Path(root)
    first = next(((g, r, info) for g, gi in plan["per_game"].items() for r, info in gi["runs"].items()
                  if info["checkpoints"]), None)
    if first is None:
        return {"note": "no checkpoint chosen: nothing to read"}
    g, r, info = first
    path = dr.run_dir(root, g, r) / dr.file_name("observation", info["checkpoints"][0])
    rows_read = plan["rows_read"]
    t0 = time.perf_counter()
    n = 0
    with dr.open_npy_gz(path) as s:
        for _, chunk in s.chunks():
            n += len(chunk)
            if n >= sample_rows:
                break
    seconds = max(time.perf_counter() - t0, 1e-9)
    rate = n / seconds
    return {"sample": {"file": str(path), "rows": n, "seconds": round(seconds, 3)}, "rows_read": rows_read,
            "read_rows_per_s": round(rate), "core_hours": round(rows_read / rate / 3600, 3),
            "note": "one process's decompression time for every row read: a lower bound (writing the kept rows "
                    "and the digests come on top); divide by --workers, or by the jobs of --executor"}


def _game_summary(info: dict[str, Any], g: str, p: _Plan) -> dict[str, Any]:
    # what the split chose from, and what every method trains on: sequence samplers feed only
    # starts too (workbench.data.sampler.SequenceSampler), so "trainable" holds for all of them
    info["transitions_available"] = p.available[g]
    info["transitions_trainable"] = info["starts"]
    return info


def build_store(
    root: str | os.PathLike, out: str | os.PathLike, games: Sequence[str], runs: Sequence[str | int] = (1,),
    split: Split | str = "near_optimal", *, seed: int = 0, n_step: int = 3, context_after: int = 7,
    progress: bool = True, log: str | os.PathLike | None = None, workers: int = 1,
) -> Path:
    """Build a store from a DQN-Replay root for ``games`` x ``runs`` with ``split``.

    Resumable: completed checkpoints are recorded under ``out/.build``; a rerun with the same
    arguments and unchanged sources resumes, different arguments restart from scratch. The
    manifest is written last (atomically); an existing complete store with the same plan is
    returned as is. ``n_step``: the largest horizon readers will use (every start has its
    ``n_step`` rows after it in the same checkpoint). ``context_after`` (>= n_step) rows after each
    start are guaranteed present, so sequence segments of ``context_after + 1`` steps fit (JOWA: 8).

    ``workers``: checkpoints converted at once, each in its own process (``spawn``; one checkpoint
    at a time per worker, so each holds what the sequential builder holds). The store is the same
    byte for byte whatever the count (only the manifest's ``created`` differs), and a build
    interrupted with one count resumes with another. The parent creates and preallocates every
    array first; each checkpoint writes only its own rows; workers exit if the parent is killed.
    Workers are spawned, so a script that calls this with ``workers > 1`` must do so under
    ``if __name__ == "__main__":`` (``python -m workbench.data.build`` does).
    """
    root, out = Path(root), Path(out)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise StoreError(f"workers must be an int >= 1, got {workers!r}")
    log_path = Path(log) if log is not None else None
    p = _make_plan(root, games, runs, split, seed, n_step, context_after)
    params, plan_json, plan = p.params, p.plan_json, p.blocks

    if _open_out(out, p):
        return out
    total_rows = p.total_rows
    build = _start_or_resume(out, plan_json, p.game_dirs, params, log_path)
    if workers > 1:
        _log(log_path, event="build_workers", workers=workers, start_method=MP_START)
    bar = progress_bar(total=total_rows, unit="row", desc="build store", disable=not progress)
    games_info = {}
    if workers == 1:
        for g, blocks in plan.items():
            gdir = out / g
            gdir.mkdir(exist_ok=True)
            arrays = _open_game_arrays(gdir, sum(b.rows for b in blocks), p.frame_shape)
            for bi, b in enumerate(blocks):
                if (build / "done" / f"{g}__{b.run}__{b.checkpoint}.json").exists():
                    bar.update(b.rows)
                    continue
                _convert_block(
                    p.sources, b, bi, p.samples[(g, b.run, b.checkpoint)], seed, n_step, context_after, arrays, gdir,
                    build, bar,
                )
                _log(
                    log_path, event="checkpoint_done", game=g, run=b.run, checkpoint=b.checkpoint, rows=b.rows,
                    starts=b.starts,
                )
            del arrays
            games_info[g] = _game_summary(_finish_game(gdir, build, g, blocks), g, p)
    else:
        _check_disjoint(plan)
        jobs = []
        for g, blocks in plan.items():  # every array created and preallocated before a worker starts
            (out / g).mkdir(exist_ok=True)
            _open_game_arrays(out / g, sum(b.rows for b in blocks), p.frame_shape)  # (the parent writes none)
            for bi, b in enumerate(blocks):
                if (build / "done" / f"{g}__{b.run}__{b.checkpoint}.json").exists():
                    bar.update(b.rows)
                else:
                    jobs.append((b, bi, p.samples[(g, b.run, b.checkpoint)]))
        infos = _convert_parallel(root, jobs, workers, seed, n_step, context_after, out, build, plan, bar, log_path)
        for g in plan:  # (in the plan's order: the manifest is the same whatever order games finished in)
            games_info[g] = _game_summary(infos[g], g, p)
    bar.close()

    _write_manifest(out, p, games_info, log_path)
    return out


def _open_out(out: Path, p: _Plan) -> bool:
    """Check and mark the output folder before a build; True when it already holds this very store."""
    manifest_path = out / "manifest.json"
    if out.is_dir() and any(out.iterdir()) and not (out / STORE_MARKER).is_file() and not manifest_path.is_file():
        # building deletes and rewrites game folders: never in a folder the builder did not make
        listing = ", ".join(sorted(f.name for f in out.iterdir())[:8])
        raise StoreError(f"{out} is not empty and is not a store (no {STORE_MARKER}); it holds: {listing}. "
                         "Choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / STORE_MARKER).write_text("This folder is a workbench replay store; the store builder may rewrite it.\n")
    if manifest_path.exists():
        if read_json(manifest_path).get("plan") == p.plan_json:
            return True
        raise StoreError(f"{out} already holds a different complete store; choose another directory or delete it")
    if not (out / ".build").is_dir():  # a resumed build has its space already
        check_free_space(out, p.disk_bytes, f"a store of {p.total_rows} rows")
    return False


def _write_manifest(out: Path, p: _Plan, games_info: dict[str, Any], log_path: Path | None) -> None:
    """The manifest (games in the plan's order), written LAST: it marks the store complete."""
    games_info = {g: games_info[g] for g in p.blocks}
    manifest = {**p.params, "plan": p.plan_json, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "games_info": games_info, "selections": p.sources.selections}
    atomic_write_json(out / "manifest.json", manifest)
    shutil.rmtree(out / ".build", ignore_errors=True)
    _log(log_path, event="build_done", out=str(out))


# ----------------------------------------------------------------------------------------------
# Distributed builds: one job per game (submitit: Slurm, or its local executor)


def _plan_digest(plan_json: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plan_json, sort_keys=True).encode()).hexdigest()


def _game_done_path(build: Path, game: str) -> Path:
    """A game's summary, written by its job once the game is finished (the merge step reads it)."""
    return build / "games" / f"{game}.json"


def _game_jobs(p: _Plan, out: Path) -> list[dict[str, Any]]:
    """One job per game not finished yet (under ``out/.build`` of this very plan)."""
    build = out / ".build"
    same_plan = (build / "plan.json").is_file() and read_json(build / "plan.json") == p.plan_json
    digest = _plan_digest(p.plan_json)
    jobs = []
    for g, blocks in p.blocks.items():
        if same_plan and _game_done_path(build, g).is_file():
            continue
        done = sum((build / "done" / f"{g}__{b.run}__{b.checkpoint}.json").is_file() for b in blocks if same_plan)
        jobs.append({
            "game": g, "root": str(p.root.resolve()), "out": str(out.resolve()), "plan_sha256": digest,
            "frame_shape": p.frame_shape,
            "blocks": blocks, "samples": [p.samples[(g, b.run, b.checkpoint)] for b in blocks],
            "seed": p.params["seed"], "n_step": p.params["n_step"], "context_after": p.params["context_after"],
            "rows": sum(b.rows for b in blocks), "checkpoints": len(blocks), "checkpoints_done": done,
        })
    return jobs


@contextlib.contextmanager
def _exclusive(lock_file: Path, what: str) -> Iterator[None]:
    """Hold an OS lock on ``lock_file`` for the block (:func:`workbench.fileio.acquire_flock`), or
    raise :class:`StoreError` naming ``what`` and the holder (pid, host, job) when another process
    holds it. The OS drops the lock when its holder dies, so a killed holder never blocks a rerun."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = acquire_flock(lock_file, "a build lock file")
    except LockHeld as held:
        raise StoreError(f"{what} is being built by another process ({held.holder}): a job of an earlier submission "
                         "may still run (the submitting process was stopped, its jobs were not); wait for it "
                         "or cancel it (scancel JOB_ID), then run the same command again") from None
    try:
        yield
    finally:
        release_flock(fd)


def build_game_job(job: dict[str, Any]) -> dict[str, Any]:
    """One game of a distributed build, in its own (submitit) job: convert the game's checkpoints
    not done yet into ``out/{game}/`` (its own arrays; markers ``out/.build/done/{game}__*``), finish
    the game (:func:`_finish_game`) and write its summary to ``out/.build/games/{game}.json``. Jobs
    of different games share no file; the manifest is the merge step's (:func:`build_store_distributed`).
    The job holds ``out/.build/locks/{game}.lock`` throughout: a second job for the same game (the
    same command rerun while an earlier submission's job still runs) fails at once, naming it."""
    g, out = job["game"], Path(job["out"])
    with _exclusive(out / ".build" / "locks" / f"{g}.lock", f"game {g} of {out}"):
        return _build_game(job, g, out)


def _build_game(job: dict[str, Any], g: str, out: Path) -> dict[str, Any]:
    build = out / ".build"
    done_path = _game_done_path(build, g)
    if done_path.is_file():
        return read_json(done_path)
    plan_path = build / "plan.json"
    if not plan_path.is_file() or _plan_digest(read_json(plan_path)) != job["plan_sha256"]:
        raise StoreError(f"{build} no longer holds the plan this job was submitted with (another build restarted "
                         f"the folder?); game {g} not built")
    blocks: list[_Block] = job["blocks"]
    gdir = out / g
    gdir.mkdir(exist_ok=True)
    arrays = _open_game_arrays(gdir, job["rows"], tuple(job["frame_shape"]))
    sources = _Sources(Path(job["root"]))
    for bi, (b, pick) in enumerate(zip(blocks, job["samples"])):
        if (build / "done" / f"{g}__{b.run}__{b.checkpoint}.json").exists():
            continue
        _convert_block(sources, b, bi, pick, job["seed"], job["n_step"], job["context_after"], arrays, gdir, build,
                       _QueueBar())
    del arrays
    info = _finish_game(gdir, build, g, blocks)
    done_path.parent.mkdir(exist_ok=True)
    atomic_write_json(done_path, info)
    return info


def _job_summary(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job[k] for k in ("game", "checkpoints", "checkpoints_done", "rows")}


def _job_error(exc: BaseException) -> str:
    """The gist of a failed job: the last line of its traceback (submitit's FailedJobError wraps the
    trace between dashed lines, then lists log paths), else the error's last line."""
    text = str(exc)
    if text.count("-" * 22) >= 2:
        text = text.rsplit("-" * 22, 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip().strip("-")]
    return lines[-1] if lines else type(exc).__name__


def build_store_distributed(
    root: str | os.PathLike, out: str | os.PathLike, games: Sequence[str], runs: Sequence[str | int] = (1,),
    split: Split | str = "near_optimal", *, executor: ExecutorSpec, seed: int = 0, n_step: int = 3,
    context_after: int = 7, progress: bool = True, log: str | os.PathLike | None = None, dry_run: bool = False,
) -> Path | dict[str, Any]:
    """:func:`build_store` with one submitit job per game (a job array on Slurm, or submitit's local
    executor when ``executor.cluster == 'local'``; :func:`workbench.executors.make_executor`).

    This process plans, checks the folder and its free space, and records the plan in
    ``out/.build``; each job (:func:`build_game_job`) builds its game's folder and leaves its
    summary in ``out/.build/games/``; once every job has ended, this process merges: it writes the
    manifest from the summaries, exactly as :func:`build_store` does (the store is the same byte
    for byte; only ``created`` differs). A failed job raises :class:`StoreError` naming its game;
    the same call again resumes (finished games are not resubmitted, finished checkpoints of the
    others are kept). ``dry_run``: returns the jobs it would submit, writing nothing."""
    root, out = Path(root), Path(out)
    log_path = Path(log) if log is not None else None
    p = _make_plan(root, games, runs, split, seed, n_step, context_after)
    _check_disjoint(p.blocks)
    if dry_run:
        complete = (out / "manifest.json").is_file() and read_json(out / "manifest.json").get("plan") == p.plan_json
        jobs = [] if complete else _game_jobs(p, out)
        return {"out": str(out), "executor": asdict(executor), "complete": complete,
                "jobs": [_job_summary(j) for j in jobs],
                "then": "merge: this process writes manifest.json once every job has ended"}
    if _open_out(out, p):
        return out
    build = _start_or_resume(out, p.plan_json, p.game_dirs, p.params, log_path)
    with _exclusive(build / "locks" / "submit.lock", f"{out} (its job submission)"):
        return _submit_and_merge(p, out, build, executor, progress, log_path)


def _submit_and_merge(
    p: _Plan, out: Path, build: Path, executor: ExecutorSpec, progress: bool, log_path: Path | None,
) -> Path:
    jobs = _game_jobs(p, out)
    failed: list[str] = []
    if jobs:
        ex = make_executor(executor, build / "submitit" / "%j", f"build-store-{out.name}")
        if executor.array:
            submitted = ex.map_array(build_game_job, jobs)
        else:
            submitted = [ex.submit(build_game_job, j) for j in jobs]
        by_id = {str(s.job_id): j for s, j in zip(submitted, jobs)}
        _log(log_path, event="jobs_submitted", games=[j["game"] for j in jobs], job_ids=list(by_id))
        bar = progress_bar(total=len(p.blocks), initial=len(p.blocks) - len(jobs), unit="game",
                           desc="build store (jobs)", disable=not progress)
        for s in submitit.helpers.as_completed(submitted, poll_frequency=1.0):
            g = by_id[str(s.job_id)]["game"]
            try:
                s.result()
                _log(log_path, event="game_done", game=g, job_id=str(s.job_id))
            except Exception as exc:  # the job's error, or its death (time limit, node failure)
                failed.append(f"game {g} (job {s.job_id}): {_job_error(exc)}")
                _log(log_path, event="game_failed", game=g, job_id=str(s.job_id), error=str(exc)[-2000:])
            bar.update(1)
        bar.close()
    if failed:
        raise StoreError(f"{len(failed)} of {len(jobs)} build job(s) failed: " + "; ".join(failed)
                         + f". Job logs: {build / 'submitit'}; run the same command again to resume "
                         "(finished games are kept)")
    # merge: the manifest, from the games' summaries, in the plan's order
    games_info = {g: _game_summary(read_json(_game_done_path(build, g)), g, p) for g in p.blocks}
    _write_manifest(out, p, games_info, log_path)
    return out


# ----------------------------------------------------------------------------------------------
# Command line


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workbench.data.build ROOT --games G[,G] --runs 1,2 --split S --out STORE``."""
    ap = argparse.ArgumentParser(
        prog="python -m workbench.data.build",
        description="Build a replay store from a local DQN-Replay copy ({Game}/{run}/replay_logs/), or from RL "
                    "Unplugged or Minari data converted first into --converted. Check the copy first with "
                    "python -m workbench.data.verify ROOT.",
    )
    ap.add_argument("root", help="DQN-Replay root folder (holds {Game}/{run}/replay_logs/), or another source's "
                                 "local copy (--source)")
    ap.add_argument("--source", choices=("auto", *SOURCE_KINDS), default="auto",
                    help="format of ROOT: dqn_replay, or a source converted first into --converted (minari, rlu); "
                         "auto (default) detects it")
    ap.add_argument("--converted", help="with a source other than dqn_replay: the folder its DQN-Replay layout is "
                                        "written to (python -m workbench.data.sources convert; resumes) and built from")
    ap.add_argument("--games", required=True, help="comma-separated games, e.g. Pong,Breakout")
    ap.add_argument("--runs", default="1", help="comma-separated run numbers (default 1)")
    ap.add_argument("--split", default="near_optimal", help=f"{GRAMMAR} or a preset {sorted(PRESETS)}")
    ap.add_argument("--out", help="store folder to write (new or empty, or an interrupted build to resume)")
    ap.add_argument("--workers", type=int, default=1, help="checkpoints converted at once, one process each")
    ap.add_argument("--seed", type=int, default=0, help="seed of a subsampled split")
    ap.add_argument("--n-step", type=int, default=3, help="largest n-step horizon readers will use")
    ap.add_argument("--context-after", type=int, default=7, help="rows kept after each start (>= n-step)")
    ap.add_argument("--log", help="append JSON lines of build events to this file")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the plan as JSON (checkpoints, rows, starts, disk bytes); write nothing; with "
                         "--executor, the jobs it would submit")
    dist = ap.add_argument_group("distributed build (one submitit job per game, then a merge by this process)")
    dist.add_argument("--executor", choices=("slurm", "local"),
                      help="slurm: a Slurm job array through submitit; local: submitit's local executor (tests)")
    dist.add_argument("--slurm-partition", default="", help="Slurm partition (default: the cluster's)")
    dist.add_argument("--timeout-min", type=int, default=1440, help="wall-clock limit of each job, minutes")
    dist.add_argument("--cpus-per-task", type=int, default=2, help="CPU cores of each job")
    dist.add_argument("--mem-gb", type=int, default=16, help="memory of each job, GB")
    dist.add_argument("--array-parallelism", type=int, default=64, help="jobs running at the same time")
    dist.add_argument("--slurm-arg", action="append", default=[], metavar="KEY=VALUE",
                      help="further submitit slurm_* parameter without the prefix, e.g. account=myproject "
                           "(repeatable)")
    a = ap.parse_args(argv)
    games = [g.strip() for g in a.games.split(",") if g.strip()]
    try:
        runs = parse_runs(a.runs)
        a.root = _dqn_layout_root(a, games)
        if a.root is None:  # a dry run of a source not converted yet: what the conversion would read
            return 0
        if a.executor:
            return _main_distributed(a, games, runs)
        if a.dry_run:
            plan = plan_store(a.root, games, runs, a.split, seed=a.seed, n_step=a.n_step,
                              context_after=a.context_after)
            plan["time"] = measure_read_rate(a.root, plan)
            print(json.dumps(plan, indent=2))
            return 0
        if not a.out:
            raise StoreError("--out STORE is required (or --dry-run to see the plan)")
        out = build_store(a.root, a.out, games, runs, a.split, seed=a.seed, n_step=a.n_step,
                          context_after=a.context_after, progress=not a.no_progress, log=a.log, workers=a.workers)
    except (StoreError, dr.DQNReplayError, FileNotFoundError, DiskFullError, ValueError, OSError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    info = read_json(out / "manifest.json")["games_info"]
    print(json.dumps({"store": str(out), "games": {g: {"rows": v["rows"], "starts": v["starts"]}
                                                   for g, v in info.items()}}))
    return 0


SOURCE_KINDS = ("dqn_replay", *sorted(SOURCES))


def detect_source(root: str | os.PathLike) -> str:
    """The format of a local copy: ``dqn_replay`` (``{Game}/{run}/replay_logs/``), ``rlu`` or
    ``minari``; an error naming what was looked for when it is none of them."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist or is not a folder")
    if dr.list_games(root):
        return "dqn_replay"
    found = []
    for kind in sorted(SOURCES):
        try:
            open_source(kind, root)
        except SourceError as exc:
            found.append(f"{kind}: {exc}")
            continue
        return kind
    raise StoreError(f"{root} holds no DQN-Replay game ({{Game}}/{{run}}/replay_logs/) and no other known source ("
                     + "; ".join(found) + ")")


def _dqn_layout_root(a: argparse.Namespace, games: list[str]) -> str | None:
    """The DQN-Replay root to build from: ROOT itself, or ``--converted`` after converting ROOT's
    games into it (None after a dry run of a conversion still to do: its plan was printed)."""
    kind = detect_source(a.root) if a.source == "auto" else a.source
    if kind == "dqn_replay":
        if a.converted:
            raise StoreError(f"--converted is for a source that needs converting; {a.root} is a DQN-Replay copy")
        return a.root
    if not a.converted:
        raise StoreError(f"{a.root} is a {kind} source: give --converted DIR, the folder its DQN-Replay layout is "
                         "written to before the build (or run python -m workbench.data.sources convert --source "
                         f"{kind} {a.root} --out DIR yourself, then build DIR)")
    source = open_source(kind, a.root)
    conv = Path(a.converted)
    info_path = conv / INFO_NAME
    done = read_json(info_path).get("games", {}) if info_path.is_file() else {}
    todo = [g for g in games if not done.get(canonical_game(g), {}).get("complete")]
    if a.dry_run and todo:
        print(json.dumps({"convert": {"source": kind, "root": str(a.root), "into": str(conv), "games": todo,
                                      "then": "the store's plan (run --dry-run again once converted)",
                                      "limits": source.limits(), "provenance": source.provenance()}}, indent=2))
        return None
    if todo:
        convert(source, conv, todo, progress=not a.no_progress)
    return str(conv)


def _main_distributed(a: argparse.Namespace, games: list[str], runs: Sequence[int]) -> int:
    if not a.out:
        raise StoreError("--out STORE is required with --executor (its .build folder says which games are done)")
    if a.workers != 1:
        raise StoreError("--workers is for a single-process build; with --executor each job builds one game")
    slurm_args = {}
    for item in a.slurm_arg:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise StoreError(f"--slurm-arg {item!r}: give KEY=VALUE, e.g. --slurm-arg account=myproject")
        slurm_args[key.strip()] = value
    spec = ExecutorSpec(kind="slurm", cluster=a.executor, timeout_min=a.timeout_min, cpus_per_task=a.cpus_per_task,
                        mem_gb=a.mem_gb, partition=a.slurm_partition, array_parallelism=a.array_parallelism,
                        slurm_args=slurm_args)
    res = build_store_distributed(a.root, a.out, games, runs, a.split, executor=spec, seed=a.seed, n_step=a.n_step,
                                  context_after=a.context_after, progress=not a.no_progress, log=a.log,
                                  dry_run=a.dry_run)
    if isinstance(res, dict):
        print(json.dumps(res, indent=2))
        return 0
    info = read_json(res / "manifest.json")["games_info"]
    print(json.dumps({"store": str(res), "games": {g: {"rows": v["rows"], "starts": v["starts"]}
                                                   for g, v in info.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

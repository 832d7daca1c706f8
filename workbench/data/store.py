"""Dataset builder and memory-mapped multi-game replay store.

Store directory layout (format version 1)::

    store/
      manifest.json            written LAST, atomically: its presence means the build completed
      {Game}/                  one directory per game (rows of all chosen runs/checkpoints)
        frames.npy             uint8  (R, 84, 84)  each frame once; stacks are built at sample time
        action.npy             uint8  (R,)         minimal-action-set index
        reward.npy             float32 (R,)        clipped reward (as stored by DQN-Replay)
        terminal.npy           uint8  (R,)         1 on an episode's last row (game over or time limit)
        block.npy              int32  (R,)         index into manifest games[g].blocks (run, checkpoint)
        slot.npy               int32  (R,)         ring slot of the row in its source checkpoint
        starts.npy             int64  (S,)         selected transition starts (rows), sorted
        start_seg_end.npy      int64  (S,)         end (exclusive) of the contiguous source run holding each start
        episodes.npy           int64  (E, 3)       [first_row, end_row, flags] flags: 1 = begins at an
                                                   episode start, 2 = ends with a terminal
      .build/                  only while building: plan and per-checkpoint completion markers

Rows of one checkpoint are stored in chronological order (the ring buffer unrolled from its
write cursor). A *start* is a row that is a valid Dopamine transition start in its source
checkpoint (not in ``invalid_range``, no terminal in the 3 rows before it, inside the written part
of the ring) and that the split selected. For every start ``p`` the rows ``p-3 .. p+n_step`` are
present and consecutive in the source (Dopamine's validity rule guarantees this inside a
checkpoint), so the 4-frame stack, the n-step window and the next stack are plain offsets from
``p`` -- sampling needs no per-row validity logic. Rows up to ``p+context_after`` are kept too
(clipped at the checkpoint's end; ``start_seg_end`` tells where the contiguous rows stop), so
sequence segments of ``context_after + 1`` steps fit.

Uniform subsampling (JOWA's 10%, fine-tuning's 1% or N transitions) selects *transition starts*
uniformly without replacement among all valid starts of the chosen checkpoints (exact simple
random sample: per-checkpoint counts are drawn from the multivariate hypergeometric
distribution, then starts within each checkpoint), and stores only the rows their stacks,
n-step windows and sequence segments need (``[p-3, p+context_after]``, union over starts).
Why starts and not whole rows: a kept row is useless unless its 3 predecessors and n successors
are kept too, so sampling rows and flagging "valid" ones would silently bias the sample toward
long kept runs; sampling starts keeps the distribution exactly uniform over transitions and
costs at most ``4 + context_after`` frames per start (about 69% of the rows for a 10% sample
with the default context of 7, 11% for 1%).

Splits: :class:`Split` (or a preset name from :data:`PRESETS`, or the config grammar
``all | first:K | last:F | fraction:F | n:N`` via :func:`parse_split`).

Memory: the builder streams each observation file chunk by chunk straight into the output
file with positioned writes (no memmap writes, so dirty pages never inflate RSS); the largest
resident objects are one checkpoint's small arrays (~14 bytes per row). Stale ring slots of a
checkpoint that were already in the previous checkpoint (``add_count`` grew by less than the
capacity, e.g. a final partial dump) are not selected as starts.
"""

from __future__ import annotations

import hashlib
import json
import mmap as mmap_mod
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from workbench.data import dqn_replay as dr
from workbench.fileio import atomic_write_json

FORMAT_VERSION = 1
FRAME_BYTES = 84 * 84
STACK = dr.STACK_SIZE
EP_BEGINS, EP_ENDS = 1, 2
SELECT_CHOICES = ("all", "first", "last")


class StoreError(ValueError):
    """A bad store, split or build argument (the message names the problem and valid choices)."""


# ----------------------------------------------------------------------------------------------
# Splits


@dataclass(frozen=True)
class Split:
    """Which data of each run goes into the store.

    ``select`` chooses checkpoints: ``"all"``, the ``"first"`` or the ``"last"`` ``k`` of the run's
    checkpoints (or ``round(ckpt_fraction * n_checkpoints)``, at least 1). Then optionally a
    uniform sample of transition starts without replacement across the chosen checkpoints of
    all chosen runs of a game: ``sample_fraction`` of them or ``sample_count`` per game.
    """

    select: str = "all"
    k: int | None = None
    ckpt_fraction: float | None = None
    sample_fraction: float | None = None
    sample_count: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.select not in SELECT_CHOICES:
            raise StoreError(f"Split.select must be one of {SELECT_CHOICES}, got {self.select!r}")
        if self.select == "all" and (self.k is not None or self.ckpt_fraction is not None):
            raise StoreError("Split(select='all') takes neither k nor ckpt_fraction")
        if self.select != "all" and (self.k is None) == (self.ckpt_fraction is None):
            raise StoreError(f"Split(select={self.select!r}) needs exactly one of k (int >= 1) or ckpt_fraction (0, 1]")
        if self.k is not None and (not isinstance(self.k, int) or self.k < 1):
            raise StoreError(f"Split.k must be an int >= 1, got {self.k!r}")
        if self.ckpt_fraction is not None and not 0 < self.ckpt_fraction <= 1:
            raise StoreError(f"Split.ckpt_fraction must be in (0, 1], got {self.ckpt_fraction!r}")
        if self.sample_fraction is not None and self.sample_count is not None:
            raise StoreError("Split takes sample_fraction or sample_count, not both")
        if self.sample_fraction is not None and not 0 < self.sample_fraction <= 1:
            raise StoreError(f"Split.sample_fraction must be in (0, 1], got {self.sample_fraction!r}")
        if self.sample_count is not None and (not isinstance(self.sample_count, int) or self.sample_count < 1):
            raise StoreError(f"Split.sample_count must be an int >= 1, got {self.sample_count!r}")

    @property
    def subsampled(self) -> bool:
        return self.sample_fraction is not None or self.sample_count is not None

    def choose(self, checkpoints: Sequence[int]) -> list[int]:
        """The checkpoints of one run this split uses."""
        ck = sorted(checkpoints)
        if not ck:
            return []
        if self.select == "all":
            return ck
        k = self.k if self.k is not None else max(1, int(round(self.ckpt_fraction * len(ck))))  # type: ignore[operator]
        if k > len(ck):
            raise StoreError(f"Split asks for {k} checkpoints but the run has {len(ck)}: {ck}")
        return ck[:k] if self.select == "first" else ck[-k:]


#: The papers' splits (see shared/notes/dqn_replay_format.md).
PRESETS: dict[str, Split] = {
    "sub_optimal": Split("first", ckpt_fraction=0.2, name="sub_optimal"),  # Scaled QL: first 20%
    "near_optimal": Split("all", name="near_optimal"),  # Scaled QL: all 50M
    "expert": Split("last", ckpt_fraction=0.2, name="expert"),  # last 20%
    "jowa_10pct": Split("all", sample_fraction=0.1, name="jowa_10pct"),  # JOWA: uniform 10%
    "finetune_1pct": Split("all", sample_fraction=0.01, name="finetune_1pct"),  # Scaled QL fine-tuning
    "finetune_5k_expert": Split("last", ckpt_fraction=0.2, sample_count=5000, name="finetune_5k_expert"),  # JOWA
}


def parse_split(spec: str | Split) -> Split:
    """A preset name or ``all | first:K | last:F | fraction:F | n:N`` (the config grammar):
    ``first:K`` first K checkpoints; ``last:F`` last fraction F of checkpoints; ``fraction:F`` a
    uniform fraction F of all transitions; ``n:N`` N uniform transitions."""
    if isinstance(spec, Split):
        return spec
    if spec in PRESETS:
        return PRESETS[spec]
    kind, _, value = str(spec).partition(":")
    try:
        if kind == "all" and not value:
            return Split("all", name=spec)
        if kind == "first":
            return Split("first", k=int(value), name=spec)
        if kind == "last":
            return Split("last", ckpt_fraction=float(value), name=spec)
        if kind == "fraction":
            return Split("all", sample_fraction=float(value), name=spec)
        if kind == "n":
            return Split("all", sample_count=int(value), name=spec)
    except ValueError as e:
        raise StoreError(f"invalid split {spec!r}: {e}") from None
    raise StoreError(f"invalid split {spec!r}; valid: all, first:K, last:F, fraction:F, n:N or a preset {sorted(PRESETS)}")


def split_preset(name: str) -> Split:
    """A named split of the papers; unknown names list the presets."""
    if name not in PRESETS:
        raise StoreError(f"unknown split {name!r}; presets: {sorted(PRESETS)}")
    return PRESETS[name]


# ----------------------------------------------------------------------------------------------
# Helpers


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 22):
            h.update(b)
    return h.hexdigest()


def _num_actions(game: str, actions_seen_max: int) -> tuple[int, str]:
    try:
        from workbench.games import num_actions  # game registry (another module)
    except ImportError:
        return actions_seen_max + 1, "data"
    try:
        return int(num_actions(game)), "games"
    except Exception:
        return actions_seen_max + 1, "data"


def _log(log_path: Path | None, **event: Any) -> None:
    if log_path is None:
        return
    with open(log_path, "a") as f:
        f.write(json.dumps({"time": time.time(), **event}) + "\n")


@dataclass
class _Block:
    """The plan for one source checkpoint (one block of consecutive store rows)."""

    game: str
    run: str
    checkpoint: int
    capacity: int
    add_count: int
    fresh: int  # newest rows not already in the previous checkpoint
    row_start: int = 0
    rows: int = 0
    starts: int = 0
    files: dict[str, str] = field(default_factory=dict)


def _block_selection(
    meta: dr.CheckpointMeta, fresh: int, n_step: int, context_after: int, n_sample: int | None,
    rng: np.random.Generator | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(kept slots in chronological order, start positions within the kept rows)."""
    order = meta.time_order()  # chronological slots
    valid = meta.valid_mask(STACK, n_step)[order]
    lo_fresh = len(order) - min(fresh, len(order))
    valid[:lo_fresh] = False  # stale rows belong to the previous checkpoint
    cand = np.flatnonzero(valid)
    if n_sample is None:
        keep_lo = max(lo_fresh - (STACK - 1), 0)
        keep = np.arange(keep_lo, len(order))
        return order[keep], cand - keep_lo
    chosen = np.sort(rng.choice(cand, size=n_sample, replace=False)) if n_sample else cand[:0]  # type: ignore[union-attr]
    mark = np.zeros(len(order) + 1, dtype=np.int32)  # difference array: union of windows
    np.add.at(mark, np.maximum(chosen - (STACK - 1), 0), 1)
    np.add.at(mark, np.minimum(chosen + context_after + 1, len(order)), -1)
    keep = np.flatnonzero(np.cumsum(mark[:-1]) > 0)
    return order[keep], np.searchsorted(keep, chosen)


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
    for s, e in zip(cuts[:-1], cuts[1:]):
        real = np.flatnonzero(~pad[s:e])
        if not len(real):
            continue
        f = int(s + real[0])
        flags = (EP_BEGINS if pred_pad[f] else 0) | (EP_ENDS if terminal[e - 1] else 0)
        out.append((f, int(e), flags))
    return np.array(out, dtype=np.int64).reshape(-1, 3)


# ----------------------------------------------------------------------------------------------
# Builder


def build_store(
    root: str | os.PathLike, out: str | os.PathLike, games: Sequence[str], runs: Sequence[str | int] = (1,),
    split: Split | str = "near_optimal", *, seed: int = 0, n_step: int = 3, context_after: int = 7,
    progress: bool = True, log: str | os.PathLike | None = None,
) -> Path:
    """Build a store from a DQN-Replay root for ``games`` x ``runs`` with ``split``.

    Resumable: completed checkpoints are recorded under ``out/.build``; a rerun with the same
    arguments and unchanged sources resumes, different arguments restart from scratch. The
    manifest is written last (atomically); an existing complete store with the same plan is
    returned as is. ``context_after`` (>= n_step) rows after each start are guaranteed present,
    so sequence segments of ``context_after + 1`` steps fit (JOWA: 8).
    """
    from tqdm.auto import tqdm

    root, out = Path(root), Path(out)
    split = parse_split(split) if isinstance(split, str) else split
    if not isinstance(split, Split):
        raise StoreError(f"split must be a Split or one of {sorted(PRESETS)}, got {split!r}")
    if not isinstance(n_step, int) or n_step < 1:
        raise StoreError(f"n_step must be an int >= 1, got {n_step!r}")
    if not isinstance(context_after, int) or context_after < n_step:
        raise StoreError(f"context_after must be an int >= n_step ({n_step}), got {context_after!r}")
    if not games:
        raise StoreError(f"no games given; available: {dr.list_games(root)}")
    log_path = Path(log) if log is not None else None

    # ---- plan: resolve names (errors list what exists), read small arrays, size every block
    game_dirs = [dr.game_dir(root, g).name for g in games]
    if len(set(game_dirs)) != len(game_dirs):
        raise StoreError(f"duplicate games in {list(games)}")
    plan: dict[str, list[_Block]] = {}
    # Small arrays of planned checkpoints are kept for the conversion pass while they fit a
    # budget (test-sized data); real 1M-row checkpoints are re-read (a few MB each, cheap).
    meta_cache: dict[tuple[str, str, int], dr.CheckpointMeta] = {}
    cache_budget = [64 << 20]

    def cached_meta(g: str, run: str, c: int, hash: bool) -> dr.CheckpointMeta:
        key = (g, run, c)
        if key in meta_cache:
            return meta_cache[key]
        meta = dr.load_checkpoint_meta(root / g / run / "replay_logs", c, hash=hash)
        size = 10 * meta.capacity
        if size <= cache_budget[0]:
            cache_budget[0] -= size
            meta_cache[key] = meta
        return meta

    def selection(b: _Block, meta: dr.CheckpointMeta, n_sample: int | None) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1, _stable_id(b.game), _stable_id(b.run), b.checkpoint]))
        return _block_selection(meta, b.fresh, n_step, context_after, n_sample, rng)

    for g in game_dirs:
        blocks = []
        for r in runs:
            rdir = dr.run_dir(root, g, r)
            ckpts = dr.list_checkpoints(rdir)
            for c in split.choose(ckpts):
                meta = cached_meta(g, rdir.parent.name, c, hash=True)
                prev = c - 1
                if prev in ckpts:
                    prev_add = int(dr.load_npy_gz(rdir / dr.file_name("add_count", prev)))
                    grew = meta.add_count - prev_add
                    # One growing ring dumped twice: only the newest `grew` slots are new. A count
                    # that did not grow means independently written buffers (as in the fixtures).
                    fresh = grew if 0 < grew < meta.capacity else meta.add_count
                else:
                    fresh = meta.add_count
                b = _Block(g, rdir.parent.name, c, meta.capacity, meta.add_count, min(fresh, meta.capacity), files=dict(meta.sha256))
                kept, starts = selection(b, meta, None)
                b.rows, b.starts = len(kept), len(starts)
                blocks.append(b)
        plan[g] = blocks

    # per-block sample sizes: exact uniform sample without replacement over all starts of a game

    samples: dict[tuple[str, str, int], int | None] = {}
    for g, blocks in plan.items():
        counts = [b.starts for b in blocks]  # all valid starts of each block (set above)
        total = int(sum(counts))
        if split.subsampled:
            want = split.sample_count if split.sample_count is not None else int(round(split.sample_fraction * total))  # type: ignore[operator]
            if want > total:
                raise StoreError(f"{g}: split asks for {want} transitions but the chosen checkpoints hold {total} valid starts")
            rng = np.random.default_rng(np.random.SeedSequence([seed, 0, _stable_id(g)]))
            per = rng.multivariate_hypergeometric(np.array(counts, dtype=np.int64), want) if counts else []
        else:
            per = [None] * len(blocks)
        row = 0
        for b, n in zip(blocks, per):
            samples[(g, b.run, b.checkpoint)] = None if n is None else int(n)
            if n is not None:  # sizes depend on the sampled starts: redo the selection
                meta = cached_meta(g, b.run, b.checkpoint, hash=True)
                kept, starts = selection(b, meta, int(n))
                b.rows, b.starts = len(kept), len(starts)
            b.row_start = row
            row += b.rows

    params = {
        "format_version": FORMAT_VERSION, "source_root": str(root.resolve()), "games": game_dirs,
        "runs": [str(r) for r in runs], "split": asdict(split), "seed": seed, "n_step": n_step,
        "stack_size": STACK, "context_after": context_after,
    }
    plan_json = {"params": params, "blocks": {g: [asdict(b) for b in bl] for g, bl in plan.items()}}

    # ---- resume or restart
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    build = out / ".build"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("plan") == plan_json:
            return out
        raise StoreError(f"{out} already holds a different complete store; choose another directory or delete it")
    old_plan = build / "plan.json"
    if not (old_plan.exists() and json.loads(old_plan.read_text()) == plan_json):
        shutil.rmtree(build, ignore_errors=True)
        for g in game_dirs:
            shutil.rmtree(out / g, ignore_errors=True)
        (build / "done").mkdir(parents=True)
        atomic_write_json(old_plan, plan_json)
        _log(log_path, event="build_start", out=str(out), **{k: v for k, v in params.items() if k != "split"})
    else:
        _log(log_path, event="build_resume", out=str(out))

    # ---- convert, one checkpoint (one observation file) at a time
    total_rows = sum(b.rows for bl in plan.values() for b in bl)
    bar = tqdm(total=total_rows, unit="row", desc="build store", disable=not progress)
    games_info = {}
    for g, blocks in plan.items():
        gdir = out / g
        gdir.mkdir(exist_ok=True)
        R = sum(b.rows for b in blocks)
        arrays = _open_game_arrays(gdir, R)
        for bi, b in enumerate(blocks):
            marker = build / "done" / f"{g}__{b.run}__{b.checkpoint}.json"
            if marker.exists():
                bar.update(b.rows)
                continue
            rdir = root / g / b.run / "replay_logs"
            meta = meta_cache.pop((g, b.run, b.checkpoint), None) or dr.load_checkpoint_meta(rdir, b.checkpoint, hash=True)
            if meta.sha256 != b.files:
                raise StoreError(f"source files of {g} run {b.run} checkpoint {b.checkpoint} changed during the build")
            kept, starts = selection(b, meta, samples[(g, b.run, b.checkpoint)])
            assert len(kept) == b.rows
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
            # per-block starts / segment ends / episodes, concatenated when the game is done
            brk = np.ones(len(kept), dtype=bool)
            brk[1:] = kept[1:] != (kept[:-1] + 1) % b.capacity
            seg_id = np.cumsum(brk) - 1
            seg_end = np.append(np.flatnonzero(brk)[1:], len(kept))
            order = meta.time_order()
            pos = np.empty(b.capacity, dtype=np.int64)
            pos[order] = np.arange(len(order))
            pad = _padding_mask(meta.terminal[order], run_start=b.add_count <= b.capacity)
            kpos = pos[kept]
            pred_pad = np.where(kpos > 0, pad[np.maximum(kpos - 1, 0)], False)
            eps = _episodes(meta.terminal[kept], brk, pad[kpos], pred_pad)
            np.save(build / "done" / f"{g}__{b.run}__{b.checkpoint}.starts.npy", starts + b.row_start)
            np.save(build / "done" / f"{g}__{b.run}__{b.checkpoint}.segend.npy", seg_end[seg_id[starts]] + b.row_start)
            eps[:, :2] += b.row_start
            np.save(build / "done" / f"{g}__{b.run}__{b.checkpoint}.episodes.npy", eps)
            files = dict(meta.sha256)
            files[dr.file_name("observation", b.checkpoint)] = obs_sha
            atomic_write_json(marker, {"files": files, "actions_max": int(meta.action[kept].max()) if b.rows else 0})
            _log(log_path, event="checkpoint_done", game=g, run=b.run, checkpoint=b.checkpoint, rows=b.rows, starts=b.starts)
        del arrays
        info = _finish_game(gdir, build, g, blocks)
        games_info[g] = info
    bar.close()

    manifest = {
        **params, "plan": plan_json, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "games_info": games_info,
    }
    atomic_write_json(manifest_path, manifest)  # LAST: marks the store complete
    shutil.rmtree(build, ignore_errors=True)
    _log(log_path, event="build_done", out=str(out))
    return out


def _stable_id(s: str) -> int:
    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:4], "little")


_SMALL = {"action": np.uint8, "reward": np.float32, "terminal": np.uint8, "block": np.int32, "slot": np.int32}


def _open_game_arrays(gdir: Path, rows: int) -> dict[str, np.memmap]:
    """Create (or reopen, when resuming) a game's arrays; frames are written by positioned writes."""
    arrays = {}
    for name, dt in list(_SMALL.items()) + [("frames", np.uint8)]:
        p = gdir / f"{name}.npy"
        shape = (rows, 84, 84) if name == "frames" else (rows,)
        if p.exists():
            try:
                a = np.lib.format.open_memmap(p, mode="r+")
                ok = a.shape == shape and a.dtype == np.dtype(dt)
            except Exception:
                ok = False
            if not ok:
                p.unlink()
        if not p.exists():
            if rows == 0:  # open_memmap refuses empty arrays
                np.save(p, np.zeros(shape, dtype=dt))
            else:
                np.lib.format.open_memmap(p, mode="w+", dtype=dt, shape=shape)  # sparse until written
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
    n_slots = None
    with dr.stream_observations(rdir, checkpoint, hash=True) as s:
        n_slots = s.rows
        dest = np.full(n_slots, -1, dtype=np.int64)
        dest[kept] = np.arange(len(kept)) + row_start
        base = _data_offset(frames_path)
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
                        os.pwrite(fd, chunk[i0:i1].data, base + int(d[i0]) * FRAME_BYTES)
                    bar.update(len(idx))
            os.fsync(fd)
        finally:
            os.close(fd)
        return s.sha256()  # type: ignore[return-value]


def _finish_game(gdir: Path, build: Path, g: str, blocks: list[_Block]) -> dict[str, Any]:
    """Concatenate per-block starts/segment ends/episodes; summarize the game for the manifest."""
    parts = {k: [] for k in ("starts", "segend", "episodes")}
    actions_max = 0
    files: dict[str, dict[str, str]] = {}
    for b in blocks:
        stem = build / "done" / f"{g}__{b.run}__{b.checkpoint}"
        for k in parts:
            parts[k].append(np.load(f"{stem}.{k}.npy"))
        m = json.loads((build / "done" / f"{g}__{b.run}__{b.checkpoint}.json").read_text())
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
        "rows": int(sum(b.rows for b in blocks)), "starts": int(len(starts)), "episodes": int(len(eps)),
        "num_actions": na, "num_actions_source": source,
        "blocks": [
            {"run": b.run, "checkpoint": b.checkpoint, "row_start": b.row_start, "rows": b.rows, "starts": b.starts,
             "capacity": b.capacity, "add_count": b.add_count, "fresh_rows": b.fresh,
             "source_files_sha256": files[f"{b.run}/{b.checkpoint}"]}
            for b in blocks
        ],
        "starts_sha256": _sha256_file(gdir / "starts.npy"),
    }


# ----------------------------------------------------------------------------------------------
# Reading a built store


@dataclass
class GameData:
    """Memory-mapped (read-only) arrays of one game in a store."""

    name: str
    frames: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    terminal: np.ndarray
    block: np.ndarray
    slot: np.ndarray
    starts: np.ndarray
    start_seg_end: np.ndarray
    episodes: np.ndarray
    num_actions: int
    blocks: list[dict[str, Any]]


class ReplayStore:
    """A built store opened read-only; validates the manifest (missing = interrupted build)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        mp = self.path / "manifest.json"
        if not self.path.is_dir():
            raise StoreError(f"store directory {str(self.path)!r} does not exist")
        if not mp.exists():
            hint = " (a .build directory is present: the build was interrupted; rerun build_store with the same arguments to resume)" if (self.path / ".build").exists() else ""
            raise StoreError(f"{self.path} has no manifest.json: not a complete store{hint}")
        try:
            self.manifest: dict[str, Any] = json.loads(mp.read_text())
        except json.JSONDecodeError as e:
            raise StoreError(f"{mp}: corrupt manifest ({e})") from None
        v = self.manifest.get("format_version")
        if v != FORMAT_VERSION:
            raise StoreError(f"{mp}: format_version {v!r}, this reader supports {FORMAT_VERSION}")
        self.games: tuple[str, ...] = tuple(self.manifest["games"])
        self.n_step: int = int(self.manifest["n_step"])
        self.context_after: int = int(self.manifest["context_after"])
        self._data: dict[str, GameData] = {}

    def __repr__(self) -> str:
        return f"ReplayStore({str(self.path)!r}, games={self.games}, split={self.manifest['split']})"

    def check_game(self, game: str) -> str:
        if game in self.games:
            return game
        folded = {g.lower().replace("_", ""): g for g in self.games}
        key = game.lower().replace("_", "") if isinstance(game, str) else None
        if key in folded:
            return folded[key]
        raise StoreError(f"game {game!r} is not in store {self.path}; games: {list(self.games)}")

    def game(self, game: str) -> GameData:
        """Memory maps of one game (opened lazily, read-only)."""
        g = self.check_game(game)
        if g not in self._data:
            d = self.path / g
            info = self.manifest["games_info"][g]

            def load(name: str) -> np.ndarray:
                p = d / f"{name}.npy"
                if not p.exists():
                    raise StoreError(f"store file missing: {p}")
                return np.load(p, mmap_mode="r") if info["rows"] else np.load(p)

            self._data[g] = GameData(
                g, load("frames"), load("action"), load("reward"), load("terminal"), load("block"), load("slot"),
                np.load(d / "starts.npy", mmap_mode="r"), np.load(d / "start_seg_end.npy", mmap_mode="r"),
                np.load(d / "episodes.npy"), int(info["num_actions"]), info["blocks"],
            )
            fr = self._data[g].frames
            if isinstance(fr, np.memmap) and hasattr(mmap_mod, "MADV_RANDOM") and getattr(fr, "_mmap", None) is not None:
                # samplers read scattered rows: kernel readahead would fetch 128 KB per 7 KB frame
                fr._mmap.madvise(mmap_mod.MADV_RANDOM)
            if len(self._data[g].frames) != info["rows"] or len(self._data[g].starts) != info["starts"]:
                raise StoreError(f"{d}: array sizes disagree with the manifest (store damaged)")
        return self._data[g]

    def num_actions(self, game: str) -> int:
        return self.game(game).num_actions

    def rows(self, game: str) -> int:
        return int(self.manifest["games_info"][self.check_game(game)]["rows"])

    def source_of(self, game: str, rows: np.ndarray) -> list[tuple[str, int, int]]:
        """(run, checkpoint, slot) in the DQN-Replay source for store rows of a game."""
        gd = self.game(game)
        rows = np.asarray(rows)
        return [(gd.blocks[int(b)]["run"], int(gd.blocks[int(b)]["checkpoint"]), int(s)) for b, s in zip(gd.block[rows], gd.slot[rows])]

    def transitions(self, game: str, rows: np.ndarray, n_step: int | None = None, gamma: float = 0.99) -> dict[str, np.ndarray]:
        """Dopamine-style transitions at store rows (which must be starts), channels first.

        Returns ``state``/``next_state`` uint8 (B,4,84,84), ``action`` int64, ``reward`` float32
        (n-step return), ``length`` int64, ``terminal`` uint8. Used by tests and tools; training
        uses :class:`workbench.data.sampler.TransitionSampler`.
        """
        from workbench.data.sampler import assemble_transitions

        gd = self.game(game)
        n = self.n_step if n_step is None else n_step
        rows = np.asarray(rows, dtype=np.int64)
        starts = gd.starts  # sorted: binary search instead of loading it (400 MB at 50M rows)
        pos = np.minimum(np.searchsorted(starts, rows), max(len(starts) - 1, 0))
        isstart = (starts[pos] == rows) if len(starts) else np.zeros(len(rows), dtype=bool)
        if not isstart.all():
            raise StoreError(f"rows {rows[~isstart][:10].tolist()} of {game} are not transition starts of this store")
        return assemble_transitions(gd, rows, n, gamma)

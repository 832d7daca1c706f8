"""Batch samplers over a :class:`~workbench.data.store.ReplayStore`, with background prefetch.

* :class:`TransitionSampler` -- Q-learning batches: 4-frame stacks, n-step returns truncated at
  terminals (Dopamine semantics), next stacks, game ids and valid-action masks; stratified
  multi-game sampling (G games drawn with replacement, B/G transitions each) or proportional.
* :class:`SequenceSampler` -- segments of L steps with padding masks for world/sequence models,
  from frames or from an attached token memmap (uint16 (rows, 36)).

Determinism: batch ``i`` is a pure function of ``(seed, i)`` (its own ``np.random.SeedSequence``),
and a rank's share of it of ``(rank, world_size)``, so results do not depend on prefetch depth, thread timing or how
many batches were consumed before a resume (``state_dict``/``load_state_dict``).

Distributed training: ``batch_size`` and ``games_per_batch`` are always the GLOBAL batch's (the
paper's 512 transitions = 128 game draws x 4). Every rank makes the same global draw for batch
``i`` and keeps its share: ``games_per_batch / world_size`` whole game draws (B/G transitions
each), or ``batch_size / world_size`` transitions when sampling proportionally. The union over
ranks is exactly the single-process batch, whatever the number of processes.

Stores larger than RAM: ``io_hints`` queue each batch's reads ahead of the gather
(:mod:`workbench.data.readahead`).
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.data import dqn_replay as dr
from workbench.data.readahead import MAX_HINT_AHEAD, PAGE, ReadHints
from workbench.data.store import ReplayStore, StoreError, assemble_transitions, plain
from workbench.games import MAX_ACTIONS, num_actions
from workbench.models.tokenizer import TOKENS_PER_FRAME
from workbench.threads import usable_cpus

STACK = dr.STACK_SIZE


def _num_actions(store: ReplayStore, game: str) -> int:
    """The registry's action count when ``workbench.games`` knows the game, else the manifest's."""
    try:
        return int(num_actions(game))
    except ValueError:  # a game outside the registry (synthetic test data): the data's count
        return store.num_actions(game)


class _Prefetcher:
    """Ordered background production of ``make(i)`` for i = start, start+1, ... (a few ahead)."""

    def __init__(self, make, start: int, depth: int, workers: int) -> None:
        self._make, self._next, self._depth = make, start, max(1, depth)
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="sampler")
        self._queue: deque[Future] = deque()
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            while len(self._queue) < self._depth:
                self._queue.append(self._pool.submit(self._make, self._next))
                self._next += 1
            fut = self._queue.popleft()
            self._queue.append(self._pool.submit(self._make, self._next))
            self._next += 1
        return fut.result()

    def close(self) -> None:
        for f in self._queue:
            f.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)


class _BufferPool:
    """Recycles big output arrays once nobody references them any more.

    Freshly allocated 14 MB stacks page-fault on first touch (glibc returns them to the OS on
    free): measured 2,700 faults and +20 ms per batch of 512. A buffer is handed out again only
    when the pool holds the last reference to it (the tensor made by ``torch.from_numpy`` keeps
    the array alive while any batch uses it), so a batch a consumer keeps is never overwritten.
    """

    def __init__(self, cap: int) -> None:
        self._free: dict[tuple, list[np.ndarray]] = {}
        self._lock = threading.Lock()
        self._cap = cap

    def acquire(self, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        key = (tuple(shape), np.dtype(dtype).str)
        with self._lock:
            bufs = self._free.setdefault(key, [])
            for b in bufs:
                # references: the list, the loop variable, getrefcount's argument
                if sys.getrefcount(b) == 3:
                    return b
            b = np.empty(shape, dtype=dtype)
            if len(bufs) < self._cap:
                bufs.append(b)
            return b


class _BaseSampler:
    """Shared draw rule, determinism, prefetch and read-ahead of both samplers.

    ``batch_size`` and ``games_per_batch`` are global (all ranks together); rank ``rank`` of
    ``world_size`` returns ``batch_size // world_size`` samples of every batch (module docstring).
    """

    def __init__(
        self, store: ReplayStore | str | os.PathLike, games: Sequence[str] | None, batch_size: int, seed: int,
        stratified: bool, games_per_batch: int | None, rank: int, world_size: int, prefetch: int, workers: int,
        pin_memory: bool | None, io_hints: bool = True, hint_ahead: int = 1,
    ) -> None:
        self.store = store if isinstance(store, ReplayStore) else ReplayStore(store)
        if games is None:
            games = self.store.games
        if isinstance(games, str) or not len(games):
            raise StoreError(
                f"games must be a non-empty sequence of names from {list(self.store.games)}, got {games!r}"
            )
        self.games: tuple[str, ...] = tuple(self.store.check_game(g) for g in games)
        if len(set(self.games)) != len(self.games):
            raise StoreError(f"duplicate games in {list(games)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise StoreError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise StoreError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, int(seed), rank, world_size
        self.stratified = bool(stratified)
        if self.stratified:
            if games_per_batch is not None:
                g = games_per_batch
            else:
                g = batch_size // 4 if batch_size % 4 == 0 else batch_size
            if not isinstance(g, int) or g < 1 or batch_size % g:
                raise StoreError(f"games_per_batch must be an int >= 1 dividing batch_size={batch_size}, got {g!r}")
            if g % world_size:
                raise StoreError(
                    f"games_per_batch={g} (global) must be divisible by world_size={world_size}: every rank takes "
                    f"games_per_batch / world_size whole game draws of batch_size / games_per_batch transitions"
                )
            self.games_per_batch: int | None = g
        else:
            if games_per_batch is not None:
                raise StoreError("games_per_batch applies to stratified sampling only (stratified=True)")
            if batch_size % world_size:
                raise StoreError(f"batch_size={batch_size} (global) must be divisible by world_size={world_size}")
            self.games_per_batch = None
        #: this rank's share of every global batch (what :meth:`sample` returns)
        self.local_batch_size = batch_size // world_size
        self._data = [self.store.game(g) for g in self.games]
        #: (H, W) of the store's frames (its suite's geometry; every game of a store shares it)
        self.frame_shape: tuple[int, int] = tuple(self._data[0].frames.shape[1:])
        self._starts = [plain(d.starts) for d in self._data]
        self._seg_end = [plain(d.start_seg_end) for d in self._data]
        self._counts = np.array([len(s) for s in self._starts], dtype=np.int64)
        empty = [g for g, c in zip(self.games, self._counts) if c == 0]
        if empty:
            raise StoreError(f"games {empty} have no transition starts in {self.store.path}")
        self._cum = np.concatenate([[0], np.cumsum(self._counts)])
        self._valid = np.zeros((len(self.games), MAX_ACTIONS), dtype=bool)
        for i, game in enumerate(self.games):
            self._valid[i, : _num_actions(self.store, game)] = True
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        # workers 0: two background samplers, or one where the process may use one CPU only.
        self.prefetch, self.workers = int(prefetch), int(workers) or min(2, usable_cpus()[0])
        self._batch_index = 0
        self._prefetcher: _Prefetcher | None = None
        self._pool = _BufferPool(cap=2 * (self.prefetch + self.workers) + 8)
        if not isinstance(io_hints, (bool, np.bool_)):
            raise StoreError(f"io_hints must be True or False, got {io_hints!r}")
        hint_ahead_is_int = isinstance(hint_ahead, (int, np.integer)) and not isinstance(hint_ahead, bool)
        if not hint_ahead_is_int or not 0 <= hint_ahead <= MAX_HINT_AHEAD:
            raise StoreError(
                f"hint_ahead must be an int in [0, {MAX_HINT_AHEAD}] (batches hinted ahead of the one being "
                f"assembled), got {hint_ahead!r}"
            )
        self.io_hints, self.hint_ahead = bool(io_hints), int(hint_ahead)
        self._hints: ReadHints | None = None  # set by the subclass once it knows which arrays it gathers

    # ---- read-ahead hints (stores larger than RAM)
    def _init_hints(self, arrays: Sequence[Any]) -> None:
        hints = ReadHints(arrays) if self.io_hints else None
        self._hints = hints if hints is not None and hints.active else None

    def _hint_spans(self, batch_index: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(game index, first rows, end rows) the batch will gather from its hinted arrays."""
        raise NotImplementedError

    def _hint(self, batch_index: int, spans: Any = None) -> tuple[int, int] | None:
        """Queue the reads of batch ``batch_index`` now and those of the next ``hint_ahead`` in the
        background; while hints are paused (store in RAM) only note the thread's counters, for
        ``self._hints.check`` after the gather. ``spans``: the batch's spans or a function making them."""
        h = self._hints
        if h is None:
            return None
        if h.paused:
            return h.watch()
        if h.claim(batch_index):
            h.issue(spans() if callable(spans) else spans if spans is not None else self._hint_spans(batch_index))
        for k in range(1, self.hint_ahead + 1):
            if h.claim(batch_index + k):
                h.issue_later(self._hint_spans(batch_index + k))
        return None

    @property
    def hint_ranges_issued(self) -> int:
        """How many byte ranges were hinted so far (0 when hints are off or not applicable)."""
        return 0 if self._hints is None else self._hints.ranges_issued

    # ---- draws
    def _rng(self, batch_index: int) -> np.random.Generator:
        # one stream per batch, the same on every rank: ranks split one global draw
        return np.random.default_rng(np.random.SeedSequence([self.seed, 0, int(batch_index)]))

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """This rank's share of the global draw: (game index per sample, sorted by game; start
        index within that game's starts)."""
        B = self.batch_size
        if self.stratified:
            draws = np.sort(rng.integers(0, len(self.games), self.games_per_batch))
            gid = np.repeat(draws, B // self.games_per_batch)  # type: ignore[operator]
            local = (rng.random(B) * self._counts[gid]).astype(np.int64)
        else:  # proportional to each game's number of transitions: uniform over all of them
            flat = np.sort(rng.integers(0, self._cum[-1], B))
            gid = np.searchsorted(self._cum, flat, side="right") - 1
            local = flat - self._cum[gid]
        # rank r keeps samples [r*B/W, (r+1)*B/W): whole game draws, since W divides G
        lo, hi = self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size
        gid, local = gid[lo:hi], local[lo:hi]
        return gid.astype(np.int64), np.minimum(local, self._counts[gid] - 1)

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if self.pin_memory:  # CUDA's caching host allocator recycles pinned blocks
            return torch.empty(shape, dtype=dtype, pin_memory=True)
        np_dtype = {torch.uint8: np.uint8, torch.uint16: np.uint16}[dtype]
        return torch.from_numpy(self._pool.acquire(shape, np_dtype))

    # ---- iteration
    def sample(self, batch_index: int) -> dict[str, torch.Tensor]:
        """Batch number ``batch_index`` (synchronous; the same as the iterator's)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.close()
        self._prefetcher = _Prefetcher(self.sample, self._batch_index, self.prefetch, self.workers)
        try:
            while True:
                batch = self._prefetcher.get()
                self._batch_index += 1
                yield batch
        finally:
            self.close()

    def state_dict(self) -> dict[str, int]:
        """Position of the iterator (the next batch index), for resuming a training run."""
        return {"batch_index": self._batch_index, "seed": self.seed, "rank": self.rank}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if int(state["seed"]) != self.seed:
            raise StoreError(f"sampler state has seed {state['seed']} but this sampler uses seed {self.seed}")
        self.close()
        self._batch_index = int(state["batch_index"])

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class TransitionSampler(_BaseSampler):
    """Q-learning batches (docs/architecture.md "Transition batch") from a store.

    ``stratified=True``: draw ``games_per_batch`` (default B/4: 128 x 4 for B = 512) game ids
    uniformly with replacement, then B/G transitions uniformly from each drawn game.
    ``stratified=False``: uniform over all transitions of the chosen games (proportional).
    ``batch_size``/``games_per_batch`` are global: under DDP pass the whole batch (512, 128) with
    ``rank``/``world_size``; each rank returns its ``batch_size // world_size`` samples, G/W
    whole game draws (``world_size`` must divide ``games_per_batch``).
    ``n_step`` must not exceed the store's (its starts guarantee that many rows after each start).
    ``io_hints`` (default True): before gathering, queue the reads of each sample's rows
    ``p-3 .. p+n_step`` with ``posix_fadvise(WILLNEED)``, and those of the next ``hint_ahead``
    batches from a background thread -- many reads in flight instead of one page fault at a time
    on stores larger than RAM (module docstring). Batches are bit-identical either way.
    """

    def __init__(
        self, store: ReplayStore | str | os.PathLike, games: Sequence[str] | None = None, batch_size: int = 512,
        n_step: int = 3, gamma: float = 0.99, stratified: bool = True, games_per_batch: int | None = None,
        seed: int = 0, *, rank: int = 0, world_size: int = 1, prefetch: int = 3, workers: int = 0,
        pin_memory: bool | None = None, io_hints: bool = True, hint_ahead: int = 1,
    ) -> None:
        super().__init__(
            store, games, batch_size, seed, stratified, games_per_batch, rank, world_size, prefetch, workers,
            pin_memory, io_hints, hint_ahead,
        )
        if not isinstance(n_step, int) or not 1 <= n_step <= self.store.n_step:
            raise StoreError(
                f"n_step must be an int in [1, {self.store.n_step}] (the store was built for "
                f"n_step={self.store.n_step}), got {n_step!r}"
            )
        if not 0.0 <= gamma <= 1.0:
            raise StoreError(f"gamma must be in [0, 1], got {gamma!r}")
        self.n_step, self.gamma = n_step, float(gamma)
        self._discount_n = np.float32(dr.discount_vector(self.gamma, n_step + 1)[n_step])
        self._init_hints([d.frames for d in self._data])

    def _spans_of(self, gid: np.ndarray, rows: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        # state stack, n-step window and next stack: rows p-3 .. p+n_step, contiguous
        bounds = np.flatnonzero(np.diff(gid)) + 1
        return [(int(gid[lo]), rows[lo:hi] - (STACK - 1), rows[lo:hi] + self.n_step + 1)
                for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(gid)])]

    def _hint_spans(self, batch_index: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        return self._spans_of(*self.draw_rows(batch_index))

    def draw_rows(self, batch_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(game ids, store rows) of this rank's share of batch ``batch_index`` -- what
        :meth:`sample` assembles."""
        gid, rows, _ = self._draw_rows(batch_index)
        return gid, rows

    def _draw_rows(self, batch_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(game ids, store rows, end of each start's contiguous rows)."""
        gid, local = self._draw(self._rng(batch_index))
        rows = np.empty(len(gid), dtype=np.int64)
        seg_end = np.empty(len(gid), dtype=np.int64)
        for g in np.unique(gid):
            sel = gid == g
            rows[sel] = self._starts[g][local[sel]]
            seg_end[sel] = self._seg_end[g][local[sel]]
        return gid, rows, seg_end

    def sample(self, batch_index: int) -> dict[str, torch.Tensor]:
        gid, rows, seg_end = self._draw_rows(batch_index)
        watch = self._hint(batch_index, lambda: self._spans_of(gid, rows)) if self._hints is not None else None
        B = self.local_batch_size
        obs = self._empty((B, STACK, *self.frame_shape), torch.uint8)
        nxt = self._empty((B, STACK, *self.frame_shape), torch.uint8)
        obs_np, nxt_np = obs.numpy(), nxt.numpy()
        action = np.empty(B, dtype=np.int64)
        reward = np.empty(B, dtype=np.float32)
        term = np.empty(B, dtype=np.float32)
        bounds = np.flatnonzero(np.diff(gid)) + 1  # gid is sorted: one contiguous slice per game
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, B]):
            t = assemble_transitions(self._data[gid[lo]], rows[lo:hi], seg_end[lo:hi], self.n_step, self.gamma,
                                     obs_np[lo:hi], nxt_np[lo:hi])
            action[lo:hi], reward[lo:hi], term[lo:hi] = t["action"], t["reward"], t["terminal"]
        if watch is not None:  # ~14 pages a transition (7 rows of 6.9 KB)
            frame_bytes = self.frame_shape[0] * self.frame_shape[1]
            self._hints.check(watch, B * ((STACK + self.n_step) * frame_bytes // PAGE + 1))  # type: ignore[union-attr]
        discount = np.where(term > 0, np.float32(0), self._discount_n).astype(np.float32)
        out = {
            "obs": obs, "action": torch.from_numpy(action), "reward": torch.from_numpy(reward),
            "discount": torch.from_numpy(discount), "next_obs": nxt, "terminal": torch.from_numpy(term),
            "game_id": torch.from_numpy(gid), "valid_mask": torch.from_numpy(self._valid[gid]),
        }
        if self.pin_memory:
            for k in ("action", "reward", "discount", "terminal", "game_id", "valid_mask"):
                out[k] = out[k].pin_memory()
        return out


def _open_tokens(store: ReplayStore, games: Sequence[str], tokens: Any) -> list[np.ndarray] | None:
    if tokens is None:
        return None
    out = []
    for g in games:
        if isinstance(tokens, Mapping):
            if g not in tokens:
                raise StoreError(f"tokens mapping lacks game {g!r}; it has {sorted(tokens)}")
            t = tokens[g]
            if isinstance(t, (str, os.PathLike)):
                t = np.load(t, mmap_mode="r")
            elif not isinstance(t, np.memmap):
                t = np.asarray(t)
        else:
            base = store.path if tokens is True else Path(tokens)
            cands = [base / g / "tokens.npy", base / f"{g}.npy"]
            p = next((c for c in cands if c.exists()), None)
            if p is None:
                raise StoreError(f"no token file for {g}: looked for {[str(c) for c in cands]}")
            t = np.load(p, mmap_mode="r")
        rows = store.rows(g)
        if t.dtype != np.uint16 or t.shape != (rows, TOKENS_PER_FRAME):
            raise StoreError(
                f"tokens of {g} must be uint16 ({rows}, {TOKENS_PER_FRAME}) (one row per store frame), "
                f"got {t.dtype} {t.shape}"
            )
        out.append(t)  # memmaps stay memmaps here: read-ahead hints need their file
    return out


def _returns_to_go(data: Any) -> np.ndarray:
    """(rows,) float32: per row, the sum of the stored rewards from it to the end of its episode
    piece (``episodes.npy`` rows ``[first, end)``); see ``SequenceSampler``'s ``returns_to_go``."""
    reward = np.asarray(data.reward, dtype=np.float64)
    out = np.zeros(len(reward), dtype=np.float32)
    for first, end, _ in np.asarray(data.episodes):
        # float64 reverse cumulative sums are exact for the integer-valued clipped rewards
        out[first:end] = np.cumsum(reward[first:end][::-1])[::-1]
    return out


def _warn_short_segments(store: ReplayStore, starts: Sequence[np.ndarray], seq_len: int) -> None:
    """Warn when a split drew single transitions: segments then stop at the first row that is
    not a sampled start (the mean run of consecutive starts says how far they get)."""
    split = store.manifest.get("split", {})
    subsampled = split.get("sample_fraction") is not None or split.get("sample_count") is not None
    if seq_len < 2 or not subsampled or split.get("unit", "transitions") != "transitions":
        return
    runs = sum(int(np.count_nonzero(np.diff(s) != 1)) + 1 for s in starts if len(s))
    mean_run = sum(len(s) for s in starts) / max(runs, 1)
    warnings.warn(
        f"store {store.path} holds a split of single transitions ({split.get('name') or 'subsampled'}): segments of "
        f"{seq_len} steps keep only consecutive sampled starts, {mean_run:.2f} steps on average. Sequence methods "
        "want a split drawn in episodes (fraction:F:episodes, n:N:episodes; presets jowa_10pct, "
        "finetune_1pct_episodes, finetune_5k_expert)", stacklevel=3,
    )


class SequenceSampler(_BaseSampler):
    """Segments of ``seq_len`` consecutive steps (docs/architecture.md "Sequence batch").

    A segment starts at a uniformly drawn transition start of the store; ``mask[j]`` is False once
    the episode has ended before step j (after a terminal), or once step j's row is not one of the
    store's transition starts (the end of a checkpoint, or a row a subsampled split keeps only as
    context: the split's size is what every method trains on); masked steps hold zeros. A split that
    samples single transitions gives short segments (a warning says how short): sequence methods
    want splits drawn in episodes (``fraction:F:episodes``, ``n:N:episodes``).
    ``tokens``: ``True`` (``{store}/{Game}/tokens.npy``), a directory holding ``{Game}/tokens.npy``
    or ``{Game}.npy``, or a mapping game -> array/path; each uint16 (rows, 36). With tokens the
    batch carries ``tokens`` (B, L, 36) instead of ``obs``.
    ``io_hints``/``hint_ahead``: as for :class:`TransitionSampler`, on the rows ``p .. p+L-1`` (clipped
    at the segment's end) of whichever array is gathered (frames or a token memmap).
    ``returns_to_go`` (default False, opt-in: batches are otherwise unchanged): the batch also
    carries ``return_to_go`` float32 (B, L), each step's undiscounted sum of the stored (clipped)
    rewards from that row to the last row of its stored episode piece (Decision Transformers'
    return-to-go, as MGDT uses it). A piece that ends without a terminal (the end of a checkpoint
    or of a subsampled window cuts the episode) gives truncated sums: the rewards after the cut
    are not in the store, so those returns-to-go undercount, as ``ReplayStore.discounted_returns``
    does. Masked steps hold 0.
    """

    def __init__(
        self, store: ReplayStore | str | os.PathLike, games: Sequence[str] | None = None, batch_size: int = 32,
        seq_len: int = 8, seed: int = 0, *, stratified: bool = False, games_per_batch: int | None = None,
        tokens: Any = None, rank: int = 0, world_size: int = 1, prefetch: int = 3, workers: int = 0,
        pin_memory: bool | None = None, io_hints: bool = True, hint_ahead: int = 1, returns_to_go: bool = False,
    ) -> None:
        super().__init__(
            store, games, batch_size, seed, stratified, games_per_batch, rank, world_size, prefetch, workers,
            pin_memory, io_hints, hint_ahead,
        )
        if not isinstance(seq_len, int) or seq_len < 1:
            raise StoreError(f"seq_len must be an int >= 1, got {seq_len!r}")
        if not isinstance(returns_to_go, (bool, np.bool_)):
            raise StoreError(f"returns_to_go must be True or False, got {returns_to_go!r}")
        self.seq_len = seq_len
        _warn_short_segments(self.store, self._starts, seq_len)
        self._rtg = [_returns_to_go(d) for d in self._data] if returns_to_go else None
        opened = _open_tokens(self.store, self.games, tokens)
        self._tokens = None if opened is None else [plain(t) for t in opened]
        self._init_hints(opened if opened is not None else [d.frames for d in self._data])

    def _spans_of(self, gid: np.ndarray, local: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        bounds = np.flatnonzero(np.diff(gid)) + 1
        out = []
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(gid)]):
            g = int(gid[lo])
            p = self._starts[g][local[lo:hi]]
            out.append((g, p, np.minimum(p + self.seq_len, self._seg_end[g][local[lo:hi]])))
        return out

    def _hint_spans(self, batch_index: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        return self._spans_of(*self._draw(self._rng(batch_index)))

    def sample(self, batch_index: int) -> dict[str, torch.Tensor]:
        gid, local = self._draw(self._rng(batch_index))
        watch = self._hint(batch_index, lambda: self._spans_of(gid, local)) if self._hints is not None else None
        B, L = self.local_batch_size, self.seq_len
        steps = np.arange(L)
        use_tokens = self._tokens is not None
        if use_tokens:
            obs = self._empty((B, L, TOKENS_PER_FRAME), torch.uint16)
        else:
            obs = self._empty((B, L, *self.frame_shape), torch.uint8)
        obs_np = obs.numpy()
        action = np.zeros((B, L), dtype=np.int64)
        reward = np.zeros((B, L), dtype=np.float32)
        term = np.zeros((B, L), dtype=np.float32)
        mask = np.zeros((B, L), dtype=bool)
        rtg = None if self._rtg is None else np.zeros((B, L), dtype=np.float32)
        bounds = np.flatnonzero(np.diff(gid)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, B]):
            g = int(gid[lo])
            d = self._data[g]
            p = self._starts[g][local[lo:hi]]
            end = self._seg_end[g][local[lo:hi]]
            if (p < 0).any() or (p >= end).any() or (end > len(d.frames)).any():
                raise StoreError(
                    f"{d.name}: segment starts {p[:10].tolist()} / ends {end[:10].tolist()} fall outside the "
                    f"store's {len(d.frames)} rows: the store is damaged"
                )
            rows = p[:, None] + steps[None, :]
            inside = rows < end[:, None]
            # step j is a start of the split exactly when the (local + j)-th start is row p + j
            # (starts are sorted and distinct): the split's consecutive starts from p
            nxt = local[lo:hi, None] + steps[None, :]
            starts_g = self._starts[g]
            inside &= (nxt < len(starts_g)) & (starts_g[np.minimum(nxt, len(starts_g) - 1)] == rows)
            rows = np.minimum(rows, end[:, None] - 1)
            t = plain(d.terminal)[rows].astype(bool) & inside
            # a step is real while no terminal occurred strictly before it in the segment
            ended_before = np.cumsum(t, axis=1) - t > 0
            m = inside & ~ended_before
            mask[lo:hi] = m
            action[lo:hi] = np.where(m, plain(d.action)[rows], 0)
            reward[lo:hi] = np.where(m, plain(d.reward)[rows], 0)
            term[lo:hi] = np.where(m, t, 0)
            if rtg is not None:
                rtg[lo:hi] = np.where(m, self._rtg[g][rows], 0)  # type: ignore[index]
            src = self._tokens[g] if use_tokens else plain(d.frames)  # type: ignore[index]
            block = obs_np[lo:hi]
            np.take(src, rows.ravel(), axis=0, out=block.reshape((-1,) + block.shape[2:]), mode="clip")
            block[~m] = 0
        if watch is not None:
            self._hints.check(watch, max(1, int(mask.sum()) * obs_np[0, 0].nbytes // PAGE))  # type: ignore[union-attr]
        out = {
            ("tokens" if use_tokens else "obs"): obs, "action": torch.from_numpy(action),
            "reward": torch.from_numpy(reward),
            "terminal": torch.from_numpy(term), "mask": torch.from_numpy(mask), "game_id": torch.from_numpy(gid),
            "valid_mask": torch.from_numpy(self._valid[gid]),
        }
        if rtg is not None:
            out["return_to_go"] = torch.from_numpy(rtg)
        if self.pin_memory:
            for k in ("action", "reward", "terminal", "mask", "game_id", "valid_mask", "return_to_go"):
                if k in out:
                    out[k] = out[k].pin_memory()
        return out

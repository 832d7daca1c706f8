"""A built replay store opened read-only (:class:`ReplayStore`), and Dopamine-style transitions
assembled from it. The builder is :mod:`workbench.data.build`, the split grammar
:mod:`workbench.data.splits`.

Store directory layout (format version 2)::

    store/
      manifest.json            written LAST, atomically: its presence means the build completed
      {Game}/                  one directory per game (rows of all chosen runs/checkpoints)
        frames.npy             uint8  (R, H, W)    each frame once (the suite's frame shape, workbench.geometry)
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
write cursor), one block per checkpoint. For every start ``p`` the rows ``p-3 .. p+n_step`` lie
inside one block and are consecutive rows of the source (the builder guarantees it whatever the
file's ``invalid_range`` says), so the 4-frame stack, the n-step window and the next stack are
plain offsets from ``p``; ``start_seg_end`` says where those consecutive rows stop (end of the
checkpoint, or of a subsampled window), and every gather is checked against it.

Format 2 (this one) differs from 1 only in which starts are selected: format-1 stores built from
the public data hold starts whose n-step window crosses the write cursor into a stale slot, so
they are refused (rebuild them).
"""

from __future__ import annotations

import argparse
import json
import mmap as mmap_mod
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.data import dqn_replay as dr
from workbench.data.splits import StoreError
from workbench.fileio import sha256_file

__all__ = [
    "EP_BEGINS", "EP_ENDS", "FORMAT_VERSION", "GameData", "ReplayStore", "StoreError", "assemble_transitions", "plain",
]

FORMAT_VERSION = 2
STACK = dr.STACK_SIZE
#: the arrays of one game, in the order the manifest lists their digests
STORE_ARRAYS = ("frames", "action", "reward", "terminal", "block", "slot", "starts", "start_seg_end", "episodes")
EP_BEGINS, EP_ENDS = 1, 2


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
            hint = ""
            if (self.path / ".build").exists():
                hint = (
                    " (a .build directory is present: the build was interrupted; rerun build_store with the same"
                    " arguments to resume)"
                )
            raise StoreError(f"{self.path} has no manifest.json: not a complete store{hint}")
        try:
            self.manifest: dict[str, Any] = json.loads(mp.read_text())
        except json.JSONDecodeError as e:
            raise StoreError(f"{mp}: corrupt manifest ({e})") from None
        v = self.manifest.get("format_version")
        if v != FORMAT_VERSION:
            hint = ""
            if v == 1:
                hint = (
                    " (format-1 stores may hold transitions that cross a checkpoint's write cursor:"
                    " rebuild with build_store)"
                )
            raise StoreError(f"{mp}: format_version {v!r}, this reader supports {FORMAT_VERSION}{hint}")
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
            # np.memmap keeps its mmap.mmap in the private `_mmap` attribute (which may be None)
            fr_mmap = getattr(fr, "_mmap", None) if isinstance(fr, np.memmap) else None
            if fr_mmap is not None and hasattr(mmap_mod, "MADV_RANDOM"):
                # samplers read scattered rows: kernel readahead would fetch 128 KB per 7 KB frame
                fr_mmap.madvise(mmap_mod.MADV_RANDOM)
            if len(self._data[g].frames) != info["rows"] or len(self._data[g].starts) != info["starts"]:
                raise StoreError(f"{d}: array sizes disagree with the manifest (store damaged)")
            _check_ranges(d, self._data[g])
        return self._data[g]

    def verify(self, games: Sequence[str] | None = None) -> int:
        """Check every array of ``games`` (default: all) against the sha256 the builder recorded
        in the manifest; raises :class:`StoreError` naming the first file that differs (bit rot,
        a truncated copy, an edit). Reads the whole store; returns the number of files checked."""
        checked = 0
        for game in games or self.games:
            g = self.check_game(game)
            sums = self.manifest["games_info"][g].get("arrays_sha256")
            if sums is None:
                raise StoreError(f"{self.path / 'manifest.json'} records no array digests for {g} (built by an older "
                                 "workbench): rebuild the store to make it verifiable")
            for name, digest in sums.items():
                path = self.path / g / f"{name}.npy"
                if not path.is_file():
                    raise StoreError(f"store file missing: {path}")
                if sha256_file(path) != digest:
                    raise StoreError(f"{path} does not match the sha256 recorded when the store was built: the file is "
                                     "damaged (bit rot, a truncated copy or an edit); rebuild the store")
                checked += 1
        return checked

    def num_actions(self, game: str) -> int:
        return self.game(game).num_actions

    def discounted_returns(self, game: str, gamma: float) -> np.ndarray:
        """Monte-Carlo discounted return of every selected start of ``game``: (S,) float64.

        Rewards (clipped, as stored) are summed with ``gamma`` from the start to its episode's last
        row in the store: the terminal, or the end of the stored piece of the episode (a
        checkpoint or subsample boundary), where the return is truncated.
        """
        from scipy.signal import lfilter  # noqa: PLC0415  (scipy.signal: ~1 s at import, only this needs it)

        gd = self.game(game)
        reward = np.asarray(gd.reward, dtype=np.float64)
        out = np.zeros(len(reward), dtype=np.float64)
        for first, end, _ in np.asarray(gd.episodes):
            piece = reward[first:end]
            # G_t = r_t + gamma G_{t+1}, run backwards over the piece
            out[first:end] = lfilter([1.0], [1.0, -gamma], piece[::-1])[::-1]
        return out[np.asarray(gd.starts)]

    def rows(self, game: str) -> int:
        return int(self.manifest["games_info"][self.check_game(game)]["rows"])

    def source_of(self, game: str, rows: np.ndarray) -> list[tuple[str, int, int]]:
        """(run, checkpoint, slot) in the DQN-Replay source for store rows of a game."""
        gd = self.game(game)
        rows = np.asarray(rows)
        return [
            (gd.blocks[int(b)]["run"], int(gd.blocks[int(b)]["checkpoint"]), int(s))
            for b, s in zip(gd.block[rows], gd.slot[rows])
        ]

    def transitions(
        self, game: str, rows: np.ndarray, n_step: int | None = None, gamma: float = 0.99
    ) -> dict[str, np.ndarray]:
        """Dopamine-style transitions at store rows (which must be starts), channels first.

        Returns ``state``/``next_state`` uint8 (B,4,H,W), ``action`` int64, ``reward`` float32
        (n-step return), ``length`` int64, ``terminal`` uint8. Used by tests and tools; training
        uses :class:`workbench.data.sampler.TransitionSampler`.
        """
        gd = self.game(game)
        n = self.n_step if n_step is None else n_step
        rows = np.asarray(rows, dtype=np.int64)
        starts = gd.starts  # sorted: binary search instead of loading it (400 MB at 50M rows)
        pos = np.minimum(np.searchsorted(starts, rows), max(len(starts) - 1, 0))
        isstart = (starts[pos] == rows) if len(starts) else np.zeros(len(rows), dtype=bool)
        if not isstart.all():
            raise StoreError(
                f"rows {rows[~isstart][:10].tolist()} of {game} are not transition starts of this store"
            )
        return assemble_transitions(gd, rows, np.asarray(gd.start_seg_end)[pos], n, gamma)


def _check_ranges(folder: Path, gd: GameData) -> None:
    """The cheap check made whenever a game is opened: every action inside the game's action set,
    every terminal 0 or 1, every reward finite (a few bytes a row; frames need ``verify``)."""
    checks = (
        ("action", gd.action, lambda a: a >= gd.num_actions, f"outside the game's {gd.num_actions} actions"),
        ("terminal", gd.terminal, lambda t: t > 1, "not 0 or 1"),
        ("reward", gd.reward, lambda r: ~np.isfinite(r), "not a finite number"),
    )
    for name, array, bad_of, what in checks:
        for lo in range(0, len(array), 1 << 24):  # chunks: a 50M-row game never loads at once
            bad = np.flatnonzero(bad_of(np.asarray(array[lo:lo + (1 << 24)])))
            if len(bad):
                row = lo + int(bad[0])
                raise StoreError(f"{folder / f'{name}.npy'}: row {row} holds {array[row]!r}, {what}: the store is "
                                 "damaged; rebuild it (python -m workbench.data.store --verify checks every file)")


def plain(a: np.ndarray) -> np.ndarray:
    # np.memmap subclass hooks cost microseconds per fancy index; the base ndarray view shares memory
    return a.view(np.ndarray) if isinstance(a, np.memmap) else a


def assemble_transitions(
    gd: GameData, rows: np.ndarray, seg_end: np.ndarray, n_step: int, gamma: float,
    obs_out: np.ndarray | None = None, next_out: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Transitions starting at store rows ``rows`` (which must be starts) of one game.

    Stacks are rows ``p-3..p`` (oldest first, channels first); the n-step return sums
    ``gamma^k r_{p+k}`` up to and including the first terminal; the next stack is at ``p+length``.
    ``seg_end``: each start's ``start_seg_end`` -- every row read must lie before it (checked, so
    a damaged store raises instead of returning rows of a neighbouring checkpoint).
    ``obs_out``/``next_out`` (len(rows), 4, H, W) receive the stacks without extra copies.
    """
    rows = np.asarray(rows, dtype=np.int64)
    seg_end = np.asarray(seg_end, dtype=np.int64)
    if len(rows):
        bad = (rows < STACK - 1) | (rows + n_step >= seg_end) | (seg_end > len(gd.frames))
        if bad.any():
            raise StoreError(
                f"{gd.name}: starts {rows[bad][:10].tolist()} need rows p-{STACK - 1}..p+{n_step} but their contiguous "
                f"rows end at {seg_end[bad][:10].tolist()} (store of {len(gd.frames)} rows): the store is damaged or "
                f"was built for a smaller n_step"
            )
    win = rows[:, None] + np.arange(n_step)[None, :]
    ret, length, is_term = dr.nstep_targets(plain(gd.reward)[win], plain(gd.terminal)[win], gamma)
    offs = np.arange(-(STACK - 1), 1)
    frames = plain(gd.frames)
    k = len(rows)
    sidx = (rows[:, None] + offs).ravel()
    nidx = ((rows + length)[:, None] + offs).ravel()
    shape = frames.shape[1:]
    if obs_out is None:
        obs_out = np.empty((k, STACK, *shape), dtype=np.uint8)
    if next_out is None:
        next_out = np.empty((k, STACK, *shape), dtype=np.uint8)
    # mode="clip": bounds are checked above, and mode="raise" would make numpy buffer `out`
    np.take(frames, sidx, axis=0, out=obs_out.reshape(k * STACK, *shape), mode="clip")
    np.take(frames, nidx, axis=0, out=next_out.reshape(k * STACK, *shape), mode="clip")
    return {
        "state": obs_out, "next_state": next_out, "action": plain(gd.action)[rows].astype(np.int64),
        "reward": ret, "length": length, "terminal": is_term.astype(np.uint8),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workbench.data.store --verify STORE [STORE ...]``: check every array of each
    store against the digests its manifest records; one line per store, exit 2 on damage."""
    parser = argparse.ArgumentParser(prog="python -m workbench.data.store", description=main.__doc__)
    parser.add_argument("stores", nargs="+", help="store folders (with manifest.json)")
    parser.add_argument("--verify", action="store_true", required=True,
                        help="check every array against the sha256 recorded at build time")
    args = parser.parse_args(argv)
    for path in args.stores:
        try:
            n = ReplayStore(path).verify()
        except StoreError as exc:
            print(f"python -m workbench.data.store: error: {exc}", file=sys.stderr)
            return 2
        print(f"{path}: {n} files match their build-time sha256")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

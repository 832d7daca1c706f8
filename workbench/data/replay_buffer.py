"""Replay buffers in the DQN-Replay layout: Dopamine's circular storage and its checkpoint files.

* :class:`Ring`: ``capacity`` rows ``(o_t, a_t, r_t, terminal_t)`` written at ``add_count %
  capacity`` and dumped as DQN-Replay checkpoints (``$store$_observation_ckpt.k.gz`` etc.). The
  recorder's ring (``workbench.data.record``) and the online agent's buffer build on it; each
  keeps its own dump schedule.
* :class:`ReplayBuffer`: the online agent's buffer (``workbench.online``), Dopamine's
  ``OutOfGraphReplayBuffer`` (stack 4, padding rows, n-step validity, uniform sampling) that logs
  itself as batch_rl's logged buffer did.
* :func:`batch_tensors`: sampled transitions as the loss's batch.
* :func:`save_replay`, :func:`load_replay`, :func:`prune_replays`: the buffer's state files for
  exact resume (``<folder>/step_*.safetensors``, written atomically, checked by sha256).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from workbench import checkpoint as ckpt_io
from workbench.data import dqn_replay as dr
from workbench.fileio import refuse_symlink, sha256_file
from workbench.geometry import ATARI

STACK = dr.STACK_SIZE
#: the public data's writers were DQN agents: their invalid_range is the 1-step one
LOG_UPDATE_HORIZON = 1


class ReplayError(ValueError):
    """The replay cannot serve a request (the message says why)."""


class Ring:
    """Dopamine's circular storage of rows ``(o_t, a_t, r_t, terminal_t)`` over the observation
    array ``obs`` (``capacity`` frames: in memory, or a memory-mapped file)."""

    def __init__(self, obs: np.ndarray) -> None:
        self.obs = obs
        self.capacity = len(obs)
        self.action = np.zeros(self.capacity, np.int32)
        self.reward = np.zeros(self.capacity, np.float32)
        self.terminal = np.zeros(self.capacity, np.uint8)
        self.add_count = 0

    @property
    def cursor(self) -> int:
        return self.add_count % self.capacity

    def put(self, obs: np.ndarray | None, action: int, reward: float, terminal: bool) -> None:
        """Write one row at the cursor (``obs=None``: an all-zero frame, a padding row)."""
        i = self.cursor
        if obs is None:
            self.obs[i] = 0
        else:
            self.obs[i] = obs
        self.action[i], self.reward[i], self.terminal[i] = action, reward, terminal
        self.add_count += 1

    def write_checkpoint(self, out: Path, checkpoint: int, *, rows: int, add_count: int,
                         update_horizon: int = 3) -> None:
        """Write the first ``rows`` slots as DQN-Replay checkpoint ``checkpoint`` in ``out``.

        Observations are streamed in 4096-row chunks, so a memory-mapped 1M-row ring is never
        copied whole. ``invalid_range`` is Dopamine's around ``add_count % rows`` for a writer with
        ``update_horizon`` (the public data's DQN writers: 1)."""
        obs = self.obs

        def chunks() -> Iterator[np.ndarray]:
            for a in range(0, rows, 4096):
                yield np.asarray(obs[a : min(a + 4096, rows)])

        dr.write_checkpoint(
            out, checkpoint, observation=None, observation_chunks=chunks, action=self.action[:rows],
            reward=self.reward[:rows], terminal=self.terminal[:rows], add_count=add_count,
            update_horizon=update_horizon, frame_shape=tuple(obs.shape[1:]),
        )


class ReplayBuffer(Ring):
    """Dopamine's ``OutOfGraphReplayBuffer`` (stack 4) with batch_rl's logging, in numpy.

    Rows ``(o_t, a_t, clip(r_t), terminal_t)`` go into a ring of ``capacity`` slots; before the
    first row and after every terminal, 3 all-zero padding rows are added (they count in
    ``add_count``). With ``log_dir`` the buffer logs itself as batch_rl did: after every *add*
    (padding and row together) with ``add_count % capacity == capacity - 1`` the whole ring is
    dumped as checkpoint ``log_count`` (cursor ``capacity - 1``, the 1-step ``invalid_range`` of
    the public data's DQN writers), and :meth:`log_final` dumps the last partial lap.
    """

    def __init__(self, capacity: int, *, log_dir: Path | None = None) -> None:
        super().__init__(np.zeros((int(capacity), *ATARI.frame_shape), np.uint8))
        self.log_dir = log_dir
        self.log_count = 0

    def add(self, obs: np.ndarray, action: int, reward: float, terminal: bool) -> None:
        """Dopamine's ``add``: padding first when an episode starts, then the row; then batch_rl's
        logging check (once per add, so a padded add can step over ``capacity - 1``, as it did)."""
        if self.add_count == 0 or self.terminal[(self.cursor - 1) % self.capacity] == 1:
            for _ in range(STACK - 1):
                self.put(None, 0, 0.0, False)
        self.put(obs, action, reward, terminal)
        if self.log_dir is not None and self.add_count % self.capacity == self.capacity - 1:
            self._dump(self.add_count)

    def _dump(self, add_count: int) -> None:
        assert self.log_dir is not None
        self.write_checkpoint(self.log_dir, self.log_count, rows=self.capacity, add_count=add_count,
                              update_horizon=LOG_UPDATE_HORIZON)
        self.log_count += 1

    def log_final(self) -> None:
        """batch_rl's ``log_final_buffer``: the whole ring with ``add_count`` set to the cursor."""
        if self.log_dir is not None and self.add_count:
            self._dump(self.cursor)

    # ------------------------------------------------------------------ sampling

    def valid(self, idx: np.ndarray, n_step: int) -> np.ndarray:
        """Dopamine's ``is_valid_transition`` for a reader of horizon ``n_step``, per index."""
        idx = np.asarray(idx, np.int64)
        cap, cur = self.capacity, self.cursor
        ok = (idx >= 0) & (idx < cap)
        if self.add_count < cap:
            ok &= (idx >= STACK - 1) & (idx < cur - n_step)
        else:
            # invalid_range: slots cursor - n .. cursor + STACK - 1 (ring-indexed)
            ok &= (idx - (cur - n_step)) % cap >= STACK + n_step
        for k in range(1, STACK):
            ok &= self.terminal[(idx - k) % cap] == 0
        return ok

    def num_valid(self, n_step: int) -> int:
        return int(self.valid(np.arange(self.capacity), n_step).sum())

    def sample_indices(self, rng: np.random.Generator, batch_size: int, n_step: int) -> np.ndarray:
        """Uniform over valid transition starts, by rejection (like Dopamine: draw, keep the valid)."""
        high = self.capacity if self.add_count >= self.capacity else self.cursor
        out: list[np.ndarray] = []
        need, rounds = batch_size, 0
        while need > 0:
            # (a full scan is O(capacity): only when rejection keeps failing, to name the problem)
            rounds += 1
            if rounds == 64 and self.num_valid(n_step) == 0:
                raise ReplayError(f"the replay holds no valid {n_step}-step transition ({self.add_count} rows added)")
            cand = rng.integers(0, high, size=2 * batch_size)
            good = cand[self.valid(cand, n_step)]
            out.append(good[:need])
            need -= len(out[-1])
        return np.concatenate(out)

    def transitions(self, idx: np.ndarray, n_step: int, gamma: float) -> dict[str, np.ndarray]:
        """Transitions starting at slots ``idx`` (which must be valid): stacks channels first,
        n-step return truncated at the first terminal, next stack at ``idx + length``."""
        cap = self.capacity
        idx = np.asarray(idx, np.int64)
        win = (idx[:, None] + np.arange(n_step)[None, :]) % cap
        ret, length, is_term = dr.nstep_targets(self.reward[win], self.terminal[win], gamma)
        offs = np.arange(-(STACK - 1), 1)
        state = self.obs[(idx[:, None] + offs) % cap]
        next_state = self.obs[((idx + length)[:, None] + offs) % cap]
        return {"state": state, "next_state": next_state, "action": self.action[idx].astype(np.int64),
                "reward": ret, "length": length, "terminal": is_term.astype(np.uint8)}

    # ------------------------------------------------------------------ state

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"observation": self.obs, "action": self.action, "reward": self.reward, "terminal": self.terminal}

    def load_arrays(self, arrays: dict[str, np.ndarray], add_count: int, log_count: int) -> None:
        for key, dest in self.state_arrays().items():
            src = arrays[key]
            if src.shape != dest.shape or src.dtype != dest.dtype:
                raise ckpt_io.CheckpointError(f"replay array {key!r} is {src.dtype} {src.shape}, the buffer needs "
                                              f"{dest.dtype} {dest.shape} (a different capacity?)")
            dest[...] = src
        self.add_count, self.log_count = int(add_count), int(log_count)


def batch_tensors(tr: dict[str, np.ndarray], gamma: float, n_step: int, valid_mask: torch.Tensor,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """A transition dict as the loss's batch (``docs/architecture.md``, Transition batch)."""
    b = len(tr["action"])
    terminal = torch.from_numpy(tr["terminal"].astype(np.float32))
    discount = torch.full((b,), float(np.float32(gamma) ** n_step)) * (1.0 - terminal)
    batch = {
        "obs": torch.from_numpy(np.ascontiguousarray(tr["state"])),
        "action": torch.from_numpy(tr["action"]),
        "reward": torch.from_numpy(tr["reward"]),
        "discount": discount,
        "next_obs": torch.from_numpy(np.ascontiguousarray(tr["next_state"])),
        "terminal": terminal,
        "game_id": torch.zeros(b, dtype=torch.int64),
    }
    out = {k: v.to(device) for k, v in batch.items()}
    out["valid_mask"] = valid_mask.expand(b, -1)
    return out


# ----------------------------------------------------------------------------------------------
# State files (exact resume)


def save_replay(folder: Path, step: int, replay: ReplayBuffer) -> dict[str, Any]:
    """Write the buffer atomically as ``<folder>/step_*.safetensors``; what :func:`load_replay`
    needs back (file name, sha256, counters, capacity)."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{step:08d}.safetensors"
    tmp = folder / f".{final.name}.tmp"
    try:
        save_file(dict(replay.state_arrays()), str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": final.name, "sha256": sha256_file(final), "add_count": replay.add_count,
            "log_count": replay.log_count, "capacity": replay.capacity}


def load_replay(folder: Path, meta: dict[str, Any], replay: ReplayBuffer) -> None:
    """Restore ``replay`` from the file :func:`save_replay` described in ``meta`` (sha256 checked)."""
    path = folder / str(meta["file"])
    if Path(meta["file"]).name != meta["file"] or not path.is_file():
        raise ckpt_io.CheckpointError(f"the checkpoint's replay buffer {path} is missing")
    if sha256_file(path) != meta["sha256"]:
        raise ckpt_io.CheckpointError(f"{path} does not match the sha256 its checkpoint recorded: corrupt or replaced")
    replay.load_arrays(load_file(str(path)), meta["add_count"], meta["log_count"])


def prune_replays(folder: Path, keep: Collection[str | None]) -> None:
    """Delete the replay files of ``folder`` not named in ``keep``, and what a kill during a save left
    (never through a symbolic link: a linked ``folder`` is refused, a linked file only unlinked)."""
    refuse_symlink(folder, "replay folder")
    for p in folder.glob("step_*.safetensors"):
        if p.name not in keep:
            p.unlink()
    for p in folder.glob(".step_*.safetensors.tmp"):
        p.unlink()

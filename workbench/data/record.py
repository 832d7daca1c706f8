"""Record a policy's play under the data protocol into DQN-Replay-format checkpoints.

What is written matches the public data (and Dopamine's ``OutOfGraphReplayBuffer``):

* one row per agent step ``(o_t, a_t, clip(r_t, -1, 1), terminal_t)``; ``terminal`` marks game
  over *or* the 108k-frame time limit (DQN-Replay has no separate truncation flag); the
  observation after a terminal is not stored;
* 3 all-zero padding rows before every episode (so the first stacks are zero-padded);
* a ring buffer of ``capacity`` rows dumped every ``capacity`` additions as checkpoint ``k``
  (``add_count = (k+1) * capacity``, cursor 0, Dopamine's ``invalid_range``), files
  ``$store$_observation_ckpt.k.gz`` etc. A final partial dump is the ring as Dopamine would save
  it: new rows in slots ``[0, r)``, older rows after them, ``add_count = k * capacity + r``; if
  nothing was dumped yet, the checkpoint is just the ``r`` rows recorded (capacity ``r``, like the
  shared fixtures), so short recordings stay small.

The observation ring lives in a temporary memory-mapped file, so recording 1M-row checkpoints
does not need 7 GB of RAM. Read back with :mod:`workbench.data.dqn_replay`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from workbench import games as G
from workbench.algos.base import check_policy
from workbench.data import dqn_replay as dr
from workbench.data.replay_buffer import Ring
from workbench.envs import make_env
from workbench.fileio import atomic_write_json, preallocate
from workbench.geometry import ATARI
from workbench.paths import resolve_path
from workbench.progress import progress_bar
from workbench.settings import from_params

STACK = dr.STACK_SIZE
_RUN_NAME = re.compile(r"[A-Za-z0-9_.-]+")
POLICIES = ("random", "epsilon_greedy")


class Policy(Protocol):
    """What the recorder needs of a policy: ``act``. When the object also has them, ``reset`` and
    ``observe`` are called as ``workbench.algos.base.Policy`` defines (every workbench policy has
    both)."""

    def act(self, obs: np.ndarray, game_ids: np.ndarray) -> np.ndarray: ...


class RecordError(ValueError):
    """A bad recording argument (the message names it and the valid choices)."""


class _Ring(Ring):
    """The recorder's ring: its observations in a memory-mapped file, dumped every ``capacity``
    rows (padding rows are the caller's)."""

    def __init__(self, out: Path, capacity: int, frame_shape: tuple[int, int] = ATARI.frame_shape) -> None:
        self.out, self.frame_shape = out, tuple(frame_shape)
        out.mkdir(parents=True, exist_ok=True)
        self._obs_path = out / ".ring_observation.npy"
        super().__init__(np.lib.format.open_memmap(self._obs_path, mode="w+", dtype=np.uint8,
                                                   shape=(capacity, *self.frame_shape)))
        # The ring is a sparse file; a page first touched on a full disk kills the process with
        # SIGBUS. Reserving its blocks now turns that into an error naming the folder and size.
        fd = os.open(self._obs_path, os.O_RDWR)
        try:
            preallocate(fd, os.fstat(fd).st_size, self._obs_path,
                        f"the recorder's ring buffer ({capacity} rows of {self.frame_shape} frames; "
                        "lower capacity= to need less)")
        except BaseException:
            self.close()
            raise
        finally:
            os.close(fd)
        self.checkpoints = 0
        self._since_dump = 0

    def add(self, obs: np.ndarray | None, action: int, reward: float, terminal: bool) -> None:
        self.put(obs, action, reward, terminal)
        self._since_dump += 1
        if self._since_dump == self.capacity:
            self.dump()

    def dump(self) -> None:
        if self._since_dump == 0:
            return
        n = self.capacity if self.checkpoints > 0 or self._since_dump == self.capacity else self._since_dump
        self.write_checkpoint(self.out, self.checkpoints, rows=n, add_count=self.add_count)
        self.checkpoints += 1
        self._since_dump = 0

    def close(self) -> None:
        if hasattr(self, "obs"):
            del self.obs
        self._obs_path.unlink(missing_ok=True)


def record(
    game: str, steps: int, output_dir: str | os.PathLike, *, policy: str | Policy = "random", epsilon: float = 0.01,
    seed: int = 0, run: str | int = 1, capacity: int = 1_000_000, game_id: int = 0, progress: bool = True,
    env_factory: Callable[[str, int], Any] | None = None, log: str | os.PathLike | None = None,
) -> Path:
    """Record ``steps`` agent steps of ``game`` into ``{output_dir}/{Game}/{run}/replay_logs``.

    ``policy``: ``"random"`` (uniform over the minimal action set) or a Policy object
    (``act(obs (N,4,H,W) uint8, game_ids (N,) int64) -> (N,) int64``) played epsilon-greedily
    with ``epsilon``: it acts at every step, and its ``observe`` (when it has one) gets the
    executed action and the raw reward, also on the steps epsilon replaced. ``env_factory(game, seed)`` defaults to
    ``workbench.envs.make_env(game, protocol="data", seed=seed)``. Returns the replay_logs dir.
    """
    canonical = G.canonical_game(game)
    if not isinstance(steps, int) or steps < 1:
        raise RecordError(f"steps must be an int >= 1, got {steps!r}")
    if not isinstance(capacity, int) or capacity < STACK + 4:
        raise RecordError(f"capacity must be an int >= {STACK + 4}, got {capacity!r}")
    if not 0.0 <= epsilon <= 1.0:
        raise RecordError(f"epsilon must be in [0, 1], got {epsilon!r}")
    if isinstance(policy, str):
        if policy != "random":
            raise RecordError(f"policy must be 'random' or a Policy object with act(obs, game_ids), got {policy!r}")
        greedy = None
    else:
        try:
            greedy = check_policy(policy)
        except TypeError as exc:
            raise RecordError(f"policy must be 'random' or a Policy: {exc}") from None
    if not isinstance(seed, int) or seed < 0:
        raise RecordError(f"seed must be an int >= 0, got {seed!r}")
    if not _RUN_NAME.fullmatch(str(run)) or str(run) in (".", ".."):
        raise RecordError(f"run must be a plain name such as 1 or 2 (letters, digits, '_', '-', '.'), got {run!r}: "
                          "it is a folder inside output_dir and may not lead out of it")
    out = Path(output_dir) / canonical / str(run) / "replay_logs"
    if out.exists() and any(out.glob("*_ckpt.*.gz")):
        raise RecordError(f"{out} already holds checkpoints; choose another output_dir or run")
    if env_factory is None:
        def make_data_env(g: str, s: int) -> Any:
            return make_env(g, protocol="data", seed=s)

        env_factory = make_data_env
    env = env_factory(canonical, seed)
    n_actions = G.num_actions(canonical)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    geometry = G.geometry_of(canonical)
    ring = _Ring(out, capacity, geometry.frame_shape)
    stack = np.zeros(geometry.stack_shape(1), np.uint8)
    gids = np.array([game_id], np.int64)
    episodes, returns, ep_return = 0, [], 0.0
    bar = progress_bar(total=steps, desc=f"record {canonical}", unit="step", disable=not progress)
    log_path = Path(log) if log else None
    try:
        obs, _ = env.reset(seed=seed)
        for _ in range(STACK - 1):
            ring.add(None, 0, 0.0, False)  # padding rows before the episode
        stack[:] = 0
        stack[0, -1] = obs
        if greedy is not None:
            greedy.reset(np.array([0]))
        for t in range(steps):
            planned = None
            if greedy is not None:  # asked every step, so a policy with memory sees every frame
                planned = int(np.asarray(greedy.act(stack, gids))[0])
                if not 0 <= planned < n_actions:
                    raise RecordError(
                        f"policy returned action {planned}, outside {canonical}'s minimal set 0..{n_actions - 1}"
                    )
            # (The stream draws as before: no random() draw for the random policy.)
            if planned is None or rng.random() < epsilon:
                a = int(rng.integers(n_actions))
            else:
                a = planned
            nobs, r, term, trunc, _ = env.step(a)
            reward = float(r)
            if greedy is not None:
                greedy.observe(np.array([a], np.int64), np.array([reward]))
            ep_return += reward
            done = bool(term or trunc)
            ring.add(obs, a, float(np.clip(reward, -1.0, 1.0)), done)
            bar.update(1)
            if done:
                episodes += 1
                returns.append(ep_return)
                if log_path:
                    with open(log_path, "a") as f:
                        event = {"time": time.time(), "event": "episode", "game": canonical, "return": ep_return,
                                 "step": t + 1}
                        f.write(json.dumps(event) + "\n")
                ep_return = 0.0
                if t + 1 < steps:
                    obs, _ = env.reset()
                    for _ in range(STACK - 1):
                        ring.add(None, 0, 0.0, False)
                    stack[:] = 0
                    stack[0, -1] = obs
                    if greedy is not None:
                        greedy.reset(np.array([0]))
            else:
                obs = nobs
                stack[0, :-1] = stack[0, 1:]
                stack[0, -1] = obs
        ring.dump()
    finally:
        bar.close()
        ring.close()
        if hasattr(env, "close"):
            env.close()
    info = {"game": canonical, "steps": steps, "episodes": episodes, "episode_returns": returns, "seed": seed,
            "policy": policy if isinstance(policy, str) else type(policy).__name__, "epsilon": epsilon,
            "capacity": capacity, "checkpoints": ring.checkpoints, "add_count": ring.add_count}
    atomic_write_json(out / "record_info.json", info, indent=1)
    return out


@dataclass(frozen=True)
class CollectConfig:
    """Parameters of ``notebooks/01_collect_data.ipynb`` (validated on construction)."""

    games: str = "Pong"  # comma-separated game names or a game set
    steps: int = 2000  # agent steps recorded per game
    policy: str = "random"  # 'random' or 'package.module:factory' (a Policy, played epsilon-greedily)
    output_dir: str = "runs/recorded"  # DQN-Replay root to write {Game}/{run}/replay_logs into
    seed: int = 0
    epsilon: float = 0.01  # exploration of a Policy (unused by 'random')
    capacity: int = 1_000_000  # rows per checkpoint (DQN-Replay: 1,000,000)

    def __post_init__(self) -> None:
        object.__setattr__(self, "games", ",".join(G.resolve_games(self.games)))
        if not isinstance(self.steps, int) or self.steps < 1:
            raise RecordError(f"steps must be an int >= 1, got {self.steps!r}")
        if self.policy != "random" and ":" not in self.policy:
            raise RecordError(f"policy must be 'random' or 'package.module:factory', got {self.policy!r}")
        if not self.output_dir:
            raise RecordError("output_dir must be a non-empty path")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise RecordError(f"seed must be an int >= 0, got {self.seed!r}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise RecordError(f"epsilon must be in [0, 1], got {self.epsilon!r}")
        if not isinstance(self.capacity, int) or self.capacity < STACK + 4:
            raise RecordError(f"capacity must be an int >= {STACK + 4}, got {self.capacity!r}")

    @classmethod
    def from_params(cls, **params: Any) -> CollectConfig:
        """From papermill parameters: unknown names and ill-typed values are errors."""
        return from_params(cls, params)

    def run(self, progress: bool = True) -> list[Path]:
        # (output_dir relative to the project root, as in every notebook)
        return record_many(self.games.split(","), self.steps, resolve_path(self.output_dir),
                           policy=_load_policy(self.policy),
                           seed=self.seed, epsilon=self.epsilon, capacity=self.capacity, progress=progress)


def summarize_recording(replay_logs_dirs: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Per recorded game: checkpoints, rows, episodes ended and valid transition starts."""
    summary = []
    for path in map(Path, replay_logs_dirs):
        ckpts = dr.list_checkpoints(path)
        metas = [dr.load_checkpoint_meta(path, c) for c in ckpts]
        summary.append({
            "game": path.parent.parent.name, "checkpoints": ckpts,
            "rows": sum(m.capacity for m in metas),
            "episodes_ended": int(sum(m.terminal.sum() for m in metas)),
            "valid_transitions": int(sum(m.valid_mask().sum() for m in metas)),
        })
    return summary


def preview_strip(replay_logs: str | os.PathLike, frames: int = 6) -> np.ndarray:
    """``frames`` evenly spaced recorded frames of checkpoint 0 side by side: uint8 (H, W * frames)."""
    ck = dr.load_checkpoint(replay_logs, 0)
    rows = np.linspace(STACK - 1, len(ck["terminal"]) - 1, frames).astype(int)
    return np.concatenate(ck["observation"][rows], axis=1)


def _load_policy(spec: str) -> Any:
    """``"random"`` or ``"package.module:factory"`` (called with no arguments, returns a Policy)."""
    if spec == "random":
        return "random"
    if ":" not in spec:
        raise RecordError(f"policy must be 'random' or 'package.module:factory', got {spec!r}")
    mod, attr = spec.split(":", 1)
    factory = getattr(importlib.import_module(mod), attr)
    if not callable(factory):
        raise RecordError(f"{spec} is not a factory: give a callable that takes no arguments and returns a Policy")
    return factory()


def record_many(
    games: Sequence[str], steps: int, output_dir: str | os.PathLike, *, policy: str | Policy = "random", seed: int = 0,
    **kw: Any,
) -> list[Path]:
    """:func:`record` for several games (game ``i`` gets seed ``seed + i`` and game id ``i``)."""
    names = [G.canonical_game(g) for g in games]
    if len(set(names)) != len(names):
        raise RecordError(f"duplicate games in {list(games)}")
    return [record(g, steps, output_dir, policy=policy, seed=seed + i, game_id=i, **kw) for i, g in enumerate(names)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workbench.data.record", description=__doc__.split("\n")[0])
    p.add_argument("--games", nargs="+", required=True,
                   help="game names, comma- or space-separated, or a game-set name, as in the notebooks "
                        "(e.g. Pong Breakout, Pong,Breakout, scaled_ql_heldout)")
    p.add_argument("--steps", type=int, required=True, help="agent steps per game")
    p.add_argument("--policy", default="random",
                   help="'random' or 'package.module:factory' returning a Policy (imported and called: code you trust)")
    p.add_argument("--epsilon", type=float, default=0.01, help="exploration for a Policy (ignored for random)")
    p.add_argument("--output-dir", required=True, help="DQN-Replay root to write {Game}/{run}/replay_logs into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", default="1")
    p.add_argument("--capacity", type=int, default=1_000_000, help="rows per checkpoint (DQN-Replay: 1,000,000)")
    a = p.parse_args(argv)
    try:
        games = [g for part in a.games for g in G.resolve_games(part)]  # the notebooks' parser
        paths = record_many(games, a.steps, a.output_dir, policy=_load_policy(a.policy), seed=a.seed,
                            epsilon=a.epsilon, run=a.run, capacity=a.capacity)
    except (RecordError, ValueError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

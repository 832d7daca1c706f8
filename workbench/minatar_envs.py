"""MinAtar environments (Young & Tian 2019) behind the same interface as the Atari envs.

MinAtar's five games (``MinAtar-Asterix``, ``-Breakout``, ``-Freeway``, ``-Seaquest``,
``-SpaceInvaders``) run a 10x10 grid with one binary channel per kind of object. Each agent step
is one game step (no frame skip). The observation is packed into one uint8 frame of
:data:`workbench.geometry.MINATAR` (channel ``c`` in rows ``10c .. 10c+9``, 255 where on, the
planes beyond the game's own channels zero), so the recorder, the DQN-Replay files, the store and
the samplers are the Atari code unchanged.

Protocols: MinAtar's sticky actions (probability 0.1, the package's default and the setting of
its paper and of "Revisiting Rainbow") are part of the game in *both* protocols; the evaluator's
epsilon plays on top. Episodes are capped at ``MAX_AGENT_STEPS`` (the Atari protocol's 27,000
agent steps) unless the caller caps them sooner; the step that reaches the cap is ``truncated``.

Seeding: ``reset(seed=s)`` reseeds the game's random stream (spawns, sticky actions) with ``s``;
``reset()`` without a seed continues it, as the Atari env does.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from workbench import games as _games
from workbench.geometry import MINATAR

__all__ = ["PROTOCOLS", "MAX_AGENT_STEPS", "MinAtarProtocolEnv", "MinAtarVector", "pack_state"]

#: Sticky-action probability per protocol (MinAtar's default in both: it is part of the game).
PROTOCOLS: dict[str, float] = {"data": 0.1, "eval": 0.1}
MAX_AGENT_STEPS = 27_000
RENDER_CELL = 16  # pixels per grid cell in rendered RGB frames (videos, the explorer)


def pack_state(state: np.ndarray) -> np.ndarray:
    """MinAtar state ``(10, 10, C)`` bool -> the packed uint8 frame ``(100, 10)`` (0 or 255)."""
    h, w = MINATAR.plane_shape
    c = state.shape[-1]
    if state.shape[:2] != (h, w) or c > MINATAR.planes:
        raise ValueError(f"MinAtar state must be ({h}, {w}, <= {MINATAR.planes}), got {state.shape}")
    frame = np.zeros(MINATAR.frame_shape, np.uint8)
    frame[: c * h] = np.moveaxis(state, -1, 0).reshape(c * h, w).astype(np.uint8) * 255
    return frame


def check_reset_slots(indices: Sequence[int], seeds: Sequence[int], num_envs: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, seeds)`` of a vector env's ``reset_envs`` as int64 arrays, after the checks every
    suite's vector env makes (one seed per index, indices in range and distinct)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    sd = np.asarray(seeds, dtype=np.int64).reshape(-1)
    if idx.shape != sd.shape:
        raise ValueError(f"need one seed per index, got {idx.size} indices and {sd.size} seeds")
    if idx.size and (idx.min() < 0 or idx.max() >= num_envs):
        raise ValueError(f"env indices must be in 0..{num_envs - 1}, got {idx.tolist()}")
    if np.unique(idx).size != idx.size:
        raise ValueError(f"duplicate env indices: {idx.tolist()}")
    return idx, sd


def check_step_actions(actions: np.ndarray, active: np.ndarray, num_actions: int, game: str) -> np.ndarray:
    """A vector env's ``step`` actions as int64 (N,), after checking the running slots' are valid."""
    a = np.asarray(actions, dtype=np.int64).reshape(-1)
    if a.shape != active.shape:
        raise ValueError(f"need {active.size} actions, got shape {np.shape(actions)}")
    if np.any((a[active] < 0) | (a[active] >= num_actions)):
        raise ValueError(
            f"actions out of range for {game}: minimal-set indices are 0..{num_actions - 1}, got {a.tolist()}"
        )
    return a


def _sticky(protocol: str, override: float | None) -> float:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: valid protocols are {sorted(PROTOCOLS)}")
    if override is None:
        return PROTOCOLS[protocol]
    if not 0.0 <= override < 1.0:
        raise ValueError(f"repeat_action_probability must be in [0, 1), got {override}")
    return float(override)


class MinAtarProtocolEnv(gymnasium.Env):
    """One MinAtar game: obs uint8 ``(100, 10)`` packed planes, minimal-set actions, raw rewards."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        game: str,
        protocol: str = "eval",
        *,
        seed: int | None = None,
        render_rgb: bool = False,
        max_episode_steps: int = MAX_AGENT_STEPS,
        repeat_action_probability: float | None = None,
    ) -> None:
        from minatar import Environment  # noqa: PLC0415  (minatar loads seaborn/matplotlib: ~3-4 s)

        self.game = _games.canonical_game(game)
        self.protocol = protocol
        self.repeat_action_probability = _sticky(protocol, repeat_action_probability)
        if int(max_episode_steps) <= 0:
            raise ValueError(f"max_episode_steps must be positive, got {max_episode_steps}")
        self.max_episode_steps = int(max_episode_steps)
        self.render_mode = "rgb_array" if render_rgb else None
        self.env = Environment(_games.minatar_env_name(self.game), sticky_action_prob=self.repeat_action_probability)
        # minimal index -> MinAtar full-set index (the ALE ids of games.py, mapped back)
        full = {ale: i for i, ale in enumerate(_games.MINATAR_ALE_IDS)}
        self._actions = [full[a] for a in _games.minimal_action_set(self.game)]
        self.observation_space = spaces.Box(0, 255, MINATAR.frame_shape, np.uint8)
        self.action_space = spaces.Discrete(len(self._actions))
        self._steps = 0
        self._needs_reset = True
        self._seed = seed

    def _info(self) -> dict[str, Any]:
        return {"lives": 0, "episode_frame_number": self._steps}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is None and self._seed is not None:
            seed, self._seed = self._seed, None  # the constructor's seed seeds the first reset
        if seed is not None:
            self.env.seed(int(seed))
        self.env.last_action = 0
        self.env.reset()
        self._steps = 0
        self._needs_reset = False
        return pack_state(self.env.state()), self._info()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("call reset() before step() (and after an episode ends)")
        a = int(action)
        if not 0 <= a < len(self._actions):
            raise ValueError(
                f"action {action!r} out of range for {self.game}: minimal-set indices are "
                f"0..{len(self._actions) - 1}"
            )
        reward, terminal = self.env.act(self._actions[a])
        self._steps += 1
        terminated = bool(terminal)
        truncated = not terminated and self._steps >= self.max_episode_steps
        self._needs_reset = terminated or truncated
        return pack_state(self.env.state()), float(reward), terminated, truncated, self._info()

    def render(self) -> np.ndarray | None:
        """RGB image (160, 160, 3) uint8 when made with ``render_rgb=True``: each grid cell a
        16x16 block in the colour of its first active channel (black when empty)."""
        if self.render_mode != "rgb_array":
            return None
        state = self.env.state()
        palette = _palette(state.shape[-1])
        idx = np.where(state.any(-1), state.argmax(-1) + 1, 0)
        return np.repeat(np.repeat(palette[idx], RENDER_CELL, axis=0), RENDER_CELL, axis=1)

    def close(self) -> None:
        pass


def _palette(channels: int) -> np.ndarray:
    """Black background, then one distinct colour per channel (HSV wheel)."""
    cols = [(0, 0, 0)] + [
        tuple(int(255 * v) for v in colorsys.hsv_to_rgb(k / channels, 0.8, 1.0)) for k in range(channels)
    ]
    return np.asarray(cols, np.uint8)


class MinAtarVector:
    """N copies of one MinAtar game with explicit per-env seeded resets (the API of
    :class:`workbench.envs.AtariVector`: no auto-reset, finished slots idle until reset)."""

    def __init__(
        self,
        game: str,
        num_envs: int,
        protocol: str = "eval",
        *,
        max_episode_steps: int = MAX_AGENT_STEPS,
        repeat_action_probability: float | None = None,
    ) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.game = _games.canonical_game(game)
        self.num_envs = int(num_envs)
        self.protocol = protocol
        self.backend = "sync"
        self.num_actions = _games.num_actions(self.game)
        self._envs = [
            MinAtarProtocolEnv(self.game, protocol, max_episode_steps=max_episode_steps,
                               repeat_action_probability=repeat_action_probability)
            for _ in range(self.num_envs)
        ]  # fmt: skip
        self._done = np.ones(self.num_envs, bool)
        self._obs = np.zeros((self.num_envs, *MINATAR.frame_shape), np.uint8)

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        self.reset_envs(range(self.num_envs), seeds)
        return self._obs.copy()

    def reset_envs(self, indices: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
        idx, sd = check_reset_slots(indices, seeds, self.num_envs)
        for i, s in zip(idx.tolist(), sd.tolist()):
            self._obs[i], _ = self._envs[i].reset(seed=s)
        self._done[idx] = False
        return self._obs[idx].copy()

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        active = ~self._done
        a = check_step_actions(actions, active, self.num_actions, self.game)
        rew = np.zeros(self.num_envs, np.float64)
        term = np.zeros(self.num_envs, bool)
        trunc = np.zeros(self.num_envs, bool)
        for i in np.flatnonzero(active).tolist():
            self._obs[i], rew[i], term[i], trunc[i], _ = self._envs[i].step(int(a[i]))
        self._done |= term | trunc
        return self._obs.copy(), rew, term, trunc, {"active": active}

    def close(self) -> None:
        pass

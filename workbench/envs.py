"""Atari environments under the two protocols of the papers, game variants, vector envs, stacking.

Protocols (``PROTOCOLS``):

- ``"data"``: what DQN-Replay was recorded under (Dopamine's Atari set-up): sticky actions with
  probability 0.25 (ALE-level, per emulator frame, as in Gym's ``NoFrameskip-v0`` that Dopamine
  used), frame skip 4 with a max-pool over the last two frames, grayscale, 84x84 with
  ``cv2.INTER_AREA``, no no-op starts, no fire reset, no life-loss terminals, the minimal action
  set, episodes cut at 108,000 frames.
- ``"eval"``: the papers' evaluation protocol: the same but ``repeat_action_probability = 0``.
  Epsilon-greedy (0.001) belongs to the evaluator, not the env; each episode gets its own seed
  from the evaluator.

Both cap an episode at ``MAX_EPISODE_FRAMES = 108_000`` emulator frames, i.e.
``MAX_AGENT_STEPS = 27_000`` agent steps (the defect to avoid is 108k *agent* steps); the step that
reaches the cap returns ``truncated=True`` (``terminated`` wins if the game ends on that step).

Preprocessing mirrors Dopamine's ``AtariPreprocessing`` step for step: of the 4 frames of an agent
step, the grayscale screens of frames 3 and 4 are max-pooled (a game over earlier in the step stops
it, the pool then reuses the older buffer, as Dopamine's does); at reset the pool is the reset
screen with zeros. The observation is that pooled 210x160 screen resized to 84x84 with
``cv2.INTER_AREA``.

Seeding: ``reset(seed=s)`` re-seeds ALE's RNG (it drives sticky actions) and reloads the ROM, as
ale-py's own ``AtariEnv`` does; ``reset()`` without a seed continues the RNG stream. Under the eval
protocol the emulator is deterministic, so the seed changes nothing observable by itself (tested):
the per-episode randomness of evaluation is the evaluator's epsilon stream, which it derives from
the same per-episode seed.

Variants: ``mode`` / ``difficulty`` select an ALE game variant (paper variants in
``PAPER_VARIANTS``); invalid ones raise ValueError listing the game's valid modes/difficulties.

Vectorization (``AtariVector``, backend ``"auto"``): ale-py's native ``AtariVectorEnv`` where it
supports the protocol, our envs otherwise. Checked against ale-py 0.12.1 (``stack_num=1,
noop_max=0, use_fire_reset=False, reward_clipping=False, episodic_life=False``): it seeds each
sub-env on (partial) reset, has sticky actions, counts its episode cap in *frames* (a 400-frame cap
ends at agent step 100, as ours), and gives frames and rewards identical to ``AtariProtocolEnv``
on every non-terminal step (tests/test_envs.py). Two differences: (1) on a step where the game
ends before the 4th frame, native pools the final screens while Dopamine (and we) reuse the older
buffer, so the *terminal* observation can differ; DQN-Replay never stores the observation after a
terminal and the evaluator never looks at it, so this does not matter for either protocol; (2) it
has no game modes/difficulties, and it seeds ALE's sticky-action RNG differently from ale-py's
``AtariEnv`` (same protocol, different random stream). So ``"auto"`` picks ``"native"`` for default
variants and ``"sync"`` (our envs, in-process, one after the other) for mode/difficulty variants;
``"async"`` (gymnasium's AsyncVectorEnv of our env) is there for multi-core machines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import ale_py
import cv2
import gymnasium
import numpy as np
from ale_py import roms
from ale_py.vector_env import AtariVectorEnv
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode

from workbench import games as _games
from workbench import geometry
from workbench.minatar_envs import MinAtarProtocolEnv, MinAtarVector, check_reset_slots, check_step_actions

__all__ = [
    "PROTOCOLS",
    "STICKY_ACTION_PROB",
    "FRAME_SKIP",
    "MAX_EPISODE_FRAMES",
    "MAX_AGENT_STEPS",
    "OBS_SHAPE",
    "PAPER_VARIANTS",
    "NATIVE_VECTOR_NOTE",
    "AtariProtocolEnv",
    "make_env",
    "available_modes",
    "available_difficulties",
    "check_variant",
    "AtariVector",
    "FrameStacker",
    "make_vector",
]

Protocol = Literal["eval", "data"]
#: repeat_action_probability of each protocol.
PROTOCOLS: dict[str, float] = {"data": 0.25, "eval": 0.0}
STICKY_ACTION_PROB = PROTOCOLS["data"]
FRAME_SKIP = 4
MAX_EPISODE_FRAMES = 108_000
MAX_AGENT_STEPS = MAX_EPISODE_FRAMES // FRAME_SKIP  # 27,000
OBS_SHAPE = geometry.ATARI.frame_shape
STACK = geometry.STACK
#: Game variants of Scaled QL's online fine-tuning (Section 5.2, after Farebrother et al. 2018).
PAPER_VARIANTS: dict[str, dict[str, int]] = {
    "Breakout": {"mode": 12, "difficulty": 0},
    "Hero": {"mode": 1, "difficulty": 0},
    "Freeway": {"mode": 1, "difficulty": 0},
}

NATIVE_VECTOR_NOTE = (
    "native AtariVectorEnv == AtariProtocolEnv on non-terminal frames; the terminal frame can "
    "differ (pooling after an early game over); no mode/difficulty support"
)


def _check_protocol(protocol: str) -> float:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: valid protocols are {sorted(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def _sticky(protocol: str, override: float | None) -> float:
    """The protocol's sticky-action probability, or ``override`` (an opt-in evaluation setting)."""
    default = _check_protocol(protocol)
    if override is None:
        return default
    if not 0.0 <= override < 1.0:
        raise ValueError(f"repeat_action_probability must be in [0, 1), got {override}")
    return float(override)


def _new_ale(repeat_action_probability: float) -> Any:
    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.setFloat("repeat_action_probability", float(repeat_action_probability))
    ale.setInt("frame_skip", 1)  # we skip frames ourselves to max-pool the last two
    ale.setInt("max_num_frames_per_episode", 0)  # we enforce the cap ourselves, in frames
    return ale


_MODES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}


def _modes_and_difficulties(game: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    game = _games.canonical_game(game)
    if game not in _MODES:
        ale = _new_ale(0.0)
        ale.loadROM(roms.get_rom_path(_games.ale_rom_id(game)))
        _MODES[game] = (
            tuple(int(m) for m in ale.getAvailableModes()),
            tuple(int(d) for d in ale.getAvailableDifficulties()),
        )
    return _MODES[game]


def available_modes(game: str) -> tuple[int, ...]:
    """Game modes ale-py offers for this game."""
    return _modes_and_difficulties(game)[0]


def available_difficulties(game: str) -> tuple[int, ...]:
    """Game difficulties ale-py offers for this game."""
    return _modes_and_difficulties(game)[1]


def check_variant(game: str, mode: int | None, difficulty: int | None) -> None:
    """Raise ``ValueError`` listing the valid ones if ale-py has no such mode or difficulty for ``game``."""
    modes, diffs = _modes_and_difficulties(game)
    if mode is not None and mode not in modes:
        raise ValueError(f"invalid mode {mode!r} for {game}: valid modes are {list(modes)}")
    if difficulty is not None and difficulty not in diffs:
        raise ValueError(
            f"invalid difficulty {difficulty!r} for {game}: valid difficulties are {list(diffs)}"
        )


class AtariProtocolEnv(gymnasium.Env):
    """One Atari game under the ``"data"`` or ``"eval"`` protocol (see module docstring).

    Observation: uint8 ``(84, 84)``; action: minimal-set index; reward: raw game reward.
    ``max_episode_frames`` exists for tests and experiments; the protocols use 108,000.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        game: str,
        protocol: Protocol = "eval",
        *,
        mode: int | None = None,
        difficulty: int | None = None,
        seed: int | None = None,
        render_rgb: bool = False,
        max_episode_frames: int = MAX_EPISODE_FRAMES,
        repeat_action_probability: float | None = None,
    ) -> None:
        self.game = _games.canonical_game(game)
        self.protocol = protocol
        self.repeat_action_probability = _sticky(protocol, repeat_action_probability)
        check_variant(self.game, mode, difficulty)
        if int(max_episode_frames) <= 0:
            raise ValueError(f"max_episode_frames must be positive, got {max_episode_frames}")
        self.mode, self.difficulty = mode, difficulty
        self.max_episode_frames = int(max_episode_frames)
        self.render_mode = "rgb_array" if render_rgb else None
        self._rom = roms.get_rom_path(_games.ale_rom_id(self.game))
        self._ale = _new_ale(self.repeat_action_probability)
        self._actions = [self._ale_action(a) for a in _games.minimal_action_set(self.game)]
        self.observation_space = spaces.Box(0, 255, OBS_SHAPE, np.uint8)
        self.action_space = spaces.Discrete(len(self._actions))
        self._buf = np.zeros((2, 0, 0), np.uint8)  # sized per ROM in _load (Pooyan is 220x160)
        self._frames = 0
        self._seed = seed
        self._fresh_seed: int | None = None
        self._load(seed)

    @staticmethod
    def _ale_action(a: int) -> Any:
        return ale_py.Action(a)

    def _load(self, seed: int | None) -> None:
        # ALE reads random_seed at loadROM; with None, draw one from OS entropy like ale-py does.
        ss = np.random.SeedSequence(seed)
        ale_seed = int(ss.generate_state(1)[0] & 0x7FFFFFFF)
        self._ale.setInt("random_seed", ale_seed)
        self._ale.loadROM(self._rom)
        if self.mode is not None:
            self._ale.setMode(self.mode)
        if self.difficulty is not None:
            self._ale.setDifficulty(self.difficulty)
        h, w = self._ale.getScreenDims()
        if self._buf.shape != (2, h, w):
            self._buf = np.zeros((2, h, w), np.uint8)
        self._needs_reset = True
        self._fresh_seed = seed  # loaded with this seed and not played yet: no reload needed

    def _obs(self) -> np.ndarray:
        pooled = np.maximum(self._buf[0], self._buf[1])
        return cv2.resize(pooled, OBS_SHAPE[::-1], interpolation=cv2.INTER_AREA)

    def _info(self) -> dict[str, Any]:
        return {"lives": int(self._ale.lives()), "episode_frame_number": self._frames}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._seed = int(seed)
            if self._fresh_seed is None or self._fresh_seed != self._seed:
                self._load(self._seed)  # loadROM takes ~0.2 s: skip it when already fresh
        self._fresh_seed = None
        self._ale.reset_game()
        self._frames = 0
        self._needs_reset = False
        self._ale.getScreenGrayscale(self._buf[0])
        self._buf[1].fill(0)
        return self._obs(), self._info()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("call reset() before step() (and after an episode ends)")
        a = int(action)
        if not 0 <= a < len(self._actions):
            raise ValueError(
                f"action {action!r} out of range for {self.game}: minimal-set indices are "
                f"0..{len(self._actions) - 1}"
            )
        ale_action, reward, over = self._actions[a], 0.0, False
        for t in range(FRAME_SKIP):
            reward += self._ale.act(ale_action)
            self._frames += 1
            over = self._ale.game_over()
            if t >= FRAME_SKIP - 2:
                self._ale.getScreenGrayscale(self._buf[t - (FRAME_SKIP - 2)])
            if over or self._frames >= self.max_episode_frames:
                break
        terminated = bool(over)
        truncated = not terminated and self._frames >= self.max_episode_frames
        self._needs_reset = terminated or truncated
        return self._obs(), float(reward), terminated, truncated, self._info()

    def render(self) -> np.ndarray | None:
        """RGB screen (H, W, 3) uint8 (210x160 for most games) when made with ``render_rgb=True``."""
        if self.render_mode != "rgb_array":
            return None
        return self._ale.getScreenRGB()

    def close(self) -> None:
        self._ale = None


def make_env(
    game: str,
    protocol: Protocol = "eval",
    *,
    mode: int | None = None,
    difficulty: int | None = None,
    seed: int | None = None,
    render_rgb: bool = False,
) -> gymnasium.Env:
    """A game's env under a protocol: obs uint8 of its suite's frame shape (Atari 84x84),
    minimal-set actions, raw rewards, ``truncated`` at 27,000 agent steps. ``seed`` seeds the
    first reset. MinAtar games (``MinAtar-Breakout``...) get :mod:`workbench.minatar_envs`."""
    if _games.suite_of(game) == "minatar":
        _no_variant(game, mode, difficulty)
        return MinAtarProtocolEnv(game, protocol, seed=seed, render_rgb=render_rgb)
    return AtariProtocolEnv(
        game, protocol, mode=mode, difficulty=difficulty, seed=seed, render_rgb=render_rgb
    )


def _no_variant(game: str, mode: int | None, difficulty: int | None) -> None:
    if mode is not None or difficulty is not None:
        raise ValueError(f"{_games.canonical_game(game)} has no game modes or difficulties (MinAtar)")


def make_vector(
    game: str,
    num_envs: int,
    protocol: Protocol = "eval",
    *,
    max_agent_steps: int = MAX_AGENT_STEPS,
    mode: int | None = None,
    difficulty: int | None = None,
    backend: Literal["auto", "sync", "async", "native"] = "auto",
    repeat_action_probability: float | None = None,
) -> AtariVector | MinAtarVector:
    """N envs of ``game``'s suite with explicit seeded resets (:class:`AtariVector`'s API), each
    episode capped at ``max_agent_steps`` agent steps. ``repeat_action_probability=None`` keeps
    the protocol's own (Atari eval 0, data 0.25; MinAtar 0.1 in both)."""
    if _games.suite_of(game) == "minatar":
        _no_variant(game, mode, difficulty)
        return MinAtarVector(game, num_envs, protocol, max_episode_steps=max_agent_steps,
                             repeat_action_probability=repeat_action_probability)
    return AtariVector(game, num_envs, protocol, mode=mode, difficulty=difficulty, backend=backend,
                       max_episode_frames=max_agent_steps * FRAME_SKIP,
                       repeat_action_probability=repeat_action_probability)


class AtariVector:
    """N copies of one game under a protocol, with explicit per-env seeded resets.

    No auto-reset: after an env's episode ends, its slot returns its last observation and zero
    reward until the caller resets it with :meth:`reset_envs` (that keeps per-episode seeds in the
    caller's hands). ``backend``: ``"auto"`` (native for default variants, else sync), ``"sync"``
    (our envs in-process), ``"async"`` (our envs in worker processes), ``"native"`` (ale-py's
    AtariVectorEnv; no variants). See the module docstring for the measured differences.
    """

    def __init__(
        self,
        game: str,
        num_envs: int,
        protocol: Protocol = "eval",
        *,
        mode: int | None = None,
        difficulty: int | None = None,
        backend: Literal["auto", "sync", "async", "native"] = "auto",
        max_episode_frames: int = MAX_EPISODE_FRAMES,
        num_threads: int = 1,
        repeat_action_probability: float | None = None,
    ) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if backend not in ("auto", "sync", "async", "native"):
            raise ValueError(
                f"unknown backend {backend!r}: valid are 'auto', 'sync', 'async', 'native'"
            )
        if backend == "auto":
            backend = "native" if mode is None and difficulty is None else "sync"
        self.backend = backend
        self._started = False
        self.game = _games.canonical_game(game)
        self.num_envs = int(num_envs)
        self.protocol = protocol
        sticky = _sticky(protocol, repeat_action_probability)
        check_variant(self.game, mode, difficulty)
        self.num_actions = _games.num_actions(self.game)
        self._done = np.ones(self.num_envs, bool)
        self._obs = np.zeros((self.num_envs, *OBS_SHAPE), np.uint8)
        if backend == "native":
            if mode is not None or difficulty is not None:
                raise ValueError("backend 'native' has no game modes/difficulties: use 'sync'")

            self._env: Any = AtariVectorEnv(
                _games.ale_rom_id(self.game),
                self.num_envs,
                max_num_frames_per_episode=max_episode_frames,
                repeat_action_probability=sticky,
                # native has no DISABLED mode: a finished env auto-resets (unseeded) on its next
                # step; we discard that and reset it with the caller's seed via reset_mask.
                autoreset_mode=AutoresetMode.NEXT_STEP,
                stack_num=1,
                noop_max=0,
                use_fire_reset=False,
                reward_clipping=False,
                episodic_life=False,
                num_threads=num_threads,
            )
            self._envs: list[AtariProtocolEnv] = []
        else:

            def factory() -> AtariProtocolEnv:
                return AtariProtocolEnv(
                    self.game,
                    protocol,
                    mode=mode,
                    difficulty=difficulty,
                    max_episode_frames=max_episode_frames,
                    repeat_action_probability=sticky,
                )

            if backend == "sync":
                self._envs = [factory() for _ in range(self.num_envs)]
                self._env = None
            else:

                self._envs = []
                self._env = AsyncVectorEnv(
                    [factory] * self.num_envs, autoreset_mode=AutoresetMode.DISABLED
                )

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        """Reset every env, env i with ``seeds[i]``; returns obs ``(N, 84, 84)`` uint8."""
        self.reset_envs(range(self.num_envs), seeds)
        return self._obs.copy()

    def reset_envs(self, indices: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
        """Reset the envs ``indices`` with ``seeds``; returns their new obs ``(len(indices), 84, 84)``."""
        idx, sd = check_reset_slots(indices, seeds, self.num_envs)
        if idx.size == 0:
            return self._obs[:0].copy()
        order = np.argsort(idx)  # native takes seeds in ascending env order
        idx, sd = idx[order], sd[order]
        out_order = np.argsort(order)
        if self._env is None:
            for i, s in zip(idx.tolist(), sd.tolist()):
                self._obs[i], _ = self._envs[i].reset(seed=s)
        else:
            mask = np.zeros(self.num_envs, bool)
            mask[idx] = True
            full = np.zeros(self.num_envs, np.int64)
            full[idx] = sd
            if self.backend == "native":
                if not self._started:  # native partial resets need a preceding full reset
                    obs, _ = self._env.reset(seed=full)
                    self._started = True
                else:
                    obs, _ = self._env.reset(seed=sd, options={"reset_mask": mask})
                obs = np.asarray(obs).reshape(self.num_envs, *OBS_SHAPE)
            else:
                seeds_list = [int(s) if m else None for s, m in zip(full, mask)]
                obs, _ = self._env.reset(seed=seeds_list, options={"reset_mask": mask})
            self._obs[mask] = obs[mask]
        self._done[idx] = False
        return self._obs[idx[out_order]].copy()

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step all running envs with minimal-set ``actions`` (N,); finished envs are left idle.

        Returns obs ``(N, 84, 84)`` uint8, reward float64 (N,) raw, terminated, truncated (N,) bool,
        info ``{"active": bool (N,)}``: which envs actually stepped.
        """
        active = ~self._done
        a = check_step_actions(actions, active, self.num_actions, self.game)
        rew = np.zeros(self.num_envs, np.float64)
        term = np.zeros(self.num_envs, bool)
        trunc = np.zeros(self.num_envs, bool)
        if self._env is None:
            for i in np.flatnonzero(active).tolist():
                self._obs[i], rew[i], term[i], trunc[i], _ = self._envs[i].step(int(a[i]))
        else:
            # idle envs get action 0; their outputs are discarded below
            obs, r, te, tr, _ = self._env.step(np.where(active, a, 0))
            obs = np.asarray(obs).reshape(self.num_envs, *OBS_SHAPE)
            self._obs[active] = obs[active]
            rew[active] = np.asarray(r, np.float64)[active]
            term[active] = np.asarray(te, bool)[active]
            trunc[active] = np.asarray(tr, bool)[active]
        self._done |= term | trunc
        return self._obs.copy(), rew, term, trunc, {"active": active}

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        for e in self._envs:
            e.close()


class FrameStacker:
    """Rolling ``(N, 4, H, W)`` uint8 frame stacks, oldest first, zero-padded at episode start
    (``frame_shape``: the suite's, Atari's 84x84 by default)."""

    def __init__(self, num_envs: int, frame_shape: tuple[int, int] = OBS_SHAPE) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = int(num_envs)
        self.frame_shape = tuple(frame_shape)
        self.stacks = np.zeros((self.num_envs, STACK, *self.frame_shape), np.uint8)

    def reset(self, indices: Sequence[int] | np.ndarray, frames: np.ndarray) -> np.ndarray:
        """Zero the stacks of ``indices`` and put ``frames`` (len(indices), H, W) last."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        frames = np.asarray(frames)
        if frames.shape != (idx.size, *self.frame_shape):
            raise ValueError(f"frames must have shape {(idx.size, *self.frame_shape)}, got {frames.shape}")
        self.stacks[idx] = 0
        self.stacks[idx, -1] = frames
        return self.stacks

    def push(self, frames: np.ndarray, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Append ``frames`` as the newest frame of every stack (or of ``indices`` only)."""
        frames = np.asarray(frames)
        idx = np.arange(self.num_envs) if indices is None else np.asarray(indices, np.int64)
        if frames.shape != (idx.size, *self.frame_shape):
            raise ValueError(f"frames must have shape {(idx.size, *self.frame_shape)}, got {frames.shape}")
        self.stacks[idx, :-1] = self.stacks[idx, 1:]
        self.stacks[idx, -1] = frames
        return self.stacks

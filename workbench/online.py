"""Online C51 on one game (or game variant), with its whole replay logged in the DQN-Replay layout.

Scaled QL's online fine-tuning (paper 000, Section 5.2, Figure 8, Figure A.1, Appendix B.4): C51
with n = 3 and every other hyper-parameter Dopamine's C51 default (:class:`OnlineSettings`),
started from scratch or from a pretrained offline checkpoint (the encoder transferred, trunk and
head re-initialized, the encoder ``frozen`` or ``finetuned``), trained on an unseen variant
(``Breakout`` mode 12, ``Hero`` mode 1, ``Freeway`` mode 1) under the data protocol (sticky
actions 0.25).

The loop is Dopamine's, one environment, one agent step at a time::

    epsilon = linearly_decaying_epsilon(decay_period, step, min_replay_history, epsilon_train)
    a = random action (prob. epsilon) or greedy in expected Q
    o', r, done = env.step(a); replay.add(o, a, clip(r), done)      (3 padding rows before episodes)
    if replay.add_count > min_replay_history:
        every update_period steps: one Adam step on a batch of 32 n-step transitions
        every target_update_period steps: copy the online network into the target
    every eval_every frames: evaluate (eval protocol, same variant) -> the learning curve

The loss is the workbench's C51 (``workbench.algos.scaled_ql`` with ``alpha = 0``: no CQL term;
the target network selects and evaluates the next action, as Dopamine's C51 does).

**Logged replay** (``log_replay=True``): the replay buffer *is* batch_rl's logged buffer. After
every add with ``add_count % capacity == capacity - 1`` the whole ring is written as the next
checkpoint (cursor ``capacity - 1``, the 1-step ``invalid_range`` of the public data's DQN
writers), and at the end the partial last lap is written with ``add_count`` set to the cursor
(``log_final_buffer``). Files land in ``<run>/data/replay/{Game}/1/replay_logs`` (a DQN-Replay
root: ``workbench.data.build.build_store`` and ``workbench.data.dqn_replay`` read it). The
agent itself samples with the rule of its own horizon (Dopamine's n-step ``invalid_range``), so it
never trains on the stale slot a 3-step window could reach across the cursor.

**Checkpoints and exact resume.** Checkpoints are written at episode ends (the first one after
every ``checkpoint_every`` agent steps) and at the end: weights, target, Adam state, every RNG and
counter (``workbench.checkpoint``), plus the replay buffer in ``<run>/replay/step_*.safetensors``
(atomic, its sha256 in the checkpoint's ``state.json``). Every episode resets its environment with
its own seed, so a run resumed from an episode-end checkpoint continues bit-identically on CPU.
The last checkpoint of a finished run may lie inside an episode; such a run can be re-opened
(evaluated, shown) but not extended.

Vectorization: none. One environment and batch-1 action selection, like Dopamine; nothing here
trades exactness for speed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench import checkpoint as ckpt_io
from workbench import games as G
from workbench.algos.base import PRESETS
from workbench.algos.scaled_ql import ScaledQL, ScaledQLConfig
from workbench.data import dqn_replay as dr
from workbench.data.record import dump_ring
from workbench.fileio import atomic_write_json, sha256_file
from workbench.geometry import ATARI
from workbench.run import Run, RunLock

__all__ = ["ENCODER_MODES", "OnlineConfig", "OnlineResult", "OnlineSettings", "ReplayBuffer", "epsilon_at",
           "linearly_decaying_epsilon", "run_online", "main"]

STACK = dr.STACK_SIZE
ENCODER_MODES = ("finetuned", "frozen")
#: the public data's writers were DQN agents: their invalid_range is the 1-step one
LOG_UPDATE_HORIZON = 1
#: the run's logged replay, a DQN-Replay root
LOG_ROOT = Path("data") / "replay"
REPLAY_DIR = "replay"
CURVE_FILE = "curve.json"
_RUN_ENTRIES = ("checkpoints", "replay", "metrics.jsonl", "episodes.jsonl", "eval", "figures", CURVE_FILE,
                "summary.json", "data", "history.jsonl")


class OnlineError(ValueError):
    """A bad online-run argument (the message names it and the valid choices)."""


# ----------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class OnlineSettings:
    """The online agent's hyper-parameters: Dopamine's C51 defaults with n = 3 (paper 000, B.4)."""

    lr: float = 5e-5
    """Adam learning rate (the paper sweeps 1e-5 and 5e-5; Dopamine's C51 default is 2.5e-4)."""
    n_step: int = 3
    """n-step return length (the paper's 3)."""
    gamma: float = 0.99
    """Discount."""
    num_atoms: int = 51
    """C51 atoms."""
    vmax: float = 10.0
    """C51 support [-vmax, vmax] (Dopamine: 10)."""
    capacity: int = 1_000_000
    """Replay capacity in rows (padding rows count, as in Dopamine; the public data: 1M)."""
    min_replay_history: int = 20_000
    """No update before the replay holds more rows than this; epsilon is 1 until then."""
    update_period: int = 4
    """Agent steps between gradient steps."""
    target_update_period: int = 8000
    """Agent steps between target-network copies."""
    batch_size: int = 32
    """Transitions per gradient step."""
    epsilon_train: float = 0.01
    """Final exploration rate."""
    epsilon_decay_period: int = 250_000
    """Agent steps over which epsilon decays linearly from 1 to epsilon_train (after the warm-up)."""
    adam_eps: float = 0.0003125
    """Adam epsilon (Dopamine's C51: 0.01 / 32)."""
    sticky_actions: float = 0.25
    """Sticky-action probability of the training environment (the data protocol's)."""

    def __post_init__(self) -> None:
        for name in ("lr", "adam_eps", "vmax"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise OnlineError(f"{name} must be a finite number > 0, got {v!r}")
        for name in ("n_step", "num_atoms", "update_period", "target_update_period", "batch_size",
                     "epsilon_decay_period"):
            if getattr(self, name) < 1:
                raise OnlineError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_atoms < 2:
            raise OnlineError(f"num_atoms must be >= 2, got {self.num_atoms}")
        if self.min_replay_history < STACK + self.n_step:  # fewer rows hold no valid n-step transition
            raise OnlineError(f"min_replay_history must be >= {STACK + self.n_step} (stack {STACK} + n_step "
                              f"{self.n_step}), got {self.min_replay_history}")
        if self.capacity < STACK + self.n_step + 4:
            raise OnlineError(f"capacity must be >= {STACK + self.n_step + 4} rows, got {self.capacity}")
        if not 0.0 <= self.gamma <= 1.0:
            raise OnlineError(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 <= self.epsilon_train <= 1.0:
            raise OnlineError(f"epsilon_train must be in [0, 1], got {self.epsilon_train}")
        if not 0.0 <= self.sticky_actions < 1.0:
            raise OnlineError(f"sticky_actions must be in [0, 1), got {self.sticky_actions}")

    def c51(self) -> ScaledQLConfig:
        """The workbench C51 loss with these settings (alpha 0: no CQL term)."""
        return ScaledQLConfig(alpha=0.0, gamma=self.gamma, n_step=self.n_step, vmin=-self.vmax, vmax=self.vmax,
                              num_atoms=self.num_atoms, target_update_period=self.target_update_period)


def linearly_decaying_epsilon(decay_period: int, step: int, warmup_steps: int, epsilon: float) -> float:
    """Dopamine's schedule: 1 during the warm-up, then linear to ``epsilon`` over ``decay_period``."""
    steps_left = decay_period + warmup_steps - step
    bonus = (1.0 - epsilon) * steps_left / decay_period
    return float(epsilon + np.clip(bonus, 0.0, 1.0 - epsilon))


def epsilon_at(settings: OnlineSettings, step: int) -> float:
    return linearly_decaying_epsilon(settings.epsilon_decay_period, step, settings.min_replay_history,
                                     settings.epsilon_train)


# ----------------------------------------------------------------------------------------------
# Replay buffer (Dopamine's circular buffer; batch_rl's logging)


class ReplayBuffer:
    """Dopamine's ``OutOfGraphReplayBuffer`` (stack 4) with batch_rl's logging, in numpy.

    Rows ``(o_t, a_t, clip(r_t), terminal_t)`` go into a ring of ``capacity`` slots; before the
    first row and after every terminal, 3 all-zero padding rows are added (they count in
    ``add_count``). With ``log_dir`` the buffer logs itself as batch_rl did: after every *add*
    (padding and row together) with ``add_count % capacity == capacity - 1`` the whole ring is
    dumped as checkpoint ``log_count``, and :meth:`log_final` dumps the last partial lap.
    """

    def __init__(self, capacity: int, *, log_dir: Path | None = None) -> None:
        self.capacity = int(capacity)
        self.obs = np.zeros((self.capacity, *ATARI.frame_shape), np.uint8)
        self.action = np.zeros(self.capacity, np.int32)
        self.reward = np.zeros(self.capacity, np.float32)
        self.terminal = np.zeros(self.capacity, np.uint8)
        self.add_count = 0
        self.log_dir = log_dir
        self.log_count = 0

    @property
    def cursor(self) -> int:
        return self.add_count % self.capacity

    def _put(self, obs: np.ndarray | None, action: int, reward: float, terminal: bool) -> None:
        i = self.cursor
        if obs is None:
            self.obs[i] = 0
        else:
            self.obs[i] = obs
        self.action[i], self.reward[i], self.terminal[i] = action, reward, terminal
        self.add_count += 1

    def add(self, obs: np.ndarray, action: int, reward: float, terminal: bool) -> None:
        """Dopamine's ``add``: padding first when an episode starts, then the row; then batch_rl's
        logging check (once per add, so a padded add can step over ``capacity - 1``, as it did)."""
        if self.add_count == 0 or self.terminal[(self.cursor - 1) % self.capacity] == 1:
            for _ in range(STACK - 1):
                self._put(None, 0, 0.0, False)
        self._put(obs, action, reward, terminal)
        if self.log_dir is not None and self.add_count % self.capacity == self.capacity - 1:
            self._dump(self.add_count)

    def _dump(self, add_count: int) -> None:
        assert self.log_dir is not None
        dump_ring(self.log_dir, self.log_count, self.obs, self.action, self.reward, self.terminal,
                  rows=self.capacity, add_count=add_count, update_horizon=LOG_UPDATE_HORIZON)
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
                raise OnlineError(f"the replay holds no valid {n_step}-step transition ({self.add_count} rows added)")
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


def save_replay(run_dir: Path, step: int, replay: ReplayBuffer) -> dict[str, Any]:
    """Write the replay buffer atomically as ``replay/step_*.safetensors``; its name and sha256."""
    from safetensors.numpy import save_file

    folder = run_dir / REPLAY_DIR
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


def load_replay(run_dir: Path, meta: dict[str, Any], replay: ReplayBuffer) -> None:
    from safetensors.numpy import load_file

    path = run_dir / REPLAY_DIR / str(meta["file"])
    if Path(meta["file"]).name != meta["file"] or not path.is_file():
        raise ckpt_io.CheckpointError(f"the checkpoint's replay buffer {path} is missing")
    if sha256_file(path) != meta["sha256"]:
        raise ckpt_io.CheckpointError(f"{path} does not match the sha256 its checkpoint recorded: corrupt or replaced")
    replay.load_arrays(load_file(str(path)), meta["add_count"], meta["log_count"])


def _prune_replays(run_dir: Path) -> None:
    """Delete replay files no kept checkpoint refers to."""
    folder = run_dir / REPLAY_DIR
    keep = set()
    for ck in (run_dir / "checkpoints").glob("step_*"):
        if ckpt_io.is_own_checkpoint(ck):
            keep.add(((ckpt_io.read_state(ck).get("extra") or {}).get("replay") or {}).get("file"))
    for p in folder.glob("step_*.safetensors"):
        if p.name not in keep:
            p.unlink()
    for p in folder.glob(".step_*.safetensors.tmp"):  # what a kill during a save left
        p.unlink()


# ----------------------------------------------------------------------------------------------
# The job's configuration


@dataclass(frozen=True)
class OnlineConfig:
    """Parameters of ``notebooks/04_finetune_online.ipynb`` (and of ``python -m workbench.online``)."""

    checkpoint: str = ""
    """Pretrained offline run (or checkpoint) whose encoder initializes the agent; '' = from scratch."""
    game: str = "Breakout"
    """Game to train on (the paper's variants: Breakout mode 12, Hero mode 1, Freeway mode 1)."""
    mode: int = -1
    """Game mode of the variant (-1 = the default mode)."""
    difficulty: int = -1
    """Game difficulty (-1 = the default)."""
    frames: int = 0
    """Training frames (4 per agent step); 0 takes the preset's (paper: 3M; cpu: 24k)."""
    lr: float = 0.0
    """Adam learning rate; 0 takes the preset's (paper: 5e-5, the paper sweeps 1e-5 and 5e-5; cpu: 2.5e-4)."""
    seed: int = 0
    """Seed of the initialization, exploration, replay sampling, environments and evaluation."""
    encoder: str = "finetuned"
    """With a checkpoint: 'finetuned' (trained along) or 'frozen' (kept bit-identical)."""
    log_replay: bool = False
    """Log the whole replay history in the public DQN-Replay layout under <run>/data/replay."""
    capacity: int = 0
    """Replay capacity in rows; 0 takes the preset's (paper: 1,000,000, the public data's; cpu: 2,000)."""
    eval_every: int = 0
    """Training frames between evaluations (the learning curve); 0 takes the preset's."""
    eval_episodes: int = 0
    """Episodes per evaluation; 0 takes the preset's (paper: 16; cpu: 1)."""
    eval_max_steps: int = 0
    """Agent-step cap of an evaluation episode; 0 takes the preset's (paper: 27000, the protocol's)."""
    checkpoint_every: int = 0
    """Agent steps between checkpoints (written at the next episode end); 0 takes the preset's."""
    agent_args: dict[str, Any] = field(default_factory=dict)
    """Overrides of the agent's hyper-parameters (``OnlineSettings`` names), e.g. {n_step: 1}."""
    model: str = ""
    """Q-network preset from scratch ('' = the checkpoint's model, else the preset's: paper resnet101,
    cpu resnet-tiny)."""
    output_dir: str = ""
    """Run folder; '' = runs/online-<game>[-mode<m>]-<scratch|pretrained-<encoder>>-seed<seed>."""
    preset: str = "cpu"
    """'cpu' (minutes on 2 cores) or 'paper' (3M frames, Dopamine's C51 schedule)."""
    device: str = "auto"
    """'auto', 'cpu', 'cuda' or 'cuda:N'."""
    cpu_threads: int = 1
    """torch CPU threads (1 is fastest for batch-1 acting with small nets on a shared CPU; 0 = torch's)."""
    resume: bool = True
    """Continue the run in output_dir (same configuration); False starts it afresh."""
    allow_slow_cpu: bool = False
    """Let preset='paper' run without a GPU (it stops with the estimated time otherwise)."""

    def __post_init__(self) -> None:
        if G.suite_of(self.game) != "atari":  # unknown game: raises with close matches
            raise OnlineError(f"the online agent plays Atari games (and their variants); {G.canonical_game(self.game)} "
                              f"is a {G.suite_of(self.game)} game")
        if self.preset not in PRESETS:
            raise OnlineError(f"unknown preset {self.preset!r}; valid presets: {', '.join(PRESETS)}")
        if self.encoder not in ENCODER_MODES:
            raise OnlineError(f"encoder must be one of {ENCODER_MODES}, got {self.encoder!r}")
        if self.encoder == "frozen" and not self.checkpoint:
            raise OnlineError("encoder='frozen' needs a pretrained checkpoint (a frozen random encoder is not a "
                              "transfer); give checkpoint=<run> or encoder='finetuned'")
        from workbench.envs import _check_variant

        _check_variant(G.canonical_game(self.game), self.mode_or_none, self.difficulty_or_none)
        for name in ("frames", "capacity", "eval_every", "eval_episodes", "eval_max_steps", "checkpoint_every", "seed",
                     "cpu_threads"):
            if getattr(self, name) < 0:
                raise OnlineError(f"{name} must be >= 0 (0 = the preset's), got {getattr(self, name)}")
        if self.frames and self.frames < 4:
            raise OnlineError(f"frames must be >= 4 (one agent step), got {self.frames}")
        if not (np.isfinite(self.lr) and self.lr >= 0):
            raise OnlineError(f"lr must be a finite number >= 0 (0 = the preset's), got {self.lr}")
        from workbench.envs import MAX_AGENT_STEPS

        if self.eval_max_steps > MAX_AGENT_STEPS:
            raise OnlineError(f"eval_max_steps must be <= {MAX_AGENT_STEPS} (the protocol's cap), "
                              f"got {self.eval_max_steps}")
        if self.model:
            from workbench.models.qnet import PRESETS as QNET_PRESETS

            if self.model not in QNET_PRESETS:
                raise OnlineError(f"unknown model {self.model!r}; valid models: {', '.join(QNET_PRESETS)}")
        from workbench.train import resolve_device

        resolve_device(self.device)
        if self.checkpoint:
            from workbench.paths import resolve_path

            path = resolve_path(self.checkpoint)
            ckpt_io.resolve_checkpoint(path)  # missing or pickled: an error naming it, before any work
        self.settings  # noqa: B018  (the resolved hyper-parameters validate themselves)

    @classmethod
    def from_params(cls, **params: Any) -> OnlineConfig:
        """From papermill parameters: unknown names and ill-typed values are errors."""
        from workbench.settings import from_params

        return from_params(cls, params)

    @property
    def mode_or_none(self) -> int | None:
        return None if self.mode < 0 else self.mode

    @property
    def difficulty_or_none(self) -> int | None:
        return None if self.difficulty < 0 else self.difficulty

    @property
    def game_name(self) -> str:
        return G.canonical_game(self.game)

    @property
    def settings(self) -> OnlineSettings:
        if self.preset == "paper":
            base = OnlineSettings(lr=self.lr or 5e-5)
        else:  # minutes on 2 cores: a short warm-up, decay and target period, a small ring
            base = OnlineSettings(lr=self.lr or 2.5e-4, capacity=2000, min_replay_history=500,
                                  target_update_period=400, epsilon_decay_period=2500)
        names = [f.name for f in dataclasses.fields(OnlineSettings)]
        unknown = sorted(set(self.agent_args) - set(names) - {"lr", "capacity"})
        if unknown or "lr" in self.agent_args or "capacity" in self.agent_args:
            raise OnlineError(f"unknown agent_args {unknown or ['lr/capacity (parameters of their own)']}; valid: "
                              f"{', '.join(n for n in names if n not in ('lr', 'capacity'))}")
        from workbench.settings import from_params

        values = {**dataclasses.asdict(base), "capacity": self.capacity or base.capacity, **self.agent_args}
        return from_params(OnlineSettings, values, what="agent_args setting")

    @property
    def total_frames(self) -> int:
        return self.frames or (3_000_000 if self.preset == "paper" else 24_000)

    @property
    def agent_steps(self) -> int:
        from workbench.envs import FRAME_SKIP

        return self.total_frames // FRAME_SKIP

    @property
    def eval_every_frames(self) -> int:
        return self.eval_every or (250_000 if self.preset == "paper" else 6_000)

    @property
    def episodes_per_eval(self) -> int:
        return self.eval_episodes or (16 if self.preset == "paper" else 1)

    @property
    def eval_cap(self) -> int:
        return self.eval_max_steps or (27_000 if self.preset == "paper" else 1000)

    @property
    def checkpoint_every_steps(self) -> int:
        return self.checkpoint_every or (100_000 if self.preset == "paper" else 2000)

    @property
    def init(self) -> str:
        """'scratch' or 'pretrained-<encoder>' (the bar group of Figure 8)."""
        return f"pretrained-{self.encoder}" if self.checkpoint else "scratch"

    @property
    def model_name(self) -> str:
        if self.checkpoint:
            from workbench.paths import resolve_path

            source = Run.open(resolve_path(self.checkpoint)).model
            if self.model and self.model != source:
                raise OnlineError(f"model {self.model!r} differs from the checkpoint's {source!r}: the encoder "
                                  "transfers only into the same architecture; leave model='' to use it")
            return source
        return self.model or ("resnet101" if self.preset == "paper" else "resnet-tiny")

    @property
    def run_dir(self) -> str:
        from workbench.paths import resolve_path

        if self.output_dir:
            return str(resolve_path(self.output_dir))
        variant = f"-mode{self.mode}" if self.mode >= 0 else ""
        variant += f"-diff{self.difficulty}" if self.difficulty >= 0 else ""
        return str(resolve_path(f"runs/online-{self.game_name}{variant}-{self.init}-seed{self.seed}"))

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_hardware(self, device_type: str) -> None:
        """Stop a paper-scale run on a CPU before it starts, with the estimated time of its updates
        (eager training throughput of the 2-core CPU machine, ``workbench.config.CPU_SAMPLES_PER_S``)."""
        if self.preset != "paper" or device_type != "cpu" or self.allow_slow_cpu:
            return
        from workbench.config import estimate_cpu_hours

        s = self.settings
        updates = max(0, self.agent_steps - s.min_replay_history) // s.update_period
        hours, measured = estimate_cpu_hours(updates * s.batch_size, self.model_name)
        bound = "" if measured else "at least "
        raise RuntimeError(
            f"preset='paper' makes {updates:,} updates of batch {s.batch_size} with {self.model_name} over "
            f"{self.agent_steps:,} agent steps; on this CPU that takes {bound}about {hours:,.0f} hours (updates "
            "alone). Use a GPU (device='cuda'), the 'cpu' preset, or pass allow_slow_cpu=True to run it anyway.")

    def resolve(self) -> dict[str, Any]:
        """Everything the run uses, resolved (``config.json``'s ``resolved``)."""
        return {
            "algo": "online_c51", "model": self.model_name, "games": [self.game_name], "mode": self.mode_or_none,
            "difficulty": self.difficulty_or_none, "init": self.init, "encoder": self.encoder,
            "settings": dataclasses.asdict(self.settings), "frames": self.total_frames,
            "agent_steps": self.agent_steps, "eval_every_frames": self.eval_every_frames,
            "eval_episodes": self.episodes_per_eval, "eval_max_steps": self.eval_cap, "preset": self.preset,
            "checkpoint_every": self.checkpoint_every_steps,
            "log_replay": self.log_replay, "output_dir": self.run_dir,
            "stages": [{"name": "online", "subdir": ""}],
        }


#: what a resumed run may change: a longer or shorter run, more evaluation, another device
RESUMABLE_FIELDS = ("frames", "eval_episodes", "eval_every", "eval_max_steps", "checkpoint_every", "device",
                    "cpu_threads", "resume", "output_dir", "allow_slow_cpu")


# ----------------------------------------------------------------------------------------------
# The run


@dataclass
class OnlineResult:
    """What an online run leaves (paths) and shows (curve, figures, summary)."""

    run_dir: Path
    checkpoint: Path
    curve: list[dict[str, Any]]
    summary: dict[str, Any]
    replay_logs: Path | None = None
    figures: dict[str, Any] = field(default_factory=dict)


EnvFactory = Callable[[int], Any]


def _episode_seed(seed: int, episode: int) -> int:
    return int(np.random.SeedSequence([seed, 4, episode]).generate_state(1)[0] & 0x7FFFFFFF)


def open_online_run(config: OnlineConfig) -> Run:
    """The run folder of ``config`` (kind ``online``): new, resumed after a config check, or reset."""
    run = Run(Path(config.run_dir))
    run.start("online", config.params(), config.resolve(), resume=config.resume, may_change=RESUMABLE_FIELDS,
              entries=_RUN_ENTRIES)
    return run


def transfer_encoder(algo: ScaledQL, checkpoint: str | os.PathLike[str], game: str) -> dict[str, Any]:
    """Load the encoder of a pretrained run's checkpoint into ``algo`` (``workbench.transfer``):
    trunk and heads keep their fresh initialization (the paper's choice), the target network
    follows. The checkpoint is verified first (sha256, names, shapes, dtypes, finite). Returns the
    transfer report (what was transferred, re-initialized, new and dropped)."""
    from workbench import transfer

    report = transfer.load_partial(checkpoint, algo, [game], transfer=("encoder",), reinitialize=("trunk", "heads"))
    return report.as_dict()


def _default_env_factory(config: OnlineConfig, sticky: float) -> EnvFactory:
    from workbench.envs import AtariProtocolEnv

    def make(seed: int) -> Any:
        return AtariProtocolEnv(config.game_name, "data", mode=config.mode_or_none,
                                difficulty=config.difficulty_or_none, seed=seed, repeat_action_probability=sticky)

    return make


def run_online(
    config: OnlineConfig, *, progress: bool = True, env_factory: EnvFactory | None = None,
    evaluate_fn: Callable[[Any, int], dict[str, Any]] | None = None, stop_after: int | None = None,
) -> OnlineResult:
    """Train the online agent of ``config`` in its run folder and return the result.

    ``env_factory(seed)`` makes the training environment (default: the data protocol's env of
    the game variant); ``evaluate_fn(policy, seed)`` returns an evaluator result (default:
    ``workbench.evaluate.evaluate`` on the variant). ``stop_after`` ends the process's work after
    that many agent steps in total (a simulated kill, for the resume test): no final checkpoint."""
    from tqdm.auto import tqdm

    from workbench.train import _truncate_metrics, resolve_device

    settings = config.settings
    game = config.game_name
    n_actions = G.num_actions(game)
    device = resolve_device(config.device)
    config.check_hardware(device.type)
    if config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    run = open_online_run(config)
    run_dir = run.path
    lock = RunLock(run_dir).acquire()
    try:
        algo = ScaledQL.build(config.model_name, [game], settings.c51(), seed=config.seed)
        transferred: dict[str, Any] = {}
        if config.checkpoint:
            from workbench.paths import resolve_path

            transferred = transfer_encoder(algo, resolve_path(config.checkpoint), game)
        if config.encoder == "frozen":
            from workbench.transfer import freeze

            transferred["frozen"] = freeze(algo, ("encoder",))
        algo.to(device)
        params = [p for p in algo.model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=settings.lr, eps=settings.adam_eps)
        log_dir = run_dir / LOG_ROOT / game / "1" / "replay_logs" if config.log_replay else None
        replay = ReplayBuffer(settings.capacity, log_dir=log_dir)
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, 5]))
        env_factory = env_factory or _default_env_factory(config, settings.sticky_actions)
        if evaluate_fn is None:
            evaluate_fn = _evaluator(config)
        valid_mask = algo.model.valid_mask(torch.zeros(1, dtype=torch.long, device=device))

        step = episode = 0
        curve: list[dict[str, Any]] = []
        next_ckpt = checkpoint_every = config.checkpoint_every_steps
        finished_mid_episode = finished = False
        last = ckpt_io.latest_checkpoint(run_dir)
        if last is not None:
            state = ckpt_io.load_checkpoint(last, algo.model, target=algo.target_model, optimizer=optimizer,
                                            restore_rng=True)
            extra = state["extra"]
            load_replay(run_dir, extra["replay"], replay)
            rng.bit_generator.state = extra["rng"]
            step, episode, curve = int(extra["step"]), int(extra["episode"]), list(extra["curve"])
            next_ckpt = int(extra["next_checkpoint"])
            finished_mid_episode = bool(extra["mid_episode"])
            finished = bool(extra.get("finished", False))
            if finished and step < config.agent_steps and (finished_mid_episode or config.log_replay):
                why = ("its last checkpoint lies inside an episode" if finished_mid_episode else
                       "its logged replay already ends with the final partial dump")
                raise OnlineError(
                    f"{run_dir} finished at agent step {step} and cannot be extended to {config.agent_steps} steps: "
                    f"{why}. Start another run (another output_dir, or resume=False)")
            finished = finished and step >= config.agent_steps  # extended at an episode end: train on
        _truncate_metrics(run_dir / "metrics.jsonl", step)
        _truncate_metrics(run_dir / "episodes.jsonl", step)
        curve = [c for c in curve if c["step"] <= step]
        policy = algo.policy()
        gid = np.zeros(1, np.int64)
        stack = np.zeros(ATARI.stack_shape(1), np.uint8)
        total = config.agent_steps
        eval_every_steps = max(1, config.eval_every_frames // 4)

        eval_seconds = [0.0]

        def evaluate_now() -> None:
            t_eval = time.perf_counter()
            res = evaluate_fn(policy, config.seed)
            eval_seconds[0] += time.perf_counter() - t_eval
            scores = res["per_game"][game]["scores"]
            curve.append({"step": step, "frames": step * 4, "score": float(np.mean(scores)), "scores": scores,
                          "truncated": res["per_game"][game]["truncated"]})
            atomic_write_json(run_dir / CURVE_FILE, curve, indent=1)
            if step >= total:  # the final evaluation is the run's scores (what the analysis compares)
                atomic_write_json(run_dir / "eval" / "scores.json", {**res, "frames": step * 4})

        def save(mid_episode: bool, final: bool = False) -> Path:
            meta = save_replay(run_dir, step, replay)
            extra = {"step": step, "episode": episode, "curve": curve, "rng": rng.bit_generator.state,
                     "next_checkpoint": next_ckpt, "mid_episode": mid_episode, "finished": final, "replay": meta,
                     "settings": dataclasses.asdict(settings), "transferred": transferred}
            path = ckpt_io.save_checkpoint(run_dir, step, algo.model, target=algo.target_model, optimizer=optimizer,
                                           extra=json.loads(json.dumps(extra)))
            _prune_replays(run_dir)
            return path

        if not curve and step == 0:
            evaluate_now()
        bar = tqdm(total=total, initial=step, desc=f"online {game}", unit="step", disable=not progress)
        env = None
        t0, n0 = time.perf_counter(), step
        ep_return, ep_start, done, trunc = 0.0, step, True, False
        (run_dir / "eval").mkdir(exist_ok=True)
        try:
            eval_seconds[0] = 0.0
            t_loop = time.perf_counter()
            while step < total:
                if env is None or done:
                    if env is None:
                        env = env_factory(_episode_seed(config.seed, episode))
                    obs, _ = env.reset(seed=_episode_seed(config.seed, episode))
                    stack[:] = 0
                    stack[0, -1] = obs
                    ep_return, ep_start, done = 0.0, step, False
                eps = epsilon_at(settings, step)
                if rng.random() <= eps:
                    a = int(rng.integers(n_actions))
                else:
                    a = int(policy.act(stack, gid)[0])
                nobs, r, term, trunc, _ = env.step(a)
                done = bool(term or trunc)
                ep_return += float(r)
                replay.add(obs, a, float(np.clip(r, -1.0, 1.0)), done)
                if replay.add_count > settings.min_replay_history:
                    if step % settings.update_period == 0:
                        idx = replay.sample_indices(rng, settings.batch_size, settings.n_step)
                        batch = batch_tensors(replay.transitions(idx, settings.n_step, settings.gamma),
                                              settings.gamma, settings.n_step, valid_mask, device)
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                            loss, metrics = algo.loss(batch)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        if (step // settings.update_period) % 50 == 0:
                            rec = {"step": step + 1, "frames": (step + 1) * 4, "epsilon": eps,
                                   **{k: float(v) for k, v in metrics.items()},
                                   "steps_per_s": (step - n0) / max(time.perf_counter() - t0, 1e-9)}
                            if not np.isfinite(rec["loss/total"]):
                                raise FloatingPointError(f"non-finite loss at agent step {step + 1}; lower lr")
                            with open(run_dir / "metrics.jsonl", "a") as f:
                                f.write(json.dumps(rec) + "\n")
                    if step % settings.target_update_period == 0:
                        algo.update_target()
                step += 1
                bar.update(1)
                if done:
                    with open(run_dir / "episodes.jsonl", "a") as f:
                        f.write(json.dumps({"step": step, "episode": episode, "return": ep_return,
                                            "length": step - ep_start, "truncated": bool(trunc)}) + "\n")
                    episode += 1
                else:
                    obs = nobs
                    stack[0, :-1] = stack[0, 1:]
                    stack[0, -1] = obs
                if step % eval_every_steps == 0 and step < total:
                    evaluate_now()
                if stop_after is not None and step >= stop_after:
                    return OnlineResult(run_dir, ckpt_io.latest_checkpoint(run_dir) or run_dir, curve, {})
                if done and step >= next_ckpt and step < total:
                    while next_ckpt <= step:
                        next_ckpt += checkpoint_every
                    save(mid_episode=False)
            loop_seconds = time.perf_counter() - t_loop - eval_seconds[0]
            if not finished:  # (a finished run re-opened: nothing to train, log or save again)
                if not curve or curve[-1]["step"] != step:
                    evaluate_now()
                replay.log_final()
                save(mid_episode=not done, final=True)
        finally:
            bar.close()
            if env is not None and hasattr(env, "close"):
                env.close()
        summary = _summary(config, curve, replay, transferred)
        # this session's agent loop, evaluations left out (checkpoints and seeded resets stay in)
        summary["session"] = {"agent_steps": step - n0, "loop_seconds": round(loop_seconds, 3),
                              "steps_per_s": (step - n0) / loop_seconds if loop_seconds > 0 else None}
        atomic_write_json(run_dir / "summary.json", summary)
        final = ckpt_io.latest_checkpoint(run_dir) or run_dir
        result = OnlineResult(run_dir, final, curve, summary, log_dir if config.log_replay else None)
        result.figures = _figures(run, progress)
        return result
    finally:
        lock.release()


def read_curve(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The evaluation curve of an online run (``curve.json``): step, frames, score per point."""
    path = Path(run_dir) / CURVE_FILE
    if not path.is_file():
        return []
    return list(json.loads(path.read_text()))


def _evaluator(config: OnlineConfig) -> Callable[[Any, int], dict[str, Any]]:
    from workbench.evaluate import evaluate

    def run_eval(policy: Any, seed: int) -> dict[str, Any]:
        return evaluate(policy, [config.game_name], episodes_per_game=config.episodes_per_eval,
                        num_envs=min(4, config.episodes_per_eval), seed=seed, max_agent_steps=config.eval_cap,
                        mode=config.mode_or_none, difficulty=config.difficulty_or_none, progress=False, reps=100)

    return run_eval


def _summary(config: OnlineConfig, curve: list[dict[str, Any]], replay: ReplayBuffer,
             transferred: dict[str, Any]) -> dict[str, Any]:
    last = curve[-1] if curve else None
    return {"game": config.game_name, "mode": config.mode_or_none, "difficulty": config.difficulty_or_none,
            "init": config.init, "frames": last["frames"] if last else 0,
            "final_score": last["score"] if last else None, "curve_points": len(curve),
            "curve": [(c["frames"], c["score"]) for c in curve],
            "truncated_final_episodes": sum(bool(t) for t in last["truncated"]) if last else 0,
            "replay_add_count": replay.add_count, "replay_logged_checkpoints": replay.log_count,
            "transferred": transferred}


def _figures(run: Run, progress: bool) -> dict[str, Any]:
    from workbench.viz.analysis import online_learning_curve_figure
    from workbench.viz.export import save_figure

    fig = online_learning_curve_figure([run.path])
    out = run.path / "figures"
    out.mkdir(exist_ok=True)
    save_figure(fig, out / "learning_curve", png=False)
    return {"learning_curve": fig}


def main(argv: Sequence[str] | None = None) -> int:
    from workbench.settings import parse_args

    config, flags = parse_args(OnlineConfig, list(argv) if argv is not None else None,
                               prog="python -m workbench.online",
                               extra_flags={"dry_run": "print the resolved configuration and exit"})
    if flags["dry_run"]:
        print(json.dumps(config.resolve(), indent=2))
        return 0
    result = run_online(config)
    print(json.dumps(result.summary, indent=1))
    print(result.run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())


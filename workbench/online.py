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

**Logged replay** (``log_replay=True``): the replay buffer
(:class:`workbench.data.replay_buffer.ReplayBuffer`) *is* batch_rl's logged buffer. After
every add with ``add_count % capacity == capacity - 1`` the whole ring is written as the next
checkpoint (cursor ``capacity - 1``, the 1-step ``invalid_range`` of the public data's DQN
writers), and at the end the partial last lap is written with ``add_count`` set to the cursor
(``log_final_buffer``). Files land in ``<run>/data/replay/{Game}/1/replay_logs`` (a DQN-Replay
root: ``workbench.data.build.build_store`` and ``workbench.data.dqn_replay`` read it). The
agent itself samples with the rule of its own horizon (Dopamine's n-step ``invalid_range``), so it
never trains on the stale slot a 3-step window could reach across the cursor.

**Checkpoints and exact resume.** Checkpoints are written at episode ends (the first one after
every ``checkpoint_every`` agent steps) and at the end, all by :class:`OnlineState` (which alone
saves and restores the loop's state): weights, target, Adam state, every RNG and counter
(``workbench.checkpoint``), plus the replay buffer in ``<run>/replay/step_*.safetensors`` (atomic,
its sha256 in the checkpoint's ``state.json``). Every episode resets its environment with
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench import checkpoint as ckpt_io
from workbench import games as G
from workbench import jobs, tblog, threads
from workbench.algos.base import PRESETS
from workbench.algos.scaled_ql import ScaledQL, ScaledQLConfig
from workbench.baselines import reference_scores, summary_lines, verdict
from workbench.config import check_cpu_time
from workbench.data import dqn_replay as dr
from workbench.data.replay_buffer import ReplayBuffer, batch_tensors, load_replay, prune_replays, save_replay
from workbench.devices import available_memory, resolve_device
from workbench.envs import FRAME_SKIP, MAX_AGENT_STEPS, AtariProtocolEnv, FrameStacker, check_variant
from workbench.evaluate import evaluate
from workbench.fileio import append_text, atomic_write_json, check_free_space, read_json
from workbench.geometry import ATARI
from workbench.jobs import Job, locked
from workbench.models.qnet import PRESETS as QNET_PRESETS
from workbench.paths import resolve_path
from workbench.progress import progress_bar
from workbench.run import Run
from workbench.settings import from_params
from workbench.train import truncate_metrics
from workbench.transfer import freeze, load_partial

__all__ = ["ENCODER_MODES", "OnlineConfig", "OnlineResult", "OnlineSettings", "OnlineState", "epsilon_at",
           "linearly_decaying_epsilon", "run_online", "main"]

STACK = dr.STACK_SIZE
ENCODER_MODES = ("finetuned", "frozen")
#: the game id of the agent's one game, for its batch-1 action selection
_GID = np.zeros(1, np.int64)
#: the run's logged replay, a DQN-Replay root
LOG_ROOT = Path("data") / "replay"
REPLAY_DIR = "replay"
CURVE_FILE = "curve.json"


#: bytes of one replay row: its frame, action (int32), reward (float32) and terminal (uint8)
REPLAY_ROW_BYTES = ATARI.frame_bytes + 9


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
    eval_references: bool = True
    """Also play random and every constant action under the final evaluation's protocol, so the
    summary says whether the agent beats them (``verdict``)."""

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
        check_variant(G.canonical_game(self.game), self.mode_or_none, self.difficulty_or_none)
        for name in ("frames", "capacity", "eval_every", "eval_episodes", "eval_max_steps", "checkpoint_every", "seed",
                     "cpu_threads"):
            if getattr(self, name) < 0:
                raise OnlineError(f"{name} must be >= 0 (0 = the preset's), got {getattr(self, name)}")
        if self.frames and self.frames < 4:
            raise OnlineError(f"frames must be >= 4 (one agent step), got {self.frames}")
        if not (np.isfinite(self.lr) and self.lr >= 0):
            raise OnlineError(f"lr must be a finite number >= 0 (0 = the preset's), got {self.lr}")
        if self.eval_max_steps > MAX_AGENT_STEPS:
            raise OnlineError(f"eval_max_steps must be <= {MAX_AGENT_STEPS} (the protocol's cap), "
                              f"got {self.eval_max_steps}")
        if self.model and self.model not in QNET_PRESETS:
            raise OnlineError(f"unknown model {self.model!r}; valid models: {', '.join(QNET_PRESETS)}")
        resolve_device(self.device)
        if self.checkpoint:  # missing or pickled: an error naming it, before any work
            ckpt_io.resolve_checkpoint(resolve_path(self.checkpoint))
        self._check_replay_fits()  # the resolved hyper-parameters validate themselves on the way

    def _check_replay_fits(self) -> None:
        """The replay ring lives in memory and a logged checkpoint writes the whole ring: refuse a
        capacity this machine cannot hold before anything is created."""
        capacity = self.settings.capacity
        ring = capacity * REPLAY_ROW_BYTES
        free = available_memory()
        if free is not None and ring > free:
            raise OnlineError(f"capacity={capacity:,} rows needs {ring / 2**30:,.1f} GiB of memory for the replay "
                              f"ring, and {free / 2**30:,.1f} GiB is available; at most {free // REPLAY_ROW_BYTES:,} "
                              "rows fit (the public data's ring: 1,000,000 rows, 6.6 GiB)")
        if self.log_replay:  # one logged checkpoint, uncompressed at worst
            check_free_space(self.run_dir, ring, f"a logged replay checkpoint of {capacity:,} rows")

    @classmethod
    def from_params(cls, **params: Any) -> OnlineConfig:
        """From papermill parameters: unknown names and ill-typed values are errors."""
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
        values = {**dataclasses.asdict(base), "capacity": self.capacity or base.capacity, **self.agent_args}
        return from_params(OnlineSettings, values, what="agent_args setting")

    @property
    def total_frames(self) -> int:
        return self.frames or (3_000_000 if self.preset == "paper" else 24_000)

    @property
    def agent_steps(self) -> int:
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
            source = Run.open(resolve_path(self.checkpoint)).model
            if self.model and self.model != source:
                raise OnlineError(f"model {self.model!r} differs from the checkpoint's {source!r}: the encoder "
                                  "transfers only into the same architecture; leave model='' to use it")
            return source
        return self.model or ("resnet101" if self.preset == "paper" else "resnet-tiny")

    @property
    def run_dir(self) -> str:
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
        s = self.settings
        updates = max(0, self.agent_steps - s.min_replay_history) // s.update_period
        check_cpu_time(f"makes {updates:,} updates of batch {s.batch_size} with {self.model_name} over "
                       f"{self.agent_steps:,} agent steps (updates alone)", updates * s.batch_size, self.model_name,
                       preset=self.preset, device_type=device_type, allow_slow_cpu=self.allow_slow_cpu)

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


ONLINE = Job("online", entries=("checkpoints", "replay", "metrics.jsonl", "episodes.jsonl", "eval", "figures",
                                CURVE_FILE, "summary.json", "data", "history.jsonl", tblog.FOLDER),
             # a resumed run may change: a longer or shorter run, more evaluation, another device
             resumable=("frames", "eval_episodes", "eval_every", "eval_max_steps", "checkpoint_every", "device",
                        "cpu_threads", "resume", "output_dir", "allow_slow_cpu", "eval_references"))


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
    return ONLINE.open_run(config, [resolve_path(config.checkpoint)] if config.checkpoint else [])


def transfer_encoder(algo: ScaledQL, checkpoint: str | os.PathLike[str], game: str) -> dict[str, Any]:
    """Load the encoder of a pretrained run's checkpoint into ``algo`` (``workbench.transfer``):
    trunk and heads keep their fresh initialization (the paper's choice), the target network
    follows. The checkpoint is verified first (sha256, names, shapes, dtypes, finite). Returns the
    transfer report (what was transferred, re-initialized, new and dropped)."""
    report = load_partial(checkpoint, algo, [game], transfer=("encoder",), reinitialize=("trunk", "heads"))
    return report.as_dict()


def _default_env_factory(config: OnlineConfig, sticky: float) -> EnvFactory:
    def make(seed: int) -> Any:
        return AtariProtocolEnv(config.game_name, "data", mode=config.mode_or_none,
                                difficulty=config.difficulty_or_none, seed=seed, repeat_action_probability=sticky)

    return make


@dataclass
class OnlineState:
    """Everything the loop carries from one agent step to the next, and the one place that saves
    and restores it (exact resume): the networks and Adam (``workbench.checkpoint``, which also
    keeps the global RNGs), the replay buffer (``<run>/replay/step_*.safetensors``, its sha256 in
    the checkpoint), the agent's RNG (exploration and replay sampling), the counters and the
    evaluation curve. ``settings`` and ``transferred`` are recorded with every checkpoint."""

    algo: ScaledQL
    optimizer: torch.optim.Optimizer
    replay: ReplayBuffer
    rng: np.random.Generator
    settings: OnlineSettings
    transferred: dict[str, Any]
    next_checkpoint: int
    step: int = 0
    episode: int = 0
    curve: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    """The run's final checkpoint was restored and already reaches the configured steps."""

    @classmethod
    def build(cls, config: OnlineConfig, device: torch.device, run_dir: Path) -> OnlineState:
        """A fresh agent for ``config``: the network (its encoder transferred and maybe frozen),
        Adam over its trainable parameters, the replay buffer (logging under ``run_dir`` with
        ``log_replay``) and the agent's RNG."""
        settings, game = config.settings, config.game_name
        algo = ScaledQL.build(config.model_name, [game], settings.c51(), seed=config.seed)
        transferred = transfer_encoder(algo, resolve_path(config.checkpoint), game) if config.checkpoint else {}
        if config.encoder == "frozen":
            transferred["frozen"] = freeze(algo, ("encoder",))
        algo.to(device)
        params = [p for p in algo.model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=settings.lr, eps=settings.adam_eps)
        log_dir = run_dir / LOG_ROOT / game / "1" / "replay_logs" if config.log_replay else None
        replay = ReplayBuffer(settings.capacity, log_dir=log_dir)
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, 5]))
        return cls(algo, optimizer, replay, rng, settings, transferred, config.checkpoint_every_steps)

    @classmethod
    def open(cls, config: OnlineConfig, device: torch.device, run_dir: Path) -> OnlineState:
        """The agent of ``config`` at the run's last checkpoint (:meth:`load`), or fresh."""
        state = cls.build(config, device, run_dir)
        state.load(run_dir, config)
        return state

    def save(self, run_dir: Path, *, mid_episode: bool, final: bool = False) -> Path:
        """Checkpoint the state at ``step`` (``final``: the run's last one; ``mid_episode``: it
        cannot be extended exactly); replay files no kept checkpoint names are deleted."""
        replay_meta = save_replay(run_dir / REPLAY_DIR, self.step, self.replay)
        extra = {"step": self.step, "episode": self.episode, "curve": self.curve, "rng": self.rng.bit_generator.state,
                 "next_checkpoint": self.next_checkpoint, "mid_episode": mid_episode, "finished": final,
                 "replay": replay_meta, "settings": dataclasses.asdict(self.settings),
                 "transferred": self.transferred}
        path = ckpt_io.save_checkpoint(run_dir, self.step, self.algo.model, target=self.algo.target_model,
                                       optimizer=self.optimizer, extra=json.loads(json.dumps(extra)))
        kept = [ck for ck in (run_dir / "checkpoints").glob("step_*") if ckpt_io.is_own_checkpoint(ck)]
        prune_replays(run_dir / REPLAY_DIR, {_replay_file(ck) for ck in kept})
        return path

    def load(self, run_dir: Path, config: OnlineConfig) -> None:
        """Restore the run's last checkpoint, if it has one, and cut the run's logs back to its
        step. A finished run whose end cannot be extended exactly (its last checkpoint inside an
        episode, or its logged replay closed) refuses more steps."""
        last = ckpt_io.latest_checkpoint(run_dir)
        if last is not None:
            extra = ckpt_io.load_checkpoint(last, self.algo.model, target=self.algo.target_model,
                                            optimizer=self.optimizer, restore_rng=True)["extra"]
            load_replay(run_dir / REPLAY_DIR, extra["replay"], self.replay)
            self.rng.bit_generator.state = extra["rng"]
            self.step, self.episode, self.curve = int(extra["step"]), int(extra["episode"]), list(extra["curve"])
            self.next_checkpoint = int(extra["next_checkpoint"])
            finished, mid_episode = bool(extra.get("finished", False)), bool(extra["mid_episode"])
            if finished and self.step < config.agent_steps and (mid_episode or config.log_replay):
                why = ("its last checkpoint lies inside an episode" if mid_episode else
                       "its logged replay already ends with the final partial dump")
                raise OnlineError(
                    f"{run_dir} finished at agent step {self.step} and cannot be extended to {config.agent_steps} "
                    f"steps: {why}. Start another run (another output_dir, or resume=False)")
            self.finished = finished and self.step >= config.agent_steps  # extended at an episode end: train on
        truncate_metrics(run_dir / "metrics.jsonl", self.step)
        truncate_metrics(run_dir / "episodes.jsonl", self.step)
        self.curve = [c for c in self.curve if c["step"] <= self.step]


def _replay_file(ckpt: Path) -> str | None:
    return ((ckpt_io.read_state(ckpt).get("extra") or {}).get("replay") or {}).get("file")


def run_online(
    config: OnlineConfig, *, progress: bool = True, env_factory: EnvFactory | None = None,
    evaluate_fn: Callable[[Any, int], dict[str, Any]] | None = None, stop_after: int | None = None,
) -> OnlineResult:
    """Train the online agent of ``config`` in its run folder and return the result.

    ``env_factory(seed)`` makes the training environment (default: the data protocol's env of
    the game variant); ``evaluate_fn(policy, seed)`` returns an evaluator result (default:
    ``workbench.evaluate.evaluate`` on the variant). ``stop_after`` ends the process's work after
    that many agent steps in total (a simulated kill, for the resume test): no final checkpoint."""
    s, total = config.settings, config.agent_steps
    device = resolve_device(config.device)
    references = config.eval_references and evaluate_fn is None  # the lines of the default protocol
    with locked(config):  # the hardware check, then the lock, before the folder is touched
        if config.cpu_threads:  # the run's own setting, over the job's thread policy
            torch.set_num_threads(config.cpu_threads)
        run = open_online_run(config)
        run_dir = run.path
        state = OnlineState.open(config, device, run_dir)  # a fresh agent, or the run's last checkpoint
        algo, optimizer, replay, rng = state.algo, state.optimizer, state.replay, state.rng
        env_factory = env_factory or _default_env_factory(config, s.sticky_actions)
        evaluate_fn = evaluate_fn or _evaluator(config)
        policy, n_actions, stack = algo.policy(), G.num_actions(config.game_name), FrameStacker(1)
        valid_mask = algo.model.valid_mask(torch.zeros(1, dtype=torch.long, device=device))
        eval_every = max(1, config.eval_every_frames // FRAME_SKIP)
        # TensorBoard view of the logs; steps after the checkpoint an interrupted session logged are dropped
        events = tblog.open_log(run_dir, purge_from=state.step + 1)
        if state.step == 0:  # the configuration, once per run
            events.config({"run": tblog.run_config(run_dir)})
        if not state.curve and state.step == 0:
            _evaluate(state, evaluate_fn, policy, config, run_dir, events)
        (run_dir / "eval").mkdir(exist_ok=True)
        done, n0, t0, eval_seconds = True, state.step, time.perf_counter(), 0.0
        with (events, progress_bar(total=total, initial=state.step, desc=f"online {config.game_name}", unit="step",
                                   disable=not progress) as bar,
              _closing(env_factory(_episode_seed(config.seed, state.episode))) as env):
            rebalance = threads.ThreadRebalancer() if device.type == "cpu" and not config.cpu_threads else None
            while state.step < total:
                if rebalance is not None:  # torch's threads follow what other processes leave free
                    rebalance.tick()
                if done:  # a new episode: its own seeded reset, a zero-padded frame stack
                    obs, _ = env.reset(seed=_episode_seed(config.seed, state.episode))
                    stack.reset([0], obs[None])
                    ep_return, ep_start, done = 0.0, state.step, False
                # act: epsilon-greedy in expected Q (epsilon decays linearly after the warm-up)
                eps = epsilon_at(s, state.step)
                a = int(rng.integers(n_actions)) if rng.random() <= eps else int(policy.act(stack.stacks, _GID)[0])
                # step the environment; store the transition, its reward clipped to [-1, 1]
                nobs, r, term, trunc, _ = env.step(a)
                done, ep_return = bool(term or trunc), ep_return + float(r)
                replay.add(obs, a, float(np.clip(r, -1.0, 1.0)), done)
                if replay.add_count > s.min_replay_history:  # learning starts after the warm-up
                    if state.step % s.update_period == 0:  # one Adam step on a batch of n-step transitions
                        idx = replay.sample_indices(rng, s.batch_size, s.n_step)
                        batch = batch_tensors(replay.transitions(idx, s.n_step, s.gamma), s.gamma, s.n_step,
                                              valid_mask, device)
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                            loss, metrics = algo.loss(batch)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        if (state.step // s.update_period) % 50 == 0:
                            rate = (state.step - n0) / max(time.perf_counter() - t0, 1e-9)
                            _log_update(run_dir, state.step + 1, eps, metrics, rate, events)
                    if state.step % s.target_update_period == 0:  # target network: a copy of the online one
                        algo.update_target()
                state.step += 1
                bar.update(1)
                if done:
                    _append_jsonl(run_dir / "episodes.jsonl", {"step": state.step, "episode": state.episode,
                                  "return": ep_return, "length": state.step - ep_start, "truncated": bool(trunc)})
                    events.scalars({"return": ep_return, "length": state.step - ep_start}, state.step, "episode/")
                    state.episode += 1
                else:
                    obs = nobs
                    stack.push(obs[None])
                # evaluate (a point of the learning curve); checkpoint at the first episode end due
                if state.step % eval_every == 0 and state.step < total:
                    eval_seconds += _evaluate(state, evaluate_fn, policy, config, run_dir, events)
                if stop_after is not None and state.step >= stop_after:  # a simulated kill
                    return OnlineResult(run_dir, ckpt_io.latest_checkpoint(run_dir) or run_dir, state.curve, {})
                if done and state.next_checkpoint <= state.step < total:
                    while state.next_checkpoint <= state.step:
                        state.next_checkpoint += config.checkpoint_every_steps
                    state.save(run_dir, mid_episode=False)
            loop_seconds = time.perf_counter() - t0 - eval_seconds
            if not state.finished:  # (a finished run re-opened: nothing to train, log or save again)
                if not state.curve or state.curve[-1]["step"] != state.step:
                    _evaluate(state, evaluate_fn, policy, config, run_dir, events)
                replay.log_final()
                state.save(run_dir, mid_episode=not done, final=True)
        return _result(run, config, state, state.step - n0, loop_seconds, progress, references)


@contextmanager
def _closing(env: Any) -> Iterator[Any]:
    """``env``, closed on exit (when it has ``close``)."""
    try:
        yield env
    finally:
        if hasattr(env, "close"):
            env.close()


def _result(run: Run, config: OnlineConfig, state: OnlineState, session_steps: int, loop_seconds: float,
            progress: bool, references: bool = False) -> OnlineResult:
    """The finished run's result; its summary written to ``summary.json``, its figures drawn.
    ``references``: random and the constant actions under the evaluation's protocol (once per
    run, kept in ``eval/references/scores.json``), and the summary's verdict against them."""
    summary = _summary(config, state, session_steps, loop_seconds)
    scores_path = run.path / "eval" / "scores.json"
    if scores_path.is_file():  # the final evaluation: what its scores are comparable to
        final = read_json(scores_path)
        summary.update({k: final.get(k) for k in ("max_agent_steps", "truncated_episodes", "comparable_to_papers",
                                                  "note")})
    if references and summary["final_score"] is not None:
        ref_path = run.path / "eval" / "references" / "scores.json"
        if ref_path.is_file():
            refs = read_json(ref_path)
        else:
            refs = reference_scores([config.game_name], episodes=config.episodes_per_eval,
                                    num_envs=min(4, config.episodes_per_eval), seed=config.seed,
                                    max_agent_steps=config.eval_cap, mode=config.mode_or_none,
                                    difficulty=config.difficulty_or_none, progress=progress)
            ref_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(ref_path, refs)
        summary["baselines"] = summary_lines(refs)
        summary["verdict"] = verdict({config.game_name: summary["final_score"]}, refs)
    atomic_write_json(run.path / "summary.json", summary)
    final = ckpt_io.latest_checkpoint(run.path) or run.path
    result = OnlineResult(run.path, final, state.curve, summary, state.replay.log_dir)
    result.figures = _figures(run, progress)
    return result


def _evaluate(state: OnlineState, evaluate_fn: Callable[[Any, int], dict[str, Any]], policy: Any,
              config: OnlineConfig, run_dir: Path, events: tblog.EventLog | None = None) -> float:
    """Evaluate ``policy`` at ``state.step``: a point of the learning curve (``curve.json``); the
    final one is also the run's scores (``eval/scores.json``, what the analysis compares). Returns
    the seconds it took."""
    t = time.perf_counter()
    res = evaluate_fn(policy, config.seed)
    seconds = time.perf_counter() - t
    game, step = config.game_name, state.step
    scores = res["per_game"][game]["scores"]
    state.curve.append({"step": step, "frames": step * FRAME_SKIP, "score": float(np.mean(scores)),
                        "scores": scores, "truncated": res["per_game"][game]["truncated"]})
    atomic_write_json(run_dir / CURVE_FILE, state.curve, indent=1)
    if events is not None:
        events.scores(res, step)
    if step >= config.agent_steps:
        atomic_write_json(run_dir / "eval" / "scores.json", {**res, "frames": step * FRAME_SKIP})
    return seconds


def _log_update(run_dir: Path, step: int, epsilon: float, metrics: dict[str, Any], steps_per_s: float,
                events: tblog.EventLog | None = None) -> None:
    """A line of ``metrics.jsonl`` (``step``: the agent steps done); a non-finite loss stops the run."""
    rec = {"step": step, "frames": step * FRAME_SKIP, "epsilon": epsilon, **{k: float(v) for k, v in metrics.items()},
           "steps_per_s": steps_per_s}
    if not np.isfinite(rec["loss/total"]):
        raise FloatingPointError(f"non-finite loss at agent step {step}; lower lr")
    _append_jsonl(run_dir / "metrics.jsonl", rec)
    if events is not None:
        events.scalars(rec)


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    append_text(path, json.dumps(record) + "\n", "log file")  # never through a symbolic link


def read_curve(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The evaluation curve of an online run (``curve.json``): step, frames, score per point."""
    path = Path(run_dir) / CURVE_FILE
    if not path.is_file():
        return []
    return list(json.loads(path.read_text()))


def _evaluator(config: OnlineConfig) -> Callable[[Any, int], dict[str, Any]]:
    def run_eval(policy: Any, seed: int) -> dict[str, Any]:
        return evaluate(policy, [config.game_name], episodes_per_game=config.episodes_per_eval,
                        num_envs=min(4, config.episodes_per_eval), seed=seed, max_agent_steps=config.eval_cap,
                        mode=config.mode_or_none, difficulty=config.difficulty_or_none, progress=False, reps=100)

    return run_eval


def _summary(config: OnlineConfig, state: OnlineState, session_steps: int, loop_seconds: float) -> dict[str, Any]:
    curve = state.curve
    last = curve[-1] if curve else None
    return {"run_dir": config.run_dir, "game": config.game_name, "mode": config.mode_or_none,
            "difficulty": config.difficulty_or_none, "init": config.init, "frames": last["frames"] if last else 0,
            "final_score": last["score"] if last else None, "curve_points": len(curve),
            "curve": [(c["frames"], c["score"]) for c in curve],
            "truncated_final_episodes": sum(bool(t) for t in last["truncated"]) if last else 0,
            "replay_add_count": state.replay.add_count, "replay_logged_checkpoints": state.replay.log_count,
            "transferred": state.transferred,
            # this session's agent loop, evaluations left out (checkpoints and seeded resets stay in)
            "session": {"agent_steps": session_steps, "loop_seconds": round(loop_seconds, 3),
                        "steps_per_s": session_steps / loop_seconds if loop_seconds > 0 else None}}


def _figures(run: Run, progress: bool) -> dict[str, Any]:
    # (plotly comes with the notebooks extra: loaded only when a run draws its figures)
    from workbench.viz.analysis import online_learning_curve_figure  # noqa: PLC0415  (plotly, an optional extra)
    from workbench.viz.export import save_figure  # noqa: PLC0415  (plotly, an optional extra)

    fig = online_learning_curve_figure([run.path])
    out = run.path / "figures"
    out.mkdir(exist_ok=True)
    save_figure(fig, out / "learning_curve", png=False)
    return {"learning_curve": fig}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workbench.online --game Breakout --mode 12 ...``; ``--dry-run`` prints the
    resolved configuration as JSON and touches no file."""
    return jobs.main(OnlineConfig, run_online, argv, "python -m workbench.online")


if __name__ == "__main__":
    sys.exit(main())

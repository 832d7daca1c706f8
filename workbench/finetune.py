"""Offline fine-tuning to an unseen game: both papers' transfer protocols (notebook 03).

One job, end to end, each step one call::

    config = FinetuneConfig.from_params(checkpoint="runs/pretrain-resnet-tiny", game="Pong")
    result = finetune(config)          # run folder of kind "finetune"
      open the run                     # config.json records the source checkpoint and, after
                                       # loading, what was transferred (resolved.transfer)
      data: record (dataset='') or build the game's store with the paper's split
      algo = spec.build(model, (game, *source games) | (game,), settings, seed)
      transfer.load_partial(source, algo, ...)   # method=transfer; scratch/bc load nothing
      for stage: [freeze encoder] train (in snapshot chunks for report=best_snapshot)
      evaluate on the game -> eval/scores.json (flagged with the method and the report rule)

**Scaled QL protocol** (paper 000, Sec. 5.2, App. B.4; the checkpoint's algorithm: scaled_ql,
cql_mse or bc). 1% of the held-out game's DQN-Replay data, uniformly subsampled (split
``finetune_1pct``). The model holds the new game first, then the source's games: the visual
encoder and the old games' heads are copied, the feed-forward trunk is re-initialized, and the
new game gets its own fresh head (``transfer.load_partial(transfer=("encoder", "heads"),
reinitialize=("trunk",))``). ``encoder=frozen`` keeps the encoder bit-identical (its parameters
are excluded from the optimizer); ``finetuned`` trains it. Batch 32, lr 5e-5, CQL alpha and
every other setting as in pretraining (B.4: "identical hyperparameters"), 300k steps under
``preset=paper``. Baselines on the same data: ``scratch`` (the same algorithm and architecture,
randomly initialized, one head) and ``bc`` (the MTBC network with a BC loss, randomly
initialized). The old games' heads ride along unchanged (they get no gradient): they no longer
score their games, whose trunk was re-initialized.

**JOWA protocol** (paper 003, Sec. 4.3, App. E.2). 5k transitions drawn uniformly from the last
20% (expert) of the held-out game's data (split ``finetune_5k_expert``). Every part is
transferred; the new game gets new task-embedding rows (and its action mask from its name), and
every component is trained in both stages (the tokenizer too). Stage 1: 3k steps on real
segments with ``L_tokenizer + beta L_world + L_action`` (TD + CQL). Stage 2: 7k steps; each
batch is 3/4 real 6-step segments (24 of 32) and 1/4 synthetic ones (8), whose last 2 steps the
planner imagines (beam search with H = K = 2: its chosen actions, the world model's predicted
rewards and greedily decoded frame tokens; no pixels), under the COMBO loss instead of CQL
(``losses.combo_terms``): Q is pushed down on the imagined states and up on the dataset's
state-actions, and the TD error covers both parts. ``scratch`` trains the same model from a
random initialization (the paper: 100k steps for JOWA-150M (scratch), split 3:7 here).

**Reporting.** ``report=final`` (default, honest) scores the last checkpoint. ``best_snapshot``
(the JOWA paper's rule) evaluates a snapshot every ``snapshot_every`` steps and reports the best:
a selection on the evaluation environment, flagged in ``eval/scores.json`` (``finetune.selection``)
and its note; the final score is kept in ``eval/scores_final.json`` and the chosen checkpoint in
``best_snapshot/checkpoints``.

``python -m workbench.finetune --checkpoint runs/pretrain-resnet-tiny --game Pong`` runs the
same job from a shell (``--dry-run`` prints the resolved configuration).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from workbench import checkpoint as ckpt_io
from workbench import transfer as T
from workbench.algos.base import PRESETS, AlgoSpec, EvalOptions, Stage, StageContext, get_algo
from workbench.fileio import atomic_write_json, atomic_write_text, read_json
from workbench.run import Run, RunLock
from workbench.settings import from_params, namespace_params

__all__ = ["FinetuneConfig", "FinetuneResult", "JOWAFinetune", "finetune", "main", "namespace_params",
           "synthesize_segments"]

METHODS = ("transfer", "scratch", "bc", "dt_transfer")
TRANSFER_METHODS = ("transfer", "dt_transfer")
"""Methods that start from the checkpoint's weights: ``transfer`` for Scaled QL and JOWA
checkpoints, ``dt_transfer`` for a Multi-Game Decision Transformer's (mgdt)."""
ENCODER_MODES = ("frozen", "finetuned")
REPORTS = ("final", "best_snapshot")
Q_FAMILY = ("scaled_ql", "cql_mse", "bc")
FAMILIES = {**{name: "q" for name in Q_FAMILY}, "jowa": "jowa", "mgdt": "dt"}
PAPER_SPLITS = {"q": "finetune_1pct", "jowa": "finetune_5k_expert", "dt": "finetune_1pct"}
"""The papers' fine-tuning data: Scaled QL 1% uniform; JOWA 5k uniform from the last 20%; "DT
(pre-trained)" in Scaled QL's Figure 7 on the same 1% (Lee et al.'s protocol, which paper 000
follows)."""
HELD_OUT_GAMES = {"q": ("Alien", "MsPacman", "Pong", "SpaceInvaders", "StarGunner"),
                  "jowa": ("Gravitar", "MsPacman", "Pong", "Robotank", "YarsRevenge"),
                  "dt": ("Alien", "MsPacman", "Pong", "SpaceInvaders", "StarGunner")}
FAMILY_METHODS = {"q": ("transfer", "scratch", "bc"), "jowa": ("transfer", "scratch"), "dt": ("dt_transfer", "scratch")}
PROTOCOLS = {"q": "scaled_ql", "jowa": "jowa", "dt": "mgdt"}
"""The papers' held-out games (Scaled QL Figure 7; JOWA Table 3). Others are allowed."""
RESUMABLE_FIELDS = ("steps", "eval_episodes", "eval_max_steps", "num_envs", "planning_horizon", "beam_width",
                    "device", "resume", "output_dir", "allow_slow_cpu")
"""Parameters that may change when a fine-tuning run is resumed."""

# JOWA stage 2 (App. E.2): 6-step segments whose last 2 steps the planner synthesizes with
# H = K = 2, in batches of 3/4 real and 1/4 synthetic segments.
JOWA_SEGMENT_STEPS = 6
JOWA_SYNTHETIC_STEPS = 2
JOWA_PLAN_HORIZON = 2
JOWA_PLAN_BEAM = 2
JOWA_SYNTHETIC_FRACTION = 0.25


@dataclass(frozen=True)
class FinetuneScale:
    """Steps, batch, learning rate and evaluation of one preset for one protocol."""

    stage_steps: tuple[tuple[str, int], ...]
    batch_size: int
    lr: float
    eval_episodes: int
    eval_max_steps: int
    record_steps: int
    snapshot_every: int
    log_every: int
    checkpoint_every: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Settings the preset fixes over the checkpoint's (paper: the papers' target periods, also
    when the checkpoint was pretrained at CPU scale)."""


def finetune_scale(family: str, preset: str, model: str, method: str) -> FinetuneScale:
    """The protocol's scale: the papers' under ``paper``; minutes on 2 cores under ``cpu``."""
    tiny = model.endswith("-tiny")
    if family in ("q", "dt"):
        # DT (pre-trained) is fine-tuned on Scaled QL's protocol (paper 000, Figure 7): the same
        # data, batch, lr and steps; MGDT has no target network (no target period to fix).
        dt = family == "dt"
        # A recording (dataset='') of 10,000 steps: the 1% split keeps about 100 transitions.
        if preset == "paper":  # App. B.4: batch 32, lr 5e-5, 300k steps
            return FinetuneScale((("train", 300_000),), batch_size=32, lr=5e-5, eval_episodes=16,
                                 eval_max_steps=27_000, record_steps=10_000, snapshot_every=10_000, log_every=100,
                                 checkpoint_every=10_000, settings={} if dt else {"target_update_period": 2000})
        steps, batch = (200, 32) if tiny else (10, 8)
        return FinetuneScale((("train", steps),), batch_size=batch, lr=5e-5, eval_episodes=2,
                             eval_max_steps=1000 if tiny else 250, record_steps=10_000, snapshot_every=50,
                             log_every=10, checkpoint_every=100, settings={} if dt else {"target_update_period": 50})
    # A recording of 6,000 steps: enough valid starts for the 5k-transition split.
    if preset == "paper":  # App. E.2: batch 32, lr 5e-5, 3k + 7k steps (scratch: 100k, split 3:7 here)
        total = 100_000 if method == "scratch" else 10_000
        return FinetuneScale((("stage1", total * 3 // 10), ("stage2", total * 7 // 10)), batch_size=32, lr=5e-5,
                             eval_episodes=16, eval_max_steps=27_000, record_steps=6_000, snapshot_every=1_000,
                             log_every=100, checkpoint_every=1_000, settings={"target_update_period": 1000})
    steps, batch = (20, 8) if tiny else (4, 4)
    return FinetuneScale((("stage1", steps), ("stage2", steps)), batch_size=batch, lr=5e-5, eval_episodes=2,
                         eval_max_steps=100, record_steps=6_000, snapshot_every=10, log_every=5, checkpoint_every=100,
                         settings={"target_update_period": 50})


@dataclass(frozen=True)
class DataRequest:
    """What :func:`workbench.pipeline.prepare_dataset` needs (its ``DataSource``)."""

    game_list: tuple[str, ...]
    dataset: str
    split: str
    runs: str
    record_steps: int
    seed: int


@dataclass(frozen=True)
class FinetuneConfig:
    """Parameters of ``notebooks/03_finetune.ipynb`` (and of ``python -m workbench.finetune``)."""

    checkpoint: str = "runs/pretrain-resnet-tiny"
    """The pretrained run (its folder, its checkpoints/ folder or one checkpoint)."""
    game: str = "Pong"
    """The held-out game to fine-tune on (Scaled QL: Alien, MsPacman, Pong, SpaceInvaders,
    StarGunner; JOWA: Gravitar, MsPacman, Pong, Robotank, YarsRevenge)."""
    dataset: str = ""
    """A built store holding the game, or a DQN-Replay root (then `split` and `runs` apply);
    '' records a small dataset of the game first (with a random policy, as notebook 02)."""
    split: str = "auto"
    """Data split: 'auto' = the paper's for the checkpoint's method (Scaled QL: finetune_1pct,
    1% uniform; JOWA: finetune_5k_expert, 5k uniform from the last 20%), or all | first:K |
    last:F | fraction:F | n:N | a preset name."""
    runs: str = "1"
    """Comma-separated DQN-Replay run numbers (with a DQN-Replay root)."""
    record_steps: int = 0
    """Agent steps recorded when no dataset is given; 0 takes the preset's."""
    method: str = "transfer"
    """transfer (from a Scaled QL-family or JOWA checkpoint) | dt_transfer (from an mgdt
    checkpoint: every weight) | scratch (same architecture, random init) | bc (BC loss, random
    init; Scaled QL-family checkpoints)."""
    encoder: str = "finetuned"
    """Scaled QL: frozen | finetuned (the transferred encoder's two settings of the paper). JOWA
    trains every component: finetuned only."""
    algo_args: dict[str, Any] = field(default_factory=dict)
    """Changes to the algorithm's settings (default: the checkpoint's own, as B.4 prescribes)."""
    steps: int = 0
    """Gradient steps in all (JOWA: split 3:7 between its stages); 0 takes the preset's."""
    batch_size: int = 0
    """Batch size; 0 takes the preset's (both papers: 32)."""
    lr: float = 0.0
    """Learning rate; 0 takes the preset's (both papers: 5e-5)."""
    seed: int = 0
    """Seed of data recording and subsampling, initialization, sampling and evaluation."""
    preset: str = "cpu"
    """'cpu' (minutes on 2 cores) or 'paper' (the papers' steps, batch and evaluation)."""
    output_dir: str = ""
    """Run folder; '' = runs/finetune-<source run>-<game>-<method>[-frozen]-seed<seed>."""
    eval_episodes: int = 0
    """Evaluation episodes (per snapshot with best_snapshot); 0 takes the preset's (paper: 16)."""
    eval_max_steps: int = 0
    """Agent-step cap per evaluation episode; 0 takes the preset's (paper: 27000)."""
    report: str = "final"
    """final (the last checkpoint; honest) | best_snapshot (the best of the snapshots evaluated
    during fine-tuning, JOWA's rule; flagged as selection on the evaluation environment)."""
    snapshot_every: int = 0
    """Steps between evaluated snapshots with report=best_snapshot; 0 takes the preset's."""
    num_envs: int = 4
    """Parallel evaluation environments."""
    planning_horizon: int = 2
    """JOWA evaluation: beam-search horizon H (0 = greedy in Q)."""
    beam_width: int = 2
    """JOWA evaluation: beam width K (1 = greedy in Q)."""
    device: str = "auto"
    """'auto', 'cpu', 'cuda' or 'cuda:N'."""
    resume: bool = True
    """Continue the run in output_dir (its configuration must match); False starts it afresh."""
    allow_slow_cpu: bool = False
    """Let preset='paper' train without a GPU (it stops with the estimated time otherwise)."""

    # ---- validation -------------------------------------------------------------------------

    def __post_init__(self) -> None:
        from workbench.config import _check_device, _check_eval_cap
        from workbench.data.splits import parse_runs, parse_split
        from workbench.games import canonical_game, geometry_of, suite_of

        for name, value, choices in (("method", self.method, METHODS), ("encoder", self.encoder, ENCODER_MODES),
                                     ("report", self.report, REPORTS), ("preset", self.preset, PRESETS)):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; valid: {' | '.join(choices)}")
        canonical_game(self.game)  # unknown names list close matches
        for name in ("steps", "batch_size", "record_steps", "eval_episodes", "eval_max_steps", "seed",
                     "snapshot_every", "planning_horizon"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("num_envs", "beam_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr < 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a finite number >= 0 (0 = the preset's), got {self.lr}")
        _check_eval_cap("eval_max_steps", self.eval_max_steps)
        _check_device(self.device)
        parse_runs(self.runs)
        if self.output_dir.strip() in (".", "./") or (self.output_dir and not self.output_dir.strip()):
            raise ValueError(f"output_dir {self.output_dir!r} is not a run folder: give a new or workbench-made "
                             "folder, or '' for the default")
        source = self.source_run  # a missing or unreadable run: an error naming it
        if source.algo_name not in FAMILIES:
            raise ValueError(f"fine-tuning supports checkpoints of {', '.join(FAMILIES)}; {source.path} is a "
                             f"{source.algo_name!r} run")
        if self.source_checkpoint is None:
            raise FileNotFoundError(f"{source.path} holds no checkpoint yet: pretrain it first")
        source_suite, suite = geometry_of(source.games).suite, suite_of(self.game)
        if source_suite != suite:
            raise ValueError(f"{self.game} is a {suite} game and {source.path} was trained on {source_suite} games: "
                             "a network reads one suite's frames; fine-tune on a game of its suite")
        if self.game_name in source.games:
            raise ValueError(f"{self.game_name} is one of the checkpoint's training games {list(source.games)}: "
                             "fine-tuning is to an unseen game (the papers' held-out games: "
                             f"{', '.join(HELD_OUT_GAMES[self.family])})")
        if self.family != "q" and self.encoder == "frozen":
            raise ValueError(f"encoder='frozen' is Scaled QL's setting; the {source.algo_name} protocol trains every "
                             "component (encoder='finetuned')")
        if self.method not in FAMILY_METHODS[self.family]:
            raise ValueError(f"method {self.method!r} does not apply to a {source.algo_name!r} checkpoint; valid for "
                             f"it: {' | '.join(FAMILY_METHODS[self.family])} (bc trains the Scaled QL network with a "
                             "BC loss from a Scaled QL-family checkpoint; dt_transfer fine-tunes an mgdt checkpoint)")
        parse_split(self.effective_split)  # raises listing the valid forms
        if not self.dataset and self.effective_record_steps < 100:
            raise ValueError("record_steps must be >= 100 when no dataset is given (data is recorded first)")
        self.settings  # noqa: B018  (validates algo_args against the algorithm's settings class)

    @classmethod
    def from_params(cls, **params: Any) -> FinetuneConfig:
        """Build from notebook parameters, rejecting unknown names and ill-typed values."""
        return from_params(cls, params)

    # ---- the source -------------------------------------------------------------------------

    @property
    def source_run(self) -> Run:
        from workbench.paths import resolve_path

        return Run.open(resolve_path(self.checkpoint))

    @property
    def source_checkpoint(self) -> Path | None:
        from workbench.paths import resolve_path

        path = resolve_path(self.checkpoint)
        try:
            return ckpt_io.resolve_checkpoint(path)
        except FileNotFoundError:
            return None

    @property
    def game_name(self) -> str:
        from workbench.games import canonical_game

        return canonical_game(self.game)

    @property
    def family(self) -> str:
        """'q' (Scaled QL's network: scaled_ql, cql_mse, bc) or 'jowa'."""
        return FAMILIES[self.source_run.algo_name]

    # ---- what is trained --------------------------------------------------------------------

    @property
    def algo_name(self) -> str:
        """The fine-tuning algorithm: the checkpoint's own, or bc for method=bc."""
        return "bc" if self.method == "bc" else self.source_run.algo_name

    @property
    def spec(self) -> AlgoSpec:
        return get_algo(self.algo_name)

    @property
    def model(self) -> str:
        return self.source_run.model

    @property
    def games(self) -> tuple[str, ...]:
        """The fine-tuned model's games: the new one first (its data's game id 0), then, for
        method=transfer, the source's (their heads / task embeddings ride along)."""
        if self.method in TRANSFER_METHODS:
            return (self.game_name, *self.source_run.games)
        return (self.game_name,)

    @property
    def scale(self) -> FinetuneScale:
        return finetune_scale(self.family, self.preset, self.model, self.method)

    @property
    def settings(self) -> Any:
        """The checkpoint's settings (bc: BC's defaults with the source's feature norm), then the
        preset's changes, then ``algo_args``; per-game reward scales are set from the data."""
        spec = self.spec
        names = {f.name for f in dataclasses.fields(spec.settings_class)}
        source = self.source_run.resolved.get("settings", {}) if self.algo_name == self.source_run.algo_name else {}
        source = {k: v for k, v in source.items() if k in names and k != "reward_scale"}
        if "feature_norm" in names and "feature_norm" in self.source_run.resolved.get("settings", {}):
            source["feature_norm"] = self.source_run.resolved["settings"]["feature_norm"]
        preset = {k: v for k, v in self.scale.settings.items() if k in names}
        return from_params(spec.settings_class, {**source, **preset, **self.algo_args}, what=f"{spec.name} setting")

    @property
    def dataset_is_store(self) -> bool:
        """``dataset`` is a built store (used as it is: ``split`` does not apply)."""
        from workbench.paths import resolve_path

        return bool(self.dataset) and (resolve_path(self.dataset) / "manifest.json").is_file()

    @property
    def effective_split(self) -> str:
        return PAPER_SPLITS[self.family] if self.split == "auto" else self.split

    @property
    def effective_record_steps(self) -> int:
        return self.record_steps or self.scale.record_steps

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size or self.scale.batch_size

    @property
    def effective_lr(self) -> float:
        return self.lr or self.scale.lr

    @property
    def effective_eval_episodes(self) -> int:
        return self.eval_episodes or self.scale.eval_episodes

    @property
    def effective_eval_max_steps(self) -> int:
        return self.eval_max_steps or self.scale.eval_max_steps

    @property
    def effective_snapshot_every(self) -> int:
        return self.snapshot_every or self.scale.snapshot_every or 1_000

    @property
    def frozen_parts(self) -> tuple[str, ...]:
        return ("encoder",) if self.family == "q" and self.encoder == "frozen" else ()

    def stages(self) -> list[Stage]:
        """Training stages, resolved (``steps`` > 0 is split 3:7 between JOWA's two stages)."""
        plan = list(self.scale.stage_steps)
        if self.steps:
            if len(plan) == 1:
                plan = [(plan[0][0], self.steps)]
            else:
                first = max(1, self.steps * 3 // 10)
                plan = [(plan[0][0], first), (plan[1][0], max(1, self.steps - first))]
        period = int(getattr(self.settings, "target_update_period", 0))
        decay = float(getattr(self.settings, "weight_decay", 0.0))
        subdirs = {"train": "", "stage1": "stage1", "stage2": ""}
        return [Stage(name, subdirs[name], steps, self.effective_lr, decay, period,
                      find_unused_parameters=self.family == "jowa") for name, steps in plan]

    @property
    def data_request(self) -> DataRequest:
        return DataRequest((self.game_name,), self.dataset, self.effective_split, self.runs,
                           self.effective_record_steps, self.seed)

    @property
    def eval_options(self) -> EvalOptions:
        return EvalOptions(planning_horizon=self.planning_horizon, beam_width=self.beam_width)

    @property
    def run_dir(self) -> str:
        from workbench.paths import resolve_path

        if self.output_dir:
            return str(resolve_path(self.output_dir))
        frozen = "-frozen" if self.frozen_parts else ""
        name = f"finetune-{self.source_run.name}-{self.game_name}-{self.method}{frozen}-seed{self.seed}"
        return str(resolve_path(f"runs/{name}"))

    def check_hardware(self, device_type: str) -> None:
        """Stop a paper-scale run on a CPU before it starts, with the estimated time."""
        from workbench.config import estimate_cpu_hours

        if self.preset != "paper" or device_type != "cpu" or self.allow_slow_cpu:
            return
        total = sum(s.steps for s in self.stages()) * self.effective_batch_size
        hours, measured = estimate_cpu_hours(total, self.model)
        bound = "" if measured else "at least "
        raise RuntimeError(
            f"preset='paper' fine-tunes on {total:,} samples; on this CPU that takes {bound}about {hours:,.1f} hours. "
            "Use a GPU (device='cuda'), the 'cpu' preset, or pass allow_slow_cpu=True to run it anyway."
        )

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolve(self) -> dict[str, Any]:
        """Everything the run will use, resolved: what ``--dry-run`` prints and config.json keeps."""
        source, ckpt = self.source_run, self.source_checkpoint
        scale = self.scale
        batch = self.effective_batch_size
        return {
            "algo": self.algo_name,
            "model": self.model,
            "games": list(self.games),
            "eval_games": [self.game_name],
            "settings": dataclasses.asdict(self.settings),
            "preset": self.preset,
            "method": self.method,
            "encoder": self.encoder,
            "frozen_parts": list(self.frozen_parts),
            "report": self.report,
            "split": "(the given store's data)" if self.dataset_is_store else self.effective_split,
            "batch_size": batch,
            "games_per_batch": min(8, batch),
            "log_every": scale.log_every,
            "checkpoint_every": scale.checkpoint_every,
            "snapshot_every": self.effective_snapshot_every if self.report == "best_snapshot" else None,
            "stages": [dataclasses.asdict(s) for s in self.stages()],
            "eval_max_steps": self.effective_eval_max_steps,
            "eval_episodes": self.effective_eval_episodes,
            "output_dir": self.run_dir,
            "source": {"run": str(source.path), "checkpoint": str(ckpt) if ckpt else None, "algo": source.algo_name,
                       "model": source.model, "games": list(source.games),
                       "step": ckpt_io.read_state(ckpt)["step"] if ckpt else None},
            "protocol": PROTOCOLS[self.family],
        }


# ------------------------------------------------------------------------------- the protocols


def _transfer_parts(family: str, algo: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(transferred, re-initialized) parts of each protocol (see the module docstring)."""
    if family == "q":
        return ("encoder", "heads"), ("trunk",)
    return tuple(algo.weight_parts()), ()  # JOWA and MGDT: every part


def _enter_stage(config: FinetuneConfig, algo: Any, stage: str) -> None:
    """Prepare a stage: JOWA trains every component in both stages; then freeze what is frozen."""
    if isinstance(algo, JOWAFinetune):
        algo.set_stage(1 if stage == "stage1" else 2)
    if config.frozen_parts:
        T.freeze(algo, config.frozen_parts)


def _batches(config: FinetuneConfig, algo: Any, stage: str, context: StageContext) -> Any:
    if isinstance(algo, JOWAFinetune):
        return algo.batches(stage, context)
    return config.spec.batches(algo, stage, context)


# ------------------------------------------------------------------------------- the job


@dataclass
class FinetuneResult:
    """What a fine-tuning run leaves behind (paths) and shows (figures, summary, transfer report)."""

    run_dir: Path
    checkpoint: Path
    scores: dict[str, Any]
    transfer: dict[str, Any]
    """The transfer report as recorded in ``config.json`` (``resolved.transfer``)."""
    report: T.TransferReport
    """The same report as an object (``report.summary()`` prints it)."""
    figures: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


_RUN_ENTRIES = ("checkpoints", "metrics.jsonl", "eval", "figures", "summary.json", "data", "stage1",
                "history.jsonl", "best_snapshot")


def open_run(config: FinetuneConfig) -> Run:
    """The run folder of ``config``: new, resumed after a configuration check, or reset."""
    run = Run(Path(config.run_dir))
    run.start("finetune", config.params(), config.resolve(), resume=config.resume, may_change=RESUMABLE_FIELDS,
              entries=_RUN_ENTRIES)
    return run


def finetune(config: FinetuneConfig, *, progress: bool = True) -> FinetuneResult:
    """Fine-tune a pretrained checkpoint on one game (see the module docstring); the run folder
    is locked for the whole job."""
    from workbench.train import resolve_device

    config.check_hardware(resolve_device(config.device).type)
    with RunLock(config.run_dir):
        return _finetune(config, progress)


def _data_settings(config: FinetuneConfig, store: Path) -> dict[str, Any]:
    """Per-game reward scales (the MSE variant): the new game's from its data, then the source's."""
    settings = config.settings
    if not hasattr(settings, "reward_scale") or settings.reward_scale is not None:
        return {}
    new = config.spec.settings_from_data(settings, store, (config.game_name,)).get("reward_scale")
    if not new:
        return {}
    transferred = config.method in TRANSFER_METHODS
    rest = config.source_run.resolved.get("data_settings", {}).get("reward_scale") if transferred else []
    rest = list(rest) if rest else [1.0] * (len(config.games) - 1)
    return {"reward_scale": [*new, *rest]}


def _finetune(config: FinetuneConfig, progress: bool) -> FinetuneResult:
    from workbench.pipeline import evaluate_algo, prepare_dataset, run_figures
    from workbench.train import TrainConfig, default_diagnostics_every, resolve_device, train

    resolved = config.resolve()
    run = open_run(config)
    store = prepare_dataset(config.data_request, run.path, progress=progress,
                            recording_split=config.effective_split)
    data_settings = _data_settings(config, store)
    settings = dataclasses.replace(config.settings, **data_settings)
    if data_settings:
        run.update_resolved({"data_settings": data_settings})
    games = config.games
    built = config.spec.build(config.model, games, settings, config.seed)
    algo: Any = JOWAFinetune(built, settings) if config.family == "jowa" else built
    source_ckpt = config.source_checkpoint
    assert source_ckpt is not None
    if config.method in TRANSFER_METHODS:
        transfer, reinit = _transfer_parts(config.family, algo)
        report = T.load_partial(source_ckpt, algo, games, transfer=transfer, reinitialize=reinit,
                                source_games=config.source_run.games)
    else:
        report = T.fresh_report(algo, games)
    report.frozen = T.freeze(algo, config.frozen_parts) if config.frozen_parts else []
    run.update_resolved({"transfer": report.as_dict()})

    device = resolve_device(config.device)
    context = StageContext(store=store, games=(config.game_name,), batch_size=config.effective_batch_size,
                           games_per_batch=resolved["games_per_batch"], seed=config.seed, rank=0, world_size=1,
                           run_dir=run.path, device=device, progress=progress)
    eval_kw: dict[str, Any] = dict(
        episodes=config.effective_eval_episodes, num_envs=config.num_envs, max_steps=config.effective_eval_max_steps,
        seed=config.seed, options=config.eval_options, game_ids=[0], progress=progress,
    )
    stages = config.stages()
    snapshots: list[dict[str, Any]] = []
    offset = 0
    summary: dict[str, Any] = {}
    for stage in stages:
        _enter_stage(config, algo, stage.name)
        stage_dir = run.path / stage.subdir
        every = config.effective_snapshot_every if config.report == "best_snapshot" else stage.steps
        bounds = sorted({*range(every, stage.steps, every), stage.steps})
        for bound in bounds:
            train_config = TrainConfig(
                steps=bound, lr=stage.lr, weight_decay=stage.weight_decay,
                target_update_period=stage.target_update_period, grad_clip=1.0, log_every=resolved["log_every"],
                checkpoint_every=resolved["checkpoint_every"], device=config.device, seed=config.seed,
                diagnostics_every=default_diagnostics_every(resolved["log_every"]),
            )
            summary = train(algo, _batches(config, algo, stage.name, context), train_config, stage_dir,
                            progress=progress, find_unused_parameters=stage.find_unused_parameters)
            if config.report == "best_snapshot":
                record = _snapshot(run, algo, stage, stage_dir, offset + bound, eval_kw)
                if not snapshots or record["mean"] > max(s["mean"] for s in snapshots):
                    # The best so far (ties keep the earlier): its checkpoint is copied before the
                    # trainer prunes it, replacing the previous best's copy.
                    _keep_best(Path(record["checkpoint"]), run.path / "best_snapshot", offset + bound)
                snapshots.append(record)
        offset += stage.steps

    checkpoint = ckpt_io.resolve_checkpoint(run.path)
    flag = _flag(config, snapshots)
    if config.report == "best_snapshot":
        best = max(snapshots, key=lambda s: (s["mean"], -s["step"]))
        final_scores = read_json(snapshots[-1]["scores"])
        atomic_write_json(run.path / "eval" / "scores_final.json", {**final_scores, "finetune": _flag(config, [])})
        scores = read_json(best["scores"])
        scores["note"] = f"{scores.get('note') or ''} {flag['note']}".strip()
    else:
        scores = evaluate_algo(algo, (config.game_name,), run.path / "eval" / "scores.json", **eval_kw)
    scores["finetune"] = flag
    atomic_write_json(run.path / "eval" / "scores.json", scores)
    figures = run_figures(run, scores)
    summary = {
        "run_dir": str(run.path), "checkpoint": str(checkpoint), "source": resolved["source"]["checkpoint"],
        "game": config.game_name, "method": config.method, "encoder": config.encoder, "report": config.report,
        "algo": config.algo_name, "steps": sum(s.steps for s in stages),
        "final_loss": summary.get("last_metrics", {}).get("loss"),
        "mean_score": scores["per_game"][config.game_name]["mean"],
        "dqn_normalized": _dqn_normalized(config.game_name, scores["per_game"][config.game_name]["mean"]),
        "transfer_counts": report.as_dict()["counts"],
        "eval_max_steps": scores["max_agent_steps"], "truncated_episodes": scores["truncated_episodes"],
        "comparable_to_papers": scores["comparable_to_papers"], "note": scores["note"],
        "selection_on_eval_env": flag["selection_on_eval_env"],
    }
    atomic_write_json(run.path / "summary.json", summary)
    return FinetuneResult(run.path, checkpoint, scores, report.as_dict(), report, figures, summary)


def _dqn_normalized(game: str, score: float) -> float | None:
    from workbench.metrics import has_reference, normalize_score

    return float(normalize_score(game, score, "dqn")) if has_reference(game, "dqn") else None


def _flag(config: FinetuneConfig, snapshots: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What the scores are: method, encoder, and how the reported checkpoint was chosen."""
    best = config.report == "best_snapshot" and bool(snapshots)
    out: dict[str, Any] = {
        "method": config.method, "encoder": config.encoder, "report": config.report if best else "final",
        "selection_on_eval_env": best, "game": config.game_name,
    }
    if best:
        chosen = max(snapshots, key=lambda s: (s["mean"], -s["step"]))
        out.update(snapshot_step=chosen["step"], snapshots=[{"step": s["step"], "mean": s["mean"]} for s in snapshots],
                   note=(f"best of {len(snapshots)} snapshots (step {chosen['step']}), selected on the evaluation "
                         "environment itself: an optimistic estimate (the JOWA paper's rule), not a held-out score"))
    return out


def _snapshot(run: Run, algo: Any, stage: Stage, stage_dir: Path, step: int, eval_kw: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the checkpoint just written (step ``step`` of the whole schedule), once."""
    from workbench.pipeline import evaluate_algo

    out = run.path / "eval" / "snapshots" / f"step_{step:08d}.json"
    ckpt = ckpt_io.resolve_checkpoint(stage_dir)
    if out.is_file():
        scores = read_json(out)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        game = run.resolved["eval_games"][0]
        scores = evaluate_algo(algo, (game,), out, **eval_kw)
    game = next(iter(scores["per_game"]))
    return {"step": step, "stage": stage.name, "mean": float(scores["per_game"][game]["mean"]), "scores": str(out),
            "checkpoint": str(ckpt)}


def _copy_dir(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    os.replace(tmp, dst)


def _keep_best(ckpt: Path, folder: Path, step: int) -> None:
    """``folder/checkpoints/step_<n>`` + ``latest``: the best snapshot so far (schedule step
    ``step``, recorded in ``folder/snapshot.json``), loadable like any checkpoint (notebook 05:
    ``checkpoint=<run>/best_snapshot``); the previous best's copy is replaced, so one copy is on
    disk whatever the number of snapshots."""
    marker = folder / "snapshot.json"
    if marker.is_file() and read_json(marker).get("step") == step:
        return  # already kept (a resumed run re-deriving its best)
    state = ckpt_io.read_state(ckpt)  # the checkpoint the trainer just wrote (its stage's own step)
    root = folder / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{state['step']:08d}"
    for old in root.glob("step_*"):
        if old.is_dir():
            shutil.rmtree(old)
    _copy_dir(ckpt, root / name)
    atomic_write_text(root / "latest", name + "\n")
    atomic_write_json(marker, {"step": step, "source": str(ckpt)})


# ------------------------------------------------------------------------------- JOWA


class JOWAFinetune:
    """JOWA's fine-tuning algorithm (paper 003, Sec. 4.3 and App. E.2) around a built :class:`JOWA`.

    Every component trains in both stages. Stage 1, real segments: ``L_tokenizer + beta L_world +
    L_action`` (C51 TD + CQL). Stage 2: a batch of real 6-step segments plus synthetic ones
    (``syn_*`` keys, from :func:`synthesize_segments`): ``L_tokenizer + beta L_world`` on the real
    part, C51 TD on both parts' transitions, and COMBO instead of CQL: ``alpha (E_synthetic[
    logsumexp_a Q] - E_real[Q(s, a)])`` (``losses.combo_terms``). The model, its checkpoints and
    its policy are JOWA's own, so the run evaluates and loads like a pretrained JOWA run.
    """

    target_model = None

    def __init__(self, jowa: Any, settings: Any) -> None:
        self.jowa = jowa
        self.config = settings
        self.stage = 1

    # Algo protocol: the JOWA model and its policies
    @property
    def model(self) -> Any:
        return self.jowa.model

    @property
    def games(self) -> Any:
        return self.jowa.games

    def weight_parts(self) -> dict[str, tuple[str, ...]]:
        return dict(self.jowa.weight_parts())

    def game_rows(self, games: Sequence[str] | Sequence[int]) -> dict[str, tuple[int, ...]]:
        return dict(self.jowa.game_rows(games))

    def update_target(self) -> None:
        self.jowa.update_target()

    def to(self, device: Any) -> JOWAFinetune:
        self.jowa.to(device)
        return self

    def to_channels_last(self) -> JOWAFinetune:
        return self

    def policy(self, options: EvalOptions | None = None) -> Any:
        return self.jowa.policy(options)

    def inspectable_policy(self, options: EvalOptions | None = None) -> Any:
        return self.jowa.inspectable_policy(options)

    def set_stage(self, stage: int) -> None:
        """Both fine-tuning stages train every component (the target Q head aside)."""
        self.jowa.stage = 1  # param_groups: the tokenizer group (its own lr) is included
        self.stage = stage
        self.model.requires_grad_(True)
        self.model.world.target_q_head.requires_grad_(False)

    def param_groups(self) -> list[dict[str, Any]]:
        return list(self.jowa.param_groups())

    def batches(self, stage: str, context: StageContext) -> Any:
        """Stage 1: real segments of the model's length. Stage 2: 6-step segments, 3/4 real and
        1/4 to synthesize (from their own sampler stream), synthesized with the current model."""
        from workbench.algos.base import stage_iterator
        from workbench.data.sampler import SequenceSampler

        if stage == "stage1":
            return stage_iterator(SequenceSampler(context.store, context.games, context.batch_size,
                                                  seq_len=self.jowa.seq_len, seed=context.seed))
        n_syn = max(1, round(context.batch_size * JOWA_SYNTHETIC_FRACTION))
        n_real = max(1, context.batch_size - n_syn)
        real = SequenceSampler(context.store, context.games, n_real, seq_len=JOWA_SEGMENT_STEPS, seed=context.seed)
        seeds = SequenceSampler(context.store, context.games, n_syn, seq_len=JOWA_SEGMENT_STEPS,
                                seed=context.seed + 7_919)

        def from_step(start: int) -> Iterator[dict[str, Tensor]]:
            real_it, seed_it = stage_iterator(real)(start), stage_iterator(seeds)(start)
            for batch, base in zip(real_it, seed_it):
                syn = synthesize_segments(self.jowa, base, synthetic_steps=JOWA_SYNTHETIC_STEPS,
                                          horizon=JOWA_PLAN_HORIZON, beam_width=JOWA_PLAN_BEAM)
                yield {**batch, **{f"syn_{k}": v for k, v in syn.items()}}

        return from_step

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        from workbench import losses as L
        from workbench.models.world_action import action_losses, world_losses

        jowa, cfg = self.jowa, self.config
        mask = batch["mask"].bool()
        frames = batch["obs"][mask]
        if cfg.tokenizer_max_frames and frames.shape[0] > cfg.tokenizer_max_frames:
            frames = frames[torch.randperm(frames.shape[0], device=frames.device)[: cfg.tokenizer_max_frames]]
        tok_loss, metrics = jowa.model.tokenizer.loss(frames)
        metrics = dict(metrics)
        metrics["loss/tokenizer"] = tok_loss.detach()
        tokens = jowa._tokens(batch)
        actions = jowa.actions.full(batch["action"], batch["game_id"])
        out = jowa.model.world(tokens, actions, batch["game_id"])
        w_loss, w_metrics = world_losses(out, tokens, actions, batch["reward"], batch["terminal"], mask)
        metrics.update(w_metrics)
        valid = jowa.actions.valid_mask(batch["game_id"])
        if self.stage == 1 or "syn_tokens" not in batch:
            a_loss, a_metrics = action_losses(jowa.model.world, out, actions, batch["reward"], batch["terminal"], mask,
                                              valid, gamma=cfg.gamma, cql_alpha=cfg.cql_alpha)
            metrics.update(a_metrics)
            loss = tok_loss + cfg.beta * w_loss + a_loss
            metrics["loss/total"] = loss.detach()
            return loss, metrics
        # Stage 2: TD on real and synthetic transitions, COMBO instead of CQL.
        syn_actions = batch["syn_action"].long()  # ALE ids already (the planner's)
        syn_out = jowa.model.world(batch["syn_tokens"].long(), syn_actions, batch["syn_game_id"])
        syn_valid = jowa.actions.valid_mask(batch["syn_game_id"])
        td_real, _ = action_losses(jowa.model.world, out, actions, batch["reward"], batch["terminal"], mask, valid,
                                   gamma=cfg.gamma, cql_alpha=0.0)
        # TD samples of the synthetic part: the transitions the planner chose. action_losses takes
        # step t when mask[t] and (terminal[t] or mask[t + 1]): the last step only bootstraps.
        last = torch.zeros_like(batch["syn_mask"].bool())
        last[:, -1] = True
        syn_td_mask = batch["syn_mask"].bool() & (batch["syn_td"].bool() | last)
        td_syn, _ = action_losses(jowa.model.world, syn_out, syn_actions, batch["syn_reward"], batch["syn_terminal"],
                                  syn_td_mask, syn_valid, gamma=cfg.gamma, cql_alpha=0.0)
        support = jowa.model.world.support
        q_real = L.expected_q(out["q_logits"], support)[mask]  # (M, 18) real steps
        a_real = actions[mask]
        q_syn = L.expected_q(syn_out["q_logits"], support)  # (B, L, 18)
        imagined = batch["syn_mask"].bool() & batch["syn_imagined"].bool()
        v_syn = syn_valid[:, None, :].expand_as(q_syn)[imagined]
        down, up = L.combo_terms(q_syn[imagined], v_syn, q_real, a_real)
        combo = down.mean() - up.mean() if down.numel() else -up.mean()
        n_real, n_syn = float(mask.any(1).sum()), float(batch["syn_mask"].any(1).sum())
        frac = n_real / max(n_real + n_syn, 1.0)
        td = frac * td_real + (1 - frac) * td_syn  # TD over d_f: the batch's mix of real and synthetic
        a_loss = td + cfg.cql_alpha * combo
        loss = tok_loss + cfg.beta * w_loss + a_loss
        with torch.no_grad():
            metrics.update({
                "loss/action": a_loss.detach(), "loss/td": td.detach(), "loss/td_real": td_real.detach(),
                "loss/td_synthetic": td_syn.detach(), "loss/combo": combo.detach(),
                "loss/combo_synthetic": down.mean().detach() if down.numel() else torch.zeros(()),
                "loss/combo_real": up.mean().detach(), "q/data_mean": q_real.gather(1, a_real[:, None]).mean(),
                "loss/total": loss.detach(),
            })
        return loss, metrics


@torch.no_grad()
def synthesize_segments(jowa: Any, base: Mapping[str, Tensor], *, synthetic_steps: int = 2, horizon: int = 2,
                        beam_width: int = 2) -> dict[str, Tensor]:
    """Synthetic segments in token space: the last ``synthetic_steps`` steps of each real segment
    of ``base`` (a sequence batch, minimal-set actions) are replaced by what the planner imagines.

    For a segment of L steps, the first ``c = L - synthetic_steps`` are real (their frames
    tokenized by the current tokenizer, their actions mapped to ALE ids). Beam search (``horizon``
    = ``synthetic_steps``, ``beam_width``) runs from step ``c - 1`` (the real steps before it as
    context); the best path gives the actions of steps ``c-1 .. L-2``, their predicted rewards
    and terminations (``PlanResult.path_rewards``/``path_terminal``), and the greedily decoded
    tokens of frames ``c .. L-1`` (``path_tokens``). The last step's action (it feeds no loss)
    is the greedy action at its imagined frame. Returns ``tokens`` (B, L, 36), ``action`` (B, L)
    ALE ids, ``reward``, ``terminal`` (B, L), ``mask`` (steps that exist: real, or imagined before
    a predicted end), ``imagined`` (steps whose frame the model imagined), ``td`` (steps whose
    transition the planner chose: the synthetic TD samples), ``game_id`` (B,).
    """
    from workbench.planner import beam_search

    if synthetic_steps != horizon:
        raise ValueError(f"synthetic_steps ({synthetic_steps}) must equal the planning horizon ({horizon})")
    model = jowa.model
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        obs, game_id = base["obs"].to(device), base["game_id"].to(device)
        B, L = obs.shape[:2]
        c = L - synthetic_steps
        if c < 1:
            raise ValueError(f"segments of {L} steps cannot keep a real step before {synthetic_steps} synthetic ones")
        tokens = model.tokenizer.encode(obs).long()  # (B, L, 36)
        actions = jowa.actions.full(base["action"].to(device), game_id)
        valid = jowa.actions.valid_mask(game_id)
        real_mask = base["mask"].to(device).bool()
        plan = beam_search(
            model.world, tokens[:, c - 1], game_id, valid, horizon, beam_width, gamma=jowa.config.gamma,
            ctx_tokens=tokens[:, : c - 1], ctx_actions=actions[:, : c - 1], ctx_valid=real_mask[:, : c - 1],
            return_tree=True,
        )
        assert plan.path_tokens is not None and plan.path_actions is not None and plan.path_rewards is not None
        assert plan.path_terminal is not None and plan.path_valid is not None
        out_tokens, out_actions = tokens.clone(), actions.clone()
        reward = base["reward"].to(device).float().clone()
        terminal = base["terminal"].to(device).float().clone()
        mask = real_mask[:, :c].clone()
        # The real part must reach step c - 1 without ending: otherwise there is nothing to imagine.
        start_ok = real_mask[:, c - 1] & (terminal[:, : c - 1] == 0).all(1)
        alive = start_ok.clone()
        imagined = torch.zeros(B, L, dtype=torch.bool, device=device)
        td = torch.zeros(B, L, dtype=torch.bool, device=device)
        new_mask = [mask]
        for d in range(horizon):
            t = c - 1 + d  # the step whose action and reward the planner decides
            act = plan.path_actions[:, d]
            live = alive & (act >= 0)
            out_actions[:, t] = torch.where(live, act, out_actions[:, t])
            reward[:, t] = torch.where(live, plan.path_rewards[:, d], reward[:, t])
            terminal[:, t] = torch.where(live, plan.path_terminal[:, d].float(), torch.zeros_like(terminal[:, t]))
            td[:, t] = live
            out_tokens[:, t + 1] = torch.where(live[:, None], plan.path_tokens[:, d], out_tokens[:, t + 1])
            alive = live & ~plan.path_terminal[:, d]
            imagined[:, t + 1] = alive
            new_mask.append(alive[:, None])
        mask = torch.cat(new_mask, 1)
        last = L - 1
        q_last = model.world.q_values(model.world(out_tokens, out_actions, game_id)["q_logits"][:, last], valid)
        out_actions[:, last] = torch.where(mask[:, last], q_last.argmax(-1), out_actions[:, last])
        terminal[:, last] = torch.where(imagined[:, last], torch.zeros_like(terminal[:, last]), terminal[:, last])
        return {"tokens": out_tokens, "action": out_actions, "reward": reward, "terminal": terminal,
                "mask": mask & start_ok[:, None], "imagined": imagined, "td": td, "game_id": game_id}
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``python -m workbench.finetune --checkpoint runs/pretrain-resnet-tiny --game Pong ...``;
    ``--dry-run`` prints the resolved configuration as JSON and touches no file."""
    from workbench.settings import parse_args

    config, flags = parse_args(FinetuneConfig, argv, prog="python -m workbench.finetune",
                               extra_flags={"dry_run": "print the resolved configuration as JSON and exit"})
    if flags["dry_run"]:
        print(json.dumps({"params": config.params(), "resolved": config.resolve()}, indent=2, default=str))
        return 0
    result = finetune(config)
    print(json.dumps(result.summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Offline fine-tuning to an unseen game: both papers' transfer protocols (notebook 03).

One job, end to end, each step one call::

    config = FinetuneConfig.from_params(checkpoint="runs/pretrain-resnet-tiny", game="Pong")
    result = finetune(config)          # run folder of kind "finetune"
      verify the source checkpoint     # every file against its sha256, before any folder exists
      open the run                     # config.json records the source checkpoint (path, step,
                                       # sha256 of its weights: a resume against a changed source
                                       # is refused) and, after loading, what was transferred
      data: record (dataset='') or build the game's store with the paper's split
      algo = spec.build(model, (game, *source games) | (game,), settings, seed)
      transfer.load_partial(source, algo, ...)   # method=transfer; scratch/bc load nothing
      for stage: [freeze encoder] train (in snapshot chunks for report=best_snapshot)
      evaluate on the game -> eval/scores.json (flagged with the method and the report rule)

**Protocols.** Each algorithm declares how its checkpoints are fine-tuned (its spec's
``finetune``, an ``algos.base.FinetuneProtocol``): the paper's split and held-out games, the
valid methods, which weight parts transfer, are re-initialized or may be frozen, the scale of
each preset, and hooks for a protocol that trains differently from pretraining. Scaled QL's
(``algos/scaled_ql.py``, paper 000 Sec. 5.2 and App. B.4) transfers the encoder and the old
games' heads and re-initializes the trunk; JOWA's (``algos/jowa_finetune.py``, paper 003
App. E.2) trains every component in two stages with planner-synthesized segments; MGDT's
(``algos/mgdt.py``) is paper 000's "DT (pre-trained)". This module is the job only.

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
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench import checkpoint as ckpt_io
from workbench import jobs, tblog
from workbench import transfer as T
from workbench.algos.base import (
    PRESETS,
    AlgoSpec,
    EvalOptions,
    FinetuneProtocol,
    FinetuneScale,
    Scale,
    Stage,
    StageContext,
    algo_names,
    get_algo,
    recorded_settings,
)
from workbench.config import check_cpu_time, check_device, check_eval_cap
from workbench.data.splits import parse_runs, parse_split
from workbench.devices import resolve_device
from workbench.fileio import atomic_write_json, atomic_write_text, read_json, refuse_symlink
from workbench.games import canonical_game, geometry_of, suite_of
from workbench.jobs import Job, locked
from workbench.metrics import has_reference, normalize_score
from workbench.paths import resolve_path
from workbench.pipeline import evaluate_algo, prepare_dataset, run_figures
from workbench.run import Run
from workbench.settings import from_params, namespace_params
from workbench.train import train_stages

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "main", "namespace_params"]

ENCODER_MODES = ("frozen", "finetuned")
REPORTS = ("final", "best_snapshot")
RESUMABLE_FIELDS = ("steps", "eval_episodes", "eval_max_steps", "num_envs", "planning_horizon", "beam_width",
                    "device", "resume", "output_dir", "allow_slow_cpu")
"""Parameters that may change when a fine-tuning run is resumed."""


def protocols() -> dict[str, FinetuneProtocol]:
    """Algorithm name -> its fine-tuning protocol, for every registered algorithm that has one."""
    return {name: spec.finetune for name in algo_names() if (spec := get_algo(name)).finetune is not None}


def all_methods() -> tuple[str, ...]:
    """Every protocol's methods, in registry order."""
    return tuple(dict.fromkeys(m for p in protocols().values() for m in p.methods))


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
    game: str = "MsPacman"
    """The held-out game to fine-tune on (Scaled QL: Alien, MsPacman, Pong, SpaceInvaders,
    StarGunner; JOWA: Gravitar, MsPacman, Pong, Robotank, YarsRevenge). The default is held out by
    every protocol, and is not a game of the default pretraining run (Pong)."""
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
    beam_width: int = 0
    """JOWA evaluation: beam width K (1 = greedy in Q; 0 = the paper's rule, App. E.3: 2 below 10
    valid actions, else 3)."""
    device: str = "auto"
    """'auto', 'cpu', 'cuda' or 'cuda:N'."""
    resume: bool = True
    """Continue the run in output_dir (its configuration must match); False starts it afresh."""
    allow_slow_cpu: bool = False
    """Let preset='paper' train without a GPU (it stops with the estimated time otherwise)."""

    # ---- validation -------------------------------------------------------------------------

    def __post_init__(self) -> None:

        for name, value, choices in (("method", self.method, all_methods()), ("encoder", self.encoder, ENCODER_MODES),
                                     ("report", self.report, REPORTS), ("preset", self.preset, PRESETS)):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; valid: {' | '.join(choices)}")
        canonical_game(self.game)  # unknown names list close matches
        for name in ("steps", "batch_size", "record_steps", "eval_episodes", "eval_max_steps", "seed",
                     "snapshot_every", "planning_horizon", "beam_width"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {self.num_envs}")
        if self.lr < 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a finite number >= 0 (0 = the preset's), got {self.lr}")
        check_eval_cap("eval_max_steps", self.eval_max_steps)
        check_device(self.device)
        parse_runs(self.runs)
        if self.output_dir.strip() in (".", "./") or (self.output_dir and not self.output_dir.strip()):
            raise ValueError(f"output_dir {self.output_dir!r} is not a run folder: give a new or workbench-made "
                             "folder, or '' for the default")
        source = self.source_run  # a missing or unreadable run: an error naming it
        if source.algo_name not in protocols():
            raise ValueError(f"fine-tuning supports checkpoints of {', '.join(protocols())}; {source.path} is a "
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
                             f"{', '.join(self.protocol.held_out_games)})")
        protocol = self.protocol
        if self.encoder == "frozen" and not protocol.freezable:
            raise ValueError(f"encoder='frozen' freezes a transferred encoder; the {protocol.name} protocol trains "
                             "every component (encoder='finetuned')")
        if self.method not in protocol.methods:
            others = {name: p.methods for name, p in protocols().items() if self.method in p.methods}
            raise ValueError(f"method {self.method!r} does not apply to a {source.algo_name!r} checkpoint; valid for "
                             f"it: {' | '.join(protocol.methods)} ({self.method!r} is a method of "
                             f"{', '.join(others)} checkpoints)")
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
        return Run.open(resolve_path(self.checkpoint))

    @property
    def source_checkpoint(self) -> Path | None:
        path = resolve_path(self.checkpoint)
        try:
            return ckpt_io.resolve_checkpoint(path)
        except FileNotFoundError:
            return None

    @property
    def game_name(self) -> str:
        return canonical_game(self.game)

    @property
    def protocol(self) -> FinetuneProtocol:
        """The fine-tuning protocol the checkpoint's algorithm declares."""
        protocol = get_algo(self.source_run.algo_name).finetune
        assert protocol is not None  # __post_init__ refused the others
        return protocol

    @property
    def pretrained(self) -> bool:
        """The method starts from the checkpoint's weights (else from a random initialization)."""
        return self.method in self.protocol.pretrained_methods

    # ---- what is trained --------------------------------------------------------------------

    @property
    def algo_name(self) -> str:
        """The fine-tuning algorithm: the checkpoint's own, or the one the method names (a baseline)."""
        return self.protocol.method_algos.get(self.method, self.source_run.algo_name)

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
        if self.pretrained:
            return (self.game_name, *self.source_run.games)
        return (self.game_name,)

    @property
    def scale(self) -> FinetuneScale:
        return self.protocol.scale(self.preset, self.model, self.method)

    @property
    def settings(self) -> Any:
        """The checkpoint's settings (another algorithm, a baseline: its defaults with the
        protocol's ``carried_settings`` of the checkpoint), then the preset's changes, then
        ``algo_args``; per-game settings from data (reward scales) are set from the data."""
        spec = self.spec
        names = {f.name for f in dataclasses.fields(spec.settings_class)}
        same = self.algo_name == self.source_run.algo_name
        recorded = self.source_run.resolved.get("settings", {})
        if same:  # the source's model as it was trained (settings added since take its behaviour)
            recorded = recorded_settings(spec.settings_class, recorded)
        keep = names if same else set(self.protocol.carried_settings) & names
        source = {k: v for k, v in recorded.items() if k in keep and k != "reward_scale"}
        preset = {k: v for k, v in self.scale.settings.items() if k in names}
        return from_params(spec.settings_class, {**source, **preset, **self.algo_args}, what=f"{spec.name} setting")

    @property
    def dataset_is_store(self) -> bool:
        """``dataset`` is a built store (used as it is: ``split`` does not apply)."""
        return bool(self.dataset) and (resolve_path(self.dataset) / "manifest.json").is_file()

    @property
    def effective_split(self) -> str:
        return self.protocol.paper_split if self.split == "auto" else self.split

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
        return self.protocol.freezable if self.encoder == "frozen" else ()

    def stages(self) -> list[Stage]:
        """Training stages, resolved by the algorithm's own ``stages`` (sub-folders, target period,
        weight decay) at the protocol's steps (``steps`` > 0 is split by its ``stage_shares``)."""
        plan = self.protocol.stage_plan(self.scale, self.steps)
        batch = self.effective_batch_size
        scale = Scale(steps=plan[0][1], batch_size=batch, eval_max_steps=self.effective_eval_max_steps,
                      stage_steps=dict(plan))
        stages = self.spec.stages(self.settings, scale, batch, self.effective_lr)
        if [s.name for s in stages] != [name for name, _ in plan]:
            raise ValueError(f"the {self.protocol.name} protocol's stages {[n for n, _ in plan]} are not the "
                             f"{self.algo_name} algorithm's {[s.name for s in stages]}")
        return stages

    @property
    def data_request(self) -> DataRequest:
        return DataRequest((self.game_name,), self.dataset, self.effective_split, self.runs,
                           self.effective_record_steps, self.seed)

    @property
    def eval_options(self) -> EvalOptions:
        return EvalOptions(planning_horizon=self.planning_horizon, beam_width=self.beam_width)

    @property
    def run_dir(self) -> str:
        if self.output_dir:
            return str(resolve_path(self.output_dir))
        frozen = "-frozen" if self.frozen_parts else ""
        name = f"finetune-{self.source_run.name}-{self.game_name}-{self.method}{frozen}-seed{self.seed}"
        return str(resolve_path(f"runs/{name}"))

    def check_hardware(self, device_type: str) -> None:
        """Stop a paper-scale run on a CPU before it starts, with the estimated time."""
        total = sum(s.steps for s in self.stages()) * self.effective_batch_size
        check_cpu_time(f"fine-tunes on {total:,} samples", total, self.model, preset=self.preset,
                       device_type=device_type, allow_slow_cpu=self.allow_slow_cpu)

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolve(self) -> dict[str, Any]:
        """Everything the run will use, resolved: what ``--dry-run`` prints and config.json keeps."""
        source, ckpt = self.source_run, self.source_checkpoint
        state = ckpt_io.read_state(ckpt) if ckpt else None
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
                       "step": state["step"] if state else None,
                       # the weights' content hash (checked against the file before the job starts):
                       # a resume against a retrained or replaced source is refused (Run.check_resume)
                       "sha256": state["files"]["model.safetensors"] if state and self.pretrained else None},
            "protocol": self.protocol.name,
            "pretrained": self.pretrained,
        }


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


FINETUNE = Job("finetune", entries=("checkpoints", "metrics.jsonl", "diagnostics.jsonl", "eval", "figures",
                                    "summary.json", "data", "stage1", "history.jsonl", "best_snapshot",
                                    tblog.FOLDER),
               resumable=RESUMABLE_FIELDS)
"""Fine-tuning's run folder: what it writes (all replaced by ``resume=False``) and what may
change on resume."""


def open_run(config: FinetuneConfig) -> Run:
    """The run folder of ``config``: new, resumed after a configuration check, or reset."""
    inputs = [config.source_run.path] + ([resolve_path(config.dataset)] if config.dataset else [])
    return FINETUNE.open_run(config, inputs)


def verify_source(config: FinetuneConfig) -> None:
    """Check every file of the source checkpoint against its recorded sha256 (a truncated or
    modified file is a ``CheckpointError`` naming it). Methods that start from random weights
    (scratch, bc) read only the source run's configuration."""
    if config.pretrained and config.source_checkpoint is not None:
        ckpt_io.verify_checkpoint(config.source_checkpoint)


def finetune(config: FinetuneConfig, *, progress: bool = True) -> FinetuneResult:
    """Fine-tune a pretrained checkpoint on one game (see the module docstring); the run folder
    is locked for the whole job. The source checkpoint is verified first: a corrupt one stops
    the job before its folder is created."""
    verify_source(config)
    with locked(config):
        return _finetune(config, progress)


def _data_settings(config: FinetuneConfig, store: Path) -> dict[str, Any]:
    """Per-game reward scales (the MSE variant): the new game's from its data, then the source's."""
    settings = config.settings
    if not hasattr(settings, "reward_scale") or settings.reward_scale is not None:
        return {}
    new = config.spec.settings_from_data(settings, store, (config.game_name,)).get("reward_scale")
    if not new:
        return {}
    rest = config.source_run.resolved.get("data_settings", {}).get("reward_scale") if config.pretrained else []
    rest = list(rest) if rest else [1.0] * (len(config.games) - 1)
    return {"reward_scale": [*new, *rest]}


def _start_weights(config: FinetuneConfig, algo: Any) -> T.TransferReport:
    """Load the protocol's parts from the checkpoint (a pretrained method) or keep the fresh
    initialization (scratch and baselines); freeze what ``encoder='frozen'`` freezes."""
    protocol, games = config.protocol, config.games
    if config.pretrained:
        reinit = protocol.reinitialized
        transfer = protocol.transferred
        if transfer is None:  # every part the protocol does not re-initialize
            transfer = tuple(p for p in T.part_names(algo) if p not in reinit)
        source = config.source_checkpoint
        assert source is not None  # checked with the config
        report = T.load_partial(source, algo, games, transfer=transfer, reinitialize=reinit,
                                source_games=config.source_run.games)
    else:
        report = T.fresh_report(algo, games)
    report.frozen = T.freeze(algo, config.frozen_parts) if config.frozen_parts else []
    return report


def _finetune(config: FinetuneConfig, progress: bool) -> FinetuneResult:
    resolved = config.resolve()
    run = open_run(config)
    store = prepare_dataset(config.data_request, run.path, progress=progress,
                            recording_split=config.effective_split)
    data_settings = _data_settings(config, store)
    settings = dataclasses.replace(config.settings, **data_settings)
    if data_settings:
        run.update_resolved({"data_settings": data_settings})
    protocol, spec = config.protocol, config.spec
    algo = protocol.wrap(spec.build(config.model, config.games, settings, config.seed), settings)
    report = _start_weights(config, algo)
    run.update_resolved({"transfer": report.as_dict()})

    device = resolve_device(config.device)
    context = StageContext(store=store, games=(config.game_name,), batch_size=config.effective_batch_size,
                           games_per_batch=resolved["games_per_batch"], seed=config.seed, rank=0, world_size=1,
                           run_dir=run.path, device=device, progress=progress)
    eval_kw: dict[str, Any] = dict(
        episodes=config.effective_eval_episodes, num_envs=config.num_envs, max_steps=config.effective_eval_max_steps,
        seed=config.seed, options=config.eval_options, game_ids=[0], progress=progress,
    )
    snapshots: list[dict[str, Any]] = []

    def enter_stage(stage: Stage) -> None:
        protocol.enter_stage(spec, algo, stage.name, context)
        if config.frozen_parts:
            T.freeze(algo, config.frozen_parts)

    def keep_best_snapshot(stage: Stage, stage_dir: Path, step: int) -> None:
        record = _snapshot(run, algo, stage, stage_dir, step, eval_kw)
        with tblog.open_log(stage_dir) as events:  # beside the stage's curves, at its checkpoint's step
            events.scores(read_json(record["scores"]), int(ckpt_io.read_state(Path(record["checkpoint"]))["step"]))
        if not snapshots or record["mean"] > max(s["mean"] for s in snapshots):
            # The best so far (ties keep the earlier): its checkpoint is copied before the trainer
            # prunes it, replacing the previous best's copy.
            _keep_best(Path(record["checkpoint"]), run.path / "best_snapshot", step)
        snapshots.append(record)

    select_best = config.report == "best_snapshot"
    stages = config.stages()
    summary = train_stages(
        algo, stages, run.path, enter_stage=enter_stage,
        batches=lambda stage: protocol.batches(spec, algo, stage.name, context), log_every=resolved["log_every"],
        checkpoint_every=resolved["checkpoint_every"], device=config.device, seed=config.seed,
        snapshot_every=config.effective_snapshot_every if select_best else 0,
        on_snapshot=keep_best_snapshot if select_best else None,
        progress=progress,
    )

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
        with tblog.open_log(run.path) as events:  # beside the last stage's curves, at its last step
            events.scores(scores, summary.get("steps", 0))
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
    refuse_symlink(folder, "best snapshot folder")  # its old copies are deleted below: never another run's
    refuse_symlink(folder / "checkpoints", "best snapshot folder")
    marker = folder / "snapshot.json"
    if marker.is_file() and read_json(marker).get("step") == step:
        return  # already kept (a resumed run re-deriving its best)
    state = ckpt_io.read_state(ckpt)  # the checkpoint the trainer just wrote (its stage's own step)
    root = folder / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{state['step']:08d}"
    for old in root.glob("step_*"):
        refuse_symlink(old, "checkpoint")
        if old.is_dir():
            shutil.rmtree(old)
    _copy_dir(ckpt, root / name)
    atomic_write_text(root / "latest", name + "\n")
    atomic_write_json(marker, {"step": step, "source": str(ckpt)})


# ------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``python -m workbench.finetune --checkpoint runs/pretrain-resnet-tiny --game Pong ...``;
    ``--dry-run`` prints the resolved configuration as JSON and touches no file."""
    return jobs.main(FinetuneConfig, finetune, argv, "python -m workbench.finetune")


if __name__ == "__main__":
    raise SystemExit(main())

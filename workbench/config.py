"""Typed, validated job configurations: what the notebooks and command lines hand the pipeline.

Notebooks pass their papermill parameters to ``PretrainConfig.from_params``; anything unknown or
invalid stops the run at once with a message that lists the valid choices (papermill itself
only warns about unknown parameter names).

Knowledge of *which* algorithm runs lives in its registry entry (``workbench.algos``): its model
presets, its settings dataclass (filled from ``algo_args``), its stages, its learning-rate rule
and its scale under each preset (``cpu``: minutes on 2 cores; ``paper``: the papers'). This
module only says how a job's parameters resolve against it. A numeric field left at 0 takes the
preset's value; :meth:`PretrainConfig.resolve` shows every resolved value, per stage.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from workbench.algos.base import PRESETS, AlgoSpec, EvalOptions, Scale, Stage, algo_names, get_algo, model_owner
from workbench.data.splits import parse_runs, parse_split
from workbench.devices import resolve_device
from workbench.envs import MAX_AGENT_STEPS
from workbench.games import canonical_game, geometry_of, resolve_games
from workbench.paths import resolve_path
from workbench.run import Run
from workbench.settings import from_params, namespace_params

__all__ = ["EvaluateConfig", "PretrainConfig", "RESUMABLE_FIELDS", "check_cpu_time", "estimate_cpu_hours",
           "namespace_params"]

RESUMABLE_FIELDS = ("steps", "eval_episodes", "eval_max_steps", "num_envs", "planning_horizon", "beam_width",
                    "eval_sticky_actions", "eval_noop_starts", "eval_references",
                    "device", "compile", "resume", "output_dir", "allow_slow_cpu")
"""Parameters that may change when a run is resumed (they are applied and recorded in the run's
``history.jsonl``); any other difference stops the resume before a weight is loaded."""

CPU_SAMPLES_PER_S = {"resnet-tiny": 68.8, "resnet18": 30.7, "resnet50": 8.6, "resnet101": 4.2}
"""Eager training throughput at batch 512 on the 2-core CPU machine (C51 + CQL, 40 games;
``benchmarks/bench_train.py --compile off``): what :meth:`PretrainConfig.check_hardware` estimates
a paper-scale CPU run with. Other models are estimated from the fastest rate, as a lower bound."""


def estimate_cpu_hours(samples: int, model: str) -> tuple[float, bool]:
    """Hours the 2-core CPU machine needs to train on ``samples`` samples with ``model``, and
    whether the estimate is measured for that model (False: a lower bound from the fastest rate)."""
    rate = CPU_SAMPLES_PER_S.get(model)
    return samples / (rate or max(CPU_SAMPLES_PER_S.values())) / 3600, rate is not None


def check_cpu_time(work: str, samples: int, model: str, *, preset: str, device_type: str,
                   allow_slow_cpu: bool) -> None:
    """Stop a ``preset='paper'`` job on a CPU before it starts: ``work`` says what it would do
    ("trains 5,120,000 samples ..."), the message adds the estimated hours."""
    if preset != "paper" or device_type != "cpu" or allow_slow_cpu:
        return
    hours, measured = estimate_cpu_hours(samples, model)
    bound = "" if measured else "at least "
    shown = f"{hours:,.0f}" if hours >= 10 else f"{hours:.1f}"
    raise RuntimeError(
        f"preset='paper' {work}; on this CPU that takes {bound}about {shown} hours. Use a GPU (device='cuda'), "
        "the 'cpu' preset, or pass allow_slow_cpu=True to run it anyway."
    )


def check_eval_cap(name: str, value: int) -> None:
    if value > MAX_AGENT_STEPS:
        raise ValueError(f"{name} {value} is above the evaluation protocol's cap of {MAX_AGENT_STEPS} agent steps "
                         f"(108,000 frames); give at most {MAX_AGENT_STEPS}")


def check_device(device: str) -> None:
    resolve_device(device)  # unknown names and absent accelerators: an error listing the valid ones


@dataclass(frozen=True)
class PretrainConfig:
    """Parameters of ``notebooks/02_pretrain.ipynb`` (and of ``python -m workbench.pipeline``)."""

    model: str = "resnet-tiny"
    """Model preset: resnet18/34/50/101/152, impala-*, *-tiny, jowa-40m/70m/150m, jowa-tiny."""
    algo: str = "auto"
    """Registered algorithm (scaled_ql, cql_mse, bc, jowa, ...); 'auto' = the model's own."""
    algo_args: dict[str, Any] = field(default_factory=dict)
    """The algorithm's own settings, e.g. {alpha: 0.1, n_step: 1} (names: its settings class)."""
    games: str = "Pong,Breakout"
    """Comma-separated game names or a game-set name (e.g. scaled_ql_40, jowa_15)."""
    dataset: str = ""
    """A built store, or a DQN-Replay root (then `split` and `runs` apply); '' records data first."""
    split: str = "all"
    """Split of a DQN-Replay root: all | first:K (checkpoints) | fraction:F | last:F | n:N."""
    runs: str = "1"
    """Comma-separated DQN-Replay run numbers to use from a DQN-Replay root."""
    record_steps: int = 3000
    """Agent steps recorded per game when no dataset is given."""
    preset: str = "cpu"
    """Training preset: 'cpu' (minutes on 2 cores, steps/batch scaled to the model) or 'paper'."""
    steps: int = 0
    """Gradient steps of each training stage; 0 takes the preset's."""
    batch_size: int = 0
    """Global batch size (all processes together); 0 takes the preset's."""
    lr: float = 0.0
    """Learning rate of every stage; 0 takes the algorithm's paper rule for its stage and batch."""
    seed: int = 0
    """Seed of data recording, sampling, initialisation and evaluation."""
    output_dir: str = ""
    """Run folder; '' = runs/pretrain-<model> (runs/pretrain-<algo>-<model> for a non-default algo)."""
    eval_episodes: int = 0
    """Evaluation episodes per game after training; 0 takes the preset's (cpu: 2; paper: 16, as
    both papers)."""
    eval_max_steps: int = 0
    """Agent-step cap per evaluation episode; 0 takes the preset's (paper: 27000, the protocol's)."""
    eval_sticky_actions: float = 0.0
    """Beyond the papers (opt-in): sticky-action probability at evaluation (Machado et al.: 0.25)."""
    eval_noop_starts: int = 0
    """Beyond the papers (opt-in): each evaluation episode starts with U{0..N} no-ops."""
    eval_references: bool = True
    """Also evaluate random play and every constant action under the same protocol, so the summary
    says whether the agent beats them (a study whose data already measured them may turn it off)."""
    num_envs: int = 4
    """Parallel evaluation environments."""
    planning_horizon: int = 2
    """Planning algorithms (JOWA): beam-search horizon H at evaluation (0 = greedy in Q)."""
    beam_width: str = "2"
    """Planning algorithms (JOWA): beam width K at evaluation (1 = greedy in Q); per game as
    'Pong:3,Breakout:2' (JOWA Table 16), a bare number for the other games."""
    device: str = "auto"
    """'auto', 'cpu', 'cuda' or 'cuda:N'."""
    compile: bool = False
    """torch.compile the loss computation (GPU runs)."""
    resume: bool = True
    """Continue the run in output_dir (its configuration must match); False starts it afresh."""
    allow_slow_cpu: bool = False
    """Let preset='paper' train without a GPU (it stops with the estimated time otherwise)."""

    # ---- validation -------------------------------------------------------------------------

    def __post_init__(self) -> None:
        spec = self.spec  # unknown algo or model: raises listing the valid names
        if self.model not in spec.model_presets():
            raise ValueError(f"model {self.model!r} is not a preset of algo {spec.name!r}; its models: "
                             f"{', '.join(spec.model_presets())}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid presets: {', '.join(PRESETS)}")
        self.settings  # noqa: B018  (validates algo_args against the algorithm's settings class)
        suite = geometry_of(resolve_games(self.games)).suite  # raises with close matches, or on mixed suites
        if suite not in spec.suites:
            raise ValueError(f"algo {spec.name!r} reads {' and '.join(spec.suites)} frames, and {self.games!r} are "
                             f"{suite} games; algorithms for {suite}: "
                             f"{', '.join(n for n in algo_names() if suite in get_algo(n).suites)}")
        parse_split(self.split)  # raises listing the valid forms
        parse_runs(self.runs)
        for name in ("steps", "batch_size", "record_steps", "planning_horizon", "eval_max_steps", "seed",
                     "eval_episodes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        parse_beam_width(self.beam_width, self.game_list)
        _check_eval_extras(self.eval_sticky_actions, self.eval_noop_starts)
        for name in ("num_envs",):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr < 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a finite number >= 0 (0 = the paper's rule), got {self.lr}")
        check_eval_cap("eval_max_steps", self.eval_max_steps)
        check_device(self.device)
        if not self.dataset and self.record_steps < 100:
            raise ValueError("record_steps must be >= 100 when no dataset is given (data is recorded first)")
        if self.output_dir.strip() in (".", "./") or (self.output_dir and not self.output_dir.strip()):
            raise ValueError(f"output_dir {self.output_dir!r} is not a run folder: give a new or workbench-made "
                             "folder, or '' for the default")

    @classmethod
    def from_params(cls, **params: Any) -> PretrainConfig:
        """Build from notebook parameters, rejecting unknown names and ill-typed values."""
        return from_params(cls, params)

    # ---- resolution against the algorithm's registry entry ----------------------------------

    @property
    def spec(self) -> AlgoSpec:
        return model_owner(self.model) if self.algo == "auto" else get_algo(self.algo)

    @property
    def algo_name(self) -> str:
        return self.spec.name

    @property
    def scale(self) -> Scale:
        return self.spec.scale(self.preset, self.model)

    @property
    def settings(self) -> Any:
        """The algorithm's settings: its defaults, then the preset's changes, then ``algo_args``."""
        spec = self.spec
        names = {f.name for f in dataclasses.fields(spec.settings_class)}
        preset = {k: v for k, v in self.scale.settings.items() if k in names}
        return from_params(spec.settings_class, {**preset, **self.algo_args}, what=f"{spec.name} setting")

    @property
    def game_list(self) -> tuple[str, ...]:
        return resolve_games(self.games)

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size or self.scale.batch_size

    @property
    def games_per_batch(self) -> int:
        """Game draws per global batch: the preset's, or the largest count below it that divides
        the batch (every draw takes the same number of transitions)."""
        batch = self.effective_batch_size
        draws = min(self.scale.games_per_batch, batch)
        while batch % draws:
            draws -= 1
        return draws

    @property
    def effective_eval_max_steps(self) -> int:
        return self.eval_max_steps or self.scale.eval_max_steps

    @property
    def run_dir(self) -> str:
        """The run folder, absolute: a relative ``output_dir`` (and the default) resolves against
        the project root (``workbench.paths``), so notebooks in ``notebooks/`` find ``runs/``."""
        if self.output_dir:
            return str(resolve_path(self.output_dir))
        own = model_owner(self.model).name == self.algo_name
        name = f"pretrain-{self.model}" if own else f"pretrain-{self.algo_name}-{self.model}"
        return str(resolve_path(f"runs/{name}"))

    def check_hardware(self, device_type: str) -> None:
        """Stop a paper-scale run on a CPU before it starts, with the estimated time.

        ``device_type`` is the resolved device's type ('cpu', 'cuda', ...). The estimate uses
        the eager training throughput measured on the 2-core CPU machine (README, Performance)."""
        stages, batch = self.stages(), self.effective_batch_size
        steps = " + ".join(f"{s.steps:,}" for s in stages)
        check_cpu_time(f"trains {sum(s.steps for s in stages) * batch:,} samples ({steps} steps at batch {batch})",
                       sum(s.steps for s in stages) * batch, self.model, preset=self.preset, device_type=device_type,
                       allow_slow_cpu=self.allow_slow_cpu)

    @property
    def eval_options(self) -> EvalOptions:
        return EvalOptions(planning_horizon=self.planning_horizon,
                           beam_width=parse_beam_width(self.beam_width, self.game_list))

    @property
    def effective_eval_episodes(self) -> int:
        return self.eval_episodes or self.scale.eval_episodes

    def stages(self) -> list[Stage]:
        """The training stages with every value resolved (``steps`` > 0 overrides each stage's)."""
        stages = self.spec.stages(self.settings, self.scale, self.effective_batch_size, self.lr)
        if self.steps:
            stages = [dataclasses.replace(s, steps=self.steps) for s in stages]
        return stages

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolve(self) -> dict[str, Any]:
        """Everything the run will use, resolved: what ``--dry-run`` prints and config.json keeps."""
        scale = self.scale
        return {
            "algo": self.algo_name,
            "model": self.model,
            "games": list(self.game_list),
            "settings": dataclasses.asdict(self.settings),
            "preset": self.preset,
            "batch_size": self.effective_batch_size,
            "games_per_batch": self.games_per_batch,
            "log_every": scale.log_every,
            "checkpoint_every": scale.checkpoint_every,
            "stages": [dataclasses.asdict(s) for s in self.stages()],
            "eval_max_steps": self.effective_eval_max_steps,
            "eval_episodes": self.effective_eval_episodes,
            "output_dir": self.run_dir,
        }


@dataclass(frozen=True)
class EvaluateConfig:
    """Parameters of ``notebooks/05_evaluate.ipynb`` (and of ``workbench.pipeline.evaluate_run``)."""

    checkpoint: str = "runs/pretrain-resnet-tiny"
    """Run directory, its checkpoints/ directory, or one checkpoint directory."""
    games: str = ""
    """Games to evaluate (comma-separated or a game-set name); '' = the run's training games."""
    episodes: int = 4
    """Episodes per game, each with its own seed (the papers use 16)."""
    num_envs: int = 4
    """Parallel environments per game (batched inference across all of them)."""
    max_steps: int = 0
    """Agent-step cap per episode; 0 = the cap the run itself was evaluated with (its resolved
    ``eval_max_steps``: the cpu preset's 100-1,000, the paper preset's 27,000). 27,000 = 108,000
    frames, the protocol's; smaller is flagged."""
    epsilon: float = 0.001
    """Evaluation epsilon (both papers: 0.001)."""
    planning_horizon: int = 2
    """Planning algorithms (JOWA): beam-search horizon H (0 = greedy in Q)."""
    beam_width: str = "2"
    """Planning algorithms (JOWA): beam width K (1 = greedy in Q); per game as 'Pong:3,Breakout:2'
    (JOWA Table 16), a bare number for the other games."""
    sticky_actions: float = 0.0
    """Beyond the papers (opt-in): sticky-action probability (Machado et al.: 0.25); flagged."""
    noop_starts: int = 0
    """Beyond the papers (opt-in): each episode starts with U{0..N} no-ops; flagged."""
    references: bool = True
    """Also evaluate random play and every constant action under the same protocol and episodes,
    and say whether the checkpoint beats them."""
    mode: int = -1
    """Game mode for a variant (-1 = default mode)."""
    difficulty: int = -1
    """Game difficulty for a variant (-1 = default)."""
    seed: int = 0
    """Base seed: per-episode seeds and the epsilon stream derive from it."""
    output: str = ""
    """Scores JSON file to write (a ``.json`` path, not a folder); '' = <run dir>/eval/scores_<games>.json."""
    device: str = "auto"
    """'auto', 'cpu', 'cuda' or 'cuda:N'."""

    def __post_init__(self) -> None:
        if self.games:
            resolve_games(self.games)
        for name in ("episodes", "num_envs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0 (0 = the run's own evaluation cap), got {self.max_steps}")
        parse_beam_width(self.beam_width, None)
        _check_eval_extras(self.sticky_actions, self.noop_starts)
        check_eval_cap("max_steps", self.max_steps)
        check_device(self.device)
        if self.planning_horizon < 0:
            raise ValueError(f"planning_horizon must be >= 0, got {self.planning_horizon}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        check_scores_output("output", self.output)
        if self.max_steps == 0:  # the run's own cap, when the run can be read now (evaluate_run opens it anyway)
            cap = run_eval_cap(self.checkpoint, strict=False)
            if cap is not None:
                object.__setattr__(self, "max_steps", cap)

    @classmethod
    def from_params(cls, **params: Any) -> EvaluateConfig:
        """Validated parameters; ``max_steps=0`` becomes the run's own evaluation cap, and a
        checkpoint that is no run then stops here, before any work."""
        config = from_params(cls, params)
        if config.max_steps == 0:
            run_eval_cap(config.checkpoint, strict=True)  # raises, naming the checkpoint
        return config

    def eval_options(self, games: Sequence[str]) -> EvalOptions:
        """Options for a run trained on ``games`` (per-game beam widths follow its game order)."""
        return EvalOptions(planning_horizon=self.planning_horizon, beam_width=parse_beam_width(self.beam_width, games))


def check_scores_output(name: str, output: str) -> None:
    """A scores file to write must be a ``.json`` file path: not an existing folder, not a path
    ending in a separator, not below a file. The error names the path and what is expected."""
    if not output:
        return
    path = resolve_path(output)
    expected = (f"give the scores JSON file to write (a path ending in .json, e.g. {path / 'scores.json'} when "
                "it is a folder), or '' for <run>/eval/scores_<games>.json")
    if path.is_dir() or output.endswith(("/", os.sep)):
        raise ValueError(f"{name} {output!r} is a folder ({path}), not a file: {expected}")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{name} {output!r}: {parent} is a file, so nothing can be written below it; {expected}")
    if path.suffix != ".json":
        raise ValueError(f"{name} {output!r} does not end in .json ({path}): {expected}")


def run_eval_cap(checkpoint: str, *, strict: bool) -> int | None:
    """The agent-step cap a run was evaluated with (its ``config.json``'s resolved ``eval_max_steps``;
    the protocol's 27,000 when an older run does not record one). Without ``strict``, None when
    ``checkpoint`` is no readable run; with it, a ValueError naming the checkpoint."""
    try:
        resolved = Run.open(resolve_path(checkpoint)).resolved
    except (FileNotFoundError, ValueError) as exc:
        if not strict:
            return None
        raise ValueError(f"checkpoint {checkpoint!r} is not a readable workbench run ({exc}); max_steps=0 takes the "
                         "evaluation cap of the run, so give a run folder, its checkpoints/ folder or one checkpoint "
                         "(or max_steps=N)") from None
    cap = resolved.get("eval_max_steps")
    return int(cap) if isinstance(cap, int) and not isinstance(cap, bool) and 0 < cap <= MAX_AGENT_STEPS \
        else MAX_AGENT_STEPS


def _check_eval_extras(sticky: float, noops: int) -> None:
    if not 0.0 <= sticky < 1.0:
        raise ValueError(f"sticky actions must be a probability in [0, 1), got {sticky}")
    if noops < 0:
        raise ValueError(f"no-op starts must be >= 0, got {noops}")


def parse_beam_width(spec: str, games: Sequence[str] | None) -> int | tuple[int, ...]:
    """``'2'`` -> 2; ``'Pong:3,Breakout:2'`` or ``'2,Pong:3'`` -> one width per game of ``games``
    (a bare number sets the games not named; default 2). ``games=None`` checks the syntax only."""
    default, per_game = None, {}
    for item in (p.strip() for p in str(spec).split(",") if p.strip()):
        name, _, value = item.rpartition(":")
        try:
            width = int(value)
        except ValueError:
            raise ValueError(f"invalid beam_width {spec!r}: {item!r} is not K or Game:K "
                             "(e.g. '2' or 'Pong:3,Breakout:2')") from None
        if width < 1:
            raise ValueError(f"beam_width must be >= 1, got {width} in {spec!r}")
        if name:
            per_game[canonical_game(name)] = width
        else:
            default = width
    if not per_game:
        if default is None:
            raise ValueError(f"invalid beam_width {spec!r}; give K or Game:K pairs, e.g. 'Pong:3,Breakout:2'")
        return default
    if games is None:
        return default or 2
    unknown = sorted(set(per_game) - set(games))
    if unknown:
        raise ValueError(f"beam_width names games {unknown} that the run does not have; its games: {list(games)}")
    return tuple(per_game.get(g, default or 2) for g in games)

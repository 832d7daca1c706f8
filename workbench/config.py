"""Typed, validated run configurations and named presets.

Notebooks hand their papermill parameters to ``PretrainConfig.from_params``; anything unknown or
invalid stops the run at once with a message that lists the valid choices (papermill itself
only warns about unknown parameter names).

Two layers of presets:

- *training presets* (``TRAIN_PRESETS``): ``paper`` reproduces the papers' optimisation settings
  (Scaled QL Table B.1; JOWA Table 12), ``cpu`` shrinks steps, batch and periods so a run
  finishes in minutes on a 2-core machine;
- *model presets*: the names the model factories accept (``resnet18`` ... ``resnet152``,
  ``impala-*``, ``jowa-40m`` ...), listed by :func:`model_presets`.

A field left at its "from preset" value (0 for numbers) takes the training preset's value.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, fields
from typing import Any

ALGOS = ("auto", "scaled_ql", "cql_mse", "bc", "jowa")
"""Training methods: C51+CQL (the paper's Scaled QL), MSE+CQL, behaviour cloning, JOWA."""


@dataclass(frozen=True)
class TrainPreset:
    """Optimisation settings that differ between the paper-scale and the CPU-scale runs."""

    steps: int
    """Gradient steps (JOWA: per stage)."""
    batch_size: int
    """Global batch size (all ranks together)."""
    target_update_period: int
    """Scaled QL: 2000 gradient steps (Table B.1); JOWA: 1000 (Table 12)."""
    log_every: int
    """Metrics line period in steps."""
    checkpoint_every: int
    """Checkpoint period in steps."""
    games_per_batch: int
    """Stratified sampling: game draws per batch (the paper: 128 draws x 4 transitions)."""


TRAIN_PRESETS: dict[str, TrainPreset] = {
    "paper": TrainPreset(steps=10_000_000, batch_size=512, target_update_period=2000,
                         log_every=100, checkpoint_every=10_000, games_per_batch=128),
    "cpu": TrainPreset(steps=300, batch_size=32, target_update_period=50,
                       log_every=5, checkpoint_every=100, games_per_batch=8),
}
JOWA_PAPER_STEPS = 1_750_000  # JOWA trains 1.75M steps per stage at batch 512 (Section 5.1)

# The cpu preset must finish in minutes whatever the model: (steps, batch) per model family and
# size. Tiny models really learn something in that time; paper-size models (one ResNet-101 step
# at batch 8 takes seconds on 2 cores) run a few steps, enough to exercise the whole pipeline.
# The third number caps evaluation episodes (agent steps; the protocol's 27,000 under 'paper').
CPU_SCALE: dict[tuple[str, bool], tuple[int, int, int]] = {
    ("qnet", True): (300, 32, 1000),
    ("qnet", False): (20, 8, 250),
    ("jowa", True): (60, 8, 100),
    ("jowa", False): (10, 2, 100),
}
PAPER_EVAL_MAX_STEPS = 27_000  # 108,000 frames


def paper_learning_rate(algo: str, batch_size: int, stage: int = 2) -> float:
    """The papers' learning rates.

    Scaled QL uses 5e-5 at batch 32 and 2e-4 at batch 512 (Appendix B.3): square-root scaling
    in the batch size reproduces both points, and we use it in between. JOWA uses 1e-4 in stage
    1 and 5e-5 in stage 2 at batch 512 (Table 12), and 5e-5 for fine-tuning at batch 32.
    """
    if algo == "jowa":
        return 1e-4 if stage == 1 else 5e-5
    return 5e-5 * math.sqrt(batch_size / 32)


def model_presets() -> dict[str, str]:
    """Every model preset name mapped to the algo family it belongs to ('qnet' or 'jowa')."""
    from workbench.models import qnet, world_action

    names = {name: "qnet" for name in qnet.PRESETS}
    names.update({name: "jowa" for name in world_action.PRESETS})
    return names


@dataclass(frozen=True)
class PretrainConfig:
    """Parameters of ``notebooks/02_pretrain.ipynb`` (and of ``workbench.pipeline.pretrain``)."""

    model: str = "resnet-tiny"
    """Model preset: resnet18/34/50/101/152, impala-*, *-tiny, jowa-40m/70m/150m, jowa-tiny."""
    algo: str = "auto"
    """scaled_ql (C51+CQL), cql_mse, bc, jowa; 'auto' picks jowa for jowa-* models else scaled_ql."""
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
    """Gradient steps; 0 takes the preset's (JOWA: per stage)."""
    batch_size: int = 0
    """Global batch size; 0 takes the preset's."""
    lr: float = 0.0
    """Learning rate; 0 takes the paper's rule for this algo and batch size."""
    seed: int = 0
    """Seed of data recording, sampling, initialisation and evaluation."""
    feature_norm: bool = True
    """Scaled QL feature normalization (divide features by their L2 norm); False for the ablation."""
    output_dir: str = "runs/pretrain"
    """Run directory: config.json, metrics.jsonl, checkpoints/, eval/, figures/."""
    eval_episodes: int = 2
    """Evaluation episodes per game after training (the papers use 16 per game)."""
    eval_max_steps: int = 0
    """Agent-step cap per evaluation episode; 0 takes the preset's (paper: 27000, the protocol's)."""
    num_envs: int = 4
    """Parallel evaluation environments."""
    planning_horizon: int = 2
    """JOWA evaluation: beam-search horizon H (0 = greedy in Q)."""
    beam_width: int = 2
    """JOWA evaluation: beam width K (1 = greedy in Q)."""
    device: str = "auto"
    """'auto', 'cpu', 'cuda' or 'cuda:N'."""
    compile: bool = False
    """torch.compile the loss computation (GPU runs)."""
    resume: bool = True
    """Continue from output_dir's latest checkpoint when there is one."""

    # ---- validation -------------------------------------------------------------------------

    def __post_init__(self) -> None:
        presets = model_presets()
        if self.model not in presets:
            raise ValueError(f"unknown model {self.model!r}; valid models: {', '.join(sorted(presets))}")
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algo {self.algo!r}; valid algos: {', '.join(ALGOS)}")
        family = presets[self.model]
        algo = self.resolved_algo
        if (family == "jowa") != (algo == "jowa"):
            valid = "jowa" if family == "jowa" else "scaled_ql, cql_mse, bc"
            raise ValueError(f"model {self.model!r} goes with algo {valid}, not {self.algo!r}")
        if self.preset not in TRAIN_PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid presets: {', '.join(TRAIN_PRESETS)}")
        from workbench.games import resolve_games

        resolve_games(self.games)  # raises with close matches
        from workbench.data.store import parse_split

        parse_split(self.split)  # raises listing the valid forms
        parse_runs(self.runs)
        for name in ("steps", "batch_size", "record_steps", "planning_horizon", "eval_max_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("eval_episodes", "num_envs", "beam_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0 (0 = paper rule), got {self.lr}")
        if not self.dataset and self.record_steps < 100:
            raise ValueError("record_steps must be >= 100 when no dataset is given (data is recorded first)")

    @classmethod
    def from_params(cls, **params: Any) -> "PretrainConfig":
        """Build from notebook parameters, rejecting unknown names and ill-typed values."""
        return from_params(cls, params)

    # ---- derived values ---------------------------------------------------------------------

    @property
    def resolved_algo(self) -> str:
        if self.algo != "auto":
            return self.algo
        return "jowa" if self.model.startswith("jowa") else "scaled_ql"

    @property
    def game_list(self) -> tuple[str, ...]:
        from workbench.games import resolve_games

        return resolve_games(self.games)

    @property
    def train_preset(self) -> TrainPreset:
        base = TRAIN_PRESETS[self.preset]
        family = "jowa" if self.resolved_algo == "jowa" else "qnet"
        if self.preset == "cpu":
            steps, batch, _ = CPU_SCALE[(family, self.model.endswith("-tiny"))]
            return dataclasses.replace(base, steps=steps, batch_size=batch, games_per_batch=min(batch, base.games_per_batch))
        if family == "jowa":
            return dataclasses.replace(base, steps=JOWA_PAPER_STEPS, target_update_period=1000)
        return base

    @property
    def effective_steps(self) -> int:
        return self.steps or self.train_preset.steps

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size or self.train_preset.batch_size

    @property
    def effective_eval_max_steps(self) -> int:
        if self.eval_max_steps:
            return self.eval_max_steps
        if self.preset == "paper":
            return PAPER_EVAL_MAX_STEPS
        family = "jowa" if self.resolved_algo == "jowa" else "qnet"
        return CPU_SCALE[(family, self.model.endswith("-tiny"))][2]

    def effective_lr(self, stage: int = 2) -> float:
        return self.lr or paper_learning_rate(self.resolved_algo, self.effective_batch_size, stage)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["resolved"] = {
            "algo": self.resolved_algo,
            "games": list(self.game_list),
            "steps": self.effective_steps,
            "batch_size": self.effective_batch_size,
            "lr": self.effective_lr(),
            "eval_max_steps": self.effective_eval_max_steps,
        }
        return d


def parse_runs(spec: str | int) -> tuple[int, ...]:
    try:
        runs = tuple(int(r) for r in str(spec).split(",") if r.strip())
    except ValueError:
        raise ValueError(f"invalid runs {spec!r}; expected comma-separated run numbers like '1,2'") from None
    if not runs or any(r < 1 for r in runs):
        raise ValueError(f"invalid runs {spec!r}; run numbers start at 1")
    return runs


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check one parameter's type; accept ints for floats and papermill's int-coerced strings."""
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # papermill's -p turns '1' into 1
        if isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)  # -y "[Pong, Breakout]"
    raise ValueError(f"parameter {name!r} must be {annotation.__name__}, got {value!r} ({type(value).__name__})")


# Names IPython puts in a kernel's user namespace; every other public primitive is a parameter.
_IPYTHON_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython", "open"})
_PRIMITIVES = (str, int, float, bool, list, tuple, dict, type(None))


def namespace_params(namespace: dict[str, Any]) -> dict[str, Any]:
    """The papermill parameters in a notebook's namespace: public names holding primitives.

    A notebook's second cell calls ``Config.from_params(**namespace_params(globals()))``
    before defining anything else, so a misspelt ``-p modle ...`` is caught as unknown.
    """
    return {
        k: v for k, v in namespace.items()
        if not k.startswith("_") and k not in _IPYTHON_NAMES and isinstance(v, _PRIMITIVES)
    }


def from_params(cls: type, params: dict[str, Any]):
    """Construct dataclass ``cls`` from a dict, rejecting unknown names and ill-typed values."""
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        import difflib

        hint = "; ".join(
            f"{u!r} (did you mean {difflib.get_close_matches(u, valid, 1)[0]!r}?)"
            if difflib.get_close_matches(u, valid, 1) else repr(u)
            for u in unknown
        )
        raise ValueError(f"unknown parameter(s) {hint}; valid parameters: {', '.join(valid)}")
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in params.items()})


def field_docs(cls: type) -> dict[str, str]:
    """Each dataclass field's docstring (the string literal right after it in the class body)."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def parse_args(cls: type, argv: list[str] | None = None, prog: str | None = None):
    """Command-line flags for every field of ``cls`` (``--batch-size 512``), validated by ``cls``."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip().splitlines()[0])
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, dest=f.name, default=f.default, type=str,
                            help=f"{docs.get(f.name, '')} (default: {f.default!r}; type {hints[f.name].__name__})")
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if isinstance(v, str)}
    values = {}
    for name, raw in given.items():
        kind = hints[name]
        try:
            values[name] = kind(raw) if kind in (int, float) else raw  # bools: from_params reads 'true'/'false'
        except ValueError:
            parser.error(f"--{name.replace('_', '-')} expects {kind.__name__}, got {raw!r}")
    return from_params(cls, values)


__all__ = [
    "ALGOS", "TRAIN_PRESETS", "TrainPreset", "PretrainConfig", "paper_learning_rate",
    "model_presets", "parse_runs", "from_params", "namespace_params", "field_docs", "parse_args",
]


@dataclass(frozen=True)
class EvaluateConfig:
    """Parameters of ``notebooks/05_evaluate.ipynb`` (and of ``workbench.pipeline.evaluate_run``)."""

    checkpoint: str = "runs/pretrain"
    """Run directory, its checkpoints/ directory, or one checkpoint directory."""
    games: str = ""
    """Games to evaluate (comma-separated or a game-set name); '' = the run's training games."""
    episodes: int = 4
    """Episodes per game, each with its own seed (the papers use 16)."""
    num_envs: int = 4
    """Parallel environments per game (batched inference across all of them)."""
    max_steps: int = 27_000
    """Agent-step cap per episode: 27,000 = 108,000 frames, the protocol's; smaller is flagged."""
    epsilon: float = 0.001
    """Evaluation epsilon (both papers: 0.001)."""
    planning_horizon: int = 2
    """JOWA: beam-search horizon H (0 = greedy in Q). Ignored for Q-networks."""
    beam_width: int = 2
    """JOWA: beam width K (1 = greedy in Q). Ignored for Q-networks."""
    mode: int = -1
    """Game mode for a variant (-1 = default mode)."""
    difficulty: int = -1
    """Game difficulty for a variant (-1 = default)."""
    seed: int = 0
    """Base seed: per-episode seeds and the epsilon stream derive from it."""
    output: str = ""
    """Scores JSON path; '' = <run dir>/eval/scores_<games>.json."""
    device: str = "auto"
    """'auto', 'cpu', 'cuda' or 'cuda:N'."""

    def __post_init__(self) -> None:
        if self.games:
            from workbench.games import resolve_games

            resolve_games(self.games)
        for name in ("episodes", "num_envs", "max_steps", "beam_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.planning_horizon < 0:
            raise ValueError(f"planning_horizon must be >= 0, got {self.planning_horizon}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")

    @classmethod
    def from_params(cls, **params: Any) -> "EvaluateConfig":
        return from_params(cls, params)

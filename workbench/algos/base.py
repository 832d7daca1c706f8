"""The contracts every algorithm meets, and the registry that names them.

An algorithm is chosen by name (``get_algo("scaled_ql")``). Its :class:`AlgoSpec` says, in one
place, everything the rest of the workbench needs to know about it:

- its model presets and its own settings dataclass (alpha, n-step, support, beta, ...);
- its training stages, learning-rate rule and batch/step scale per preset (``cpu``, ``paper``);
- its sampler for each stage;
- its metric prefixes (what the learning-curve figures draw);
- how to build the trained object (an :class:`Algo`), whose ``policy`` is what the evaluator,
  the recorder and the explorer run.

Callers depend on the :class:`Algo`, :class:`Policy` and :class:`AlgoSpec` protocols below, never
on a concrete class. Adding an algorithm is one module that calls :func:`register`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch import Tensor, nn

__all__ = [
    "Algo", "AlgoSpec", "Batches", "EvalOptions", "Explanation", "FinetuneProtocol", "FinetuneScale",
    "InspectablePolicy", "Policy",
    "Scale", "Stage", "StageContext", "algo_label", "algo_names", "check_policy", "get_algo", "model_owner", "register",
]

PRESETS = ("cpu", "paper")
"""Training presets: ``cpu`` finishes in minutes on 2 cores, ``paper`` is the papers' scale."""


# ------------------------------------------------------------------------------- acting


@dataclass(frozen=True)
class EvalOptions:
    """Evaluation-time options of a policy; each algorithm reads the ones it has."""

    planning_horizon: int = 2
    """Planning algorithms (JOWA): beam-search horizon H (0 = greedy in Q)."""
    beam_width: int | tuple[int, ...] = 2
    """Planning algorithms (JOWA): beam width K, or one width per game of the run (JOWA Table 16
    tunes it per game); 1 = greedy in Q."""


@dataclass
class Explanation:
    """What a policy reveals about one decision of one environment (all optional)."""

    q_probs: np.ndarray | None = None
    """(18, atoms) return distributions per action slot (slot i = the game's minimal action i)."""
    support: np.ndarray | None = None
    """(atoms,) the distributions' support."""
    q_values: np.ndarray | None = None
    """(18,) Q values (or logits) per action slot."""
    tree: Any = None
    """A ``planner.SearchTree`` (planning algorithms)."""
    predicted_frames: np.ndarray | None = None
    """(K, 84, 84) uint8 frames the model imagined for the chosen path."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else an algorithm wants the explorer to show (name -> scalar or array)."""


class Policy(Protocol):
    """What the evaluator, the recorder and the explorer run.

    Per environment step the caller calls ``act``, applies its exploration, steps the
    environments, then calls ``observe``:

    - ``act(obs, game_ids)`` returns greedy minimal-set actions ``(N,)`` int64 for a batch of
      stacks ``(N, 4, 84, 84)`` uint8 of the games ``game_ids`` (indices into the run's games);
    - ``observe(actions, rewards)`` reports what the environments then did: the executed
      minimal-set actions ``(N,)`` (after epsilon, no-op starts, ...) and the raw rewards ``(N,)``,
      one per row of the last ``act``. A policy with memory (the JOWA planner's context) records
      the executed action, not the one it planned; memoryless policies ignore it;
    - ``reset(indices)`` is called when those environments start a new episode (after the
      ``observe`` of the step that ended the previous one).
    """

    def act(self, obs: np.ndarray, game_ids: np.ndarray) -> np.ndarray: ...

    def observe(self, actions: np.ndarray, rewards: np.ndarray) -> None: ...

    def reset(self, indices: np.ndarray) -> None: ...


def check_policy(policy: Any) -> Policy:
    """``policy`` itself, once it is known to have the :class:`Policy` methods (else a TypeError
    naming the missing ones)."""
    missing = [m for m in ("act", "observe", "reset") if not callable(getattr(policy, m, None))]
    if missing:
        raise TypeError(
            f"{type(policy).__name__} lacks {', '.join(missing)}: a Policy (workbench.algos.base) has "
            "act(obs, game_ids), observe(actions, rewards) and reset(indices)"
        )
    return policy


@runtime_checkable
class InspectablePolicy(Policy, Protocol):
    """A policy that can also explain its decisions (the explorer's view)."""

    def act_explained(self, obs: np.ndarray, game_ids: np.ndarray) -> tuple[np.ndarray, list[Explanation]]: ...


class DelegatingPolicy:
    """Base of explaining policies built on a plain one: ``act``, ``reset`` and ``observe`` go to
    ``inner``; a subclass adds ``act_explained``."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner

    def reset(self, indices: np.ndarray) -> None:
        self.inner.reset(indices)

    def observe(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        self.inner.observe(actions, rewards)

    def act(self, obs: np.ndarray, game_ids: np.ndarray) -> np.ndarray:
        return self.inner.act(obs, game_ids)


# ------------------------------------------------------------------------------- training


class Algo(Protocol):
    """The object the trainer drives: a model, its loss, and its policies.

    The trainer owns the loop: ``loss, metrics = algo.loss(batch)``; backward; clip; optimizer
    over ``param_groups()``; ``update_target()`` every target period. ``target_model`` (or None)
    is checkpointed with ``model`` and never trained.
    """

    # Read-only here, so an algo may declare its own subclass (``ScaledQL.model: QNetwork``).
    @property
    def model(self) -> nn.Module: ...

    @property
    def target_model(self) -> nn.Module | None: ...

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]: ...

    def update_target(self) -> None: ...

    def param_groups(self) -> list[dict[str, Any]]: ...

    def to(self, device: Any) -> Any: ...

    def to_channels_last(self) -> Any: ...

    def policy(self, options: EvalOptions) -> Policy: ...

    def inspectable_policy(self, options: EvalOptions) -> InspectablePolicy: ...


@runtime_checkable
class Diagnosable(Protocol):
    """An algo whose representation the trainer can probe (``workbench.diagnostics``):
    ``probe_forward(probe)`` -> (features (N, D), greedy actions (N,)) of a training batch, one
    forward pass, no gradients needed."""

    def probe_forward(self, probe: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]: ...


Batches = Callable[[int], Iterator[dict[str, Tensor]]]
"""``start_step -> iterator of batches`` beginning with the batch of that step (``workbench.train``)."""


@dataclass(frozen=True)
class Scale:
    """Steps, batch and evaluation cap of one preset for one model."""

    steps: int
    """Gradient steps of each stage."""
    batch_size: int
    """Global batch (all ranks together)."""
    eval_max_steps: int
    """Agent-step cap per evaluation episode (the protocol's 27,000 at paper scale)."""
    eval_episodes: int = 2
    """Evaluation episodes per game after training (both papers: 16)."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Algorithm settings this preset changes (e.g. a shorter target period on CPU)."""
    stage_steps: Mapping[str, int] = field(default_factory=dict)
    """Per-stage step counts that differ from ``steps`` (stage name -> steps)."""
    log_every: int = 100
    checkpoint_every: int = 10_000
    games_per_batch: int = 128
    """Stratified sampling: game draws per global batch (the papers: 128 draws x 4)."""


@dataclass(frozen=True)
class Stage:
    """One training stage as the pipeline runs it (``pipeline.pretrain`` loops over these)."""

    name: str
    """'train' for single-stage algorithms; e.g. 'stage1', 'stage2' for JOWA."""
    subdir: str
    """Run sub-folder of this stage's checkpoints and metrics ('' = the run folder itself)."""
    steps: int
    lr: float
    weight_decay: float
    target_update_period: int
    find_unused_parameters: bool = False
    """DDP: parameters that get no gradient in this stage (frozen heads) are expected."""


@dataclass
class StageContext:
    """What a stage's sampler needs: the data and the process layout."""

    store: Path
    games: tuple[str, ...]
    batch_size: int
    """Global batch size (the samplers give each rank its share)."""
    games_per_batch: int
    """Global game draws per batch (stratified sampling; the paper: 128 draws x 4 transitions)."""
    seed: int
    rank: int
    world_size: int
    run_dir: Path
    device: Any
    progress: bool = True


# ------------------------------------------------------------------------------- fine-tuning


@dataclass(frozen=True)
class FinetuneScale:
    """Steps, batch, learning rate and evaluation of one fine-tuning preset (``cpu``, ``paper``)."""

    stage_steps: tuple[tuple[str, int], ...]
    """(stage name, gradient steps) in order: the names the algorithm's ``stages`` gives."""
    batch_size: int
    lr: float
    eval_episodes: int
    eval_max_steps: int
    record_steps: int
    """Agent steps recorded when no dataset is given (enough for the protocol's split)."""
    snapshot_every: int
    log_every: int
    checkpoint_every: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Settings the preset fixes over the checkpoint's (e.g. the paper's target period, also when
    the checkpoint was pretrained at CPU scale)."""


@dataclass(frozen=True)
class FinetuneProtocol:
    """How checkpoints of an algorithm are fine-tuned to an unseen game (``workbench.finetune``).

    An algorithm declares one as its spec's ``finetune``; the job reads everything it needs from
    it and names no algorithm. The hooks' defaults suit a one-network algorithm; a protocol that
    trains differently from pretraining (JOWA's second stage) overrides ``wrap``, ``enter_stage``
    and ``batches``.
    """

    name: str
    """The protocol's name, recorded in a run's ``resolved.protocol`` (e.g. the paper's algorithm)."""
    paper_split: str
    """The data split ``split='auto'`` takes (``workbench.data.splits``)."""
    held_out_games: tuple[str, ...]
    """The paper's held-out games (named in messages; any unseen game is allowed)."""
    methods: tuple[str, ...]
    """Valid ``method`` values for a checkpoint of this algorithm."""
    pretrained_methods: tuple[str, ...]
    """Methods that start from the checkpoint's weights (the others start from a random init)."""
    scale_fn: Callable[[str, str, str], FinetuneScale]
    """``(preset, model, method) -> FinetuneScale``."""
    transferred: tuple[str, ...] | None = None
    """Weight parts copied from the checkpoint (``weight_parts`` names); None = every part."""
    reinitialized: tuple[str, ...] = ()
    """Weight parts kept at their fresh initialization."""
    freezable: tuple[str, ...] = ()
    """Parts ``encoder='frozen'`` freezes; () = the protocol trains every component."""
    method_algos: Mapping[str, str] = field(default_factory=dict)
    """Methods that train another registered algorithm (method -> its name; e.g. a BC baseline)."""
    carried_settings: tuple[str, ...] = ()
    """Settings copied from the checkpoint's into another algorithm's (for ``method_algos``)."""
    stage_shares: tuple[int, ...] = (1,)
    """How a total ``steps`` is split between the stages, in order (integer weights: 3, 7 = 3:7)."""

    def scale(self, preset: str, model: str, method: str) -> FinetuneScale:
        return self.scale_fn(preset, model, method)

    def stage_plan(self, scale: FinetuneScale, steps: int) -> tuple[tuple[str, int], ...]:
        """(stage, steps) of each stage: the preset's, or ``steps`` split by ``stage_shares``."""
        plan = scale.stage_steps
        if not steps:
            return plan
        if len(plan) != len(self.stage_shares):
            raise ValueError(f"protocol {self.name!r}: {len(plan)} stages but {len(self.stage_shares)} shares")
        out, left, total = [], steps, sum(self.stage_shares)
        for i, ((name, _), share) in enumerate(zip(plan, self.stage_shares)):
            n = max(1, left if i == len(plan) - 1 else steps * share // total)
            out.append((name, n))
            left -= n
        return tuple(out)

    def wrap(self, algo: Algo, settings: Any) -> Algo:
        """The object the trainer drives, around the built and loaded algo (default: itself)."""
        return algo

    def enter_stage(self, spec: AlgoSpec, algo: Algo, stage: str, context: StageContext) -> None:
        """Prepare a stage (default: as in pretraining); the job freezes ``freezable`` parts after."""
        spec.enter_stage(algo, stage, context)

    def batches(self, spec: AlgoSpec, algo: Algo, stage: str, context: StageContext) -> Batches:
        """The stage's batches (default: the algorithm's pretraining sampler on the new game's data)."""
        return spec.batches(algo, stage, context)


class AlgoSpec(Protocol):
    """Everything the workbench knows about one algorithm, in one place."""

    name: str
    """Registry name (``algo=...``)."""
    label: str
    """The method's name in figures and tables (``MTBC`` for ``bc``, as the papers call it)."""
    description: str
    settings_class: type
    """The algorithm's own settings dataclass (validated; ``algo_args`` fill it)."""
    metric_prefixes: tuple[str, ...]
    """Prefixes of the metrics its loss logs (``loss/``, ``q/``, ``world/`` ...)."""
    curves: tuple[str, ...]
    """The metrics its learning-curve figures draw, in order."""
    suites: tuple[str, ...]
    """The game suites its models read (``workbench.geometry``): a run on another suite's games is
    refused when its config is built."""
    finetune: FinetuneProtocol | None
    """How its checkpoints are fine-tuned to an unseen game (None: they cannot be)."""

    def model_presets(self) -> Sequence[str]: ...

    def default_model(self) -> str: ...

    def scale(self, preset: str, model: str) -> Scale: ...

    def stages(self, settings: Any, scale: Scale, batch_size: int, lr: float) -> list[Stage]:
        """The training stages, resolved: steps, learning rate (``lr`` > 0 overrides the paper's
        rule at ``batch_size``), weight decay and target period of each."""
        ...

    def settings_from_data(self, settings: Any, store: Path, games: Sequence[str]) -> dict[str, Any]:
        """Settings computed from the built store (e.g. per-game reward scales), recorded in the
        run's ``resolved.data_settings``; {} when the algorithm has none."""
        ...

    def build(self, model: str, games: Sequence[str], settings: Any, seed: int) -> Algo:
        """A freshly initialised algo (weights from ``seed``) in its first stage."""
        ...

    def enter_stage(self, algo: Algo, stage: str, context: StageContext) -> None:
        """Prepare ``algo`` for ``stage`` (freeze parts, refresh targets, pre-tokenize ...)."""
        ...

    def batches(self, algo: Algo, stage: str, context: StageContext) -> Batches:
        """``start_step -> iterator of batches`` for this stage, deterministic in the seed."""
        ...


# ------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, AlgoSpec] = {}


def register(spec: AlgoSpec, *, replace: bool = False) -> AlgoSpec:
    """Add an algorithm to the registry (``replace=True`` to redefine one, e.g. in a notebook)."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"algorithm {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def _load_builtin() -> None:
    # The built-in algorithms register themselves on import.
    from workbench.algos import jowa, mgdt, scaled_ql  # noqa: F401, PLC0415  (self-registration: they import this module)


def algo_names() -> tuple[str, ...]:
    _load_builtin()
    return tuple(_REGISTRY)


def get_algo(name: str) -> AlgoSpec:
    """The registered algorithm ``name``; an unknown name lists the valid ones."""
    _load_builtin()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown algo {name!r}{hint}; valid algos: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def model_owner(model: str) -> AlgoSpec:
    """The first registered algorithm whose presets include ``model`` (its default algorithm)."""
    _load_builtin()
    for spec in _REGISTRY.values():
        if model in spec.model_presets():
            return spec
    valid = sorted({m for s in _REGISTRY.values() for m in s.model_presets()})
    raise ValueError(f"unknown model {model!r}; valid models: {', '.join(valid)}")


def recorded_settings(settings_class: type, recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A run's recorded settings, completed for settings added since it was recorded: a settings
    class may declare ``LEGACY_DEFAULTS`` (the behaviour its runs had before a setting existed), so
    an old run is rebuilt as it was trained and played, not under a newer default."""
    legacy = getattr(settings_class, "LEGACY_DEFAULTS", {})
    return {**{k: v for k, v in legacy.items() if k not in recorded}, **recorded}


def algo_label(name: str) -> str:
    """The figure label of algorithm ``name``: its registry entry's, else the name itself (a run
    of an algorithm this session has not registered)."""
    _load_builtin()
    spec = _REGISTRY.get(name)
    return spec.label if spec is not None else name


def stage_iterator(sampler: Any) -> Batches:
    """``start_step -> iterator``: a resumable sampler positioned at a step's batch."""

    def from_step(start: int) -> Iterator[dict[str, Tensor]]:
        sampler.load_state_dict({"batch_index": start, "seed": sampler.seed, "rank": sampler.rank})
        return iter(sampler)

    return from_step

"""Which DQN-Replay data goes into a store: the split grammar, the papers' presets, run lists.

A :class:`Split` first chooses checkpoints of each run (all, the first K, or the last fraction F),
then optionally a sample of transition starts without replacement (a fraction, or N per game),
drawn either as single transitions (``unit="transitions"``: a uniform sample, the Scaled QL
paper's 1%) or as whole episodes (``unit="episodes"``: episodes in random order until the budget is
met, the last one cut to fit, as JOWA's reference ``downsample.py`` does). Either way the split's
size is the number of transitions every method trains on: sequence samplers never feed a row that
is not one of the split's starts. The config grammar (:func:`parse_split`) is
``all | first:K | last:F | fraction:F[:episodes] | n:N[:episodes]`` or a preset name from
:data:`PRESETS`; runs are written ``"1,2"`` (:func:`parse_runs`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from workbench.data.dqn_replay import DQNReplayError, IncompleteRunWarning, RunCheckpoints, format_ids

SELECT_CHOICES = ("all", "first", "last")
UNIT_CHOICES = ("transitions", "episodes")


class StoreError(ValueError):
    """A bad store, split or build argument (the message names the problem and valid choices)."""


class CheckpointSelection(list[int]):
    """The checkpoint ids a split chose from one run (a sorted list of them), and their provenance.

    ``run`` is the run's :class:`~workbench.data.dqn_replay.RunCheckpoints` (None when the split
    was given a plain list of ids); ``warnings`` name the run's missing checkpoints that the split
    did not need. :meth:`provenance` is the JSON-ready record a store's manifest can keep."""

    def __init__(self, ids: Sequence[int], split: str, run: RunCheckpoints | None = None,
                 warnings: Sequence[str] = ()) -> None:
        super().__init__(ids)
        self.split = split
        self.run = run
        self.warnings = list(warnings)

    @property
    def checkpoints(self) -> list[int]:
        """The checkpoint ids used (the list itself, as a plain list)."""
        return list(self)

    def provenance(self) -> dict[str, Any]:
        """The ids used, the run folder, the ids the run holds, should hold and lacks, the warnings."""
        run = self.run
        return {
            "split": self.split, "checkpoints": list(self),
            "replay_logs": str(run.replay_logs) if run is not None else None,
            "run_checkpoints": list(run) if run is not None else list(self),
            "expected_checkpoints": run.expected if run is not None else None,
            "expected_is_lower_bound": (not run.end_known) if run is not None else False,
            "missing_checkpoints": list(run.missing) if run is not None else [],
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class Split:
    """Which data of each run goes into the store.

    ``select`` chooses checkpoints: ``"all"``, the ``"first"`` or the ``"last"`` ``k`` of the run's
    checkpoints (or ``round(ckpt_fraction * n_checkpoints)``, at least 1). Then optionally a
    sample of transition starts without replacement across the chosen checkpoints of all chosen
    runs of a game: ``sample_fraction`` of them or ``sample_count`` per game, drawn as ``unit``:
    single ``"transitions"`` (uniform) or whole ``"episodes"`` (random order, the last one cut so
    the count is exact).
    """

    select: str = "all"
    k: int | None = None
    ckpt_fraction: float | None = None
    sample_fraction: float | None = None
    sample_count: int | None = None
    name: str = ""
    unit: str = "transitions"

    def __post_init__(self) -> None:
        if self.select not in SELECT_CHOICES:
            raise StoreError(f"Split.select must be one of {SELECT_CHOICES}, got {self.select!r}")
        if self.select == "all" and (self.k is not None or self.ckpt_fraction is not None):
            raise StoreError("Split(select='all') takes neither k nor ckpt_fraction")
        if self.select != "all" and (self.k is None) == (self.ckpt_fraction is None):
            raise StoreError(f"Split(select={self.select!r}) needs exactly one of k (int >= 1) or ckpt_fraction (0, 1]")
        if self.k is not None and (not isinstance(self.k, int) or self.k < 1):
            raise StoreError(f"Split.k must be an int >= 1, got {self.k!r}")
        if self.ckpt_fraction is not None and not 0 < self.ckpt_fraction <= 1:
            raise StoreError(f"Split.ckpt_fraction must be in (0, 1], got {self.ckpt_fraction!r}")
        if self.sample_fraction is not None and self.sample_count is not None:
            raise StoreError("Split takes sample_fraction or sample_count, not both")
        if self.sample_fraction is not None and not 0 < self.sample_fraction <= 1:
            raise StoreError(f"Split.sample_fraction must be in (0, 1], got {self.sample_fraction!r}")
        if self.sample_count is not None and (not isinstance(self.sample_count, int) or self.sample_count < 1):
            raise StoreError(f"Split.sample_count must be an int >= 1, got {self.sample_count!r}")
        if self.unit not in UNIT_CHOICES:
            raise StoreError(f"Split.unit must be one of {UNIT_CHOICES}, got {self.unit!r}")
        if self.unit == "episodes" and not self.subsampled:
            raise StoreError("Split(unit='episodes') needs sample_fraction or sample_count: it says how a sample is "
                             "drawn, and this split keeps every transition")

    @property
    def subsampled(self) -> bool:
        return self.sample_fraction is not None or self.sample_count is not None

    def manifest_params(self) -> dict[str, Any]:
        """The split as a store's manifest records it (``unit`` only when it is not the default, so
        a store built before units existed keeps the same plan)."""
        params = asdict(self)
        if self.unit == "transitions":
            del params["unit"]
        return params

    @property
    def label(self) -> str:
        """The split's name, or the fields that differ from their defaults (for messages and provenance)."""
        if self.name:
            return self.name
        set_fields = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                      if f.name != "name" and getattr(self, f.name) != f.default]
        return f"Split({', '.join(set_fields)})"

    def choose(self, checkpoints: Sequence[int]) -> CheckpointSelection:
        """The checkpoints of one run this split uses (a list of ids that also records the run).

        ``checkpoints``: what :func:`workbench.data.dqn_replay.list_checkpoints` returns (the run's
        checkpoints and the range ``0..N-1`` it should hold), or a plain list of a whole run's ids
        ``0..N-1``. Counts (``first`` by fraction, ``last``, ``all``) are over ``0..N-1``, never over
        the checkpoints present, so a missing one cannot shift the selection silently:

        * a split that needs a missing checkpoint -- or needs the run's length while its last
          checkpoints are missing (anything but ``first`` with a fixed ``k``) -- raises
          :class:`~workbench.data.dqn_replay.DQNReplayError` naming the run folder, the missing ids
          and the valid choices;
        * a split that does not need the missing ones is honest: the result's ``warnings`` name
          them (also issued as an :class:`~workbench.data.dqn_replay.IncompleteRunWarning`).
        """
        run = checkpoints if isinstance(checkpoints, RunCheckpoints) else None
        ck = sorted(int(c) for c in checkpoints)
        if run is None and ck != list(range(len(ck))):
            raise StoreError(f"Split.choose counts over a whole run's checkpoints 0..N-1, got {format_ids(ck)}; "
                             "pass dqn_replay.list_checkpoints(replay_logs), which names the missing ones")
        if not ck:
            return CheckpointSelection([], self.label, run)
        n = run.expected if run is not None else len(ck)
        if run is not None and not run.end_known and not (self.select == "first" and self.k is not None):
            raise DQNReplayError(f"{run.replay_logs}: split {self.label!r} counts checkpoints over the whole run, "
                                 f"whose last checkpoints are missing: {run.describe()}; {run.choices()}")
        if self.select == "all":
            k = n
        else:
            k = self.k if self.k is not None else max(1, round(self.ckpt_fraction * n))  # type: ignore[operator]
        if k > n and (run is None or run.end_known):
            raise StoreError(f"Split asks for {k} checkpoints but the run has {n}: {format_ids(range(n))}")
        needed = list(range(n - k, n)) if self.select == "last" else list(range(k))
        lacking = sorted(set(needed) - set(ck))
        if lacking:
            assert run is not None  # a plain list is a whole run 0..N-1
            raise DQNReplayError(f"{run.replay_logs}: split {self.label!r} needs checkpoints {format_ids(lacking)}, "
                                 f"which are missing: {run.describe()}; {run.choices()}")
        notes = []
        if run is not None and run.missing:
            more = "" if run.end_known else " (and any after them)"
            notes.append(f"{run.replay_logs}: split {self.label!r} uses checkpoints {format_ids(needed)}; the run "
                         f"lacks checkpoints {format_ids(run.missing)}{more}, which this split does not need")
            warnings.warn(notes[-1], IncompleteRunWarning, stacklevel=2)
        return CheckpointSelection(needed, self.label, run, notes)

    def sample_size(self, valid_starts: int) -> int | None:
        """How many starts to draw from ``valid_starts`` (None: keep them all)."""
        if not self.subsampled:
            return None
        if self.sample_count is not None:
            return self.sample_count
        return round(self.sample_fraction * valid_starts)  # type: ignore[operator]


#: The papers' splits (see shared/notes/dqn_replay_format.md). JOWA's text says "uniformly draw";
#: its reference code (dataset/src/downsample.py) draws whole episodes until the budget is met,
#: which is what its sequence model needs, so its splits follow the code. Scaled QL's 1% is
#: "uniformly subsampled"; MGDT fine-tunes on the same budget in episodes (``finetune_1pct_episodes``).
PRESETS: dict[str, Split] = {
    "sub_optimal": Split("first", ckpt_fraction=0.2, name="sub_optimal"),  # Scaled QL: first 20%
    "near_optimal": Split("all", name="near_optimal"),  # Scaled QL: all 50M
    "expert": Split("last", ckpt_fraction=0.2, name="expert"),  # last 20%
    "jowa_10pct": Split("all", sample_fraction=0.1, name="jowa_10pct", unit="episodes"),  # JOWA: 10%
    "finetune_1pct": Split("all", sample_fraction=0.01, name="finetune_1pct"),  # Scaled QL fine-tuning
    "finetune_1pct_episodes": Split("all", sample_fraction=0.01, name="finetune_1pct_episodes", unit="episodes"),
    "finetune_5k_expert": Split("last", ckpt_fraction=0.2, sample_count=5000, name="finetune_5k_expert",
                                unit="episodes"),  # JOWA fine-tuning: ~4 expert episodes
}

GRAMMAR = "all, first:K, last:F, fraction:F[:episodes], n:N[:episodes]"


def parse_split(spec: str | Split) -> Split:
    """A preset name or ``all | first:K | last:F | fraction:F[:episodes] | n:N[:episodes]`` (the
    config grammar): ``first:K`` first K checkpoints; ``last:F`` last fraction F of checkpoints;
    ``fraction:F`` a uniform fraction F of all transitions; ``n:N`` N uniform transitions; with
    ``:episodes`` the same number of transitions drawn as whole episodes."""
    if isinstance(spec, Split):
        return spec
    if not isinstance(spec, str):
        raise StoreError(f"split must be a Split or a string ({GRAMMAR} or a preset {sorted(PRESETS)}), got {spec!r}")
    if spec in PRESETS:
        return PRESETS[spec]
    kind, _, value = spec.partition(":")
    value, _, unit = value.partition(":")
    if unit and (kind not in ("fraction", "n") or unit != "episodes"):
        raise StoreError(f"invalid split {spec!r}: only fraction:F and n:N take a unit, and it is 'episodes'; "
                         f"valid: {GRAMMAR} or a preset {sorted(PRESETS)}")
    unit = unit or "transitions"
    try:
        if kind == "all" and not value:
            return Split("all", name=spec)
        if kind == "first":
            return Split("first", k=int(value), name=spec)
        if kind == "last":
            return Split("last", ckpt_fraction=float(value), name=spec)
        if kind == "fraction":
            return Split("all", sample_fraction=float(value), name=spec, unit=unit)
        if kind == "n":
            return Split("all", sample_count=int(value), name=spec, unit=unit)
    except ValueError as e:
        raise StoreError(f"invalid split {spec!r}: {e}") from None
    raise StoreError(f"invalid split {spec!r}; valid: {GRAMMAR} or a preset {sorted(PRESETS)}")


def split_preset(name: str) -> Split:
    """A named split of the papers; unknown names list the presets."""
    if name not in PRESETS:
        raise StoreError(f"unknown split {name!r}; presets: {sorted(PRESETS)}")
    return PRESETS[name]


def parse_runs(spec: str | int) -> tuple[int, ...]:
    """Comma-separated run numbers (``"1,2"``; runs of DQN-Replay are numbered from 1)."""
    try:
        runs = tuple(int(r) for r in str(spec).split(",") if r.strip())
    except ValueError:
        raise ValueError(f"invalid runs {spec!r}; expected comma-separated run numbers like '1,2'") from None
    if not runs or any(r < 1 for r in runs):
        raise ValueError(f"invalid runs {spec!r}; run numbers start at 1")
    return runs

"""Which DQN-Replay data goes into a store: the split grammar, the papers' presets, run lists.

A :class:`Split` first chooses checkpoints of each run (all, the first K, or the last fraction F),
then optionally a uniform sample of transition starts without replacement (a fraction, or N per
game). The config grammar (:func:`parse_split`) is ``all | first:K | last:F | fraction:F | n:N``
or a preset name from :data:`PRESETS`; runs are written ``"1,2"`` (:func:`parse_runs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SELECT_CHOICES = ("all", "first", "last")


class StoreError(ValueError):
    """A bad store, split or build argument (the message names the problem and valid choices)."""


@dataclass(frozen=True)
class Split:
    """Which data of each run goes into the store.

    ``select`` chooses checkpoints: ``"all"``, the ``"first"`` or the ``"last"`` ``k`` of the run's
    checkpoints (or ``round(ckpt_fraction * n_checkpoints)``, at least 1). Then optionally a
    uniform sample of transition starts without replacement across the chosen checkpoints of
    all chosen runs of a game: ``sample_fraction`` of them or ``sample_count`` per game.
    """

    select: str = "all"
    k: int | None = None
    ckpt_fraction: float | None = None
    sample_fraction: float | None = None
    sample_count: int | None = None
    name: str = ""

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

    @property
    def subsampled(self) -> bool:
        return self.sample_fraction is not None or self.sample_count is not None

    def choose(self, checkpoints: Sequence[int]) -> list[int]:
        """The checkpoints of one run this split uses."""
        ck = sorted(checkpoints)
        if not ck:
            return []
        if self.select == "all":
            return ck
        k = self.k if self.k is not None else max(1, round(self.ckpt_fraction * len(ck)))  # type: ignore[operator]
        if k > len(ck):
            raise StoreError(f"Split asks for {k} checkpoints but the run has {len(ck)}: {ck}")
        return ck[:k] if self.select == "first" else ck[-k:]

    def sample_size(self, valid_starts: int) -> int | None:
        """How many starts to draw from ``valid_starts`` (None: keep them all)."""
        if not self.subsampled:
            return None
        if self.sample_count is not None:
            return self.sample_count
        return round(self.sample_fraction * valid_starts)  # type: ignore[operator]


#: The papers' splits (see shared/notes/dqn_replay_format.md).
PRESETS: dict[str, Split] = {
    "sub_optimal": Split("first", ckpt_fraction=0.2, name="sub_optimal"),  # Scaled QL: first 20%
    "near_optimal": Split("all", name="near_optimal"),  # Scaled QL: all 50M
    "expert": Split("last", ckpt_fraction=0.2, name="expert"),  # last 20%
    "jowa_10pct": Split("all", sample_fraction=0.1, name="jowa_10pct"),  # JOWA: uniform 10%
    "finetune_1pct": Split("all", sample_fraction=0.01, name="finetune_1pct"),  # Scaled QL fine-tuning
    "finetune_5k_expert": Split("last", ckpt_fraction=0.2, sample_count=5000, name="finetune_5k_expert"),  # JOWA
}

GRAMMAR = "all, first:K, last:F, fraction:F, n:N"


def parse_split(spec: str | Split) -> Split:
    """A preset name or ``all | first:K | last:F | fraction:F | n:N`` (the config grammar):
    ``first:K`` first K checkpoints; ``last:F`` last fraction F of checkpoints; ``fraction:F`` a
    uniform fraction F of all transitions; ``n:N`` N uniform transitions."""
    if isinstance(spec, Split):
        return spec
    if not isinstance(spec, str):
        raise StoreError(f"split must be a Split or a string ({GRAMMAR} or a preset {sorted(PRESETS)}), got {spec!r}")
    if spec in PRESETS:
        return PRESETS[spec]
    kind, _, value = spec.partition(":")
    try:
        if kind == "all" and not value:
            return Split("all", name=spec)
        if kind == "first":
            return Split("first", k=int(value), name=spec)
        if kind == "last":
            return Split("last", ckpt_fraction=float(value), name=spec)
        if kind == "fraction":
            return Split("all", sample_fraction=float(value), name=spec)
        if kind == "n":
            return Split("all", sample_count=int(value), name=spec)
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

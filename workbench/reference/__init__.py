"""Published reference numbers: per-game reference scores and the papers' score tables.

- ``scores.csv`` (package data): random, human and DQN scores per game, with each row's source;
  :func:`workbench.metrics.reference_scores` reads it and :func:`workbench.metrics.normalize_score`
  is the one place that turns a raw score into a normalized one.
- :mod:`workbench.reference.paper_tables`: the papers' raw per-game tables and printed aggregates.
- ``jowa_released_scores.csv`` (package data): the raw per-episode scores JOWA's authors released
  with their checkpoints; :func:`released_jowa_means` gives their per-game means.
"""

from __future__ import annotations

import csv
from functools import cache
from importlib import resources

__all__ = ["RELEASED_JOWA_SOURCE", "released_jowa_means"]

RELEASED_JOWA_SOURCE = "CJReinforce/JOWA eval/JOWA_<size>_raw_scores.json (16 episodes per game)"
"""Where ``jowa_released_scores.csv``'s rows come from (each row names its file and commit)."""


@cache
def _released_rows() -> tuple[dict[str, str], ...]:
    text = resources.files(__name__).joinpath("jowa_released_scores.csv").read_text()
    return tuple(csv.DictReader(text.splitlines()))


def released_jowa_means(size: str) -> dict[str, float]:
    """Mean raw score per game of the released JOWA model of ``size`` ('40m', '70m', '150m'):
    the mean over each game's 16 episodes in ``jowa_released_scores.csv`` (the reference
    repository's eval/JOWA_<size>_raw_scores.json, beam search with its per-game settings)."""
    model = f"JOWA-{size.upper()}"
    per: dict[str, list[float]] = {}
    for row in _released_rows():
        if row["model"] == model:
            per.setdefault(row["game"], []).append(float(row["raw_score"]))
    if not per:
        sizes = sorted({r["model"].removeprefix("JOWA-").lower() for r in _released_rows()})
        raise ValueError(f"no released JOWA scores for size {size!r}; released sizes: {', '.join(sizes)}")
    return {g: sum(v) / len(v) for g, v in per.items()}

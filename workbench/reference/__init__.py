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
from typing import Any

__all__ = ["RELEASED_JOWA_SOURCE", "released_jowa_means", "released_reference"]

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


def released_reference(resolved: dict[str, Any], means: dict[str, float], comparable: bool | None = None
                       ) -> dict[str, Any] | None:
    """For a run converted from a released JOWA checkpoint (``resolved["converted_from"]``,
    :mod:`workbench.convert`): the release's own per-game mean scores (16 episodes each,
    :func:`released_jowa_means`) beside ``means``, ours; None for other runs. ``comparable`` False
    (ours are capped episodes) adds a line saying so. Notebook 05 (``evaluate_run``) and
    ``benchmarks/gpu_check.py`` print its ``lines``."""
    size = (resolved.get("converted_from") or {}).get("size")
    if not size:
        return None
    model = f"JOWA-{str(size).upper()}"
    theirs = released_jowa_means(str(size))
    per_game = {g: theirs[g] for g in means if g in theirs}
    missing = [g for g in means if g not in theirs]
    lines = [f"released {model} beside ours (the release: {RELEASED_JOWA_SOURCE}):"]
    lines += [f"  {g:<16} ours {means[g]:>10.1f}   released {model} {per_game[g]:>10.1f}" for g in per_game]
    if missing:
        lines.append(f"  no released score for {', '.join(missing)} (the release evaluated its 15 pretraining games)")
    if comparable is False:
        lines.append("  ours are capped episodes; the released scores are full 108,000-frame episodes: not comparable")
    return {"model": model, "per_game": per_game, "not_released": missing, "source": RELEASED_JOWA_SOURCE,
            "lines": lines}

"""Published reference numbers: per-game reference scores and the papers' score tables.

- ``scores.csv`` (package data): random, human and DQN scores per game, with each row's source;
  :func:`workbench.metrics.reference_scores` reads it and :func:`workbench.metrics.normalize_score`
  is the one place that turns a raw score into a normalized one.
- :mod:`workbench.reference.paper_tables`: the papers' raw per-game tables and printed aggregates.
"""

"""Figures as recipes: a figure is a name, a builder and the reason it cannot be drawn.

``workbench.viz.analysis.build_figures`` and ``workbench.viz.ablation.paper_figures`` each keep a
list of :class:`FigureRecipe` and hand it to :func:`draw` with what their figures are drawn from
(their *inputs*, computed once). Adding a figure is one builder function and one entry in the list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import plotly.graph_objects as go

__all__ = ["Built", "Drawn", "FigureRecipe", "Skip", "draw"]

T = TypeVar("T")
Built = tuple[go.Figure, str]
"""What a builder returns: the figure and its description."""


class Skip(Exception):
    """Raised by a builder that finds only while drawing that its figure cannot be made; its
    message is the reason :func:`draw` reports."""


def _always(_inputs: object) -> bool:
    return True


def _never(_inputs: object) -> None:
    return None


@dataclass(frozen=True)
class FigureRecipe(Generic[T]):
    """One figure of a list.

    ``build(inputs) -> (figure, description)``; ``skip(inputs)`` is why the figure is not drawn
    (None: draw it); ``applies(inputs)`` False leaves the figure out without a reason (it does not
    concern these runs). An entry without ``build`` only reports its ``skip`` reason: a note on
    something not drawn that is no figure of its own."""

    name: str
    build: Callable[[T], Built] | None
    skip: Callable[[T], str | None] = _never
    applies: Callable[[T], bool] = _always


@dataclass
class Drawn:
    """What :func:`draw` made, in the recipes' order."""

    figures: dict[str, go.Figure] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def draw(recipes: Sequence[FigureRecipe[T]], inputs: T) -> Drawn:
    """Every recipe that applies, in order: its figure and description, or why it was skipped."""
    out = Drawn()
    for recipe in recipes:
        if not recipe.applies(inputs):
            continue
        reason = recipe.skip(inputs)
        if reason is None and recipe.build is not None:
            try:
                out.figures[recipe.name], out.descriptions[recipe.name] = recipe.build(inputs)
                continue
            except Skip as exc:
                reason = str(exc)
        if reason is not None:
            out.skipped[recipe.name] = reason
    return out

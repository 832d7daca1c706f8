"""Figure recipes (workbench.viz.recipes): what draw makes of a list of them."""

from __future__ import annotations

import plotly.graph_objects as go

from workbench.viz.recipes import FigureRecipe, Skip, draw


def _fig(text: str):
    return lambda n: (go.Figure(layout=dict(title=f"{text} {n}")), f"{text} of {n}")


def _late(n: int):
    raise Skip(f"found only while drawing ({n})")


def test_draw_keeps_order_reasons_notes_and_leaves_out_what_does_not_apply():
    recipes = [
        FigureRecipe("a", _fig("A")),
        FigureRecipe("b", _fig("B"), lambda n: "too few" if n < 5 else None),
        FigureRecipe("note", None, lambda n: f"note {n}"),
        FigureRecipe("quiet", None),
        FigureRecipe("late", _late),
        FigureRecipe("other", _fig("O"), lambda n: "never reported", applies=lambda n: n > 5),
        FigureRecipe("c", _fig("C")),
    ]
    drawn = draw(recipes, 3)
    assert list(drawn.figures) == list(drawn.descriptions) == ["a", "c"]
    assert drawn.figures["c"].layout.title.text == "C 3" and drawn.descriptions["a"] == "A of 3"
    assert drawn.skipped == {"b": "too few", "note": "note 3", "late": "found only while drawing (3)"}
    assert list(drawn.skipped) == ["b", "note", "late"]
    assert draw(recipes, 9).skipped == {"note": "note 9", "late": "found only while drawing (9)",
                                        "other": "never reported"}

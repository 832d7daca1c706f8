"""Colours shared by every figure, so a method keeps its colour from one figure to the next."""

from __future__ import annotations

__all__ = ["PALETTE", "method_color", "rgba"]

#: Plotly's default qualitative palette, indexed by method (or action) position.
PALETTE = (
    "#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A",
    "#19D3F3", "#FF6692", "#B6E880", "#FF97FF", "#FECB52",
)  # fmt: skip


def method_color(i: int) -> str:
    """Colour of the ``i``-th method (cycling through :data:`PALETTE`)."""
    return PALETTE[i % len(PALETTE)]


def rgba(hex_color: str, alpha: float) -> str:
    """``"#rrggbb"`` as a CSS ``rgba(...)`` string with opacity ``alpha`` (for CI bands)."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[k : k + 2], 16) for k in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"

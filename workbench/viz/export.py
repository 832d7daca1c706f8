"""Saving figures: HTML always, PNG through kaleido when a Chromium is available.

``save_figure`` / ``save_figures`` report what they wrote (:class:`FigureSaveStatus`) instead of
raising when no browser is found. By default the HTML files of one folder share one
``plotly.min.js`` written beside them (``plotlyjs="directory"``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

from workbench.viz.style import wrap_annotations

__all__ = ["FigureSaveStatus", "find_chromium", "save_figure", "save_figures"]


@dataclass
class FigureSaveStatus:
    """What ``save_figure`` wrote: HTML always, PNG only when a browser was available."""

    html: Path
    png: Path | None
    message: str = ""

    @property
    def png_ok(self) -> bool:
        return self.png is not None


_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """Path of a Chrome/Chromium kaleido can drive (``BROWSER_PATH`` first), else ``None``."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env if Path(env).exists() else None
    for name in _CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


_NO_BROWSER = (
    "PNG skipped: kaleido 1.x needs Chrome/Chromium and none was found "
    "(install it with `apt-get install -y chromium`, or set BROWSER_PATH); the HTML was written."
)


def save_figure(
    fig: go.Figure,
    path_without_ext: str | os.PathLike[str],
    *,
    png: bool = True,
    plotlyjs: str | bool = "directory",
) -> FigureSaveStatus:
    """Write ``<path>.html`` always and ``<path>.png`` when a Chromium is available.

    Never raises for a missing browser: the returned status says what was written and why
    the PNG is missing. ``plotlyjs`` is passed to ``write_html(include_plotlyjs=...)``; the
    default "directory" writes one shared ``plotly.min.js`` next to the HTML files (works
    offline without a 4 MB copy per figure); use ``True`` for self-contained files.
    """
    return save_figures({path_without_ext: fig}, png=png, plotlyjs=plotlyjs)[0]


def save_figures(
    figs: Mapping[str | os.PathLike[str], go.Figure] | Iterable[tuple[str | os.PathLike[str], go.Figure]],
    *,
    png: bool = True,
    plotlyjs: str | bool = "directory",
) -> list[FigureSaveStatus]:
    """Write many figures; PNGs go through one kaleido call because each call starts Chromium."""
    items = list(figs.items()) if isinstance(figs, Mapping) else list(figs)
    statuses: list[FigureSaveStatus] = []
    for base, fig in items:
        wrap_annotations(fig)  # a note added after the layout was fitted (explain_empty) stays inside
        base = Path(base)
        base.parent.mkdir(parents=True, exist_ok=True)
        html = base.with_name(base.name + ".html")
        fig.write_html(html, include_plotlyjs=plotlyjs, full_html=True)
        statuses.append(FigureSaveStatus(html=html, png=None))
    if not png or not items:
        for s in statuses:
            s.message = "PNG not requested"
        return statuses
    if find_chromium() is None:
        for s in statuses:
            s.message = _NO_BROWSER
        return statuses

    pngs = [Path(str(s.html)[: -len(".html")] + ".png") for s in statuses]
    try:
        # kaleido renders at 700 x 500 unless told: pass each figure's own layout size (a
        # learning-curve figure grows with its rows) so the PNG shows what the HTML shows.
        fig_list = [f for _, f in items]
        pio.write_images(fig_list, pngs, width=[f.layout.width or 700 for f in fig_list],
                         height=[f.layout.height or 500 for f in fig_list])
    except Exception as exc:  # kaleido surfaces browser problems as many exception types
        for s in statuses:
            s.message = f"PNG failed ({type(exc).__name__}: {exc}); the HTML was written."
        return statuses
    for s, p in zip(statuses, pngs):
        s.png = p
        s.message = "wrote HTML and PNG"
    return statuses

"""Saving figures: HTML always, PNG through kaleido when a Chromium is available.

``save_figure`` / ``save_figures`` report what they wrote (:class:`FigureSaveStatus`) instead of
raising when no browser is found. By default the HTML files of one folder share one
``plotly.min.js`` beside them (``plotlyjs="directory"``), and that file is a hard link to one copy
per runs folder (``<runs>/.plotly/plotly-<version>.min.js``, :func:`shared_plotlyjs`): every run's
figures open offline and alone, and the 4.8 MB bundle is on disk once, not once per run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly import __version__ as plotly_version
from plotly.offline import get_plotlyjs

from workbench.viz.style import wrap_annotations

__all__ = ["FigureSaveStatus", "find_chromium", "save_figure", "save_figures", "shared_plotlyjs"]

BUNDLE = "plotly.min.js"


def _bundle_home(folder: Path) -> Path:
    """Where the one copy lives: the runs folder (a folder named ``runs``, or a sweep's folder)
    holding the run that holds ``folder``; else ``folder`` itself (nothing is written outside it)."""
    for cand in [folder, *folder.parents]:
        if (cand / "config.json").is_file() and (cand / ".workbench-run").exists():
            runs = cand.parent
            if runs.name == "runs" or (runs / "sweep.json").is_file():
                return runs
            break
    return folder


def shared_plotlyjs(folder: Path) -> Path:
    """``folder/plotly.min.js``, made a hard link to the runs folder's single copy (a real copy
    where the file system cannot link); an existing file is left as it is."""
    target = folder / BUNDLE
    if target.exists() or target.is_symlink():
        return target
    home = _bundle_home(folder)
    if home == folder:  # nothing to share with: the bundle itself, as plotly writes it
        return target
    source = home / ".plotly" / f"plotly-{plotly_version}.min.js"
    if not source.is_file():
        source.parent.mkdir(parents=True, exist_ok=True)
        tmp = source.with_name(source.name + f".{os.getpid()}.tmp")
        tmp.write_text(get_plotlyjs(), encoding="utf-8")
        os.replace(tmp, source)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: one copy here
        shutil.copyfile(source, target)
    return target


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
        if plotlyjs == "directory":
            shared_plotlyjs(base.parent)
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

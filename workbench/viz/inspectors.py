"""ipywidgets inspectors over a :class:`~workbench.viz.rollout.Rollout`.

Thin classes: a step slider (with a Play button), an HTML caption and one panel per figure. On
every slider change the pure builders of :mod:`workbench.viz.agent_figures` make the step's
figures, and each panel shows them through a widget's *synced state*, never through transient
messages:

* plots (Q distributions, search tree) are ``widgets.Output`` whose ``outputs`` is the figure
  itself (JupyterLab's plotly renderer draws it);
* frames are ``widgets.Image`` whose ``value`` is the builder's PNG (the ``source`` of the frame
  figure's image trace, byte for byte).

Why not ``go.FigureWidget``: it syncs its figure only when it is built and sends every later change
as a one-off message. A tab reload (or any new view) therefore drew the figure as it was at step 0
while the slider showed the current step, and after a reload the restored FigureWidget views
often stopped applying the updates at all (issue 29: "the frame stayed at step 0 while the slider
said 45"). Synced state is what a reload restores, so every panel shows the slider's step.

The step's figures stay available as plain ``go.Figure`` attributes (``frame_fig``, ``q_fig``,
``tree_fig``, ``frames_fig``), replaced on every step, for export and tests.

Display an inspector by leaving it last in a cell (it forwards ``_repr_mimebundle_``) or with
``display(inspector.widget)``. Headless (no kernel), setting ``inspector.step.value`` fires
the update synchronously, which the tests use.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go

from workbench.viz import agent_figures as F
from workbench.viz.rollout import Rollout

__all__ = ["PlannerInspector", "QInspector", "explorer", "plot_output", "png_bytes"]

# Pixel widths: every row of an inspector fits a 1280-px notebook panel (about 1,100 px of cell
# output beside the prompt) with room to spare; rows also wrap instead of overflowing when the
# panel is narrower (file browser open, split view). tests/test_browser.py checks it in Chromium.
FRAME_WIDTH, Q_WIDTH, TREE_WIDTH, FRAME_COL_WIDTH = 300, 660, 540, 170
FRAME_HEIGHT = 330  # the frame panel's image fits FRAME_WIDTH x FRAME_HEIGHT, aspect kept
PAIR_SIDE = 150  # a predicted / real next frame's width
PANEL_WIDTH = 1000  # the widest row: frame + Q distributions, or tree + two predicted-frame columns

PLOTLY_MIME = "application/vnd.plotly.v1+json"
# Atari frames are small: scale them up with square pixels, not blurred. The rule travels in the
# frame panel's title (an HTML widget), so it is restored with the panel after a reload.
_PIXELATED = "<style>.wb-frame { image-rendering: pixelated; }</style>"


def _row(children: list[widgets.Widget]) -> widgets.Box:
    """A row of figures that wraps onto the next line rather than overflowing the panel."""
    return widgets.Box(children, layout=widgets.Layout(display="flex", flex_flow="row wrap",
                                                       align_items="flex-start", width="100%"))


def _sized(fig: go.Figure, width: int) -> go.Figure:
    fig.update_layout(width=width, autosize=False)
    return fig


def _title(fig: go.Figure) -> str:
    return str(fig.layout.title.text or "")


def plot_output(fig: go.Figure, out: widgets.Output | None = None) -> widgets.Output:
    """Show ``fig`` in an Output widget (a new one, or ``out``) by setting its synced ``outputs``
    to the figure as JupyterLab's plotly renderer reads it; returns the widget.

    The state is the whole figure, so a reloaded tab or a second view draws what the kernel last
    set, and an update never depends on a one-off message reaching a live view."""
    doc = json.loads(fig.to_json())  # numpy arrays as plotly's typed-array JSON
    bundle = {
        PLOTLY_MIME: {"data": doc.get("data", []), "layout": doc.get("layout", {}),
                      "config": {"displaylogo": False}},
        "text/plain": f"<plotly figure: {_title(fig) or 'untitled'}>",
    }
    if out is None:
        width, height = fig.layout.width, fig.layout.height
        out = widgets.Output(layout=widgets.Layout(
            width=f"{int(width)}px" if width else None,
            # keep the row's height while the renderer swaps the old plot for the new one
            min_height=f"{int(height)}px" if height else None))
    out.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)
    return out


def png_bytes(source: str) -> bytes:
    """The PNG inside a ``data:image/png;base64,...`` URI (a ``go.Image`` trace's ``source``)."""
    head, sep, data = source.partition(",")
    if not sep or head != "data:image/png;base64":
        raise ValueError(f"not a base64 PNG data URI: {source[:40]!r}")
    return base64.b64decode(data)


def _fit(shape: tuple[int, ...], width: float, height: float) -> tuple[int, int]:
    """Display size of an ``(H, W, ...)`` frame scaled to fit ``width`` x ``height``."""
    h, w = int(shape[0]), int(shape[1])
    scale = min(width / w, height / h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _frame_image(size: tuple[int, int]) -> widgets.Image:
    img = widgets.Image(format="png", width=str(size[0]), height=str(size[1]),
                        layout=widgets.Layout(width=f"{size[0]}px", height=f"{size[1]}px"))
    img.add_class("wb-frame")
    return img


def _step_slider(rollout: Rollout, step: widgets.IntSlider | None) -> widgets.IntSlider:
    if step is not None:
        if step.max != len(rollout) - 1:
            raise ValueError(f"shared slider spans 0..{step.max}, the rollout 0..{len(rollout) - 1}")
        return step
    return widgets.IntSlider(value=0, min=0, max=max(len(rollout) - 1, 0), description="step",
                             continuous_update=False, layout=widgets.Layout(width="60%"))


def _play_for(step: widgets.IntSlider) -> widgets.Play:
    play = widgets.Play(value=step.value, min=step.min, max=step.max, interval=300, description="play")
    widgets.jslink((play, "value"), (step, "value"))  # runs in the browser, no kernel round trip
    return play


def _q_bar_figure(q: np.ndarray, names: list[str], chosen: int) -> go.Figure:
    """Expected Q per action for models without distributions (MSE heads)."""
    fig = go.Figure(go.Bar(
        x=q, y=names, orientation="h", text=[f"{v:.2f}" for v in q], textposition="auto",
        marker_color=[F.CHOSEN_COLOR if a == chosen else "#7f9fcf" for a in range(len(q))],
    ))
    fig.update_layout(title=f"Q values — chosen: {names[chosen]} (Q={q[chosen]:.3f})",
                      template="plotly_white", height=380, yaxis_autorange="reversed")
    return fig


class QInspector:
    """Step slider over a rollout: the frame, per-action C51 distributions with expected Q,
    and the chosen action. Attributes: ``step`` (IntSlider), ``caption`` (HTML), the step's
    figures ``frame_fig`` and ``q_fig`` (``go.Figure``; ``q_fig`` is None without Q data), the
    panels showing them ``frame_title`` (HTML), ``frame_image`` (Image: ``frame_fig``'s PNG) and
    ``q_view`` (Output), and ``widget``."""

    def __init__(self, rollout: Rollout, *, step: widgets.IntSlider | None = None) -> None:
        if len(rollout) == 0:
            raise ValueError("QInspector: the rollout has no steps")
        self.rollout = rollout
        self._scores = rollout.scores()
        self.step = _step_slider(rollout, step)
        self.caption = widgets.HTML()
        self.frame_fig = self._frame(0)
        self.frame_title = widgets.HTML()
        self.frame_image = _frame_image(_fit(rollout.display_frame(0).shape, FRAME_WIDTH, FRAME_HEIGHT))
        frame_panel = widgets.VBox([self.frame_title, self.frame_image],
                                   layout=widgets.Layout(width=f"{FRAME_WIDTH}px"))
        self.q_fig = self._q(0) if rollout.has_q else None
        self.q_view = plot_output(self.q_fig) if self.q_fig is not None else None
        self.step.observe(self._on_step, names="value")
        panels: list[widgets.Widget] = [frame_panel]
        if self.q_view is not None:
            panels.append(self.q_view)
        controls = [self.step] if step is not None else [_play_for(self.step), self.step]
        self.widget = widgets.VBox([widgets.HBox(controls), self.caption, _row(panels)])
        self._render(self.step.value)

    def _frame(self, t: int) -> go.Figure:
        return F.make_frame_figure(self.rollout.display_frame(t), title=f"step {t}", height=380)

    def _q(self, t: int) -> go.Figure:
        r, a = self.rollout, int(self.rollout.actions[t])
        if r.q_probs is not None:
            assert r.support is not None  # a rollout records the support with its distributions
            fig = F.make_return_distribution_figure(r.q_probs[t], r.support, r.action_names, a,
                                                    title=f"step {t}")
        else:
            assert r.q_values is not None  # q_fig exists only for rollouts with Q data
            fig = _q_bar_figure(r.q_values[t], r.action_names, a)
        return _sized(fig, Q_WIDTH)

    def _on_step(self, change: dict[str, Any]) -> None:
        self._render(int(change["new"]))

    def _render(self, t: int) -> None:
        r = self.rollout
        a = int(r.actions[t])
        q = "" if r.q_values is None else f" · Q={float(r.q_values[t, a]):.3f}"
        # Scalars an algorithm explained its step with (e.g. MGDT's conditioned return).
        extra = "".join(f" · {html.escape(k.replace('_', ' '))} {float(v[t]):.3g}"
                        for k, v in r.extras.items() if np.ndim(v[t]) == 0)
        self.caption.value = (
            f"<b>{html.escape(r.game)}</b> · step {t}/{len(r) - 1} · action "
            f"<b>{html.escape(r.action_names[a])}</b>{q} · reward {float(r.rewards[t]):g} · "
            f"score {float(self._scores[t]):g}{extra}"
        )
        self.frame_fig = self._frame(t)
        self.frame_title.value = f"{_PIXELATED}<b>{html.escape(_title(self.frame_fig))}</b>"
        self.frame_image.value = png_bytes(self.frame_fig.data[0].source)
        if self.q_view is not None:
            self.q_fig = self._q(t)
            plot_output(self.q_fig, self.q_view)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


class PlannerInspector:
    """JOWA: the beam-search tree at a step (hover: action, predicted reward, Q, score; kept vs
    pruned) and the world model's predicted next frames next to the real ones.
    Attributes: ``step``, ``caption``, the step's figures ``tree_fig`` and ``frames_fig``
    (``go.Figure``), the panels ``tree_view`` (Output) and ``frames_view`` (a title over a grid of
    Images: ``frames_fig``'s PNGs, real frames above predicted ones), and ``widget``."""

    def __init__(self, rollout: Rollout, *, step: widgets.IntSlider | None = None) -> None:
        trees = rollout.trees
        if trees is None or not rollout.has_planner:
            raise ValueError(
                "PlannerInspector needs a rollout with search trees (a JOWA checkpoint played "
                "with the planner); this rollout has none — use QInspector"
            )
        self.rollout = rollout
        self._trees = trees
        self.horizon = 1 if rollout.predicted_frames is None else int(rollout.predicted_frames.shape[1])
        self.step = _step_slider(rollout, step)
        self.caption = widgets.HTML()
        self.tree_fig = self._tree(0)
        self.tree_view = plot_output(self.tree_fig)
        self.frames_fig = self._frames(0)
        size = _fit(rollout.frames.shape[1:], PAIR_SIDE, PAIR_SIDE * 2)
        self._frame_labels = [widgets.HTML() for _ in self.frames_fig.data]
        self._frame_images = [_frame_image(size) for _ in self.frames_fig.data]
        self._frames_title = widgets.HTML()
        cells = [widgets.VBox([label, img]) for label, img in zip(self._frame_labels, self._frame_images)]
        grid = widgets.GridBox(cells, layout=widgets.Layout(
            grid_template_columns=f"repeat({self.horizon}, {size[0]}px)", grid_gap="4px 12px"))
        self.frames_view = widgets.VBox([self._frames_title, grid], layout=widgets.Layout(
            width=f"{40 + FRAME_COL_WIDTH * self.horizon}px"))
        self.step.observe(self._on_step, names="value")
        controls = [self.step] if step is not None else [_play_for(self.step), self.step]
        self.widget = widgets.VBox([widgets.HBox(controls), self.caption,
                                    _row([self.tree_view, self.frames_view])])
        self._render(self.step.value)

    def _tree(self, t: int) -> go.Figure:
        tree = self._trees[t] or {"nodes": [], "chosen_action": None}
        title = f"step {t}" if self._trees[t] else f"step {t}: no search recorded"
        return _sized(F.make_search_tree_figure(tree, self.rollout.action_names, title=title), TREE_WIDTH)

    def _frames(self, t: int) -> go.Figure:
        real = self.rollout.real_next_frames(t, self.horizon)
        if self.rollout.predicted_frames is None:
            pred = np.zeros_like(real)
            title = f"step {t}: no predicted frames recorded"
        else:
            pred = self.rollout.predicted_frames[t]
            title = f"step {t}: real vs predicted"
        return F.make_frame_pair_figure(real, pred, title=title)

    def _on_step(self, change: dict[str, Any]) -> None:
        self._render(int(change["new"]))

    def _render(self, t: int) -> None:
        tree = self._trees[t]
        if tree:
            kept = sum(1 for n in tree["nodes"] if n["kept"])
            depth = max(n["depth"] for n in tree["nodes"])
            chosen = tree["chosen_action"]
            name = self.rollout.action_names[chosen] if chosen is not None else "?"
            self.caption.value = (
                f"step {t}: {len(tree['nodes'])} nodes, {kept} kept, depth {depth}; "
                f"planner chose <b>{html.escape(name)}</b>"
            )
        else:
            self.caption.value = f"step {t}: no search tree"
        self.tree_fig = self._tree(t)
        plot_output(self.tree_fig, self.tree_view)
        self.frames_fig = self._frames(t)
        self._frames_title.value = f"{_PIXELATED}<b>{html.escape(_title(self.frames_fig))}</b>"
        for label, img, trace in zip(self._frame_labels, self._frame_images, self.frames_fig.data):
            label.value = html.escape(str(trace.name))
            img.value = png_bytes(trace.source)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def explorer(rollout: Rollout) -> tuple[widgets.VBox, QInspector, PlannerInspector | None]:
    """Q inspector and, for planner rollouts, the planner inspector driven by one slider."""
    q = QInspector(rollout)
    p = PlannerInspector(rollout, step=q.step) if rollout.has_planner else None
    box = widgets.VBox([q.widget] + ([p.caption, _row([p.tree_view, p.frames_view])] if p else []))
    return box, q, p

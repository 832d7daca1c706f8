"""ipywidgets inspectors over a :class:`~workbench.viz.rollout.Rollout`.

Thin classes: a step slider (with a Play button), an HTML caption and ``go.FigureWidget``s.
On every slider change the pure builders of :mod:`workbench.viz.agent_figures` make the step's
figure and its trace data is copied into the FigureWidgets inside ``batch_update()``, so the
browser gets one message per figure and the inspectors draw exactly what the builders draw.

Display an inspector by leaving it last in a cell (it forwards ``_repr_mimebundle_``) or with
``display(inspector.widget)``. Headless (no kernel), setting ``inspector.step.value`` fires
the update synchronously, which the tests use.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go

from workbench.viz import agent_figures as F
from workbench.viz.rollout import Rollout

__all__ = ["PlannerInspector", "QInspector", "explorer", "sync_figure"]

# Trace properties never copied: the type is fixed and uids identify the widget's traces.
_SKIP = {"type", "uid"}

# Pixel widths: every row of an inspector fits a 1280-px notebook panel (about 1,100 px of cell
# output beside the prompt) with room to spare; rows also wrap instead of overflowing when the
# panel is narrower (file browser open, split view). tests/test_browser.py checks it in Chromium.
FRAME_WIDTH, Q_WIDTH, TREE_WIDTH, FRAME_COL_WIDTH = 300, 660, 540, 170
PANEL_WIDTH = 1000  # the widest row: frame + Q distributions, or tree + two predicted-frame columns


def _row(children: list[widgets.Widget]) -> widgets.Box:
    """A row of figures that wraps onto the next line rather than overflowing the panel."""
    return widgets.Box(children, layout=widgets.Layout(display="flex", flex_flow="row wrap",
                                                       align_items="flex-start", width="100%"))


def _sized(fig: go.Figure, width: int) -> go.FigureWidget:
    fig.update_layout(width=width, autosize=False)
    return go.FigureWidget(fig)


def sync_figure(target: go.FigureWidget, source: go.Figure) -> None:
    """Copy ``source``'s trace data, title and annotations into ``target`` in one batch.

    Both figures must come from the same builder (same trace count and types)."""
    if len(target.data) != len(source.data):
        raise ValueError(f"figure has {len(target.data)} traces, the new one {len(source.data)}")
    with target.batch_update():
        for tw, tn in zip(target.data, source.data):
            tw.update({k: v for k, v in tn.to_plotly_json().items() if k not in _SKIP})
        target.layout.title = source.layout.title
        target.layout.annotations = source.layout.annotations


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
    and the chosen action. Attributes: ``step`` (IntSlider), ``caption`` (HTML),
    ``frame_fig`` and ``q_fig`` (FigureWidgets; ``q_fig`` is None without Q data), ``widget``."""

    def __init__(self, rollout: Rollout, *, step: widgets.IntSlider | None = None) -> None:
        if len(rollout) == 0:
            raise ValueError("QInspector: the rollout has no steps")
        self.rollout = rollout
        self._scores = rollout.scores()
        self.step = _step_slider(rollout, step)
        self.caption = widgets.HTML()
        self.frame_fig = _sized(self._frame(0), FRAME_WIDTH)
        self.q_fig = _sized(self._q(0), Q_WIDTH) if rollout.has_q else None
        self.step.observe(self._on_step, names="value")
        figs: list[widgets.Widget] = [self.frame_fig]
        if self.q_fig is not None:
            figs.append(self.q_fig)
        controls = [self.step] if step is not None else [_play_for(self.step), self.step]
        self.widget = widgets.VBox([widgets.HBox(controls), self.caption, _row(figs)])
        self._render(self.step.value)

    def _frame(self, t: int) -> go.Figure:
        return F.make_frame_figure(self.rollout.display_frame(t), title=f"step {t}", height=380)

    def _q(self, t: int) -> go.Figure:
        r, a = self.rollout, int(self.rollout.actions[t])
        if r.q_probs is not None:
            assert r.support is not None  # a rollout records the support with its distributions
            return F.make_return_distribution_figure(r.q_probs[t], r.support, r.action_names, a,
                                                     title=f"step {t}")
        assert r.q_values is not None  # q_fig exists only for rollouts with Q data
        return _q_bar_figure(r.q_values[t], r.action_names, a)

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
        sync_figure(self.frame_fig, self._frame(t))
        if self.q_fig is not None:
            sync_figure(self.q_fig, self._q(t))

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


class PlannerInspector:
    """JOWA: the beam-search tree at a step (hover: action, predicted reward, Q, score; kept vs
    pruned) and the world model's predicted next frames next to the real ones.
    Attributes: ``step``, ``caption``, ``tree_fig``, ``frames_fig``, ``widget``."""

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
        self.tree_fig = _sized(self._tree(0), TREE_WIDTH)
        self.frames_fig = _sized(self._frames(0), 40 + FRAME_COL_WIDTH * self.horizon)
        self.step.observe(self._on_step, names="value")
        controls = [self.step] if step is not None else [_play_for(self.step), self.step]
        self.widget = widgets.VBox([widgets.HBox(controls), self.caption, _row([self.tree_fig, self.frames_fig])])
        self._render(self.step.value)

    def _tree(self, t: int) -> go.Figure:
        tree = self._trees[t] or {"nodes": [], "chosen_action": None}
        title = f"step {t}" if self._trees[t] else f"step {t}: no search recorded"
        return F.make_search_tree_figure(tree, self.rollout.action_names, title=title)

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
        sync_figure(self.tree_fig, self._tree(t))
        sync_figure(self.frames_fig, self._frames(t))

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def explorer(rollout: Rollout) -> tuple[widgets.VBox, QInspector, PlannerInspector | None]:
    """Q inspector and, for planner rollouts, the planner inspector driven by one slider."""
    q = QInspector(rollout)
    p = PlannerInspector(rollout, step=q.step) if rollout.has_planner else None
    box = widgets.VBox([q.widget] + ([p.caption, _row([p.tree_fig, p.frames_fig])] if p else []))
    return box, q, p

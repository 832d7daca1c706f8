"""Agent-inspection figures: one step of one agent, for the ipywidgets inspectors.

C51 return distributions and expected Q per action, the planner's beam-search tree, and game
frames (one frame, or real next frames beside the world model's predictions). Pure builders
like those of :mod:`workbench.viz.results_figures`: plain data in, a new ``go.Figure`` out.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from workbench.viz.style import (
    FONT_SIZE,
    MAX_LEGEND_ENTRIES,
    method_color,
    publication_layout,
    run_width,
    spacing,
)

__all__ = [
    "CHOSEN_COLOR",
    "KEPT_COLOR",
    "PRUNED_COLOR",
    "ROOT_COLOR",
    "TreeLayout",
    "expected_q",
    "image_data_uri",
    "layout_search_tree",
    "make_frame_figure",
    "make_frame_pair_figure",
    "make_return_distribution_figure",
    "make_search_tree_figure",
]

KEPT_COLOR = "#2ca02c"
PRUNED_COLOR = "#b0b0b0"
ROOT_COLOR = "#1f77b4"
CHOSEN_COLOR = "#d62728"


def expected_q(probs: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Expected value ``sum_i z_i p_i`` of each action's categorical return distribution."""
    return np.asarray(probs, dtype=np.float64) @ np.asarray(support, dtype=np.float64)


def make_return_distribution_figure(
    probs: np.ndarray,
    support: np.ndarray,
    action_names: Sequence[str],
    chosen: int | None = None,
    *,
    title: str | None = None,
) -> go.Figure:
    """Per-action C51 return distributions (left) and expected Q per action (right).

    ``probs``: ``(A, atoms)`` probabilities over ``support`` (``(atoms,)``) for the game's
    ``A`` valid actions. Trace ``a`` (``a < A``) is action ``a``'s distribution; trace ``A`` is
    the bar chart of expected Q. The chosen action is drawn thick and red and its Q annotated.
    """
    p = np.asarray(probs, dtype=np.float64)
    z = np.asarray(support, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != z.shape[0]:
        raise ValueError(f"probs must be (A, atoms={z.shape[0]}), got {p.shape}")
    if len(action_names) != p.shape[0]:
        raise ValueError(f"{len(action_names)} action names for {p.shape[0]} actions")
    if chosen is not None and not 0 <= chosen < p.shape[0]:
        raise ValueError(f"chosen action {chosen} outside 0..{p.shape[0] - 1}")
    q = expected_q(p, z)
    n = p.shape[0]
    facet = n > MAX_LEGEND_ENTRIES  # Atari's full action set: one small panel per action, no legend
    if facet:
        cols = 6
        rows = math.ceil(n / cols)
        label_px = max(run_width(str(name), FONT_SIZE) for name in action_names) + 12  # the Q panel's row names
        panel_w, panel_h, gap_h, gap_v, bar_w = 140, 90, 24, 46, 200
        plot_w = cols * panel_w + cols * gap_h + label_px + bar_w
        plot_h = rows * panel_h + (rows - 1) * gap_v
        specs: list[list[dict[str, Any] | None]] = [[{} for _ in range(cols)] + [{"rowspan": rows} if r == 0 else None]
                                                    for r in range(rows)]
        # titles in the grid's order, row by row: the Q panel's comes after the first row's panels
        names = [f"{name}<br>Q={q[a]:.2f}" for a, name in enumerate(action_names)]
        titles = names[:cols] + ["Expected Q"] + names[cols:] + [""] * (rows * cols - n)
        fig = make_subplots(
            rows=rows, cols=cols + 1, specs=specs, column_widths=[panel_w] * cols + [label_px + bar_w],
            horizontal_spacing=spacing(gap_h, plot_w), vertical_spacing=spacing(gap_v, plot_h),
            subplot_titles=titles,
        )
    else:
        plot_w, plot_h = 620, max(300, 26 * n + 20)
        fig = make_subplots(
            rows=1, cols=2, column_widths=[0.68, 0.32], horizontal_spacing=spacing(110, plot_w),
            subplot_titles=("Return distribution per action", "Expected Q"),
        )
    top = float(p.max()) * 1.05 if p.size else 1.0
    for a, name in enumerate(action_names):
        is_chosen = a == chosen
        fig.add_trace(
            go.Scatter(
                x=z, y=p[a], mode="lines", name=f"{name} (Q={q[a]:.2f})", showlegend=not facet,
                line=dict(width=4 if is_chosen else 1.5,
                          color=CHOSEN_COLOR if is_chosen else method_color(a)),
                opacity=1.0 if is_chosen or chosen is None else 0.55,
                hovertemplate=f"{name}<br>z=%{{x:.2f}}<br>p=%{{y:.3f}}<extra></extra>",
            ),
            row=a // 6 + 1 if facet else 1, col=a % 6 + 1 if facet else 1,
        )
    bar_col = 7 if facet else 2
    fig.add_trace(
        go.Bar(
            x=q, y=list(action_names), orientation="h", showlegend=False, name="Q",
            marker_color=[CHOSEN_COLOR if a == chosen else "#7f9fcf" for a in range(len(q))],
            hovertemplate="%{y}: Q=%{x:.3f}<extra></extra>",
        ),
        row=1, col=bar_col,
    )
    fig.update_yaxes(autorange="reversed", type="category", row=1, col=bar_col)
    fig.update_xaxes(title_text="Q", row=1, col=bar_col)
    if facet:
        # the Q panel's plot starts right of its row names (make_subplots spaces columns evenly)
        bar_axis = fig.layout[fig.data[-1].xaxis.replace("x", "xaxis", 1)]
        d0, d1 = bar_axis.domain
        bar_axis.domain = [d0 + label_px / plot_w, d1]
        span = float(z[-1] - z[0]) or 1.0
        for a in range(n):
            r, c = a // 6 + 1, a % 6 + 1
            fig.update_xaxes(range=[float(z[0]) - 0.08 * span, float(z[-1]) + 0.08 * span],
                             showticklabels=r == rows or a + 6 >= n, nticks=3, row=r, col=c)
            fig.update_yaxes(range=[0, top], showticklabels=c == 1, nticks=3, row=r, col=c)
        fig.update_xaxes(title_text="return z", row=rows, col=1)
        fig.update_yaxes(title_text="probability", row=1, col=1)
    else:
        fig.update_xaxes(title_text="return z", row=1, col=1)
        fig.update_yaxes(title_text="probability", row=1, col=1)
    head = title or "Q distributions"
    if chosen is not None:
        head += f" — chosen: {action_names[chosen]} (Q={q[chosen]:.3f})"
    fig.update_layout(title=head)
    return publication_layout(fig, plot_width=plot_w, plot_height=plot_h)


# --------------------------------------------------------------------------- search tree


def _field(node: Any, name: str) -> Any:
    return node[name] if isinstance(node, Mapping) else getattr(node, name)


@dataclass(frozen=True)
class TreeLayout:
    """Node coordinates of a search tree: ``x`` = depth, ``y`` = rank within the depth."""

    ids: list[int]
    x: list[int]
    y: list[int]
    edges: list[tuple[int, int]]  # (parent id, child id)


def layout_search_tree(nodes: Sequence[Any]) -> TreeLayout:
    """Lay out a ``SearchTree``'s nodes: x = depth, y = rank within that depth.

    Ranks order the nodes of one depth by their parent's rank, then by score (best first),
    so siblings sit together and edges never cross. Nodes are dicts or ``SearchNode`` objects.
    """
    by_id = {int(_field(n, "id")): n for n in nodes}
    if len(by_id) != len(nodes):
        raise ValueError("search tree node ids are not unique")
    depths: dict[int, list[int]] = {}
    for nid, n in by_id.items():
        parent = int(_field(n, "parent"))
        if parent != -1 and parent not in by_id:
            raise ValueError(f"node {nid} has parent {parent}, which is not in the tree")
        depths.setdefault(int(_field(n, "depth")), []).append(nid)
    rank: dict[int, int] = {}
    for d in sorted(depths):
        ordered = sorted(
            depths[d],
            key=lambda i: (
                rank.get(int(_field(by_id[i], "parent")), -1),
                -float(_field(by_id[i], "score")),
                i,
            ),
        )
        for r, i in enumerate(ordered):
            rank[i] = r
    ids = [int(_field(n, "id")) for n in nodes]
    edges = [
        (int(_field(n, "parent")), int(_field(n, "id")))
        for n in nodes
        if int(_field(n, "parent")) != -1
    ]
    return TreeLayout(
        ids=ids, x=[int(_field(by_id[i], "depth")) for i in ids], y=[rank[i] for i in ids],
        edges=edges,
    )


def _short_action(action: int, action_names: Sequence[str] | None) -> str:
    if action_names is not None and 0 <= action < len(action_names):
        return str(action_names[action])
    return str(action)


def _tree_parts(tree: Any) -> tuple[Sequence[Any], int | None]:
    if isinstance(tree, Mapping):
        return tree["nodes"], tree.get("chosen_action")
    return tree.nodes, getattr(tree, "chosen_action", None)


def make_search_tree_figure(
    tree: Any,
    action_names: Sequence[str] | None = None,
    *,
    title: str | None = None,
) -> go.Figure:
    """Beam-search tree: trace 0 = edges (one Scatter, None-separated), trace 1 = nodes.

    ``tree`` follows the ``planner.SearchTree`` contract (object or dict with ``nodes`` and
    ``chosen_action``). Node ``customdata`` rows are
    ``[id, parent, depth, action, reward, q, score, kept, terminal]``; kept nodes are green,
    pruned grey, the root blue; terminal nodes are drawn as crosses.
    """
    nodes, chosen = _tree_parts(tree)
    lay = layout_search_tree(nodes)
    pos = {i: (x, y) for i, x, y in zip(lay.ids, lay.x, lay.y)}
    ex: list[float | None] = []
    ey: list[float | None] = []
    for parent, child in lay.edges:
        (px, py), (cx, cy) = pos[parent], pos[child]
        ex += [px, cx, None]
        ey += [py, cy, None]

    def aname(a: int) -> str:
        if a < 0:
            return "(root)"
        if action_names is not None and a < len(action_names):
            return f"{action_names[a]} ({a})"
        return str(a)

    custom, hover, labels, colors, symbols, line_w = [], [], [], [], [], []
    for n in nodes:
        nid, parent, depth = int(_field(n, "id")), int(_field(n, "parent")), int(_field(n, "depth"))
        action = int(_field(n, "action"))
        reward, q, score = (float(_field(n, k)) for k in ("reward", "q", "score"))
        kept, terminal = bool(_field(n, "kept")), bool(_field(n, "terminal"))
        custom.append([nid, parent, depth, action, reward, q, score, kept, terminal])
        hover.append(
            f"node {nid} (depth {depth})<br>action: {aname(action)}<br>"
            f"predicted reward: {reward:.3f}<br>Q: {q:.3f}<br>score: {score:.3f}<br>"
            f"{'kept' if kept else 'pruned'}{' · terminal' if terminal else ''}"
        )
        # A visible label on every node (not only on hover): its action and its beam score.
        labels.append("root" if parent == -1 else f"{_short_action(action, action_names)} {score:.2f}")
        colors.append(ROOT_COLOR if parent == -1 else KEPT_COLOR if kept else PRUNED_COLOR)
        symbols.append("x" if terminal else "circle")
        # Outline first-level nodes taking the chosen action: that is what the agent plays.
        line_w.append(3 if (depth == 1 and chosen is not None and action == chosen) else 0.5)
    fig = go.Figure(
        [
            go.Scatter(x=ex, y=ey, mode="lines", line=dict(color="#999", width=1),
                       hoverinfo="skip", showlegend=False, name="edges"),
            go.Scatter(
                x=lay.x, y=lay.y, mode="markers+text", name="nodes", showlegend=False,
                customdata=custom, hovertext=hover, hoverinfo="text",
                text=labels, textposition="middle right", textfont=dict(size=10), cliponaxis=False,
                marker=dict(size=13, color=colors, symbol=symbols,
                            line=dict(width=line_w, color=CHOSEN_COLOR)),
            ),
        ]
    )
    head = title or "Beam-search tree"
    if chosen is not None:
        head += f" — chosen: {aname(int(chosen))}"
    # room right of the deepest nodes for their labels: e depth units hold the widest label
    plot_w, deepest = 560.0, max(lay.x, default=0)
    label_px = max((run_width(t, 10) for t in labels), default=0.0) + 16
    extra = max(0.9, label_px * (deepest + 0.3) / max(plot_w - label_px, 1.0))
    ranks = max(lay.y, default=0)
    fig.update_layout(
        title=head,
        xaxis=dict(title="depth", dtick=1, range=[-0.3, deepest + extra]),
        yaxis=dict(title="rank", range=[ranks + 0.6, -0.6], dtick=1),
    )
    return publication_layout(fig, plot_width=plot_w, plot_height=max(240.0, 26.0 * (ranks + 1)), legend="none")


# --------------------------------------------------------------------------- frames


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    f = np.asarray(frame)
    if f.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {f.dtype}")
    if f.ndim == 2:
        return np.repeat(f[:, :, None], 3, axis=2)
    if f.ndim == 3 and f.shape[2] == 3:
        return f
    raise ValueError(f"a frame must be (H, W) or (H, W, 3), got {f.shape}")


def image_data_uri(frame: np.ndarray) -> str:
    """PNG data URI of a uint8 frame; a few kB instead of a JSON array of every pixel."""
    buf = io.BytesIO()
    Image.fromarray(_to_rgb(frame)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _image_axes(fig: go.Figure) -> None:
    """Hide the axes and keep every image's pixels square: each subplot's y axis is anchored to
    its own x axis (anchoring all of them to the first one stretches the other subplots)."""
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    names = [k for k in fig.layout.to_plotly_json() if k.startswith("yaxis")] or ["yaxis"]
    for name in names:
        fig.layout[name].scaleanchor = "x" + name[len("yaxis"):]


def make_frame_figure(frame: np.ndarray, *, title: str | None = None, height: int = 360) -> go.Figure:
    """One frame (grayscale or RGB uint8) as a ``go.Image`` with a PNG ``source``."""
    f = _to_rgb(frame)
    fig = go.Figure(go.Image(source=image_data_uri(f), name="frame"))
    fig.update_layout(title=title)
    _image_axes(fig)
    plot_h = max(120.0, height - (50.0 if title else 20.0))
    return publication_layout(fig, plot_width=plot_h * f.shape[1] / f.shape[0], plot_height=plot_h, legend="none")


def make_frame_pair_figure(
    real: np.ndarray,
    predicted: np.ndarray,
    *,
    title: str | None = None,
) -> go.Figure:
    """Real next frames (top row) next to the world model's predictions (bottom row).

    ``real`` and ``predicted`` are ``(K, H, W)`` / ``(K, H, W, 3)`` uint8 (or a single frame).
    Image traces are ordered real_0..real_{K-1}, pred_0..pred_{K-1}. Missing real frames
    (past an episode end) may be passed as all-zero frames.
    """
    r = np.asarray(real)
    p = np.asarray(predicted)
    if r.ndim == 2 or (r.ndim == 3 and r.shape[-1] == 3 and p.ndim == 3):
        r, p = r[None], p[None]
    if r.shape[0] != p.shape[0]:
        raise ValueError(f"{r.shape[0]} real frames for {p.shape[0]} predicted frames")
    k = r.shape[0]
    side, gap_h, gap_v = 150, 12, 34  # a frame's panel, and the room for the second row's titles
    plot_w, plot_h = k * side + (k - 1) * gap_h, 2 * side * r.shape[1] / r.shape[2] + gap_v
    fig = make_subplots(
        rows=2, cols=k, horizontal_spacing=spacing(gap_h, plot_w) if k > 1 else 0.0,
        vertical_spacing=spacing(gap_v, plot_h),
        subplot_titles=[f"real t+{i + 1}" for i in range(k)]
        + [f"predicted t+{i + 1}" for i in range(k)],
    )
    for row, frames, tag in ((1, r, "real"), (2, p, "predicted")):
        for i in range(k):
            fig.add_trace(go.Image(source=image_data_uri(frames[i]), name=f"{tag} t+{i + 1}"),
                          row=row, col=i + 1)
    fig.update_layout(title=title or "Real vs predicted next frames")
    _image_axes(fig)
    return publication_layout(fig, plot_width=plot_w, plot_height=plot_h, legend="none")

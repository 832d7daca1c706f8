"""Pure plotly figure builders: ``make_*_figure(data) -> go.Figure``.

Every builder takes plain data (lists, dicts, numpy arrays, or objects following the
architecture contracts) and returns a new ``go.Figure``; nothing here reads files or keeps
state, so notebooks, the analysis pipeline and the ipywidgets inspectors share one code path.
``save_figure`` / ``save_figures`` write HTML always and PNG through kaleido when a Chromium
is available, and report what they wrote instead of raising when it is not.
"""

from __future__ import annotations

import base64
import io
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = [
    "AGGREGATE_METRICS",
    "FigureSaveStatus",
    "TreeLayout",
    "expected_q",
    "find_chromium",
    "image_data_uri",
    "layout_search_tree",
    "make_ablation_table_figure",
    "make_aggregate_figure",
    "make_frame_figure",
    "make_frame_pair_figure",
    "make_learning_curve_figure",
    "make_performance_profile_figure",
    "make_probability_of_improvement_figure",
    "make_return_distribution_figure",
    "make_scaling_figure",
    "make_scores_figure",
    "make_search_tree_figure",
    "save_figure",
    "save_figures",
]

#: Aggregate metrics drawn by ``make_aggregate_figure``, in rliable's usual order.
AGGREGATE_METRICS: tuple[str, ...] = ("median", "iqm", "mean", "optimality_gap")
_METRIC_TITLES = {
    "median": "Median",
    "iqm": "IQM",
    "mean": "Mean",
    "optimality_gap": "Optimality gap",
}
# Plotly's default qualitative palette, indexed by method so colours stay stable across figures.
_PALETTE = (
    "#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A",
    "#19D3F3", "#FF6692", "#B6E880", "#FF97FF", "#FECB52",
)
KEPT_COLOR = "#2ca02c"
PRUNED_COLOR = "#b0b0b0"
ROOT_COLOR = "#1f77b4"
CHOSEN_COLOR = "#d62728"


def _color(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[k : k + 2], 16) for k in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


# --------------------------------------------------------------------------- learning curves


def make_learning_curve_figure(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    metrics: str | Sequence[str],
    *,
    x: str = "step",
    title: str | None = None,
) -> go.Figure:
    """Overlay learning curves of several runs, one subplot row per metric.

    ``runs`` maps a run label to its JSONL metric records (dicts with ``x`` and metric keys).
    Records lacking a metric (e.g. eval lines among train lines) are skipped for that metric;
    points are sorted by ``x``. Raises ``ValueError`` when no run has any of the metrics.
    """
    metric_list = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metric_list:
        raise ValueError("make_learning_curve_figure: give at least one metric name")
    fig = make_subplots(
        rows=len(metric_list), cols=1, shared_xaxes=True, subplot_titles=metric_list,
        vertical_spacing=0.08 if len(metric_list) > 1 else 0.0,
    )
    drawn = 0
    for run_idx, (label, records) in enumerate(runs.items()):
        for row, metric in enumerate(metric_list, start=1):
            pts = [
                (float(r[x]), float(r[metric]))
                for r in records
                if x in r and metric in r and r[metric] is not None and _is_number(r[metric])
            ]
            if not pts:
                continue
            pts.sort(key=lambda p: p[0])
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines",
                    name=label, legendgroup=label, showlegend=row == 1 or drawn == 0,
                    line=dict(color=_color(run_idx)),
                    hovertemplate=f"{label}<br>{x}=%{{x}}<br>{metric}=%{{y:.4g}}<extra></extra>",
                ),
                row=row, col=1,
            )
            drawn += 1
    if drawn == 0:
        available = sorted({k for recs in runs.values() for r in recs for k in r})
        raise ValueError(
            f"none of the metrics {metric_list} appear in the records; available keys: {available}"
        )
    fig.update_xaxes(title_text=x, row=len(metric_list), col=1)
    fig.update_layout(
        title=title or "Learning curves", height=260 * len(metric_list) + 80,
        template="plotly_white", hovermode="x unified",
    )
    return fig


def _is_number(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- aggregates


def _ci_pair(ci: Any, name: str) -> tuple[float, float]:
    arr = np.asarray(ci, dtype=float).reshape(-1)
    if arr.shape != (2,):
        raise ValueError(f"{name}: a confidence interval must be [lo, hi], got {ci!r}")
    return float(arr[0]), float(arr[1])


def make_aggregate_figure(
    aggregates: Mapping[str, Mapping[str, Any]],
    metrics: Sequence[str] = AGGREGATE_METRICS,
    *,
    title: str | None = None,
) -> go.Figure:
    """Bars of aggregate scores with CI error bars, one subplot per metric.

    ``aggregates`` is the metrics module's dict ``{method: {"iqm": x, "iqm_ci": [lo, hi], ...}}``.
    Each bar's error bar spans exactly ``[lo, hi]`` (asymmetric ``error_y``). Metrics absent
    from every method are dropped; a missing ``*_ci`` draws the bar without an error bar.
    """
    methods = list(aggregates)
    if not methods:
        raise ValueError("make_aggregate_figure: aggregates is empty")
    present = [m for m in metrics if any(m in aggregates[k] for k in methods)]
    if not present:
        keys = sorted({k for v in aggregates.values() for k in v})
        raise ValueError(f"none of the metrics {list(metrics)} found; available keys: {keys}")
    fig = make_subplots(
        rows=1, cols=len(present), subplot_titles=[_METRIC_TITLES.get(m, m) for m in present],
        horizontal_spacing=0.06,
    )
    for col, metric in enumerate(present, start=1):
        xs, ys, plus, minus, colors, texts = [], [], [], [], [], []
        for i, method in enumerate(methods):
            entry = aggregates[method]
            if metric not in entry:
                continue
            value = float(entry[metric])
            ci = entry.get(f"{metric}_ci")
            lo, hi = _ci_pair(ci, f"{method}.{metric}_ci") if ci is not None else (value, value)
            xs.append(method)
            ys.append(value)
            plus.append(hi - value)
            minus.append(value - lo)
            colors.append(_color(i))
            texts.append(f"{method}<br>{metric} = {value:.3f}<br>95% CI [{lo:.3f}, {hi:.3f}]")
        fig.add_trace(
            go.Bar(
                x=xs, y=ys, marker_color=colors, name=metric, showlegend=False,
                error_y=dict(type="data", symmetric=False, array=plus, arrayminus=minus),
                hovertext=texts, hoverinfo="text",
            ),
            row=1, col=col,
        )
    fig.update_layout(
        title=title or "Aggregate human-normalized scores (95% bootstrap CIs)",
        template="plotly_white", height=420, width=max(600, 260 * len(present)),
    )
    return fig


def make_performance_profile_figure(
    taus: Sequence[float] | np.ndarray,
    curves: Mapping[str, Sequence[float] | np.ndarray],
    cis: Mapping[str, Sequence[Sequence[float]] | np.ndarray] | None = None,
    *,
    title: str | None = None,
    xlabel: str = "Human-normalized score (τ)",
) -> go.Figure:
    """Score-distribution performance profiles: fraction of runs with score > τ.

    ``curves[method]`` has one value per τ; ``cis[method]`` is ``(2, len(taus))``
    (lower row, upper row), drawn as a filled band under the curve.
    """
    tau = np.asarray(taus, dtype=float)
    fig = go.Figure()
    for i, (method, curve) in enumerate(curves.items()):
        y = np.asarray(curve, dtype=float)
        if y.shape != tau.shape:
            raise ValueError(f"curve of {method!r} has shape {y.shape}, taus have {tau.shape}")
        color = _color(i)
        if cis is not None and method in cis:
            band = np.asarray(cis[method], dtype=float)
            if band.shape != (2,) + tau.shape:
                raise ValueError(
                    f"CI of {method!r} must have shape (2, {tau.size}), got {band.shape}"
                )
            # Closed polygon: upper edge left to right, lower edge right to left.
            fig.add_trace(
                go.Scatter(
                    x=np.concatenate([tau, tau[::-1]]),
                    y=np.concatenate([band[1], band[0][::-1]]),
                    fill="toself", fillcolor=_rgba(color, 0.2), line=dict(width=0),
                    hoverinfo="skip", showlegend=False, legendgroup=method,
                    name=f"{method} CI",
                )
            )
        fig.add_trace(
            go.Scatter(x=tau, y=y, mode="lines", name=method, legendgroup=method,
                       line=dict(color=color, width=2))
        )
    fig.update_layout(
        title=title or "Performance profiles", template="plotly_white",
        xaxis_title=xlabel, yaxis_title="Fraction of runs with score > τ",
        yaxis_range=[0, 1.02], height=420,
    )
    return fig


def _pair_names(key: Any) -> tuple[str, str]:
    if isinstance(key, str):
        parts = [p.strip() for p in key.split(",")]
        if len(parts) != 2:
            raise ValueError(f"pair key {key!r} must be 'X,Y' or a (X, Y) tuple")
        return parts[0], parts[1]
    x, y = key
    return str(x), str(y)


def make_probability_of_improvement_figure(
    pairs: Mapping[Any, Mapping[str, Any] | Sequence[Any]],
    *,
    title: str | None = None,
) -> go.Figure:
    """Horizontal bars of P(X > Y) with CI error bars, one row per pair.

    ``pairs`` maps ``"X,Y"`` or ``(X, Y)`` to ``{"p": value, "ci": [lo, hi]}`` or to
    ``(value, [lo, hi])``; ``metrics.probability_of_improvement``'s output
    (``{"X vs Y": {"x", "y", "probability", "ci"}}``) works as is. A dashed line marks 0.5.
    """
    labels, vals, plus, minus, texts = [], [], [], [], []
    for key, entry in pairs.items():
        if isinstance(entry, Mapping) and "x" in entry and "y" in entry:
            x, y = str(entry["x"]), str(entry["y"])
        else:
            x, y = _pair_names(key)
        if isinstance(entry, Mapping):
            p = float(next(entry[k] for k in ("p", "probability", "probability_of_improvement") if k in entry))
            ci = entry.get("ci", entry.get("p_ci"))
        else:
            p, ci = float(entry[0]), entry[1]
        lo, hi = _ci_pair(ci, f"{x},{y}") if ci is not None else (p, p)
        labels.append(f"P({x} > {y})")
        vals.append(p)
        plus.append(hi - p)
        minus.append(p - lo)
        texts.append(f"P({x} > {y}) = {p:.3f}<br>95% CI [{lo:.3f}, {hi:.3f}]")
    fig = go.Figure(
        go.Bar(
            x=vals, y=labels, orientation="h", marker_color=_color(0),
            error_x=dict(type="data", symmetric=False, array=plus, arrayminus=minus),
            hovertext=texts, hoverinfo="text",
        )
    )
    fig.add_vline(x=0.5, line_dash="dash", line_color="gray")
    fig.update_layout(
        title=title or "Probability of improvement", template="plotly_white",
        xaxis_range=[0, 1], xaxis_title="Probability of improvement",
        height=140 + 50 * max(1, len(labels)),
    )
    return fig


# --------------------------------------------------------------------------- per-game scores


def make_scores_figure(scores: Mapping[str, Any], *, title: str | None = None) -> go.Figure:
    """Per-game evaluation scores of one policy (``workbench.evaluate.evaluate``'s result).

    Bars: each game's mean score, human-normalized when the game has reference scores (else raw,
    marked "(raw)" in the game's label); markers: the individual episodes on the same scale.
    Hover shows raw scores. Trace 0 = bars, trace 1 = episodes.
    """
    from workbench.metrics import reference_scores

    per_game = scores.get("per_game")
    if not per_game:
        raise ValueError("make_scores_figure: scores has no 'per_game' entries (an evaluate() result?)")
    ref = reference_scores()
    labels, means, raw_means, ex, ey, etext = [], [], [], [], [], []
    for game, r in per_game.items():
        eps = np.asarray(r["scores"], dtype=float)
        rr = ref.get(game, {})
        if "random" in rr and "human" in rr:
            def norm(v: np.ndarray | float, rr: Mapping[str, float] = rr) -> Any:
                return (v - rr["random"]) / (rr["human"] - rr["random"])
            label = game
        else:
            def norm(v: np.ndarray | float) -> Any:
                return v
            label = f"{game} (raw)"
        mean = float(r.get("mean", eps.mean()))
        labels.append(label)
        means.append(float(norm(mean)))
        raw_means.append(mean)
        ex += [label] * len(eps)
        ey += [float(v) for v in norm(eps)]
        etext += [f"{game}: episode score {v:g}" for v in eps]
    fig = go.Figure([
        go.Bar(x=labels, y=means, name="mean", marker_color=_color(0),
               text=[f"{m:g}" for m in raw_means], hovertemplate="%{x}<br>mean raw score %{text}<br>normalized %{y:.3f}<extra></extra>"),
        go.Scatter(x=ex, y=ey, mode="markers", name="episodes", text=etext,
                   marker=dict(color="black", size=7, symbol="circle-open"),
                   hovertemplate="%{text}<br>normalized %{y:.3f}<extra></extra>"),
    ])
    agg = scores.get("aggregates") or {}
    head = title or "Evaluation scores"
    if "iqm" in agg:
        head += f" — IQM {agg['iqm']:.3f} (human-normalized)"
    fig.update_layout(title=head, template="plotly_white", yaxis_title="human-normalized score",
                      height=420, barmode="overlay")
    return fig


# --------------------------------------------------------------------------- scaling


def make_scaling_figure(
    points: Sequence[Mapping[str, Any]],
    reference: Sequence[Mapping[str, Any]] | None = None,
    *,
    metric: str = "iqm",
    title: str | None = None,
) -> go.Figure:
    """Parameters (log x) vs an aggregate score with CI error bars, one line per family.

    ``points``: dicts with ``family``, ``params``, ``metric`` and optional ``f"{metric}_ci"``
    and ``label``. ``reference``: optional paper numbers, dicts with ``label``, ``params``,
    ``metric`` (and optional ``family``), drawn as open diamonds without CIs.
    """
    fig = go.Figure()
    families: dict[str, list[Mapping[str, Any]]] = {}
    for p in points:
        families.setdefault(str(p.get("family", "runs")), []).append(p)
    for i, (family, pts) in enumerate(families.items()):
        pts = sorted(pts, key=lambda p: float(p["params"]))
        xs = [float(p["params"]) for p in pts]
        ys = [float(p[metric]) for p in pts]
        plus, minus = [], []
        for p, yv in zip(pts, ys):
            ci = p.get(f"{metric}_ci")
            lo, hi = _ci_pair(ci, f"{family}.{metric}_ci") if ci is not None else (yv, yv)
            plus.append(hi - yv)
            minus.append(yv - lo)
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, mode="lines+markers", name=family, line=dict(color=_color(i)),
                error_y=dict(type="data", symmetric=False, array=plus, arrayminus=minus),
                text=[str(p.get("label", "")) for p in pts],
                hovertemplate="%{text}<br>params=%{x:.3s}<br>" + metric + "=%{y:.3f}<extra></extra>",
            )
        )
    if reference:
        fig.add_trace(
            go.Scatter(
                x=[float(r["params"]) for r in reference],
                y=[float(r[metric]) for r in reference],
                mode="markers", name="paper (reported)",  # labels on hover: many overlap
                marker=dict(symbol="diamond-open", size=11, color="black"),
                text=[str(r.get("label", "")) for r in reference],
                hovertemplate="%{text}<br>params=%{x:.3s}<br>" + metric + "=%{y:.3f}<extra>paper</extra>",
            )
        )
    fig.update_layout(
        title=title or f"Scaling: parameters vs {_METRIC_TITLES.get(metric, metric)}",
        template="plotly_white", xaxis_type="log", xaxis_title="Parameters",
        yaxis_title=_METRIC_TITLES.get(metric, metric), height=440,
    )
    return fig


def make_ablation_table_figure(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    title: str | None = None,
    float_format: str = "{:.3f}",
) -> go.Figure:
    """A plotly Table of ablation rows (dicts); columns default to keys in first-seen order."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    cells = []
    for c in columns:
        col = []
        for r in rows:
            v = r.get(c, "")
            if isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(e) for e in v):
                v = "[" + ", ".join(float_format.format(float(e)) for e in v) + "]"
            elif isinstance(v, float) or isinstance(v, np.floating):
                v = float_format.format(float(v))
            col.append(v)
        cells.append(col)
    fig = go.Figure(
        go.Table(
            header=dict(values=[f"<b>{c}</b>" for c in columns], fill_color="#e8ecf4", align="left"),
            cells=dict(values=cells, align="left"),
            # relative widths: as wide as each column's longest entry (method labels are long)
            columnwidth=[max(7, 1 + max(len(str(v)) for v in [c, *col])) for c, col in zip(columns, cells)],
        )
    )
    # Small margins: with plotly's default ones (180 px) a short table got no room at all.
    fig.update_layout(title=title or "Ablations", height=80 + 45 * (max(1, len(rows)) + 1),
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


# --------------------------------------------------------------------------- Q distributions


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
    fig = make_subplots(
        rows=1, cols=2, column_widths=[0.68, 0.32], horizontal_spacing=0.12,
        subplot_titles=("Return distribution per action", "Expected Q"),
    )
    for a, name in enumerate(action_names):
        is_chosen = a == chosen
        fig.add_trace(
            go.Scatter(
                x=z, y=p[a], mode="lines", name=f"{name} (Q={q[a]:.2f})",
                line=dict(width=4 if is_chosen else 1.5,
                          color=CHOSEN_COLOR if is_chosen else _color(a)),
                opacity=1.0 if is_chosen or chosen is None else 0.55,
                hovertemplate=f"{name}<br>z=%{{x:.2f}}<br>p=%{{y:.3f}}<extra></extra>",
            ),
            row=1, col=1,
        )
    fig.add_trace(
        go.Bar(
            x=q, y=list(action_names), orientation="h", showlegend=False, name="Q",
            marker_color=[CHOSEN_COLOR if a == chosen else "#7f9fcf" for a in range(len(q))],
            text=[f"{v:.2f}" for v in q], textposition="auto",
            hovertemplate="%{y}: Q=%{x:.3f}<extra></extra>",
        ),
        row=1, col=2,
    )
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_xaxes(title_text="return z", row=1, col=1)
    fig.update_yaxes(title_text="probability", row=1, col=1)
    head = title or "Q distributions"
    if chosen is not None:
        head += f" — chosen: {action_names[chosen]} (Q={q[chosen]:.3f})"
    fig.update_layout(title=head, template="plotly_white", height=420, legend=dict(font_size=10))
    return fig


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

    custom, hover, colors, symbols, line_w = [], [], [], [], []
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
        colors.append(ROOT_COLOR if parent == -1 else KEPT_COLOR if kept else PRUNED_COLOR)
        symbols.append("x" if terminal else "circle")
        # Outline first-level nodes taking the chosen action: that is what the agent plays.
        line_w.append(3 if (depth == 1 and chosen is not None and action == chosen) else 0.5)
    fig = go.Figure(
        [
            go.Scatter(x=ex, y=ey, mode="lines", line=dict(color="#999", width=1),
                       hoverinfo="skip", showlegend=False, name="edges"),
            go.Scatter(
                x=lay.x, y=lay.y, mode="markers", name="nodes", showlegend=False,
                customdata=custom, hovertext=hover, hoverinfo="text",
                marker=dict(size=13, color=colors, symbol=symbols,
                            line=dict(width=line_w, color=CHOSEN_COLOR)),
            ),
        ]
    )
    head = title or "Beam-search tree"
    if chosen is not None:
        head += f" — chosen: {aname(int(chosen))}"
    fig.update_layout(
        title=head, template="plotly_white", height=420,
        xaxis=dict(title="depth", dtick=1), yaxis=dict(title="rank", autorange="reversed"),
    )
    return fig


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
    from PIL import Image

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
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10))
    _image_axes(fig)
    return fig


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
    fig = make_subplots(
        rows=2, cols=k, horizontal_spacing=0.02, vertical_spacing=0.08,
        subplot_titles=[f"real t+{i + 1}" for i in range(k)]
        + [f"predicted t+{i + 1}" for i in range(k)],
    )
    for row, frames, tag in ((1, r, "real"), (2, p, "predicted")):
        for i in range(k):
            fig.add_trace(go.Image(source=image_data_uri(frames[i]), name=f"{tag} t+{i + 1}"),
                          row=row, col=i + 1)
    fig.update_layout(title=title or "Real vs predicted next frames", height=420,
                      margin=dict(l=10, r=10, t=70, b=10))
    _image_axes(fig)
    return fig


# --------------------------------------------------------------------------- saving


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
    import plotly.io as pio

    pngs = [Path(str(s.html)[: -len(".html")] + ".png") for s in statuses]
    try:
        # kaleido renders at 700 x 500 unless told: pass each figure's own layout size (a
        # learning-curve figure grows with its rows) so the PNG shows what the HTML shows.
        figs = [f for _, f in items]
        pio.write_images(figs, pngs, width=[f.layout.width or 700 for f in figs],
                         height=[f.layout.height or 500 for f in figs])
    except Exception as exc:  # kaleido surfaces browser problems as many exception types
        for s in statuses:
            s.message = f"PNG failed ({type(exc).__name__}: {exc}); the HTML was written."
        return statuses
    for s, p in zip(statuses, pngs):
        s.png = p
        s.message = "wrote HTML and PNG"
    return statuses

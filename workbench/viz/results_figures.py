"""Results figures: learning curves, aggregates, performance profiles, probability of
improvement, per-game scores, scaling and ablation tables.

Pure builders ``make_*_figure(data) -> go.Figure``: each takes plain data (lists, dicts, numpy
arrays, the metrics module's outputs) and returns a new figure; nothing here reads files or keeps
state, so notebooks and the analysis pipeline share one code path. Saving lives in
:mod:`workbench.viz.export`; figures of one agent's decisions in :mod:`workbench.viz.agent_figures`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from workbench.diagnostics import DIAGNOSTIC_CURVES
from workbench.metrics import Normalization, has_reference, normalize_score
from workbench.paths import resolve_path
from workbench.run import Run, find_run_dir
from workbench.viz.style import method_color, rgba

__all__ = [
    "AGGREGATE_METRICS",
    "make_ablation_table_figure",
    "make_aggregate_figure",
    "make_finetune_bars_figure",
    "make_learning_curve_figure",
    "make_online_curves_figure",
    "make_performance_profile_figure",
    "make_probability_of_improvement_figure",
    "make_scaling_figure",
    "make_scores_figure",
    "make_transfer_figure",
]

#: Pixels per character of a table cell (plotly's 12 px default font, bold headers included).
TABLE_CHAR_PX = 8.0

#: Aggregate metrics drawn by ``make_aggregate_figure``, in rliable's usual order.
AGGREGATE_METRICS: tuple[str, ...] = ("median", "iqm", "mean", "optimality_gap")
_METRIC_TITLES = {
    "median": "Median",
    "iqm": "IQM",
    "mean": "Mean",
    "optimality_gap": "Optimality gap",
}


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
        # plotly caps the spacing at 1 / (rows - 1): JOWA draws 15 loss terms
        vertical_spacing=min(0.08, 0.5 / (len(metric_list) - 1)) if len(metric_list) > 1 else 0.0,
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
                    line=dict(color=method_color(run_idx)),
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


def make_representation_figure(source: str | os.PathLike[str]) -> go.Figure:
    """The representation diagnostics over training (``workbench.diagnostics``: srank, feature
    variation, dead ReLU fraction, share of the probe on the modal greedy action) of the run that
    ``source`` (a run folder or one of its checkpoints) belongs to."""
    run = Run(find_run_dir(resolve_path(source)))
    records, _ = run.all_metrics("diagnostics.jsonl")
    if not records:
        raise ValueError(f"{run.path} has no diagnostics.jsonl: its algorithm has no probe, or it was trained before "
                         "the diagnostics existed")
    fig = make_learning_curve_figure({run.name: records}, list(DIAGNOSTIC_CURVES),
                                     title="Representation on a fixed probe batch")
    return fig.update_layout(height=180 * len(DIAGNOSTIC_CURVES) + 120)


#: Reference lines of a study's per-game figure: (summary baseline key, label, colour, dash).
_STUDY_LINES = (("random", "random", "#7f7f7f", "dot"), ("constant_best", "best constant action", "#d62728", "dash"),
                ("sub_optimal", "behaviour, sub-optimal", "#2ca02c", "dashdot"),
                ("near_optimal", "behaviour, near-optimal", "#1f77b4", "longdash"))


def make_study_scores_figure(summary: Mapping[str, Any], *, split: str | None = None) -> go.Figure:
    """Per-game mean return of each method (bars: mean over seeds, whiskers: 95% bootstrap CI over
    seeds) against the study's reference lines: random, the best constant action and the behaviour
    of each split, all measured under the agents' protocol (``workbench.study.build_summary``'s
    output). ``split`` keeps one split's rows."""
    games = list(summary["games"])
    rows = [r for r in summary["results"] if split is None or r["split"] == split]
    methods = list(dict.fromkeys(f"{r['method']}, {r['split']}" if split is None else r["method"] for r in rows))
    # one colour per bar: the shared palette has 10, a study can have more combinations
    colours = [method_color(i) for i in range(len(methods))] if len(methods) <= 10 else \
        list(qualitative.Dark24[: len(methods)])
    fig = make_subplots(rows=1, cols=len(games), subplot_titles=[g.removeprefix("MinAtar-") for g in games],
                        horizontal_spacing=0.05)
    for col, game in enumerate(games, start=1):
        by_method = {(f"{r['method']}, {r['split']}" if split is None else r["method"]): r
                     for r in rows if r["game"] == game}
        for i, m in enumerate(methods):
            r = by_method.get(m)
            if r is None:
                continue
            fig.add_trace(go.Bar(
                x=[i], y=[r["mean"]], name=m, legendgroup=m, showlegend=col == 1, marker_color=colours[i],
                error_y=dict(type="data", symmetric=False, array=[r["ci"][1] - r["mean"]],
                             arrayminus=[r["mean"] - r["ci"][0]], thickness=1.2, width=3),
                hovertemplate=f"{m}<br>{game}: %{{y:.2f}} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]<extra></extra>",
            ), row=1, col=col)
        base = summary.get("baselines", {}).get(game, {})
        for key, label, colour, dash in _STUDY_LINES:
            if key in ("random", "constant_best"):
                value = base.get(key)
                value = value.get("mean") if isinstance(value, Mapping) else value
            else:
                value = (base.get("behaviour") or {}).get(key)
            if value is None:
                continue
            fig.add_trace(go.Scatter(
                x=[-0.6, len(methods) - 0.4], y=[value, value], mode="lines", name=label, legendgroup=label,
                showlegend=col == 1, line=dict(color=colour, dash=dash, width=1.6),
                hovertemplate=f"{label}: {value:.2f}<extra></extra>",
            ), row=1, col=col)
        fig.update_xaxes(showticklabels=False, row=1, col=col)
    fig.update_yaxes(title_text="return (capped episode)", row=1, col=1)
    fig.update_layout(
        title="Per-game return: methods (mean over seeds, 95% bootstrap CI) and references",
        template="plotly_white", barmode="group", height=520, width=260 * len(games) + 120,
        legend=dict(orientation="h", yanchor="top", y=-0.08, xanchor="left", x=0.0),
        margin=dict(l=70, r=20, t=80, b=170),
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
    """Horizontal bars of aggregate scores with CI error bars, one subplot per metric.

    ``aggregates`` is the metrics module's dict ``{method: {"iqm": x, "iqm_ci": [lo, hi], ...}}``.
    One trace per (metric, method): methods are rows (named once, on the left, never rotated)
    and legend entries (one per method, shared by every subplot). Each error bar spans exactly
    ``[lo, hi]`` (asymmetric ``error_x``). Metrics absent from every method are dropped; a missing
    ``*_ci`` draws the bar without an error bar. The figure is as wide as its labels need.
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
        horizontal_spacing=0.04, shared_yaxes=True,
    )
    for col, metric in enumerate(present, start=1):
        for i, method in enumerate(methods):
            entry = aggregates[method]
            if metric not in entry:
                continue
            value = float(entry[metric])
            ci = entry.get(f"{metric}_ci")
            lo, hi = _ci_pair(ci, f"{method}.{metric}_ci") if ci is not None else (value, value)
            fig.add_trace(
                go.Bar(
                    x=[value], y=[method], orientation="h", marker_color=method_color(i), name=method,
                    legendgroup=method, showlegend=col == 1,
                    error_x=dict(type="data", symmetric=False, array=[hi - value], arrayminus=[value - lo]),
                    hovertext=[f"{method}<br>{metric} = {value:.3f}<br>95% CI [{lo:.3f}, {hi:.3f}]"],
                    hoverinfo="text",
                ),
                row=1, col=col,
            )
    fig.update_yaxes(autorange="reversed")  # first method on top, as in the legend
    label_px = 7 * max(len(m) for m in methods)  # horizontal row labels on the first subplot
    fig.update_layout(
        title=title or "Aggregate human-normalized scores (95% bootstrap CIs)", template="plotly_white",
        height=200 + 54 * len(methods), width=label_px + 40 + 220 * len(present),
        margin=dict(l=label_px + 20, r=20, t=90, b=20), barmode="overlay",
        legend=dict(orientation="h", yanchor="top", y=-0.08, xanchor="left", x=0, font_size=11,
                    entrywidth=label_px + 40, entrywidthmode="pixels"),
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
        color = method_color(i)
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
                    fill="toself", fillcolor=rgba(color, 0.2), line=dict(width=0),
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
        # The legend goes under the plot, one row per curve, so long method names leave the axes
        # their width in a static export.
        yaxis_range=[0, 1.02], height=420 + 22 * len(curves), width=900,
        legend=dict(orientation="h", yanchor="top", y=-0.15, xanchor="left", x=0),
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
            x=vals, y=labels, orientation="h", marker_color=method_color(0),
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
    per_game = scores.get("per_game")
    if not per_game:
        raise ValueError("make_scores_figure: scores has no 'per_game' entries (an evaluate() result?)")
    labels, means, raw_means, ex, ey, etext = [], [], [], [], [], []
    for game, r in per_game.items():
        eps = np.asarray(r["scores"], dtype=float)
        kind: Normalization = "human" if has_reference(game, "human") else "none"  # "none": raw scores
        label = game if kind == "human" else f"{game} (raw)"
        mean = float(r.get("mean", eps.mean()))
        labels.append(label)
        means.append(float(normalize_score(game, mean, kind)))
        raw_means.append(mean)
        ex += [label] * len(eps)
        ey += [float(v) for v in normalize_score(game, eps, kind)]
        etext += [f"{game}: episode score {v:g}" for v in eps]
    fig = go.Figure([
        go.Bar(x=labels, y=means, name="mean", marker_color=method_color(0),
               text=[f"{m:g}" for m in raw_means],
               hovertemplate="%{x}<br>mean raw score %{text}<br>normalized %{y:.3f}<extra></extra>"),
        go.Scatter(x=ex, y=ey, mode="markers", name="episodes", text=etext,
                   marker=dict(color="black", size=7, symbol="circle-open"),
                   hovertemplate="%{text}<br>normalized %{y:.3f}<extra></extra>"),
    ])
    agg = scores.get("aggregates") or {}
    head = title or "Evaluation scores"
    if "iqm" in agg:
        head += f" — IQM {agg['iqm']:.3f} (human-normalized)"
    if scores.get("comparable_to_papers") is False:  # e.g. the cpu preset's short step caps
        cap = scores.get("max_agent_steps")
        head += (f"<br><sup>{scores.get('truncated_episodes', 0)} truncated episode(s), "
                 f"{f'{cap:,}' if cap else 'a short'}-step cap: not comparable to the papers</sup>")
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
                x=xs, y=ys, mode="lines+markers", name=family, line=dict(color=method_color(i)),
                error_y=dict(type="data", symmetric=False, array=plus, arrayminus=minus),
                text=[str(p.get("label", "")) for p in pts],
                hovertemplate="%{text}<br>params=%{x:.3s}<br>" + metric + "=%{y:.3f}<extra></extra>",
            )
        )
    all_x = [float(p["params"]) for p in points] + [float(r["params"]) for r in reference or []]
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
        template="plotly_white", xaxis_title="Parameters (log scale)",
        yaxis_title=_METRIC_TITLES.get(metric, metric), height=440, width=800,
    )
    # One labelled tick per decade (100k, 1M, 10M, ...) and minor grid lines at 2..9 x.
    lo, hi = (math.floor(math.log10(min(all_x))), math.ceil(math.log10(max(all_x)))) if all_x else (5, 8)
    decades = [10.0**e for e in range(lo, max(hi, lo + 1) + 1)]
    fig.update_xaxes(type="log", tickvals=decades, ticktext=[_si(v) for v in decades],
                     minor=dict(ticks="outside", showgrid=True, gridcolor="#f0f0f0"))
    return fig


def _si(v: float) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:g}{suffix}"
    return f"{v:g}"


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
    # Each column as wide as its longest entry (method labels are long), and the figure as wide
    # as all columns together, so a PNG export (which uses the layout's width) clips nothing.
    chars = [max(7, 1 + max(len(str(v)) for v in [c, *col])) for c, col in zip(columns, cells)]
    fig = go.Figure(
        go.Table(
            header=dict(values=[f"<b>{c}</b>" for c in columns], fill_color="#e8ecf4", align="left"),
            cells=dict(values=cells, align="left"),
            columnwidth=chars,
        )
    )
    # Small margins: with plotly's default ones (180 px) a short table got no room at all.
    fig.update_layout(title=title or "Ablations", height=80 + 45 * (max(1, len(rows)) + 1),
                      width=max(700, int(TABLE_CHAR_PX * sum(chars)) + 20), margin=dict(l=10, r=10, t=50, b=10))
    return fig



# --------------------------------------------------------------------------- online fine-tuning


def make_online_curves_figure(
    curves: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]], *, title: str | None = None,
) -> go.Figure:
    """Evaluation score against training frames, one panel per game variant (paper 000, Figure A.1).

    ``curves`` maps a panel title (e.g. ``Breakout mode 12``) to ``{run label: [(frames, score)]}``."""
    if not curves:
        raise ValueError("make_online_curves_figure: no curves given")
    panels = list(curves)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels, horizontal_spacing=0.08)
    labels = list(dict.fromkeys(lab for p in panels for lab in curves[p]))
    for col, panel in enumerate(panels, start=1):
        for label, pts in curves[panel].items():
            pts = sorted(pts)
            i = labels.index(label)
            fig.add_trace(go.Scatter(
                x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=label, legendgroup=label,
                showlegend=col == 1 or label not in {lab for q in panels[: col - 1] for lab in curves[q]},
                line=dict(color=method_color(i)),
                hovertemplate=f"{label}<br>frames=%{{x:,}}<br>score=%{{y:.4g}}<extra></extra>",
            ), row=1, col=col)
        fig.update_xaxes(title_text="training frames", row=1, col=col)
    fig.update_yaxes(title_text="evaluation score", row=1, col=1)
    fig.update_layout(title=title or "Online fine-tuning: evaluation score vs frames", template="plotly_white",
                      height=420, width=max(520, 420 * len(panels)))
    return fig


def make_finetune_bars_figure(
    bars: Mapping[str, Mapping[str, Sequence[float]]], *, title: str | None = None,
    notes: Mapping[str, Mapping[str, str]] | None = None,
) -> go.Figure:
    """Final scores per game variant and initialization (paper 000, Figure 8, right): the bar is
    the mean over runs, the error bar spans their minimum and maximum (the range, as the paper's
    "minimum and maximum scores across 2 runs"); a single run draws no error bar and says so.

    ``bars`` maps a game-variant title to ``{method: [final score of each run]}``; ``notes`` (same
    keys) adds a line to a bar's hover text, e.g. the learning rate chosen for it."""
    if not bars or not any(bars.values()):
        raise ValueError("make_finetune_bars_figure: no scores given")
    panels = list(bars)
    methods = list(dict.fromkeys(m for p in panels for m in bars[p]))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels, horizontal_spacing=0.08)
    for col, panel in enumerate(panels, start=1):
        for method, scores in bars[panel].items():
            vals = np.asarray(scores, dtype=float)
            mean = float(vals.mean())
            i = methods.index(method)
            spread = (f"range over {vals.size} runs: min={vals.min():.4g}, max={vals.max():.4g}" if vals.size >= 2
                      else "1 run: no interval")
            extra = (notes or {}).get(panel, {}).get(method)
            fig.add_trace(go.Bar(
                x=[method], y=[mean], name=method, legendgroup=method, marker_color=method_color(i),
                showlegend=col == 1,
                error_y=(dict(type="data", symmetric=False, array=[float(vals.max()) - mean],
                              arrayminus=[mean - float(vals.min())]) if vals.size >= 2 else None),
                hovertemplate=(f"{method}<br>mean=%{{y:.4g}} over {vals.size} run(s)<br>{spread}"
                               + (f"<br>{extra}" if extra else "") + "<extra></extra>"),
            ), row=1, col=col)
    fig.update_yaxes(title_text="score after fine-tuning", row=1, col=1)
    fig.update_layout(title=title or "Online fine-tuning on game variants (bar: mean; error bars: min/max over runs)",
                      template="plotly_white", height=420, width=max(520, 380 * len(panels)), barmode="group")
    return fig


# --------------------------------------------------------------------------- offline fine-tuning


def make_transfer_figure(
    per_game: Mapping[str, Mapping[str, Sequence[float]]],
    aggregates: Mapping[str, Mapping[str, Any]],
    *,
    paper_per_game: Mapping[str, Mapping[str, float]] | None = None,
    paper_aggregates: Mapping[str, Mapping[str, float]] | None = None,
    metrics: Sequence[str] = ("mean", "iqm"),
    title: str | None = None,
    note: str | None = None,
) -> go.Figure:
    """Offline fine-tuning to held-out games (Scaled QL Figure 7, JOWA Table 3): DQN-normalized
    scores per game and method, and their aggregates with CIs.

    ``per_game``: ``{method: {game: [normalized score of each run]}}`` (bar: mean over runs;
    error bar: their range, min to max; none for a single run). ``aggregates``: the metrics
    module's ``aggregate(..., "dqn")`` output (bar with its interval); an entry's ``interval`` text
    says what the interval is and on how many runs it rests (shown in the panel title and hover),
    and a ``<metric>_ci`` of None draws no interval. ``paper_per_game`` / ``paper_aggregates``: the papers' values,
    ``{label: {game or metric: value}}``, drawn as open diamonds named ``paper: ...`` (one printed
    number each: no interval). ``note`` is printed under the title (e.g. a paper's claim that has
    no per-game numbers).
    """
    if not per_game or not any(per_game.values()):
        raise ValueError("make_transfer_figure: no fine-tuning scores given")
    methods = list(per_game)
    games = list(dict.fromkeys(g for m in methods for g in per_game[m]))
    present = [m for m in metrics if any(m in a for a in aggregates.values())]
    kinds = list(dict.fromkeys(str(a.get("interval", "95% CI")) for a in aggregates.values()))
    interval = kinds[0] if len(kinds) == 1 else "interval per bar: see its hover"
    titles = (["DQN-normalized score per held-out game (error bar: range over runs)"]
              + [f"{_METRIC_TITLES.get(m, m)}<br><sup>{interval}</sup>" for m in present])
    fig = make_subplots(rows=1, cols=1 + len(present), subplot_titles=titles, horizontal_spacing=0.1,
                        column_widths=[0.55] + [0.45 / max(1, len(present))] * len(present))
    for i, method in enumerate(methods):
        xs, ys, hi, lo, text = [], [], [], [], []
        for g in games:
            vals = np.asarray(per_game[method].get(g, []), dtype=float)
            if vals.size == 0:
                continue
            mean = float(vals.mean())
            xs.append(g)
            ys.append(mean)
            several = vals.size >= 2  # one run: no interval (None draws no error bar)
            hi.append(float(vals.max()) - mean if several else None)
            lo.append(mean - float(vals.min()) if several else None)
            text.append(f"{method}<br>{g}: mean {mean:.3f} over {vals.size} run(s)<br>"
                        + (f"range: min {vals.min():.3f}, max {vals.max():.3f}" if several else "1 run: no interval"))
        fig.add_trace(go.Bar(x=xs, y=ys, name=method, legendgroup=method, marker_color=method_color(i),
                             error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo),
                             hovertext=text, hoverinfo="text"), row=1, col=1)
    symbols = ("diamond-open", "square-open", "triangle-up-open", "circle-open", "star-open", "cross-open")
    for j, (label, values) in enumerate((paper_per_game or {}).items()):
        xs = [g for g in games if g in values]
        if not xs:
            continue
        fig.add_trace(go.Scatter(
            x=xs, y=[float(values[g]) for g in xs], mode="markers", name=f"paper: {label}",
            legendgroup=f"paper: {label}", marker=dict(symbol=symbols[j % len(symbols)], size=11, color="#333333"),
            hovertext=[f"paper: {label}<br>{g}: {float(values[g]):.3f}" for g in xs], hoverinfo="text",
        ), row=1, col=1)
    for col, metric in enumerate(present, start=2):
        for i, method in enumerate(methods):
            entry = aggregates.get(method, {})
            if metric not in entry:
                continue
            value = float(entry[metric])
            ci = entry.get(f"{metric}_ci")
            what = str(entry.get("interval", "95% CI"))
            if ci is None:
                error_y, shown = None, what
            else:
                ci_lo, ci_hi = _ci_pair(ci, f"{method}.{metric}_ci")
                error_y = dict(type="data", symmetric=False, array=[ci_hi - value], arrayminus=[value - ci_lo])
                shown = f"{what}: [{ci_lo:.3f}, {ci_hi:.3f}]"
            fig.add_trace(go.Bar(
                x=[method], y=[value], name=method, legendgroup=method, marker_color=method_color(i),
                showlegend=False, error_y=error_y,
                hovertext=[f"{method}<br>{metric} = {value:.3f}<br>{shown}"],
                hoverinfo="text",
            ), row=1, col=col)
        for j, (label, values) in enumerate((paper_aggregates or {}).items()):
            if metric not in values:
                continue
            fig.add_trace(go.Scatter(
                x=[f"paper: {label}"], y=[float(values[metric])], mode="markers", name=f"paper: {label}",
                legendgroup=f"paper: {label}", showlegend=not paper_per_game or label not in paper_per_game,
                marker=dict(symbol=symbols[j % len(symbols)], size=11, color="#333333"),
                hovertext=[f"paper: {label}<br>{metric} = {float(values[metric]):.3f} (as printed)"], hoverinfo="text",
            ), row=1, col=col)
        fig.update_xaxes(tickangle=-30, row=1, col=col)
    fig.update_yaxes(title_text="DQN-normalized score", row=1, col=1)
    main = title or "Offline fine-tuning to held-out games (DQN-normalized)"
    fig.update_layout(
        title=dict(text=main + (f"<br><sup>{note}</sup>" if note else "")), template="plotly_white",
        barmode="group", height=520, width=max(900, 140 * len(games) * max(1, len(methods)) // 2 + 300 * len(present)),
        margin=dict(t=110, b=160), legend=dict(orientation="h", yanchor="top", y=-0.3, xanchor="left", x=0),
    )
    return fig

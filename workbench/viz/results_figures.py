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
import re
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
from workbench.viz.style import (
    MAX_LEGEND_ENTRIES,
    PALETTE,
    SUBPLOT_TITLE_SIZE,
    chunked,
    log_ticks,
    method_color,
    off_axis_trace,
    publication_layout,
    rgba,
    short_labels,
    si_number,
    spacing,
    text_width,
    value_range,
)

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

_RUN_SUFFIX = re.compile(r"^(?P<group>.*\S)\s+\[[^\[\]]+\]$")


def _run_groups(labels: Sequence[str], groups: Mapping[str, str] | None) -> dict[str, str]:
    """Each run label's group: ``groups[label]``, else the label without a trailing ``[run name]``
    (the analysis labels its runs ``"<method> [<run folder>]"``: a method's seeds are one group)."""
    if groups is not None:
        return {lab: str(groups.get(lab, lab)) for lab in labels}
    out = {}
    for lab in labels:
        m = _RUN_SUFFIX.match(lab)
        out[lab] = m.group("group") if m else lab
    return out


def _legend_name(i: int) -> str:
    return "legend" if i == 0 else f"legend{i + 1}"


def make_learning_curve_figure(
    runs: Mapping[Any, Sequence[Mapping[str, Any]]],
    metrics: str | Sequence[str],
    *,
    x: str = "step",
    title: str | None = None,
    groups: Mapping[str, str] | None = None,
    row_height: int = 150,
) -> go.Figure:
    """Overlay learning curves of several runs, one subplot row per metric.

    ``runs`` maps a run label to its JSONL metric records (dicts with ``x`` and metric keys).
    Records lacking a metric (e.g. eval lines among train lines) are skipped for that metric;
    points are sorted by ``x``. Runs of one group (``groups[label]``; by default the label less a
    trailing ``[run name]``, so a method's seeds) share a colour and one legend entry. More groups
    than one legend may list (``MAX_LEGEND_ENTRIES``) are drawn in side-by-side columns of panels,
    each with its own legend under it. Raises ``ValueError`` when no run has any of the metrics.
    """
    metric_list = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metric_list:
        raise ValueError("make_learning_curve_figure: give at least one metric name")
    labels = [str(k) for k in runs]
    group_of = _run_groups(labels, groups)
    group_names = list(dict.fromkeys(group_of.values()))
    short = short_labels(group_names)
    columns = chunked(group_names, MAX_LEGEND_ENTRIES)
    col_of = {g: c for c, chunk in enumerate(columns) for g in chunk}
    colour_of = {g: method_color(chunk.index(g)) for chunk in columns for g in chunk}
    n_rows, n_cols = len(metric_list), len(columns)
    panel_w, gap_h, gap_v = (560 if n_cols == 1 else 340), 70, 50
    plot_w = n_cols * panel_w + (n_cols - 1) * gap_h
    plot_h = n_rows * row_height + (n_rows - 1) * gap_v
    fig = make_subplots(
        rows=n_rows, cols=n_cols, shared_xaxes=True, shared_yaxes=True,
        subplot_titles=[m for m in metric_list for _ in range(n_cols)],
        vertical_spacing=spacing(gap_v, plot_h) if n_rows > 1 else 0.0,
        horizontal_spacing=spacing(gap_h, plot_w) if n_cols > 1 else 0.0,
    )
    several = len(labels) > len(group_names)  # seeds of one method drawn together: thinner lines
    shown: set[str] = set()
    drawn = 0
    for label, records in zip(labels, runs.values()):
        g = group_of[label]
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
                    name=short[g], legendgroup=g, showlegend=g not in shown, legend=_legend_name(col_of[g]),
                    line=dict(color=colour_of[g], width=1.2 if several else 1.8), opacity=0.8 if several else 1.0,
                    hovertemplate=f"{label}<br>{x}=%{{x}}<br>{metric}=%{{y:.4g}}<extra></extra>",
                ),
                row=row, col=col_of[g] + 1,
            )
            shown.add(g)
            drawn += 1
    if drawn == 0:
        available = sorted({k for recs in runs.values() for r in recs for k in r})
        raise ValueError(
            f"none of the metrics {metric_list} appear in the records; available keys: {available}"
        )
    for c in range(1, n_cols + 1):
        fig.update_xaxes(title_text=x, row=n_rows, col=c)
    fig.update_layout(title=title or "Learning curves", hovermode="x unified")
    if n_cols == 1:
        return publication_layout(fig, plot_width=plot_w, plot_height=plot_h)
    return publication_layout(fig, plot_width=plot_w, plot_height=plot_h, legend="bottom",
                              legend_x={_legend_name(c): c * (panel_w + gap_h) / plot_w for c in range(n_cols)})


def make_representation_figure(source: str | os.PathLike[str]) -> go.Figure:
    """The representation diagnostics over training (``workbench.diagnostics``: srank, feature
    variation, dead ReLU fraction, share of the probe on the modal greedy action) of the run that
    ``source`` (a run folder or one of its checkpoints) belongs to; for a run without them (JOWA
    and the sequence methods have no probe), a figure that says so."""
    run = Run(find_run_dir(resolve_path(source)))
    records, _ = run.all_metrics("diagnostics.jsonl")
    if not records:  # an empty figure that says why (notebook 07 shows it for any run)
        fig = go.Figure()
        fig.add_annotation(
            text=f"no representation diagnostics in {run.name}:<br>its algorithm ({run.algo_name}) has no probe "
                 "(Q-network algorithms have one),<br>or it was trained before the diagnostics existed",
            showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14, color="#b00"))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        return fig.update_layout(title="Representation on a fixed probe batch", height=260)
    return make_learning_curve_figure({run.name: records}, list(DIAGNOSTIC_CURVES),
                                      title="Representation on a fixed probe batch", row_height=130)


#: Reference lines of a study's per-game figure: (summary baseline key, label, colour, dash).
_STUDY_LINES = (("random", "random", "#7f7f7f", "dot"), ("constant_best", "best constant action", "#d62728", "dash"),
                ("sub_optimal", "behaviour, sub-optimal", "#2ca02c", "dashdot"),
                ("near_optimal", "behaviour, near-optimal", "#1f77b4", "longdash"))


def make_study_scores_figure(summary: Mapping[str, Any], *, split: str | None = None) -> go.Figure:
    """Per-game mean return of each method (bars: mean over seeds, whiskers: 95% bootstrap CI over
    seeds) against the study's reference lines: random, the best constant action and the behaviour
    of each split, all measured under the agents' protocol (``workbench.study.build_summary``'s
    output). One row of panels per data split (``split`` keeps one split's rows), one panel per
    game; a method keeps its colour and legend entry in every panel."""
    games = list(summary["games"])
    rows = [r for r in summary["results"] if split is None or r["split"] == split]
    splits = list(dict.fromkeys(r["split"] for r in rows)) or [split or ""]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    short = short_labels(methods)
    # one colour per method: the shared palette has 12, a study can have more
    colours = [method_color(i) for i in range(len(methods))] if len(methods) <= len(PALETTE) else \
        list(qualitative.Dark24[: len(methods)])
    panel_w, panel_h, gap_h, gap_v = 200, 300, 70, 70
    plot_w = len(games) * panel_w + (len(games) - 1) * gap_h
    plot_h = len(splits) * panel_h + (len(splits) - 1) * gap_v
    fig = make_subplots(rows=len(splits), cols=len(games),
                        subplot_titles=[g.removeprefix("MinAtar-") if s == 0 else "" for s in range(len(splits))
                                        for g in games],
                        horizontal_spacing=spacing(gap_h, plot_w) if len(games) > 1 else 0.0,
                        vertical_spacing=spacing(gap_v, plot_h) if len(splits) > 1 else 0.0)
    for srow, sp in enumerate(splits, start=1):
        for col, game in enumerate(games, start=1):
            by_method = {r["method"]: r for r in rows if r["game"] == game and r["split"] == sp}
            for i, m in enumerate(methods):
                r = by_method.get(m)
                if r is None:
                    continue
                fig.add_trace(go.Bar(
                    x=[i], y=[r["mean"]], name=short[m], legendgroup=m, showlegend=srow == 1 and col == 1,
                    marker_color=colours[i],
                    error_y=dict(type="data", symmetric=False, array=[r["ci"][1] - r["mean"]],
                                 arrayminus=[r["mean"] - r["ci"][0]], thickness=1.2, width=3),
                    hovertemplate=f"{m}, {sp}<br>{game}: %{{y:.2f}} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"
                                  "<extra></extra>",
                ), row=srow, col=col)
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
                    showlegend=srow == 1 and col == 1, line=dict(color=colour, dash=dash, width=1.6),
                    hovertemplate=f"{label}: {value:.2f}<extra></extra>",
                ), row=srow, col=col)
            fig.update_xaxes(showticklabels=False, row=srow, col=col)
        fig.update_yaxes(title_text=f"return, {sp} data" if sp and len(splits) > 1 else "return (capped episode)",
                         row=srow, col=1)
    fig.update_layout(title="Per-game return: methods (mean over seeds, 95% bootstrap CI) and references",
                      barmode="group")
    return publication_layout(fig, plot_width=plot_w, plot_height=plot_h)


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


def _is_paper(name: str) -> bool:
    return name.startswith("paper:")


def make_aggregate_figure(
    aggregates: Mapping[str, Mapping[str, Any]],
    metrics: Sequence[str] = AGGREGATE_METRICS,
    *,
    title: str | None = None,
) -> go.Figure:
    """Horizontal bars of aggregate scores with CI error bars, one subplot per metric.

    ``aggregates`` is the metrics module's dict ``{method: {"iqm": x, "iqm_ci": [lo, hi], ...}}``.
    One trace per (metric, method): methods are rows, named once on the left (shortened, the full
    name in the hover), so the figure needs no legend. Each error bar spans exactly ``[lo, hi]``
    (asymmetric ``error_x``). Methods named ``paper: ...`` (the papers' printed numbers) are marks,
    not bars, and do not set the axis range: one far outside our bars' range sits on its edge as
    a triangle with its value printed. Metrics absent from every method are dropped; a missing
    ``*_ci`` draws the bar without an error bar.
    """
    methods = list(aggregates)
    if not methods:
        raise ValueError("make_aggregate_figure: aggregates is empty")
    present = [m for m in metrics if any(m in aggregates[k] for k in methods)]
    if not present:
        keys = sorted({k for v in aggregates.values() for k in v})
        raise ValueError(f"none of the metrics {list(metrics)} found; available keys: {keys}")
    short = short_labels(methods)
    panel_w, gap = 190, 24
    plot_w = len(present) * panel_w + (len(present) - 1) * gap
    fig = make_subplots(
        rows=1, cols=len(present), subplot_titles=[_METRIC_TITLES.get(m, m) for m in present],
        horizontal_spacing=spacing(gap, plot_w) if len(present) > 1 else 0.0, shared_yaxes=True,
    )
    for col, metric in enumerate(present, start=1):
        ours: list[tuple[str, float, float, float]] = []
        extents: list[float] = []
        for method in methods:
            entry = aggregates[method]
            if metric not in entry:
                continue
            value = float(entry[metric])
            ci = entry.get(f"{metric}_ci")
            lo, hi = _ci_pair(ci, f"{method}.{metric}_ci") if ci is not None else (value, value)
            (extents if not _is_paper(method) else []).extend([lo, hi])
            ours.append((method, value, lo, hi))
        rng = value_range(extents or [v for _, v, _, _ in ours])
        for method, value, lo, hi in ours:
            hover = [f"{method}<br>{metric} = {value:.3f}" + (f"<br>95% CI [{lo:.3f}, {hi:.3f}]" if hi > lo else "")]
            if _is_paper(method):
                fig.add_trace(go.Scatter(
                    x=[value], y=[short[method]], mode="markers", name=short[method], showlegend=False,
                    legendgroup=method, marker=dict(symbol="diamond-open", size=11, color="#333333"),
                    hovertext=hover, hoverinfo="text",
                ), row=1, col=col)
                edge = off_axis_trace(short[method], [short[method]], [value], rng, vertical=False,
                                      legendgroup=method, hover=hover)
                if edge is not None:
                    fig.add_trace(edge, row=1, col=col)
                continue
            fig.add_trace(
                go.Bar(
                    x=[value], y=[short[method]], orientation="h", marker_color=method_color(methods.index(method)),
                    name=short[method], legendgroup=method, showlegend=False,
                    error_x=dict(type="data", symmetric=False, array=[hi - value], arrayminus=[value - lo]),
                    hovertext=hover, hoverinfo="text",
                ),
                row=1, col=col,
            )
        fig.update_xaxes(range=rng, row=1, col=col)
    fig.update_yaxes(autorange="reversed", type="category")  # first method on top
    fig.update_layout(title=title or "Aggregate human-normalized scores (95% bootstrap CIs)", barmode="overlay")
    return publication_layout(fig, plot_width=plot_w, plot_height=26 * len(methods) + 20, legend="none")


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
    (lower row, upper row), drawn as a filled band under the curve. More curves than one legend
    may list are drawn in side-by-side panels (same axes), each with its own legend under it.
    """
    tau = np.asarray(taus, dtype=float)
    methods = list(curves)
    short = short_labels(methods)
    panels = chunked(methods, MAX_LEGEND_ENTRIES) or [[]]
    panel_w, gap = (560 if len(panels) == 1 else 420), 60
    plot_w = len(panels) * panel_w + (len(panels) - 1) * gap
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True,
                        horizontal_spacing=spacing(gap, plot_w) if len(panels) > 1 else 0.0)
    for p, chunk in enumerate(panels):
        for i, method in enumerate(chunk):
            y = np.asarray(curves[method], dtype=float)
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
                        hoverinfo="skip", showlegend=False, legendgroup=method, legend=_legend_name(p),
                        name=f"{short[method]} CI",
                    ), row=1, col=p + 1,
                )
            fig.add_trace(
                go.Scatter(x=tau, y=y, mode="lines", name=short[method], legendgroup=method, legend=_legend_name(p),
                           line=dict(color=color, width=2), hovertemplate=f"{method}<br>τ=%{{x:.3g}}: %{{y:.2f}}"
                                                                         "<extra></extra>"),
                row=1, col=p + 1,
            )
        fig.update_xaxes(title_text=xlabel, row=1, col=p + 1)
    fig.update_yaxes(range=[0, 1.02])
    fig.update_yaxes(title_text="Fraction of runs with score > τ", row=1, col=1)
    fig.update_layout(title=title or "Performance profiles")
    if len(panels) == 1:
        return publication_layout(fig, plot_width=plot_w, plot_height=360)
    return publication_layout(fig, plot_width=plot_w, plot_height=360, legend="bottom",
                              legend_x={_legend_name(p): p * (panel_w + gap) / plot_w for p in range(len(panels))})


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
    Method names are shortened (the full pair in the hover); a pair whose label would be long is
    written on two lines.
    """
    named = []
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
        named.append((x, y, p, ci))
    short = short_labels([n for x, y, _, _ in named for n in (x, y)])
    labels, vals, plus, minus, texts = [], [], [], [], []
    two_lines = any(len(short[x]) + len(short[y]) > 50 for x, y, _, _ in named)
    for x, y, p, ci in named:
        lo, hi = _ci_pair(ci, f"{x},{y}") if ci is not None else (p, p)
        labels.append(f"P({short[x]}<br>> {short[y]})" if two_lines else f"P({short[x]} > {short[y]})")
        vals.append(p)
        plus.append(hi - p)
        minus.append(p - lo)
        texts.append(f"P({x} > {y}) = {p:.3f}" + (f"<br>95% CI [{lo:.3f}, {hi:.3f}]" if ci is not None else
                                                    "<br>no interval"))
    fig = go.Figure(
        go.Bar(
            x=vals, y=labels, orientation="h", marker_color=method_color(0), name="P(X > Y)",
            error_x=dict(type="data", symmetric=False, array=plus, arrayminus=minus),
            hovertext=texts, hoverinfo="text",
        )
    )
    fig.add_vline(x=0.5, line_dash="dash", line_color="gray")
    fig.update_layout(title=title or "Probability of improvement", xaxis_range=[0, 1],
                      xaxis_title="P(X > Y), 95% CI")
    fig.update_yaxes(autorange="reversed", type="category")  # first pair on top
    row = 40 if two_lines else 26
    return publication_layout(fig, plot_width=320, plot_height=max(90, row * len(labels) + 20), legend="none")


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
    fig.update_layout(title=head, yaxis_title="human-normalized score", barmode="overlay")
    return publication_layout(fig, plot_width=max(300, 60 * len(labels)), plot_height=300)


# --------------------------------------------------------------------------- scaling


def make_scaling_figure(
    points: Sequence[Mapping[str, Any]],
    reference: Sequence[Mapping[str, Any]] | None = None,
    *,
    metric: str = "iqm",
    title: str | None = None,
    connect: bool = False,
) -> go.Figure:
    """Parameters (log x) vs an aggregate score with CI error bars, one colour per family.

    ``points``: dicts with ``family``, ``params``, ``metric`` and optional ``f"{metric}_ci"``
    and ``label``. A family's points are markers: runs of one algorithm at several sizes usually
    differ in more than their size (data split, settings), so no line joins them unless
    ``connect`` says they are one series. ``reference``: optional paper numbers, dicts with
    ``label``, ``params``, ``metric``, drawn as open diamonds without CIs that do not set the score
    axis: one far above (or below) our points sits on the axis' edge as a triangle with its value
    printed. The parameter axis is logarithmic with a labelled tick at each power of ten.
    """
    fig = go.Figure()
    families: dict[str, list[Mapping[str, Any]]] = {}
    for p in points:
        families.setdefault(str(p.get("family", "runs")), []).append(p)
    extents: list[float] = []
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
            extents += [lo, hi]
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, mode="lines+markers" if connect else "markers", name=family,
                line=dict(color=method_color(i)), marker=dict(color=method_color(i), size=9),
                error_y=dict(type="data", symmetric=False, array=plus, arrayminus=minus),
                text=[str(p.get("label", "")) for p in pts],
                hovertemplate="%{text}<br>params=%{x:.3s}<br>" + metric + "=%{y:.3f}<extra></extra>",
            )
        )
    all_x = [float(p["params"]) for p in points] + [float(r["params"]) for r in reference or []]
    rng = value_range(extents or [float(r[metric]) for r in reference or []], include_zero=False, pad=0.12)
    if reference:
        values = [float(r[metric]) for r in reference]
        params = [float(r["params"]) for r in reference]
        labels = [str(r.get("label", "")) for r in reference]
        edge = off_axis_trace("paper (reported)", params, values, rng, color="black",
                              hover=[f"{lab}<br>params={si_number(x)}" for lab, x in zip(labels, params)])
        if edge is not None:
            fig.add_trace(edge)
        fig.add_trace(
            go.Scatter(
                x=params, y=values, mode="markers", name="paper (reported)",  # labels on hover: many overlap
                legendgroup="paper (reported)", marker=dict(symbol="diamond-open", size=11, color="black"),
                text=labels,
                hovertemplate="%{text}<br>params=%{x:.3s}<br>" + metric + "=%{y:.3f}<extra>paper</extra>",
            )
        )
    fig.update_layout(
        title=title or f"Scaling: parameters vs {_METRIC_TITLES.get(metric, metric)}",
        xaxis_title="Parameters (log scale)", yaxis_title=_METRIC_TITLES.get(metric, metric),
    )
    # One labelled tick per decade (100k, 1M, 10M, ...) and minor ticks at 2..9 x.
    fig.update_xaxes(**log_ticks(min(all_x), max(all_x)) if all_x else log_ticks(1e5, 1e8))
    fig.update_yaxes(range=rng)
    return publication_layout(fig, plot_width=520, plot_height=320)


#: A row of a table that is a section header: ``{SECTION: "Paper, printed numbers"}``.
SECTION = "__section__"


def make_ablation_table_figure(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    title: str | None = None,
    float_format: str = "{:.3f}",
) -> go.Figure:
    """A plotly Table of ablation rows (dicts); columns default to keys in first-seen order.

    A row ``{SECTION: text}`` starts a section: its text, bold, on a shaded row of its own (e.g.
    our runs, then the paper's printed numbers, so that neither reads as a row of the other)."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r if k != SECTION))
    cells: list[list[Any]] = []
    for c in columns:
        col = []
        for r in rows:
            if SECTION in r:
                col.append(f"<b>{r[SECTION]}</b>" if c == columns[0] else "")
                continue
            v = r.get(c, "")
            if isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(e) for e in v):
                v = "[" + ", ".join(float_format.format(float(e)) for e in v) + "]"
            elif isinstance(v, float) or isinstance(v, np.floating):
                v = float_format.format(float(v))
            col.append(v)
        cells.append(col)
    # Each column as wide as its longest entry (method labels are long), and the figure as wide
    # as all columns together, so a PNG export (which uses the layout's width) clips nothing.
    chars = [max(7, 1 + max([len(str(c))] + [len(str(v)) for v, r in zip(col, rows) if SECTION not in r]))
             for c, col in zip(columns, cells)]
    if columns:  # a section's title is written (bold) in the first column
        chars[0] = max([chars[0]] + [2 + math.ceil(1.15 * len(str(r[SECTION]))) for r in rows if SECTION in r])
    widths = [TABLE_CHAR_PX * n for n in chars]
    fills = [["#f0f0f0" if SECTION in r else "white" for r in rows] for _ in columns]
    fig = go.Figure(
        go.Table(
            header=dict(values=[f"<b>{c}</b>" for c in columns], fill_color="#e8ecf4", align="left", height=26),
            cells=dict(values=cells, align="left", height=26, fill_color=fills),
            columnwidth=chars,
        )
    )
    fig.update_layout(title=title or "Ablations")
    # the table fills its domain: 26 px per row, and a little room so that nothing scrolls
    return publication_layout(fig, plot_width=max(400.0, sum(widths)), plot_height=26 * (len(rows) + 1) + 14,
                              legend="none")



# --------------------------------------------------------------------------- online fine-tuning


def make_online_curves_figure(
    curves: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]], *, title: str | None = None,
) -> go.Figure:
    """Evaluation score against training frames, one panel per game variant (paper 000, Figure A.1).

    ``curves`` maps a panel title (e.g. ``Breakout mode 12``) to ``{run label: [(frames, score)]}``."""
    if not curves:
        raise ValueError("make_online_curves_figure: no curves given")
    panels = list(curves)
    panel_w, gap = 320, 70
    plot_w = len(panels) * panel_w + (len(panels) - 1) * gap
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels,
                        horizontal_spacing=spacing(gap, plot_w) if len(panels) > 1 else 0.0)
    labels = list(dict.fromkeys(lab for p in panels for lab in curves[p]))
    short = short_labels(labels)
    for col, panel in enumerate(panels, start=1):
        for label, pts in curves[panel].items():
            pts = sorted(pts)
            i = labels.index(label)
            fig.add_trace(go.Scatter(
                x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=short[label],
                legendgroup=label,
                showlegend=col == 1 or label not in {lab for q in panels[: col - 1] for lab in curves[q]},
                line=dict(color=method_color(i)),
                hovertemplate=f"{label}<br>frames=%{{x:,}}<br>score=%{{y:.4g}}<extra></extra>",
            ), row=1, col=col)
        fig.update_xaxes(title_text="training frames", row=1, col=col)
    fig.update_yaxes(title_text="evaluation score", row=1, col=1)
    fig.update_layout(title=title or "Online fine-tuning: evaluation score vs frames")
    return publication_layout(fig, plot_width=plot_w, plot_height=300)


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
    short = short_labels(methods)
    panel_w, gap = max(200, 70 * len(methods)), 70
    plot_w = len(panels) * panel_w + (len(panels) - 1) * gap
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels,
                        horizontal_spacing=spacing(gap, plot_w) if len(panels) > 1 else 0.0)
    for col, panel in enumerate(panels, start=1):
        for method, scores in bars[panel].items():
            vals = np.asarray(scores, dtype=float)
            mean = float(vals.mean())
            i = methods.index(method)
            spread = (f"range over {vals.size} runs: min={vals.min():.4g}, max={vals.max():.4g}" if vals.size >= 2
                      else "1 run: no interval")
            extra = (notes or {}).get(panel, {}).get(method)
            fig.add_trace(go.Bar(
                x=[short[method]], y=[mean], name=short[method], legendgroup=method, marker_color=method_color(i),
                showlegend=False,  # the bars are named on the x axis
                error_y=(dict(type="data", symmetric=False, array=[float(vals.max()) - mean],
                              arrayminus=[mean - float(vals.min())]) if vals.size >= 2 else None),
                hovertemplate=(f"{method}<br>mean=%{{y:.4g}} over {vals.size} run(s)<br>{spread}"
                               + (f"<br>{extra}" if extra else "") + "<extra></extra>"),
            ), row=1, col=col)
    fig.update_yaxes(title_text="score after fine-tuning", row=1, col=1)
    fig.update_layout(title=title or "Online fine-tuning on game variants (bar: mean; error bars: min/max over runs)",
                      barmode="group")
    return publication_layout(fig, plot_width=plot_w, plot_height=300, legend="none")


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
    short = short_labels(methods)
    games = list(dict.fromkeys(g for m in methods for g in per_game[m]))
    present = [m for m in metrics if any(m in a for a in aggregates.values())]
    kinds = list(dict.fromkeys(str(a.get("interval", "95% CI")) for a in aggregates.values()))
    interval = kinds[0] if len(kinds) == 1 else "interval per bar: see its hover"
    titles = (["Per held-out game (error bar: range over runs)"]
              + [f"{_METRIC_TITLES.get(m, m)}<br><sup>{interval}</sup>" for m in present])
    n_agg = len(methods) + len(paper_aggregates or {})
    # an aggregate panel is as wide as its interval's line (tests and readers find it whole)
    agg_w = max(150, 40 * n_agg, text_width(interval, 0.7 * SUBPLOT_TITLE_SIZE) + 16)
    game_w, gap = max(320, 26 * len(games) * max(1, len(methods))), 70
    plot_w = game_w + len(present) * (agg_w + gap)
    fig = make_subplots(rows=1, cols=1 + len(present), subplot_titles=titles,
                        horizontal_spacing=spacing(gap, plot_w) if present else 0.0,
                        column_widths=[game_w] + [agg_w] * len(present))
    symbols = ("diamond-open", "square-open", "triangle-up-open", "circle-open", "star-open", "cross-open")
    extents: list[float] = []
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
            extents += [float(vals.min()), float(vals.max())]
            text.append(f"{method}<br>{g}: mean {mean:.3f} over {vals.size} run(s)<br>"
                        + (f"range: min {vals.min():.3f}, max {vals.max():.3f}" if several else "1 run: no interval"))
        fig.add_trace(go.Bar(x=xs, y=ys, name=short[method], legendgroup=method, marker_color=method_color(i),
                             error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo),
                             hovertext=text, hoverinfo="text"), row=1, col=1)
    game_range = value_range(extents)
    for j, (label, values) in enumerate((paper_per_game or {}).items()):
        xs = [g for g in games if g in values]
        if not xs:
            continue
        hover = [f"paper: {label}<br>{g}: {float(values[g]):.3f}" for g in xs]
        fig.add_trace(go.Scatter(
            x=xs, y=[float(values[g]) for g in xs], mode="markers", name=f"paper: {label}",
            legendgroup=f"paper: {label}", marker=dict(symbol=symbols[j % len(symbols)], size=11, color="#333333"),
            hovertext=hover, hoverinfo="text",
        ), row=1, col=1)
        edge = off_axis_trace(f"paper: {label}", xs, [float(values[g]) for g in xs], game_range, hover=hover)
        if edge is not None:
            fig.add_trace(edge, row=1, col=1)
    fig.update_yaxes(range=game_range, row=1, col=1)
    for col, metric in enumerate(present, start=2):
        bars_ext: list[float] = []
        for i, method in enumerate(methods):
            entry = aggregates.get(method, {})
            if metric not in entry:
                continue
            value = float(entry[metric])
            ci = entry.get(f"{metric}_ci")
            what = str(entry.get("interval", "95% CI"))
            if ci is None:
                error_y, shown = None, what
                bars_ext.append(value)
            else:
                ci_lo, ci_hi = _ci_pair(ci, f"{method}.{metric}_ci")
                error_y = dict(type="data", symmetric=False, array=[ci_hi - value], arrayminus=[value - ci_lo])
                shown = f"{what}: [{ci_lo:.3f}, {ci_hi:.3f}]"
                bars_ext += [ci_lo, ci_hi]
            fig.add_trace(go.Bar(
                x=[short[method]], y=[value], name=short[method], legendgroup=method, marker_color=method_color(i),
                showlegend=False, error_y=error_y,
                hovertext=[f"{method}<br>{metric} = {value:.3f}<br>{shown}"],
                hoverinfo="text",
            ), row=1, col=col)
        rng = value_range(bars_ext)
        for j, (label, values) in enumerate((paper_aggregates or {}).items()):
            if metric not in values:
                continue
            hover = [f"paper: {label}<br>{metric} = {float(values[metric]):.3f} (as printed)"]
            fig.add_trace(go.Scatter(
                x=[f"paper: {label}"], y=[float(values[metric])], mode="markers", name=f"paper: {label}",
                legendgroup=f"paper: {label}",
                showlegend=col == 2 and (not paper_per_game or label not in paper_per_game),
                marker=dict(symbol=symbols[j % len(symbols)], size=11, color="#333333"),
                hovertext=hover, hoverinfo="text",
            ), row=1, col=col)
            edge = off_axis_trace(f"paper: {label}", [f"paper: {label}"], [float(values[metric])], rng, hover=hover)
            if edge is not None:
                fig.add_trace(edge, row=1, col=col)
        fig.update_yaxes(range=rng, row=1, col=col)
    fig.update_yaxes(title_text="DQN-normalized score", row=1, col=1)
    main = title or "Offline fine-tuning to held-out games (DQN-normalized)"
    fig.update_layout(title=dict(text=main + (f"<br><sup>{note}</sup>" if note else "")), barmode="group")
    return publication_layout(fig, plot_width=plot_w, plot_height=320)

"""Interactive ablation explorer: a sweep (or any run folders) -> widgets -> plots that follow them.

Data path: run folders are read with :func:`workbench.viz.analysis.read_run` (folders that are
not runs are left out and listed in ``not_done``), one evaluation protocol is chosen with
:func:`~workbench.viz.analysis.select_evaluations`, runs are grouped by the chosen factors' levels
and turned into ``{group: {game: [scores]}}`` by :func:`~workbench.viz.analysis.method_scores` (a
run is a seed, its per-game mean; a group with one run gets no interval:
:func:`~workbench.viz.analysis.honest_aggregates`). Every number drawn comes from
:mod:`workbench.metrics` (aggregates with stratified-bootstrap CIs, performance profiles,
probability of improvement). Without a sweep, the factors are the settings of the runs' resolved
configurations that differ (:func:`~workbench.viz.analysis.setting_factors`).

Groups are ordered by the x factor's levels, then the colour factor's, in the sweep's order;
``metrics.aggregate`` seeds group ``i``'s bootstrap with ``seed + i``, so the same choice draws
the same intervals every time.

:func:`paper_figures` regenerates the papers' figures and tables from the same runs, with the
papers' printed numbers (``workbench.reference.paper_tables``) as reference marks where the games
match.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import plotly.graph_objects as go

from workbench import metrics as M
from workbench.data.behaviour import behaviour_lines
from workbench.paths import resolve_path, shown_path
from workbench.reference import paper_tables as pt
from workbench.sweep import load_sweep, sweep_status
from workbench.viz import results_figures as F
from workbench.viz.analysis import (
    DEFAULT_OUT_DIR,
    RunInfo,
    explain_empty,
    honest_aggregates,
    method_labels,
    method_scores,
    not_a_run,
    paper_reference_points,
    read_run,
    scaling_points,
    select_evaluations,
    setting_factors,
)
from workbench.viz.export import FigureSaveStatus, save_figures
from workbench.viz.recipes import Built, Drawn, FigureRecipe, Skip, draw
from workbench.viz.style import method_color, off_axis_trace, publication_layout, short_labels, value_range

__all__ = ["AblationData", "AblationExplorer", "METRIC_CHOICES", "VIEWS", "group_scores", "load_ablation",
           "paper_figures"]

METRIC_CHOICES = (("IQM", "iqm"), ("median", "median"), ("mean", "mean"), ("optimality gap", "optimality_gap"))
VIEWS = ("aggregates", "performance_profiles", "probability_of_improvement", "per_game_scores", "learning_curves")
NONE = "(none)"


@dataclass
class AblationData:
    """Runs with their factor levels: what the explorer and :func:`paper_figures` draw from."""

    name: str
    source: str
    runs: list[RunInfo]
    levels: list[dict[str, Any]]
    """Per run: factor -> level (seeds are not factors: they are the runs of a level)."""
    factors: dict[str, list[Any]]
    protocol: str = ""
    left_out: dict[str, str] = field(default_factory=dict)
    not_done: list[str] = field(default_factory=list)
    behaviour: dict[str, dict[str, float]] = field(default_factory=dict)
    """The behaviour policy's mean return per split and game, when every run trained on one
    DQN-Replay root that carries a ``behaviour.json`` (``workbench.data.behaviour``); else ``{}``."""

    @property
    def games(self) -> list[str]:
        """Games every run with scores was evaluated on."""
        sets = [set(r.scores["per_game"]) for r in self.runs if r.scores]
        return sorted(set.intersection(*sets)) if sets else []


def _level_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def load_ablation(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                  *, mix_protocols: bool = False) -> AblationData:
    """A sweep (its file, its folder or its ``sweep.json``) or a list of run folders.

    For a sweep, the factors and levels are the sweep's and only finished points are read
    (the others are listed in ``not_done``). For plain run folders, the factors are the settings of
    their resolved configurations that differ between runs (``analysis.setting_factors``: a
    parameter left at 0 counts with the value it resolved to), and folders that are not run
    folders (no config.json of a run kind, e.g. notebook 07's ``runs/explore``) are left out and
    listed in ``not_done``."""
    if isinstance(source, (str, os.PathLike)):
        path = resolve_path(source)
        if path.is_dir() and (path / "sweep.json").is_file():
            return _from_index(json.loads((path / "sweep.json").read_text()), mix_protocols)
        if path.is_file() and path.name == "sweep.json":
            return _from_index(json.loads(path.read_text()), mix_protocols)
        if path.is_file():
            return _from_index(sweep_status(load_sweep(path), write=False), mix_protocols)
        raise FileNotFoundError(f"{path} is neither a sweep file, a sweep folder (with sweep.json), nor a list of "
                                "run folders")
    return _from_runs([resolve_path(s) for s in source], mix_protocols)


def _unique(levels: Sequence[Any]) -> list[Any]:
    """Levels in first-seen order, once each (a zipped sweep repeats them)."""
    seen: dict[str, Any] = {}
    for v in levels:
        seen.setdefault(_level_text(v), v)
    return list(seen.values())


def _from_index(index: dict[str, Any], mix_protocols: bool) -> AblationData:
    done = [p for p in index["points"] if p["state"] == "done"]
    runs = [read_run(p["run_dir"]) for p in done]
    levels = [{k: v for k, v in p["levels"].items() if k != "seed"} for p in done]
    data = AblationData(name=index["name"], source=index.get("file") or index["root"], runs=runs, levels=levels,
                        factors={k: _unique(v) for k, v in index["factors"].items()},
                        not_done=[f"{p['id']} ({p['state']})" for p in index["points"] if p["state"] != "done"])
    data.protocol, data.left_out = select_evaluations(runs, mix_protocols)
    data.behaviour = _shared_behaviour(runs)
    return data


def _shared_behaviour(runs: Sequence[RunInfo]) -> dict[str, dict[str, float]]:
    datasets = {str(r.config.get("dataset") or "") for r in runs}
    if len(datasets) != 1 or not next(iter(datasets)):
        return {}
    return behaviour_lines(resolve_path(next(iter(datasets))))


def _from_runs(paths: Sequence[Path], mix_protocols: bool) -> AblationData:
    if not paths:
        raise ValueError("no run folders given")
    not_runs = {p: why for p in paths if (why := not_a_run(p)) is not None}
    runs = [read_run(p) for p in paths if p not in not_runs]
    if not runs:
        raise ValueError(f"none of {', '.join(map(str, paths))} is a workbench run folder (a config.json of a run "
                         "kind): run notebook 02, 03 or 04 first, or give run_dirs / sweep")
    names, vals = setting_factors(runs)
    if len({r.kind for r in runs}) > 1:  # runs of several kinds: the kind is a factor of its own
        names, vals = ["kind", *names], [{"kind": r.kind, **v} for r, v in zip(runs, vals)]
    factors: dict[str, list[Any]] = {k: _unique([v[k] for v in vals]) for k in names}
    levels: list[dict[str, Any]]
    if not factors:  # nothing differs: every run is its own level
        labels = method_labels(runs)
        factors = {"run": list(dict.fromkeys(labels))}
        levels = [{"run": lab} for lab in labels]
    else:
        levels = vals
    data = AblationData(name="runs", source=", ".join(str(p) for p in paths), runs=runs, levels=levels,
                        factors=factors, not_done=[f"{p} (not a run: {why})" for p, why in not_runs.items()])
    data.protocol, data.left_out = select_evaluations(runs, mix_protocols)
    data.behaviour = _shared_behaviour(runs)
    return data


# ------------------------------------------------------------------------------------- grouping


def group_label(levels: dict[str, Any], x: str, color: str | None) -> str:
    label = f"{x}={_level_text(levels[x])}"
    return label + (f", {color}={_level_text(levels[color])}" if color else "")


def group_scores(data: AblationData, x: str, color: str | None = None, games: Sequence[str] | None = None
                 ) -> tuple[dict[str, dict[str, list[float]]], str, dict[str, tuple[Any, Any]]]:
    """``({group: {game: [scores]}}, what a run is, {group: (x level, colour level)})``.

    Groups follow the x factor's level order, then the colour factor's; ``games`` restricts the
    games (default: all)."""
    for name in (x, color):
        if name is not None and name not in data.factors:
            raise ValueError(f"unknown factor {name!r}; the factors are {', '.join(data.factors)}")
    if color == x:
        color = None
    labels = [group_label(lv, x, color) for lv in data.levels]
    scores, runs_are = method_scores(data.runs, labels)
    order: dict[str, tuple[Any, Any]] = {}
    for xl in data.factors[x]:
        for cl in (data.factors[color] if color else [None]):
            lab = group_label({x: xl, **({color: cl} if color else {})}, x, color)
            if lab in scores:
                order[lab] = (xl, cl)
    if games is not None:
        unknown = sorted(set(games) - set(data.games))
        if unknown:
            raise ValueError(f"games {unknown} are not in every run; the runs' games: {', '.join(data.games)}")
        if not games:
            raise ValueError("choose at least one game")
    chosen = list(games) if games is not None else None
    out = {lab: {g: v for g, v in scores[lab].items() if chosen is None or g in chosen} for lab in order}
    return out, runs_are, order


# ------------------------------------------------------------------------------------- figures


def aggregate_figure(agg: dict[str, dict[str, Any]], groups: dict[str, tuple[Any, Any]], x: str,
                     color: str | None, metric: str, normalization: str) -> go.Figure:
    """One point per group at its x level, one trace per colour level, with the metric's CI."""
    title_metric = dict((v, k) for k, v in METRIC_CHOICES)[metric]
    fig = go.Figure()
    colours = list(dict.fromkeys(cl for _, cl in groups.values()))
    # levels that are numbers (sizes, rates) are a series: joined by lines; names (algorithms) are not
    series = all(isinstance(xl, (int, float)) and not isinstance(xl, bool) for xl, _ in groups.values())
    for i, cl in enumerate(colours):
        labs = [lab for lab, (_, c) in groups.items() if c == cl and lab in agg]
        ys = [agg[lab][metric] for lab in labs]
        cis = [agg[lab][f"{metric}_ci"] or [y, y] for lab, y in zip(labs, ys)]  # one run: no interval
        fig.add_trace(go.Scatter(
            x=[_level_text(groups[lab][0]) for lab in labs], y=ys, mode="markers+lines" if series else "markers",
            name=f"{color}={_level_text(cl)}" if color else title_metric, marker=dict(size=10, color=method_color(i)),
            error_y=dict(type="data", symmetric=False, array=[hi - y for y, (_, hi) in zip(ys, cis)],
                         arrayminus=[y - lo for y, (lo, _) in zip(ys, cis)]),
            customdata=[f"{lab}<br>{agg[lab].get('interval', '')}" for lab in labs],
            hovertemplate="%{customdata}<br>%{y:.3f}<extra></extra>"))
    fig.update_layout(title=f"{title_metric} ({normalization}-normalized, 95% stratified-bootstrap CIs; none over "
                            f"1 run) by {x}",
                      xaxis_title=x, yaxis_title=title_metric, xaxis_type="category")
    levels = len({_level_text(xl) for xl, _ in groups.values()})
    return publication_layout(explain_empty(fig, "nothing to draw: no group has evaluation scores"),
                              plot_width=max(360, 90 * levels), plot_height=280)


def per_game_table(scores: dict[str, dict[str, list[float]]], normalization: str) -> go.Figure:
    """Per-game mean raw score (and normalized mean) of each group."""
    games = sorted({g for s in scores.values() for g in s})
    rows = []
    for lab, per in scores.items():
        row: dict[str, Any] = {"group": lab}
        for g in games:
            if g in per:
                raw = float(np.mean(per[g]))
                kind = cast(M.Normalization, normalization)
                norm = float(np.mean(M.normalize({g: per[g]}, kind)[g])) if normalization != "none" else raw
                row[g] = f"{raw:.1f} ({norm:.3f})"
        rows.append(row)
    return F.make_ablation_table_figure(rows, title=f"Per-game mean score (raw, and {normalization}-normalized "
                                                    "in brackets)")


def curves_figure(data: AblationData, x: str, color: str | None, metric: str) -> go.Figure:
    """Learning curves of ``metric``, every run drawn in its group's colour (a group is one legend
    entry; more groups than a legend lists are drawn in side-by-side panels)."""
    labels = [group_label(lv, x, color) for lv in data.levels]
    runs = {f"{lab} [{r.name}]": r.metrics for r, lab in zip(data.runs, labels)
            if any("step" in rec and isinstance(rec.get(metric), (int, float)) for rec in r.metrics)}
    title = f"Learning curves: {metric} (each run, coloured by level)"
    if runs:
        groups = {f"{lab} [{r.name}]": lab for r, lab in zip(data.runs, labels)}
        return F.make_learning_curve_figure(runs, [metric], title=title, groups=groups, row_height=280)
    fig = go.Figure().update_layout(title=title, xaxis_title="gradient step", yaxis_title=metric)
    return publication_layout(explain_empty(fig, f"nothing to draw: no run logged {metric!r} in its metrics.jsonl"),
                              plot_width=560, plot_height=280)


def _message_figure(text: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title="Not drawn", xaxis=dict(visible=False), yaxis=dict(visible=False))  # why: inside
    return publication_layout(fig, plot_width=560, plot_height=120, legend="none")


@dataclass
class Choice:
    """What the widgets say: the explorer's state (also usable without widgets)."""

    x: str
    color: str | None = None
    metric: str = "iqm"
    normalization: str = "human"
    games: tuple[str, ...] = ()
    level_a: str = ""
    level_b: str = ""
    curve: str = "loss"


def compute_views(data: AblationData, c: Choice, *, reps: int = 2000, seed: int = 0
                  ) -> tuple[dict[str, go.Figure], dict[str, Any]]:
    """Every view's figure for one choice, and the numbers drawn (for tests and the README)."""
    figs: dict[str, go.Figure] = {}
    numbers: dict[str, Any] = {}
    try:
        scores, runs_are, groups = group_scores(data, c.x, c.color, c.games or None)
        if not scores:
            raise ValueError("no finished run with evaluation scores")
        numbers["runs_are"] = runs_are
        numbers["scores"] = scores
        agg = honest_aggregates(scores, c.normalization, reps=reps, seed=seed)  # type: ignore[arg-type]
        numbers["aggregates"] = agg
        single = {lab for lab, a in agg.items() if a["num_runs"] < 2}
        figs["aggregates"] = aggregate_figure(agg, groups, c.x, c.color if c.color != c.x else None, c.metric,
                                              c.normalization)
        prof = M.performance_profile(scores, c.normalization, reps=reps, seed=seed)  # type: ignore[arg-type]
        numbers["performance_profiles"] = prof
        figs["performance_profiles"] = F.make_performance_profile_figure(
            prof["taus"], {m: v["profile"] for m, v in prof["methods"].items()},
            {m: [v["lo"], v["hi"]] for m, v in prof["methods"].items() if m not in single},
            title=f"Performance profiles ({c.normalization}-normalized, runs = {runs_are}; no band over 1 run)")
        a, b = c.level_a or list(scores)[0], c.level_b or list(scores)[-1]
        if a in scores and b in scores and a != b:
            poi = M.probability_of_improvement(scores, [(a, b)], c.normalization,  # type: ignore[arg-type]
                                               reps=reps, seed=seed)
            if {a, b} & single:  # one run measures no spread
                poi[f"{a} vs {b}"]["ci"] = None
            numbers["probability_of_improvement"] = poi
            figs["probability_of_improvement"] = F.make_probability_of_improvement_figure(
                poi, title="Probability of improvement")
        else:
            figs["probability_of_improvement"] = _message_figure("choose two different levels to compare")
        figs["per_game_scores"] = per_game_table(scores, c.normalization)
    except ValueError as exc:
        numbers["error"] = str(exc)
        for name in VIEWS[:4]:
            figs[name] = _message_figure(str(exc))
    figs["learning_curves"] = curves_figure(data, c.x, c.color if c.color != c.x else None, c.curve)
    return figs, numbers


# ------------------------------------------------------------------------------------- the explorer


def _show(fig: go.Figure, out: Any) -> None:
    """Draw ``fig`` in the Output widget ``out`` through its synced state (as the checkpoint
    explorer does: :func:`workbench.viz.inspectors.plot_output`), its minimum height the figure's so
    the page does not jump while the renderer swaps plots."""
    from workbench.viz.inspectors import plot_output  # noqa: PLC0415  (ipywidgets: the live widget only)

    plot_output(fig, out)
    height = fig.layout.height
    out.layout.min_height = f"{int(height)}px" if height else None


class AblationExplorer:
    """Widgets over an :class:`AblationData`; ``widget`` is what a notebook displays.

    ``controls`` holds the ipywidgets (x, color, metric, normalization, games, level_a,
    level_b, curve); ``figures`` the current ``go.Figure`` of each view, replaced on every change;
    ``views`` the ``ipywidgets.Output`` that shows each of them; ``numbers`` what was drawn;
    :meth:`export` writes every view to PNG + HTML.

    A view shows its figure through the Output's *synced state* (its ``outputs`` are the figure
    as JupyterLab's plotly renderer reads it), never through ``go.FigureWidget``, which syncs only
    the figure it was built with and sends later changes as one-off messages: after a tab reload
    it drew the first choice while the controls showed the current one (issue 29; the checkpoint
    explorer's :mod:`workbench.viz.inspectors` explains it). A reload restores what the kernel
    last drew."""

    def __init__(self, data: AblationData, *, reps: int = 2000, seed: int = 0,
                 out_dir: str | os.PathLike[str] | None = None) -> None:
        import ipywidgets as W  # noqa: PLC0415  (ipywidgets: optional, the live widget only)

        if not data.factors:
            raise ValueError("the runs have no factor that varies")
        self.data, self.reps, self.seed = data, reps, seed
        self.out_dir = Path(out_dir) if out_dir else resolve_path(f"{DEFAULT_OUT_DIR}/ablation-{data.name}")
        factors = list(data.factors)
        curve_keys = sorted({k for r in data.runs for rec in r.metrics for k, v in rec.items()
                             if isinstance(v, (int, float)) and k not in ("step", "time")})
        self.controls: dict[str, Any] = {
            "x": W.Dropdown(options=factors, value=factors[0], description="x axis"),
            "color": W.Dropdown(options=[NONE, *factors], value=factors[1] if len(factors) > 1 else NONE,
                                description="colour by"),
            "metric": W.Dropdown(options=METRIC_CHOICES, value="iqm", description="metric"),
            "normalization": W.Dropdown(options=list(M.NORMALIZATIONS),
                                        value=M.default_normalization(list(data.games)) if data.games else "human",
                                        description="normalize"),
            "games": W.SelectMultiple(options=data.games, value=tuple(data.games), description="games", rows=4),
            "level_a": W.Dropdown(options=[], description="P(A > B): A"),
            "level_b": W.Dropdown(options=[], description="B"),
            "curve": W.Dropdown(options=curve_keys or ["loss"], value="loss" if "loss" in curve_keys else
                                (curve_keys or ["loss"])[0], description="curve"),
        }
        self.message = W.HTML()
        self.export_button = W.Button(description=f"export to {DEFAULT_OUT_DIR}/", icon="save")
        self.export_button.on_click(lambda _: self.export())
        self.figures: dict[str, go.Figure] = {name: go.Figure() for name in VIEWS}
        self.views = {name: W.Output(layout=W.Layout(width="100%")) for name in VIEWS}
        self.numbers: dict[str, Any] = {}
        self._busy = False
        self._sync_levels()
        for w in self.controls.values():
            w.observe(self._changed, names="value")
        self.update()
        row = W.Layout(flex_flow="row wrap", width="100%")
        c = self.controls
        self.widget = W.VBox([
            W.HTML(f"<b>{data.name}</b> ({data.source}): {len(data.runs)} runs; {data.protocol}"
                   + (f"; not finished: {', '.join(data.not_done)}" if data.not_done else "")),
            W.HBox([c["x"], c["color"], c["metric"], c["normalization"]], layout=row),
            W.HBox([c["games"], c["level_a"], c["level_b"], c["curve"], self.export_button], layout=row),
            self.message, *self.views.values()], layout=W.Layout(width="100%"))

    def choice(self) -> Choice:
        c = self.controls
        color = None if c["color"].value in (NONE, c["x"].value) else c["color"].value
        return Choice(x=c["x"].value, color=color, metric=c["metric"].value, normalization=c["normalization"].value,
                      games=tuple(c["games"].value), level_a=c["level_a"].value or "",
                      level_b=c["level_b"].value or "", curve=c["curve"].value)

    def _sync_levels(self) -> None:
        """The groups of the current x/colour choice become the P(A > B) options."""
        ch = self.choice()
        labels = list(dict.fromkeys(group_label(lv, ch.x, ch.color) for lv, r in zip(self.data.levels, self.data.runs)
                                    if r.scores))
        a, b = self.controls["level_a"], self.controls["level_b"]
        a.options, b.options = labels, labels
        if labels:
            a.value, b.value = labels[-1], labels[0]

    def _changed(self, change: dict[str, Any]) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            if change["owner"] in (self.controls["x"], self.controls["color"]):
                self._sync_levels()
        finally:
            self._busy = False
        self.update()

    def update(self) -> None:
        figs, self.numbers = compute_views(self.data, self.choice(), reps=self.reps, seed=self.seed)
        for name, fig in figs.items():
            self.figures[name] = fig
            _show(fig, self.views[name])
        err = self.numbers.get("error")
        self.message.value = f"<span style='color:#b00'>{err}</span>" if err else (
            f"runs = {self.numbers.get('runs_are')} (a group's runs are its seeds; a group with one run has no "
            "interval)")

    def export(self, out_dir: str | os.PathLike[str] | None = None) -> list[FigureSaveStatus]:
        """Every view to ``out_dir`` as PNG + HTML, and a README line per file saying which sweep,
        which runs and which choice produced it."""
        out = Path(out_dir) if out_dir else self.out_dir
        ch = self.choice()
        stamp = time.strftime("%Y-%m-%d %H:%M")
        paths: dict[str | os.PathLike[str], go.Figure] = {out / n: go.Figure(f) for n, f in self.figures.items()}
        statuses = save_figures(paths)
        runs = ", ".join(f"`{shown_path(r.path)}`" for r in self.data.runs)
        lines = [f"# Ablation explorer: {self.data.name}", "",
                 f"Written by `workbench.viz.ablation.AblationExplorer.export` ({stamp}) from sweep "
                 f"**{self.data.name}** (`{shown_path(self.data.source)}`), {len(self.data.runs)} runs: {runs}.",
                 f"Evaluation protocol: {self.data.protocol}.", "", "## Files", ""]
        for name, s in zip(self.figures, statuses):
            files = f"`{s.html.name}`" + (f", `{s.png.name}`" if s.png else f" ({s.message})")
            lines.append(f"- **{name}** ({files}): x = {ch.x}, colour = {ch.color or 'none'}, metric = {ch.metric}, "
                         f"normalization = {ch.normalization}, games = {', '.join(ch.games)}, "
                         f"P(A > B) = {ch.level_a} vs {ch.level_b}, curve = {ch.curve}; numbers from workbench.metrics "
                         f"({self.reps} bootstrap reps, seed {self.seed}).")
        (out / "README.md").write_text("\n".join(lines) + "\n")
        self.message.value = f"exported {len(statuses)} views to {out}"
        return statuses


# ------------------------------------------------------------------------------------- the papers' figures


@dataclass(frozen=True)
class _Papers:
    """What :func:`paper_figures`' recipes draw from: the groups' scores on the games they all
    share, their human-normalized aggregates, and the papers' numbers on those games."""

    data: AblationData
    labels: list[str]
    """Per run: its group."""
    scores: dict[str, dict[str, list[float]]]
    runs_are: str
    games: list[str]
    agg: dict[str, dict[str, Any]]
    paper_games: dict[str, dict[str, float]]
    paper_points: list[dict[str, Any]]
    caveat: str
    reps: int
    seed: int


def _papers(data: AblationData, reps: int, seed: int) -> _Papers:
    """The inputs of the papers' figures; raises :class:`Skip` when no figure can be drawn."""
    factor = next(iter(data.factors))
    labels = [group_label(lv, factor, None) if len(data.factors) == 1 else
              ", ".join(f"{k}={_level_text(v)}" for k, v in lv.items()) for lv in data.levels]
    scores, runs_are = method_scores(data.runs, labels)
    if not scores:
        raise Skip("no finished run with evaluation scores")
    games = sorted(set.intersection(*(set(v) for v in scores.values())))
    if not games:  # e.g. notebooks 02, 03 and 04 with their defaults: Pong+Breakout, MsPacman, Breakout
        runs = [f"{r.name}: {', '.join(sorted(r.scores['per_game']))}" for r in data.runs if r.scores]
        shown = "; ".join(runs[:6]) + (f"; and {len(runs) - 6} more" if len(runs) > 6 else "")
        raise Skip(f"no game was evaluated by every group of runs ({shown}); the papers' figures compare methods "
                   "on the same games (choose run_dirs, or a sweep, whose runs share games)")
    no_human = [g for g in games if not M.has_reference(g, "human")]
    if no_human:  # MinAtar, or Atari games outside the reference table
        raise Skip(f"the papers' figures are human-normalized Atari scores; {', '.join(no_human)} "
                   "have no human reference score")
    scores = {lab: {g: v[g] for g in games} for lab, v in scores.items()}
    agg = honest_aggregates(scores, "human", reps=reps, seed=seed)
    paper_games, paper_points = paper_reference_points(games)
    truncated = any(not (r.scores or {}).get("comparable_to_papers", True) for r in data.runs)
    caveat = " (our runs: truncated episodes, not comparable to the papers)" if truncated else ""
    return _Papers(data=data, labels=labels, scores=scores, runs_are=runs_are, games=games, agg=agg,
                   paper_games=paper_games, paper_points=paper_points, caveat=caveat, reps=reps, seed=seed)


# paper_figures writes no descriptions (its README names the files): its builders return "".


def _scaled_ql_fig2(p: _Papers) -> Built:
    """Scaled QL Figure 2: performance profiles, with the paper's methods on the same games."""
    profile_in: dict[str, Any] = {**p.scores, **{k: v for k, v in p.paper_games.items() if "scaled_ql" in k}}
    # The figure's "behavior policy" line: the data's own returns, one value per game and split.
    for split, per_game in p.data.behaviour.items():
        if all(g in per_game for g in p.games):
            profile_in[f"behaviour policy ({split})"] = {g: [per_game[g]] for g in p.games}
    prof = M.performance_profile(profile_in, "human", reps=p.reps, seed=p.seed)
    bands = {m for m in p.scores if min(len(v) for v in p.scores[m].values()) >= 2}  # one run (or value): no band
    return F.make_performance_profile_figure(
        prof["taus"], {m: v["profile"] for m, v in prof["methods"].items()},
        {m: [v["lo"], v["hi"]] for m, v in prof["methods"].items() if m in bands},
        title="Scaled QL Figure 2: performance profiles" + p.caveat), ""


def _scaled_ql_fig4(p: _Papers) -> Built:
    """Scaled QL Figure 4: per-game human-normalized scores, the paper's DT and Scaled QL as marks."""
    fig = go.Figure()
    short = short_labels(p.scores)
    ours: list[float] = []
    for i, (lab, per) in enumerate(p.scores.items()):
        ys = [float(np.mean(M.normalize({g: per[g]})[g])) for g in p.games]
        ours += ys
        fig.add_trace(go.Bar(x=p.games, y=ys, name=short[lab], marker_color=method_color(i),
                             hovertemplate=f"{lab}<br>%{{x}}: %{{y:.3f}}<extra></extra>"))
    # the paper's numbers are marks: they do not set the axis, so our bars stay readable
    rng = value_range(ours)
    for j, method in enumerate(("DT (200M)", "Scaled QL (80M)")):
        col = pt.SCALED_QL_C1[method]
        shared = [g for g in p.games if g in col]
        if shared:
            name, values = f"paper: {method} [Table C.1]", [float(M.normalize_score(g, col[g])) for g in shared]
            fig.add_trace(go.Scatter(x=shared, y=values, mode="markers", name=name, legendgroup=name,
                                     marker=dict(symbol=("diamond-open", "x")[j], size=12, color="black")))
            edge = off_axis_trace(name, shared, values, rng, color="black")
            if edge is not None:
                fig.add_trace(edge)
    fig.update_layout(title="Scaled QL Figure 4: per-game human-normalized score" + p.caveat, barmode="group",
                      yaxis_title="human-normalized score", yaxis_range=rng)
    return publication_layout(fig, plot_width=max(360, 24 * len(p.games) * max(1, len(p.scores))),
                              plot_height=300), ""


def _no_scaling_points(p: _Papers) -> str | None:
    return None if scaling_points(p.data.runs, p.labels, p.agg) else "no run has a checkpoint and scores"


def _scaling(table: str, paper: str) -> Callable[[_Papers], Built]:
    """Figure 5 (Scaled QL) and Figure 4 (JOWA): parameters vs IQM, the paper's printed IQMs
    (its ``table``) as marks."""

    def build(p: _Papers) -> Built:
        ref = [q for q in p.paper_points if table in q["label"]]
        return F.make_scaling_figure(scaling_points(p.data.runs, p.labels, p.agg), ref or None,
                                     title=f"{paper}: parameters vs IQM" + p.caveat
                                     + " (paper marks: their own game sets)"), ""

    return build


def _scaled_ql_fig6(p: _Papers) -> Built:
    """Scaled QL Figure 6: IQM per level of every factor."""
    fig = go.Figure()
    for i, name in enumerate(p.data.factors):
        s, _, groups = group_scores(p.data, name, None, p.games)
        a = honest_aggregates(s, "human", reps=p.reps, seed=p.seed)
        labs = [lab for lab in groups if lab in a]
        cis = [a[lab]["iqm_ci"] or [a[lab]["iqm"]] * 2 for lab in labs]  # one run: no interval
        fig.add_trace(go.Bar(x=labs, y=[a[lab]["iqm"] for lab in labs], name=name, marker_color=method_color(i),
                             error_y=dict(type="data", symmetric=False,
                                          array=[ci[1] - a[lab]["iqm"] for lab, ci in zip(labs, cis)],
                                          arrayminus=[a[lab]["iqm"] - ci[0] for lab, ci in zip(labs, cis)]),
                             hovertext=[f"{lab}: {a[lab]['interval']}" for lab in labs]))
    fig.update_layout(title="Scaled QL Figure 6: IQM per ablation level (95% CIs; none over 1 run)" + p.caveat,
                      yaxis_title="human-normalized IQM")
    bars = sum(len(tr.x) for tr in fig.data)
    return publication_layout(fig, plot_width=max(360, 40 * bars), plot_height=300), ""


def _jowa_table2(p: _Papers) -> Built:
    """JOWA Table 2: per-game raw scores with the paper's columns for the games it has."""
    t2_games = [g for g in p.games if g in pt.JOWA_T2["JOWA (150M)"]]
    rows: list[dict[str, Any]] = [{F.SECTION: "Our runs"}]
    rows += [{"method": lab, **{g: float(np.mean(per[g])) for g in p.games}, "IQM": p.agg[lab]["iqm"]}
             for lab, per in p.scores.items()]
    if t2_games:
        rows.append({F.SECTION: "JOWA Table 2, printed (IQM over its 15 games)"})
    for method in ("JOWA (150M)", "JOWA (40M)", "SQL (80M)", "MTBC (120M)"):
        if t2_games:
            rows.append({"method": f"paper: {method} [Table 2]",
                         **{g: pt.JOWA_T2[method].get(g, "") for g in p.games},
                         "IQM": f"{pt.JOWA_T2_AGGREGATES.get(method, {}).get('iqm', '')} (15 games)"})
    return F.make_ablation_table_figure(
        rows, title="JOWA Table 2: raw per-game scores" + p.caveat
        + ("" if t2_games else " (no game in common with the paper's table)")), ""


def _jowa_tables4_5(p: _Papers) -> Built:
    """JOWA Tables 4 and 5: ablation aggregates of our JOWA variants, then the paper's printed rows,
    each under its own header. Runs of other algorithms are no ablation of JOWA: they are no rows
    (the header says so when no run is JOWA's)."""
    algos: dict[str, set[str]] = {}
    for r, lab in zip(p.data.runs, p.labels):
        algos.setdefault(lab, set()).add(r.algo)
    jowa = [lab for lab in p.agg if algos.get(lab) == {"jowa"}]
    others = sorted({a for lab in p.agg if lab not in jowa for a in algos.get(lab, set())})
    rows: list[dict[str, Any]] = [{F.SECTION: "Our JOWA runs" if jowa else
                                   f"Our JOWA runs: none (these runs are {', '.join(others)}: no ablation of JOWA)"}]
    rows += [{"variant": lab, "runs": a["num_runs"], "mean": a["mean"], "median": a["median"], "IQM": a["iqm"],
              "IQM interval": a["iqm_ci"] if a["iqm_ci"] is not None else "none (1 run)", "interval": a["interval"]}
             for lab, a in p.agg.items() if lab in jowa]
    rows.append({F.SECTION: "JOWA paper, Table 18 (printed; its 6 games)"})
    rows += [{"variant": f"paper: {m}", "runs": "printed", **{k if k != "iqm" else "IQM": v
              for k, v in vals.items()}} for m, vals in pt.JOWA_T18_AGGREGATES.items()]
    return F.make_ablation_table_figure(rows, title="JOWA Tables 4/5: ablations, human-normalized" + p.caveat), ""


# paper_figures' figures, in order.
_RECIPES: tuple[FigureRecipe[_Papers], ...] = (
    FigureRecipe("scaled_ql_fig2_profiles", _scaled_ql_fig2),
    FigureRecipe("scaled_ql_fig4_per_game", _scaled_ql_fig4),
    FigureRecipe("scaled_ql_fig5_scaling", _scaling("scaled_ql_c1", "Scaled QL Figure 5"), _no_scaling_points),
    FigureRecipe("jowa_fig4_scaling", _scaling("jowa_t2", "JOWA Figure 4"), _no_scaling_points),
    FigureRecipe("scaled_ql_fig6_ablations", _scaled_ql_fig6),
    FigureRecipe("jowa_table2_per_game", _jowa_table2),
    FigureRecipe("jowa_table4_5_ablations", _jowa_tables4_5),
)


def paper_figures(data: AblationData, out_dir: str | os.PathLike[str] | None = None, *, reps: int = 2000,
                  seed: int = 0, png: bool = True) -> tuple[dict[str, go.Figure], dict[str, str]]:
    """The papers' figures and tables regenerated from ``data``'s runs.

    Scaled QL (paper 000): Figure 2 (performance profiles, with the "behavior policy" line where
    the data recorded one: ``AblationData.behaviour``), Figure 4 (per-game scores next to the
    paper's DT and Scaled QL), Figure 5 (parameters vs IQM), Figure 6 (IQM per level of each
    factor). JOWA (paper 003): Figure 4 (parameters vs IQM), Table 2 (per-game scores), Tables 4/5
    (ablation aggregates). Where the papers' games match ours, their printed numbers are drawn as
    reference marks (labelled 'paper: ...'); printed aggregates are over the papers' own game
    sets and say so. Returns (figures, {figure: why it was not drawn}); writes them to ``out_dir``
    when given."""
    try:
        inputs = _papers(data, reps, seed)
    except Skip as exc:
        return {}, {"all": str(exc)}
    drawn = draw(_RECIPES, inputs)
    if out_dir is not None:
        _save_paper_figures(inputs, drawn, Path(out_dir), png=png)
    return drawn.figures, drawn.skipped


def _save_paper_figures(p: _Papers, drawn: Drawn, out: Path, *, png: bool) -> None:
    """The figures as HTML (+ PNG) and a README naming the sweep, the runs and each file."""
    paths: dict[str | os.PathLike[str], go.Figure] = {out / n: f for n, f in drawn.figures.items()}
    statuses = save_figures(paths, png=png)
    data = p.data
    lines = [f"# The papers' figures from sweep {data.name}", "",
             f"Written by `workbench.viz.ablation.paper_figures` from `{shown_path(data.source)}` "
             f"({len(data.runs)} runs: {', '.join(f'`{shown_path(r.path)}`' for r in data.runs)}); "
             f"{data.protocol}; "
             f"runs = {p.runs_are}. Marks named 'paper: ...' are the papers' printed numbers "
             "(workbench.reference.paper_tables) on the games we share with them.", ""]
    lines += [f"- **{n}** (`{s.html.name}`" + (f", `{s.png.name}`)" if s.png else f"; {s.message})")
              for n, s in zip(drawn.figures, statuses)]
    lines += [f"- not drawn: **{n}**: {why}" for n, why in drawn.skipped.items()]
    (out / "README.md").write_text("\n".join(lines) + "\n")

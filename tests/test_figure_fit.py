"""Every figure fits its canvas: exported with kaleido at its own size, no text is cut.

Each figure builder is drawn from small synthetic inputs, among them the shapes that broke the
committed figures (eleven methods with long configuration labels, five seeds each, eight loss
terms, a long caveat in the title, the papers' numbers far above ours). The figure is exported to
SVG by kaleido at the size ``workbench.viz.export`` gives its PNG (the layout's width and height);
every text element's box (its position from the SVG transforms, its width estimated from its
characters and font size, see ``run_width``) must lie inside the canvas and
inside the clip region it is drawn in (a table column, a plot area, a legend's scroll box). A
legend may list at most ``MAX_LEGEND_ENTRIES`` entries and must not scroll, and every plot area
must be big enough to read (at least 100 x 70 px).
"""

from __future__ import annotations

import math
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from workbench.viz import agent_figures as A
from workbench.viz import results_figures as R
from workbench.viz.export import find_chromium

needs_kaleido = pytest.mark.skipif(find_chromium() is None,
                                   reason="no Chrome/Chromium for kaleido (apt-get install chromium)")

SVG = "{http://www.w3.org/2000/svg}"
MAX_LEGEND_ENTRIES = 12  # what one legend may list (workbench.viz.style.MAX_LEGEND_ENTRIES)

# Text widths, from the advance widths (em) of two fonts, space to tilde; other characters count
# 1 em. Against the canvas, text is measured with DejaVu Sans: as wide as Verdana, wider than what
# Chromium draws plotly's "Open Sans, verdana, arial" with on Debian (Liberation Sans, Arial's
# metrics), so a figure that passes fits with any of them. Plotly sizes legends and wraps table
# cells with the widths it measures in the browser, so text is checked against such a clip
# region with Liberation Sans' widths, those it was sized with.
_DEJAVU_EM = (
    0.32, 0.4, 0.46, 0.84, 0.64, 0.95, 0.78, 0.27, 0.39, 0.39, 0.5, 0.84, 0.32, 0.36, 0.32, 0.34,
    0.64, 0.64, 0.64, 0.64, 0.64, 0.64, 0.64, 0.64, 0.64, 0.64, 0.34, 0.34, 0.84, 0.84, 0.84, 0.53,
    1.0, 0.68, 0.69, 0.7, 0.77, 0.63, 0.58, 0.77, 0.75, 0.29, 0.29, 0.66, 0.56, 0.86, 0.75, 0.79,
    0.6, 0.79, 0.69, 0.63, 0.61, 0.73, 0.68, 0.99, 0.69, 0.61, 0.69, 0.39, 0.34, 0.39, 0.84, 0.5,
    0.5, 0.61, 0.63, 0.55, 0.63, 0.62, 0.35, 0.63, 0.63, 0.28, 0.28, 0.58, 0.28, 0.97, 0.63, 0.61,
    0.63, 0.63, 0.41, 0.52, 0.39, 0.63, 0.59, 0.82, 0.59, 0.59, 0.52, 0.64, 0.34, 0.64, 0.84,
)  # fmt: skip
_ARIAL_EM = (
    0.278, 0.278, 0.355, 0.556, 0.556, 0.889, 0.667, 0.191, 0.333, 0.333, 0.389, 0.584, 0.278, 0.333, 0.278, 0.278,
    0.556, 0.556, 0.556, 0.556, 0.556, 0.556, 0.556, 0.556, 0.556, 0.556, 0.278, 0.278, 0.584, 0.584, 0.584, 0.556,
    1.015, 0.667, 0.667, 0.722, 0.722, 0.667, 0.611, 0.778, 0.722, 0.278, 0.5, 0.667, 0.556, 0.833, 0.722, 0.778,
    0.667, 0.778, 0.722, 0.667, 0.611, 0.722, 0.667, 0.944, 0.667, 0.667, 0.611, 0.278, 0.278, 0.278, 0.469, 0.556,
    0.333, 0.556, 0.556, 0.5, 0.556, 0.556, 0.278, 0.556, 0.556, 0.222, 0.222, 0.5, 0.222, 0.833, 0.556, 0.556,
    0.556, 0.556, 0.333, 0.5, 0.278, 0.556, 0.5, 0.722, 0.5, 0.5, 0.5, 0.334, 0.26, 0.334, 0.584,
)  # fmt: skip


def _width(table: tuple[float, ...], text: str, size: float, bold: float) -> float:
    em = sum(table[ord(c) - 32] if 32 <= ord(c) < 127 else (0.0 if c == "\u200b" else 1.0) for c in text)
    return em * size * bold


def run_width(text: str, size: float, *, bold: bool = False) -> float:
    """Width of ``text`` in DejaVu Sans (bold: 12% wider)."""
    return _width(_DEJAVU_EM, text, size, 1.12 if bold else 1.0)


def arial_width(text: str, size: float, *, bold: bool = False) -> float:
    """Width of ``text`` in Liberation Sans (bold: 6% wider)."""
    return _width(_ARIAL_EM, text, size, 1.06 if bold else 1.0)
TOLERANCE = 1.0  # pixels
MIN_PLOT = (100.0, 70.0)  # smallest readable plot area, pixels

# --------------------------------------------------------------------------- SVG geometry

Matrix = tuple[float, float, float, float, float, float]  # a, b, c, d, e, f as in SVG
IDENTITY: Matrix = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)


def _mul(m: Matrix, n: Matrix) -> Matrix:
    a, b, c, d, e, f = m
    a2, b2, c2, d2, e2, f2 = n
    return (a * a2 + c * b2, b * a2 + d * b2, a * c2 + c * d2, b * c2 + d * d2, a * e2 + c * f2 + e,
            b * e2 + d * f2 + f)


def _apply(m: Matrix, x: float, y: float) -> tuple[float, float]:
    a, b, c, d, e, f = m
    return a * x + c * y + e, b * x + d * y + f


def _transform(text: str | None) -> Matrix:
    m = IDENTITY
    for op, args in re.findall(r"(\w+)\s*\(([^)]*)\)", text or ""):
        v = [float(s) for s in re.split(r"[\s,]+", args.strip()) if s]
        if op == "translate":
            m = _mul(m, (1, 0, 0, 1, v[0], v[1] if len(v) > 1 else 0.0))
        elif op == "scale":
            m = _mul(m, (v[0], 0, 0, v[1] if len(v) > 1 else v[0], 0, 0))
        elif op == "rotate":
            t = math.radians(v[0])
            cx, cy = (v[1], v[2]) if len(v) == 3 else (0.0, 0.0)
            m = _mul(m, (1, 0, 0, 1, cx, cy))
            m = _mul(m, (math.cos(t), math.sin(t), -math.sin(t), math.cos(t), 0, 0))
            m = _mul(m, (1, 0, 0, 1, -cx, -cy))
        elif op == "matrix":
            m = _mul(m, tuple(v))  # type: ignore[arg-type]
    return m


def _num(value: str | None, default: float = 0.0) -> float:
    if value is None or value == "":
        return default
    return float(re.match(r"-?[\d.]+(e-?\d+)?", value).group(0))  # type: ignore[union-attr]


def _style(el: ET.Element, key: str) -> str | None:
    m = re.search(rf"(?:^|;)\s*{key}\s*:\s*([^;]+)", el.get("style", ""))
    return m.group(1).strip() if m else None


def _font_size(el: ET.Element, parent_size: float) -> float:
    v = _style(el, "font-size") or el.get("font-size")
    if v is None:
        return parent_size
    return parent_size * float(v[:-1]) / 100 if v.endswith("%") else _num(v)


def _em(value: str | None, size: float) -> float:
    if not value:
        return 0.0
    return float(value[:-2]) * size if value.endswith("em") else _num(value)


@dataclass
class TextBox:
    text: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in canvas pixels (style.text_width)
    drawn: tuple[float, float, float, float]  # the same with the widths of the font drawn (Arial metrics)
    clip: tuple[float, float, float, float] | None


def _runs(el: ET.Element, size: float, bold: bool) -> list[tuple[str, float, bool]]:
    """The text of ``el`` and its nested tspans as (text, font size, bold) runs."""
    out = [(el.text or "", size, bold)]
    for child in el:
        csize = _font_size(child, size)
        cbold = bold or (_style(child, "font-weight") or "") in ("bold", "700")
        out += _runs(child, csize, cbold)
        out.append((child.tail or "", size, bold))
    return out


def text_boxes(svg: str) -> tuple[float, float, list[TextBox], list[ET.Element]]:
    """(width, height, every text's box, the legend groups) of an SVG plotly wrote."""
    root = ET.fromstring(svg)
    width, height = _num(root.get("width")), _num(root.get("height"))
    clips: dict[str, tuple[float, float, float, float]] = {}
    for cp in root.iter(f"{SVG}clipPath"):
        rect = cp.find(f"{SVG}rect")
        if rect is not None:
            x, y = _num(rect.get("x")), _num(rect.get("y"))
            clips[cp.get("id", "")] = (x, y, x + _num(rect.get("width")), y + _num(rect.get("height")))
    boxes: list[TextBox] = []
    legends: list[ET.Element] = []

    def visit(el: ET.Element, m: Matrix, clip: tuple[float, float, float, float] | None) -> None:
        tag = el.tag.removeprefix(SVG)
        if tag in ("defs", "clipPath") or _style(el, "display") == "none" or _style(el, "opacity") == "0":
            return
        m = _mul(m, _transform(el.get("transform")))
        ref = re.match(r"url\(#([^)]+)\)", el.get("clip-path", ""))
        if ref and ref.group(1) in clips:
            x0, y0, x1, y1 = clips[ref.group(1)]
            pts = [_apply(m, x, y) for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))]
            new = (min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts), max(p[1] for p in pts))
            clip = new if clip is None else (max(clip[0], new[0]), max(clip[1], new[1]), min(clip[2], new[2]),
                                             min(clip[3], new[3]))
        if tag == "g" and "legend" in el.get("class", "").split():
            legends.append(el)
        if tag == "text":
            boxes.extend(_text_boxes(el, m, clip))
            return
        for child in el:
            visit(child, m, clip)

    visit(root, IDENTITY, None)
    return width, height, boxes, legends


def _text_boxes(el: ET.Element, m: Matrix, clip: tuple[float, float, float, float] | None) -> list[TextBox]:
    size = _font_size(el, 12.0)
    bold = (_style(el, "font-weight") or "") in ("bold", "700")
    anchor = el.get("text-anchor") or _style(el, "text-anchor") or "start"
    x, y = _num(el.get("x")), _num(el.get("y")) + _em(el.get("dy"), size)
    lines = [c for c in el if c.tag == f"{SVG}tspan" and "line" in c.get("class", "").split()]
    parts: list[tuple[float, float, list[tuple[str, float, bool]]]] = []
    if lines:
        for ln in lines:
            lx = _num(ln.get("x"), x)
            ly = (_num(ln.get("y"), y) if ln.get("y") is not None else y) + _em(ln.get("dy"), size)
            parts.append((lx, ly, _runs(ln, _font_size(ln, size), bold)))
    else:
        parts.append((x, y, _runs(el, size, bold)))
    out = []
    for lx, ly, runs in parts:
        text = "".join(t for t, _, _ in runs).replace("\u200b", "")
        if not text.strip():
            continue
        top_size = max(s for t, s, _ in runs if t.strip())
        out.append(TextBox(text, _box(m, lx, ly, sum(run_width(t, s, bold=b) for t, s, b in runs), top_size, anchor),
                           _box(m, lx, ly, sum(arial_width(t, s, bold=b) for t, s, b in runs), top_size, anchor),
                           clip))
    return out


def _box(m: Matrix, x: float, y: float, w: float, size: float, anchor: str) -> tuple[float, float, float, float]:
    """Canvas box of a line of width ``w`` whose anchor point is (x, y) on its baseline."""
    x0 = x - (w / 2 if anchor == "middle" else w if anchor == "end" else 0.0)
    corners = [_apply(m, cx, cy) for cx in (x0, x0 + w) for cy in (y - 0.8 * size, y + 0.22 * size)]
    return (min(p[0] for p in corners), min(p[1] for p in corners), max(p[0] for p in corners),
            max(p[1] for p in corners))


def fit_problems(svg: str) -> list[str]:
    """What is wrong with a figure's SVG: text outside the canvas or its clip region, a legend that
    scrolls or lists too many entries, a plot area too small to read."""
    width, height, boxes, legends = text_boxes(svg)
    problems = []
    t = TOLERANCE
    for b in boxes:
        x0, y0, x1, y1 = b.box
        if x0 < -t or y0 < -t or x1 > width + t or y1 > height + t:
            problems.append(f"cut by the canvas ({width:.0f}x{height:.0f}): {b.text[:70]!r} at "
                            f"[{x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}]")
        elif b.clip is not None:
            c0, d0, c1, d1 = b.clip
            x0, y0, x1, y1 = b.drawn
            if x0 < c0 - t or y0 < d0 - t or x1 > c1 + t or y1 > d1 + t:
                problems.append(f"cut by its clip region [{c0:.0f}, {d0:.0f}, {c1:.0f}, {d1:.0f}]: {b.text[:70]!r} "
                                f"at [{x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}]")
    for leg in legends:
        entries = [g for g in leg.iter(f"{SVG}g") if "traces" in g.get("class", "").split()]
        if len(entries) > MAX_LEGEND_ENTRIES:
            problems.append(f"a legend lists {len(entries)} entries (at most {MAX_LEGEND_ENTRIES})")
        for bar in leg.iter(f"{SVG}rect"):
            if "scrollbar" in bar.get("class", "").split() and _num(bar.get("height")) > 0:
                problems.append("a legend scrolls: some entries are hidden")
    root = ET.fromstring(svg)
    for cp in root.iter(f"{SVG}clipPath"):
        rect = cp.find(f"{SVG}rect")
        if "plotclip" in cp.get("class", "").split() and rect is not None:
            w, h = _num(rect.get("width")), _num(rect.get("height"))
            if w < MIN_PLOT[0] or h < MIN_PLOT[1]:
                problems.append(f"a plot area of {w:.0f}x{h:.0f} px (at least {MIN_PLOT[0]:.0f}x{MIN_PLOT[1]:.0f})")
    return problems


# --------------------------------------------------------------------------- synthetic inputs

#: Labels as the analysis names the methods of the MinAtar study (issue 29): long, bracketed settings.
LONG_METHODS = [
    f"{algo}/{model} (algo_args={args}, split={split})"
    for split in ("sub_optimal", "near_optimal")
    for algo, model, args in (
        ("scaled_ql", "minatar-cnn", "{'alpha': 1.0, 'target_update_period': 500}"),
        ("cql_mse", "minatar-cnn", "{'alpha': 1.0, 'target_update_period': 500}"),
        ("MTBC", "minatar-cnn", "{}"),
        ("MGDT", "mgdt-tiny", "{}"),
    )
] + [
    "scaled_ql/minatar-cnn (algo_args={'alpha': 1.0, 'feature_norm': False, 'target_update_period': 500}, "
    "split=near_optimal)",
    "scaled_ql/resnet-tiny (algo_args={'alpha': 1.0, 'target_update_period': 500}, split=near_optimal)",
    "scaled_ql/resnet-small (algo_args={'alpha': 1.0, 'target_update_period': 500}, split=near_optimal)",
]
CAVEAT = " — episodes capped at 1,000 agent steps, epsilon 0.001: truncated episodes, not comparable to the papers"
LOSSES = ["loss", "loss/td", "loss/cql", "q/data_mean", "loss/bc", "bc/accuracy", "loss/action", "loss/return"]
GAMES = ["Assault", "Breakout", "Pong", "Qbert", "Seaquest"]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _records(seed: int, metrics: list[str], steps: int = 40) -> list[dict[str, float]]:
    rng = _rng(seed)
    return [{"step": s * 100, **{m: float(np.exp(-s / 15) + 0.1 * rng.random()) for m in metrics}}
            for s in range(steps)]


def _aggregates(methods: list[str], seed: int = 0) -> dict[str, dict[str, object]]:
    rng = _rng(seed)
    out: dict[str, dict[str, object]] = {}
    for m in methods:
        entry: dict[str, object] = {}
        for k in ("median", "iqm", "mean", "optimality_gap"):
            v = float(rng.uniform(-0.01, 0.04))
            entry[k], entry[f"{k}_ci"] = v, [v - 0.005, v + 0.01]
        out[m] = entry
    return out


def learning_curves_study() -> go.Figure:
    runs = {f"{lab} [run-{i}-seed-{s}]": _records(10 * i + s, LOSSES)
            for i, lab in enumerate(LONG_METHODS) for s in range(5)}
    return R.make_learning_curve_figure(runs, LOSSES)


def learning_curves_many_methods() -> go.Figure:
    """More methods than one legend may list: the figure facets them."""
    runs = {f"method {i} (lr={i}e-4) [r{i}]": _records(i, ["loss", "loss/td"]) for i in range(17)}
    return R.make_learning_curve_figure(runs, ["loss", "loss/td"], title="Learning curves" + CAVEAT)


def learning_curves_one_run() -> go.Figure:
    return R.make_learning_curve_figure({"seed 0": _records(0, ["loss", "q/data_mean"])}, ["loss", "q/data_mean"],
                                        title="Training")


def probability_of_improvement_study() -> go.Figure:
    pairs = {(x, y): (0.5 + 0.3 * math.sin(i), [0.3, 0.8]) for i, (x, y) in
             enumerate((x, y) for k, x in enumerate(LONG_METHODS) for y in LONG_METHODS[k + 1:])}
    return R.make_probability_of_improvement_figure(pairs, title="Probability of improvement" + CAVEAT)


def probability_of_improvement_small() -> go.Figure:
    return R.make_probability_of_improvement_figure({"scaled_ql,bc": (0.8, [0.7, 0.9])})


def performance_profiles_study() -> go.Figure:
    taus = np.linspace(-0.05, 0.8, 60)
    curves = {m: np.clip(1 - taus * (i + 1), 0, 1) for i, m in enumerate(LONG_METHODS)}
    cis = {m: [np.clip(c - 0.1, 0, 1), np.clip(c + 0.1, 0, 1)] for m, c in curves.items()}
    return R.make_performance_profile_figure(taus, curves, cis, title="Performance profiles" + CAVEAT)


def performance_profiles_many() -> go.Figure:
    taus = np.linspace(0, 2, 20)
    curves = {f"ablation level {i}": np.clip(1 - taus / (i + 1), 0, 1) for i in range(15)}
    return R.make_performance_profile_figure(taus, curves)


def aggregates_study() -> go.Figure:
    agg = _aggregates(LONG_METHODS)
    agg["paper: Scaled QL (80M) [scaled_ql_c1]"] = {"median": 1.9, "iqm": 2.4, "mean": 3.5, "optimality_gap": 0.2}
    return R.make_aggregate_figure(agg, title="Aggregate human-normalized scores (95% bootstrap CIs)" + CAVEAT)


def scaling_study() -> go.Figure:
    points = [{"family": m.split("/")[0], "params": p, "iqm": 0.01 * (i % 4), "iqm_ci": [0.0, 0.02], "label": m}
              for i, (m, p) in enumerate(zip(LONG_METHODS, (9e5, 9e5, 9e5, 1.5e5, 9e5, 9e5, 9e5, 1.5e5, 9e5, 2e6,
                                                            4.4e7)))]
    ref = [{"label": "Scaled QL (80M) [scaled_ql_c1]", "params": 8e7, "iqm": 2.4},
           {"label": "JOWA (150M) [jowa_t2]", "params": 1.5e8, "iqm": 0.78}]
    return R.make_scaling_figure(points, ref, title="Scaling: parameters vs IQM" + CAVEAT)


def ablation_table_study() -> go.Figure:
    rows = [{"method": m, "runs": 5, "games": 5, "params": "912,345", "IQM": 0.01, "IQM 95% CI": [0.0, 0.02],
             "median": 0.01, "mean": 0.02, "optimality gap": 0.98} for m in LONG_METHODS]
    return R.make_ablation_table_figure(rows, title="Methods and ablations" + CAVEAT)


def study_scores() -> go.Figure:
    games = ["MinAtar-Breakout", "MinAtar-Asterix", "MinAtar-Freeway", "MinAtar-SpaceInvaders", "MinAtar-Seaquest"]
    methods = ["scaled_ql", "cql_mse", "MTBC", "MGDT", "scaled_ql (no feature norm)", "scaled_ql resnet-tiny"]
    results = [{"method": m, "split": sp, "game": g, "mean": 5.0 + i, "ci": [4.0 + i, 6.0 + i]}
               for i, m in enumerate(methods) for sp in ("sub_optimal", "near_optimal") for g in games]
    baselines = {g: {"random": 1.0, "constant_best": {"mean": 2.0},
                     "behaviour": {"sub_optimal": 8.0, "near_optimal": 12.0}} for g in games}
    return R.make_study_scores_figure({"games": games, "results": results, "baselines": baselines})


def scores_capped() -> go.Figure:
    per_game = {g: {"scores": [10.0 + k, 20.0 + k], "mean": 15.0 + k} for k, g in enumerate(GAMES + ["AirRaid"])}
    return R.make_scores_figure({"per_game": per_game, "aggregates": {"iqm": 0.012}, "comparable_to_papers": False,
                                 "max_agent_steps": 1000, "truncated_episodes": 12})


def online_curves() -> go.Figure:
    curves = {f"Breakout mode {m}": {lab: [(f * 1e5, f * 2.0 + m) for f in range(6)]
                                     for lab in ("scratch, lr 1e-05", "pretrained encoder, lr 5e-05")}
              for m in (4, 12, 20)}
    return R.make_online_curves_figure(curves)


def finetune_bars() -> go.Figure:
    bars = {f"Freeway mode {m}": {"scratch": [1.0, 2.0], "pretrained encoder (Scaled QL, 80M)": [3.0, 4.5]}
            for m in (1, 3, 5)}
    return R.make_finetune_bars_figure(bars)


def transfer() -> go.Figure:
    per_game = {"Scaled QL/resnet-tiny (finetuned, lr=1e-4)": {g: [0.01, 0.02] for g in GAMES},
                "Scaled QL/resnet-tiny (scratch)": {g: [0.005] for g in GAMES}}
    aggregates = {m: {"mean": 0.015, "mean_ci": [0.01, 0.02], "iqm": 0.012, "iqm_ci": None,
                      "interval": "range over 2 runs"} for m in per_game}
    paper_pg = {"Scaled QL (80M) [Figure 7]": {g: 0.8 + k for k, g in enumerate(GAMES)}}
    paper_agg = {"Scaled QL (80M) [Table 3]": {"mean": 1.2, "iqm": 0.9}}
    return R.make_transfer_figure(per_game, aggregates, paper_per_game=paper_pg, paper_aggregates=paper_agg,
                                  title="Offline fine-tuning to held-out games (DQN-normalized)" + CAVEAT,
                                  note="The paper prints no per-game scores for its 40M model; its claim is "
                                       "drawn as the aggregate mark only")


def return_distributions() -> go.Figure:
    rng = _rng(1)
    names = ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN"]
    return A.make_return_distribution_figure(rng.dirichlet(np.ones(51), size=6), np.linspace(-10, 10, 51), names,
                                             chosen=2, title="Q distributions at step 1234 of Breakout")


def return_distributions_full_action_set() -> go.Figure:
    rng = _rng(2)
    names = ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT", "UPFIRE",
             "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE", "DOWNLEFTFIRE"]
    return A.make_return_distribution_figure(rng.dirichlet(np.ones(51), size=18), np.linspace(-10, 10, 51), names,
                                             chosen=14)


def search_tree() -> go.Figure:
    names = ["NOOP", "FIRE", "UPRIGHTFIRE", "DOWNLEFTFIRE"]
    nodes = [dict(id=0, parent=-1, depth=0, action=-1, reward=0.0, q=0.0, score=0.0, kept=True, terminal=False)]
    nid = 1
    for depth in (1, 2, 3):
        parents = [n for n in nodes if n["depth"] == depth - 1 and n["kept"]]
        for p in parents:
            for a in range(4):
                nodes.append(dict(id=nid, parent=p["id"], depth=depth, action=a, reward=0.1 * a, q=0.5,
                                  score=-12.25 + a, kept=a < 2, terminal=False))
                nid += 1
    return A.make_search_tree_figure({"nodes": nodes, "chosen_action": 2}, names,
                                     title="Beam search at step 87 (K=2, H=3)")


def frames() -> go.Figure:
    rng = _rng(3)
    real = rng.integers(0, 255, size=(4, 84, 84), dtype=np.uint8)
    return A.make_frame_pair_figure(real, real[::-1].copy(), title="Real vs predicted next frames at step 87")


def frame() -> go.Figure:
    return A.make_frame_figure(_rng(4).integers(0, 255, size=(210, 160, 3), dtype=np.uint8), title="step 12")


# --------------------------------------------------------------------------- the ablation explorer and the papers


def _ablation_data():
    from workbench.viz.ablation import AblationData
    from workbench.viz.analysis import RunInfo

    runs, levels = [], []
    for algo, model, params in (("jowa", "jowa-tiny", 4e6), ("jowa", "jowa-small", 4e7), ("scaled_ql", "resnet-tiny",
                                                                                             9e5),
                                ("bc", "resnet-tiny", 9e5), ("mgdt", "mgdt-tiny", 2e6)):
        for seed in (0, 1):
            rng = _rng(seed + len(runs))
            per_game = {g: {"mean": float(rng.uniform(0, 300)), "scores": [1.0, 2.0]} for g in GAMES}
            runs.append(RunInfo(path=Path(f"/tmp/runs/{algo}-{model}-s{seed}"),
                                config={"algo": algo, "model": model, "seed": seed,
                                        "resolved": {"algo": algo, "model": model}},
                                metrics=_records(seed, ["loss", "loss/td"]), scores={"per_game": per_game},
                                params=int(params)))
            levels.append({"algo": algo, "model": model})
    return AblationData(name="mixed", source="synthetic", runs=runs, levels=levels,
                        factors={"algo": ["jowa", "scaled_ql", "bc", "mgdt"],
                                 "model": ["jowa-tiny", "jowa-small", "resnet-tiny", "mgdt-tiny"]},
                        protocol="episodes capped at 27,000 agent steps, epsilon 0.001")


def _paper_figures() -> dict[str, go.Figure]:
    from workbench.viz.ablation import paper_figures

    figs, skipped = paper_figures(_ablation_data(), reps=50)
    assert figs, skipped
    return figs


def _explorer_views() -> dict[str, go.Figure]:
    from workbench.viz.ablation import Choice, compute_views

    figs, numbers = compute_views(_ablation_data(), Choice(x="algo", color="model", curve="loss"), reps=50)
    assert "error" not in numbers, numbers.get("error")
    return figs


def _message() -> go.Figure:
    from workbench.viz.ablation import _message_figure

    return _message_figure("games ['Seaquest'] are not in every run; the runs' games: Assault, Breakout, Pong, "
                           "Qbert (choose games every run was evaluated on)")


CASES: dict[str, Callable[[], go.Figure]] = {
    "learning_curves_study": learning_curves_study,
    "learning_curves_many_methods": learning_curves_many_methods,
    "learning_curves_one_run": learning_curves_one_run,
    "probability_of_improvement_study": probability_of_improvement_study,
    "probability_of_improvement_small": probability_of_improvement_small,
    "performance_profiles_study": performance_profiles_study,
    "performance_profiles_many": performance_profiles_many,
    "aggregates_study": aggregates_study,
    "scaling_study": scaling_study,
    "ablation_table_study": ablation_table_study,
    "study_scores": study_scores,
    "scores_capped": scores_capped,
    "online_curves": online_curves,
    "finetune_bars": finetune_bars,
    "transfer": transfer,
    "return_distributions": return_distributions,
    "return_distributions_full_action_set": return_distributions_full_action_set,
    "search_tree": search_tree,
    "frames": frames,
    "frame": frame,
    "explorer_message": _message,
}
PAPER_FIGURES = ("scaled_ql_fig2_profiles", "scaled_ql_fig4_per_game", "scaled_ql_fig5_scaling", "jowa_fig4_scaling",
                 "scaled_ql_fig6_ablations", "jowa_table2_per_game", "jowa_table4_5_ablations")
EXPLORER_VIEWS = ("aggregates", "performance_profiles", "probability_of_improvement", "per_game_scores",
                  "learning_curves")


@pytest.fixture(scope="module")
def export_svg():
    """kaleido's export at the figure's own size (as workbench.viz.export writes the PNG), one
    Chromium for the module."""
    import kaleido

    server = hasattr(kaleido, "start_sync_server")  # kaleido >= 1.1: one browser for every export
    if server:
        kaleido.start_sync_server(silence_warnings=True)

    def svg(fig: go.Figure) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "kopts is ignored if using a server"
            return fig.to_image(format="svg", width=fig.layout.width or 700,
                                height=fig.layout.height or 500).decode()

    yield svg
    if server:
        kaleido.stop_sync_server(silence_warnings=True)


def _check(fig: go.Figure, svg: str) -> None:
    problems = fit_problems(svg)
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:25])


@pytest.mark.slow
@needs_kaleido
@pytest.mark.parametrize("name", list(CASES))
def test_figure_fits_its_canvas(name, export_svg):
    fig = CASES[name]()
    _check(fig, export_svg(fig))


@pytest.mark.slow
@needs_kaleido
def test_paper_figures_fit_their_canvas(export_svg):
    figs = _paper_figures()
    assert set(PAPER_FIGURES) <= set(figs)
    failures = {}
    for name, fig in figs.items():
        problems = fit_problems(export_svg(fig))
        if problems:
            failures[name] = problems[:8]
    assert not failures, failures


@pytest.mark.slow
@needs_kaleido
def test_explorer_views_fit_their_canvas(export_svg):
    figs = _explorer_views()
    assert set(EXPLORER_VIEWS) <= set(figs)
    failures = {}
    for name, fig in figs.items():
        problems = fit_problems(export_svg(fig))
        if problems:
            failures[name] = problems[:8]
    assert not failures, failures


@pytest.mark.slow
@needs_kaleido
def test_the_checker_sees_cut_text(export_svg):
    """The check itself: a title longer than its figure and labels wider than the margin fail."""
    fig = go.Figure(go.Bar(x=[1, 2], y=["a label far wider than the default left margin of plotly", "b"],
                           orientation="h"))
    fig.update_layout(title="A title " * 20, width=400, height=300)
    problems = fit_problems(export_svg(fig))
    assert any("A title" in p for p in problems) and any("a label far wider" in p for p in problems)


# --------------------------------------------------------------------------- the style's rules, without a browser


def test_jowa_ablation_table_lists_only_jowa_runs_then_the_paper_under_its_own_header():
    """JOWA's Tables 4/5 ablate JOWA: Scaled QL, BC or MGDT runs of the same sweep are no rows of
    them, and the paper's printed rows stand under a header of their own."""
    fig = _paper_figures()["jowa_table4_5_ablations"]
    first = list(fig.data[0].cells.values[0])
    assert first[0] == "<b>Our JOWA runs</b>"
    header = next(i for i, v in enumerate(first) if i and str(v).startswith("<b>"))
    ours, paper = first[1:header], first[header + 1:]
    assert ours == ["algo=jowa, model=jowa-tiny", "algo=jowa, model=jowa-small"]
    assert "Table 18" in first[header] and paper and all(str(v).startswith("paper: ") for v in paper)
    assert not any(a in str(v) for v in first for a in ("scaled_ql", "algo=bc", "mgdt"))


def test_scaling_draws_unrelated_runs_as_markers_on_a_labelled_log_axis():
    fig = scaling_study()
    ours = [t for t in fig.data if not str(t.name).startswith("paper")]
    assert ours and all(t.mode == "markers" for t in ours)  # no line joins runs that are no series
    axis = fig.layout.xaxis
    assert axis.type == "log" and list(axis.ticktext) == ["100k", "1M", "10M", "100M", "1B"]
    assert list(axis.tickvals) == [1e5, 1e6, 1e7, 1e8, 1e9]


def test_paper_marks_do_not_set_the_range_of_our_bars():
    """Aggregates: the paper's IQM (2.4) lies far above ours (< 0.05); the axis stays ours and the
    mark is drawn on its edge, pointing out, with its value."""
    fig = aggregates_study()
    iqm_axis = fig.layout.xaxis2
    assert iqm_axis.range[1] < 0.1
    edge = [t for t in fig.data if t.xaxis == "x2" and str(t.name).endswith("(off the axis)")]
    assert len(edge) == 1 and edge[0].marker.symbol[0] == "triangle-right" and edge[0].text[0] == "2.4"
    assert edge[0].x[0] <= iqm_axis.range[1]


def test_legends_group_seeds_and_facet_beyond_the_limit():
    study = learning_curves_study()
    assert sum(1 for t in study.data if t.showlegend) == len(LONG_METHODS)  # 55 runs, one entry per method
    many = learning_curves_many_methods()
    per_legend: dict[str, int] = {}
    for t in many.data:
        if t.showlegend:
            per_legend[t.legend or "legend"] = per_legend.get(t.legend or "legend", 0) + 1
    assert len(per_legend) == 2 and max(per_legend.values()) <= MAX_LEGEND_ENTRIES

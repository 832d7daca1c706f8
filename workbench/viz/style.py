"""The one style of every figure: colours, text sizes, and a layout whose margins hold every text.

Colours: a method keeps its colour from one figure to the next (:func:`method_color`).

Layout: :func:`publication_layout` is the last call of every figure builder. Given the size of the
plot area, it computes the margins from the text the figure carries (the title, wrapped to the
figure's width; tick labels; axis titles; subplot titles; the legend) so that at the exported size
(the layout's width and height, which :mod:`workbench.viz.export` passes to kaleido) no text is cut.
The rules it applies, and the helpers builders use to follow them:

- the title sits inside the canvas, wrapped to its width (:func:`wrap_text`);
- axes have ``automargin`` on top of the computed margins; long category labels are turned;
- a legend sits outside the plot area (right, or below), and lists at most
  :data:`MAX_LEGEND_ENTRIES` entries: builders group traces (seeds of one method are one entry)
  or facet the figure beyond that (:func:`chunked`);
- log axes get one labelled tick per power of ten (:func:`log_ticks`);
- points that are not a series are drawn as markers, not joined by lines;
- the papers' reference numbers are marks that do not set the axis range of our bars
  (:func:`value_range`, :func:`off_axis_trace`): one far outside it is also drawn at the edge,
  pointing outwards, with its value printed;
- labels are short (:func:`short_labels`), the full text stays in the hover.

Text widths are estimated with the advance widths of DejaVu Sans (:func:`text_width`), as wide as
Verdana and wider than the Arial-metric fonts Chromium falls back to, so an estimate that fits fits
when drawn.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import plotly.graph_objects as go

__all__ = [
    "AXIS_TITLE_SIZE",
    "FONT_SIZE",
    "MAX_LEGEND_ENTRIES",
    "PALETTE",
    "SUBPLOT_TITLE_SIZE",
    "TITLE_SIZE",
    "chunked",
    "legend_width",
    "log_ticks",
    "method_color",
    "publication_layout",
    "off_axis_marks",
    "off_axis_trace",
    "rgba",
    "run_width",
    "short_labels",
    "si_number",
    "spacing",
    "text_height",
    "text_lines",
    "text_width",
    "value_range",
    "wrap_annotations",
    "wrap_text",
]

#: Plotly's default qualitative palette, indexed by method (or action) position, and two more
#: colours so that a full legend (:data:`MAX_LEGEND_ENTRIES`) repeats none.
PALETTE = (
    "#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A",
    "#19D3F3", "#FF6692", "#B6E880", "#FF97FF", "#FECB52", "#8C564B", "#7F7F7F",
)  # fmt: skip

#: Most entries one legend lists; beyond it builders group or facet.
MAX_LEGEND_ENTRIES = 12
FONT_SIZE = 12
TITLE_SIZE = 16
AXIS_TITLE_SIZE = 13
SUBPLOT_TITLE_SIZE = 13
#: Space between the canvas edge and any text, in pixels.
PAD = 10
#: Height of one legend entry (plotly: 19 px at 12 px text) and the gap between legend groups.
LEGEND_ROW_PX = 19
LEGEND_GROUP_GAP = 2
#: A legend entry's symbol and the gap before its text (plotly draws the text at x = 40).
LEGEND_SYMBOL_PX = 40
#: Width of a numeric tick label (plotly abbreviates: "0.025", "1.5M", "−200").
NUMBER_LABEL = "−0.000"
#: A figure grows to hold its title's longest clause on one line, up to this width.
MAX_TITLE_CLAUSE_PX = 960.0
LINE_HEIGHT = 1.3

T = TypeVar("T")


def method_color(i: int) -> str:
    """Colour of the ``i``-th method (cycling through :data:`PALETTE`)."""
    return PALETTE[i % len(PALETTE)]


def rgba(hex_color: str, alpha: float) -> str:
    """``"#rrggbb"`` as a CSS ``rgba(...)`` string with opacity ``alpha`` (for CI bands)."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[k : k + 2], 16) for k in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


# ------------------------------------------------------------------------------------ text size

# Advance widths (in em) of DejaVu Sans for the printable ASCII characters, space to tilde.
_ASCII_EM = (
    0.32, 0.4, 0.46, 0.84, 0.64, 0.95, 0.78, 0.27, 0.39, 0.39, 0.5, 0.84, 0.32, 0.36, 0.32, 0.34,
    0.64, 0.64, 0.64, 0.64, 0.64, 0.64, 0.64, 0.64, 0.64, 0.64, 0.34, 0.34, 0.84, 0.84, 0.84, 0.53,
    1.0, 0.68, 0.69, 0.7, 0.77, 0.63, 0.58, 0.77, 0.75, 0.29, 0.29, 0.66, 0.56, 0.86, 0.75, 0.79,
    0.6, 0.79, 0.69, 0.63, 0.61, 0.73, 0.68, 0.99, 0.69, 0.61, 0.69, 0.39, 0.34, 0.39, 0.84, 0.5,
    0.5, 0.61, 0.63, 0.55, 0.63, 0.62, 0.35, 0.63, 0.63, 0.28, 0.28, 0.58, 0.28, 0.97, 0.63, 0.61,
    0.63, 0.63, 0.41, 0.52, 0.39, 0.63, 0.59, 0.82, 0.59, 0.59, 0.52, 0.64, 0.34, 0.64, 0.84,
)  # fmt: skip
_OTHER_EM = {"—": 1.0, "–": 0.5, "…": 1.0, "·": 0.32, "\u200b": 0.0, "τ": 0.6, "−": 0.84}
_BOLD = 1.12  # DejaVu Sans Bold is about 12% wider
_TAG = re.compile(r"<[^>]+>")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_ENTITIES = {"&lt;": "<", "&gt;": ">", "&amp;": "&", "&#62;": ">", "&#60;": "<", "&quot;": '"', "&#39;": "'"}


def _char_em(c: str) -> float:
    o = ord(c)
    if 32 <= o < 127:
        return _ASCII_EM[o - 32]
    return _OTHER_EM.get(c, 1.0)


def _plain(text: str) -> str:
    text = _TAG.sub("", text)
    for k, v in _ENTITIES.items():
        text = text.replace(k, v)
    return text


def run_width(text: str, size: float, *, bold: bool = False) -> float:
    """Width in pixels of one run of plain text (no markup) at ``size`` px."""
    return sum(_char_em(c) for c in text) * size * (_BOLD if bold else 1.0)


def text_lines(text: str) -> list[str]:
    """A plotly text's lines (split at ``<br>``), markup kept."""
    return _BR.split(str(text))


def _line_width(line: str, size: float, bold: bool) -> float:
    """One line of plotly markup: ``<sup>``/``<sub>`` at 70%, ``<b>`` bold."""
    width, small, strong = 0.0, 0, bold
    for part in re.split(r"(<[^>]+>)", line):
        if not part:
            continue
        if part.startswith("<"):
            tag = part.strip("<>/ ").split()[0].lower() if part.strip("<>/ ") else ""
            closing = part.startswith("</")
            if tag in ("sup", "sub"):
                small += -1 if closing else 1
            elif tag == "b":
                strong = bold if closing else True
            continue
        width += run_width(_plain(part), size * (0.7 if small > 0 else 1.0), bold=strong)
    return width


def text_width(text: str, size: float = FONT_SIZE, *, bold: bool = False) -> float:
    """Estimated width in pixels of plotly text at ``size`` px: its widest ``<br>`` line."""
    return max((_line_width(line, size, bold) for line in text_lines(text)), default=0.0)


def text_height(text: str, size: float = FONT_SIZE) -> float:
    """Height in pixels of plotly text: 1.3 em per line (a ``<sup>``-only line at 70%)."""
    total = 0.0
    for line in text_lines(text):
        only_small = bool(re.fullmatch(r"\s*<(sup|sub)>.*</\1>\s*", line))
        total += LINE_HEIGHT * size * (0.7 if only_small else 1.0)
    return total


def _clause_end(words: Sequence[str], k: int) -> bool:
    """Whether a line may end after ``words[k - 1]``: at the end of a clause (after ``,;:`` or
    before a dash or a bracket), so that lines break between phrases, not inside them."""
    return words[k - 1].endswith((",", ";", ":")) or words[k - 1] in ("—", "–") or (
        k < len(words) and words[k].startswith(("(", "—", "–", "[")))


def _clauses(text: str) -> list[str]:
    """``text`` cut at its clause ends (see :func:`_clause_end`)."""
    words = text.split(" ")
    out, start = [], 0
    for k in range(1, len(words) + 1):
        if k == len(words) or _clause_end(words, k):
            out.append(" ".join(words[start:k]))
            start = k
    return out


def _wrap_plain(text: str, max_px: float, size: float) -> list[str]:
    """Greedy line filling that breaks at the last clause end of an overfull line when that keeps
    at least half the line, else at the last space; a word longer than a line is cut."""
    lines: list[str] = []
    cur: list[str] = []
    for word in text.split(" "):
        cur.append(word)
        while run_width(" ".join(cur), size) > max_px and len(cur) > 1:
            cut = next((k for k in range(len(cur) - 1, 0, -1) if _clause_end(cur, k)
                        and run_width(" ".join(cur[:k]), size) <= max_px), 0)
            if not cut or run_width(" ".join(cur[:cut]), size) < 0.5 * max_px:
                cut = len(cur) - 1
            lines.append(" ".join(cur[:cut]))
            cur = cur[cut:]
        while run_width(cur[0], size) > max_px and len(cur[0]) > 1 and len(cur) == 1:  # one word wider than a line
            n = len(cur[0])
            while n > 1 and run_width(cur[0][:n], size) > max_px:
                n -= 1
            lines.append(cur[0][:n])
            cur = [cur[0][n:]]
    lines.append(" ".join(cur))
    return lines


def wrap_text(text: str, max_px: float, size: float = FONT_SIZE) -> str:
    """``text`` with ``<br>`` inserted so that no line is wider than ``max_px``; a line that is one
    ``<sup>...</sup>`` is wrapped at its smaller size and stays superscript."""
    out: list[str] = []
    for line in text_lines(text):
        sup = re.fullmatch(r"\s*<(sup|sub)>(.*)</\1>\s*", line)
        if sup:
            out += [f"<{sup.group(1)}>{part}</{sup.group(1)}>"
                    for part in _wrap_plain(sup.group(2), max_px, 0.7 * size)]
        elif _TAG.search(line) or _line_width(line, size, False) <= max_px:
            out.append(line)  # inline markup is not split (titles carry none but <sup> lines)
        else:
            out += _wrap_plain(line, max_px, size)
    return "<br>".join(out)


# ------------------------------------------------------------------------------------ labels


def _split_top(body: str) -> list[str]:
    """``a=1, b={'x': 1, 'y': 2}, c`` split at the commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for c in body:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += c
    if cur.strip():
        parts.append(cur.strip())
    return parts


def _settings(body: str) -> list[tuple[str | None, str]]:
    """A label's bracketed settings as (key, value); a dict value is flattened to its own keys."""
    out: list[tuple[str | None, str]] = []
    for part in _split_top(body):
        key, eq, value = part.partition("=")
        if not eq:
            out.append((None, part))
            continue
        key, value = key.strip(), value.strip()
        if value.startswith("{"):
            try:
                parsed = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                parsed = None
            if isinstance(parsed, dict):
                out += [(str(k), repr(v) if isinstance(v, str) else str(v)) for k, v in parsed.items()]
                continue
        out.append((key, value))
    return out


_LABEL = re.compile(r"^(?P<head>[^(]*?)\s*\((?P<body>.*)\)(?P<tail>[^()]*)$")


def short_labels(labels: Iterable[str], max_chars: int = 64) -> dict[str, str]:
    """Each label -> a shorter one, still unique among ``labels`` (else the label itself).

    Labels such as ``scaled_ql/minatar-cnn (algo_args={'alpha': 1.0}, split=near_optimal)``
    lose the settings in brackets that have the same value in every label that has them (a
    dict of settings counts as its own keys), so only what tells the methods apart remains;
    beyond ``max_chars`` a label is cut in the middle with an ellipsis. Whenever shortening would
    make two labels equal, the longer form is kept. Callers keep the full label in the hover."""
    labels = list(dict.fromkeys(str(x) for x in labels))
    parsed: dict[str, tuple[str, list[tuple[str | None, str]], str] | None] = {}
    for lab in labels:
        m = _LABEL.match(lab)
        parsed[lab] = (m.group("head"), _settings(m.group("body")), m.group("tail")) if m else None
    values: dict[str, set[str]] = {}
    for p in parsed.values():
        for k, v in (p[1] if p else []):
            if k is not None:
                values.setdefault(k, set()).add(v)

    def compose(p: tuple[str, list[tuple[str | None, str]], str], dropped: set[str]) -> str:
        head, items, tail = p
        kept = [v if k is None else f"{k}={v}" for k, v in items if k not in dropped]
        return f"{head} ({', '.join(kept)}){tail}" if kept else f"{head}{tail}"

    def unique(m: dict[str, str]) -> bool:
        return len(set(m.values())) == len(m)

    def shortened(dropped: set[str]) -> dict[str, str]:
        return {lab: compose(p, dropped) if p else lab for lab, p in parsed.items()}

    # a setting with one value wherever it is given goes, unless that makes two labels equal
    # (``feature_norm=False`` names the one run that has it); one that varies always stays
    dropped: set[str] = set()
    for key in [k for k, vs in values.items() if len(vs) == 1]:
        if unique(shortened(dropped | {key})):
            dropped.add(key)
    out = shortened(dropped)
    if not unique(out):
        out = {lab: lab for lab in labels}
    cut = {lab: _ellipsize(s, max_chars) for lab, s in out.items()}
    return cut if unique(cut) else out


def _ellipsize(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    keep = max_chars - 1
    return text[: (keep + 1) // 2].rstrip() + "…" + text[len(text) - keep // 2 :].lstrip()


def chunked(items: Sequence[T], size: int = MAX_LEGEND_ENTRIES) -> list[list[T]]:
    """``items`` in consecutive chunks of at most ``size``, as even as possible (13 -> 7 + 6)."""
    if not items:
        return []
    n = math.ceil(len(items) / size)
    per = math.ceil(len(items) / n)
    return [list(items[i : i + per]) for i in range(0, len(items), per)]


# ------------------------------------------------------------------------------------ axes


def log_ticks(lo: float, hi: float) -> dict[str, Any]:
    """Settings of a log axis from ``lo`` to ``hi`` (data units, both > 0): its range from the
    power of ten below ``lo`` to the one above ``hi``, a labelled tick at each power of ten
    (``100k``, ``1M``, ...) and unlabelled minor ticks at 2..9 times each."""
    a = math.floor(math.log10(lo))
    b = max(math.ceil(math.log10(hi)), a + 1)
    decades = [10.0**e for e in range(a, b + 1)]
    minor = [m * d for d in decades[:-1] for m in range(2, 10)]
    return dict(type="log", range=[a - 0.05, b + 0.05], tickmode="array", tickvals=decades,
                ticktext=[si_number(v) for v in decades],
                minor=dict(tickmode="array", tickvals=minor, ticks="outside", ticklen=3, showgrid=True,
                           gridcolor="#f2f2f2"))


def si_number(v: float) -> str:
    """``1e5`` -> ``100k``, ``2.5e6`` -> ``2.5M``."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:g}{suffix}"
    return f"{v:g}"


def value_range(values: Iterable[float | None], *, include_zero: bool = True, pad: float = 0.08) -> list[float]:
    """An axis range holding ``values`` (our bars with their intervals), padded by ``pad`` of its span."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if include_zero:
        vals.append(0.0)
    if not vals:
        return [0.0, 1.0]
    lo, hi = min(vals), max(vals)
    span = hi - lo or max(abs(hi), 1.0)
    return [lo - pad * span if lo < 0 or not include_zero else lo, hi + pad * span]


def off_axis_marks(values: Sequence[float], rng: Sequence[float], *, vertical: bool = True
                   ) -> tuple[list[int], list[float], list[str], list[str]]:
    """The papers' values that fall outside ``rng`` (the range of our bars), and where to show them.

    A reference mark is drawn at its value, and the axis range is set from our bars alone, so a
    paper's number far above ours does not flatten our bars to slivers; a mark outside the range
    is then hidden by the plot area. This returns, for each such value, (its index, the edge of the
    range it lies beyond, a triangle pointing outwards, its value as text): builders draw them as
    a second trace on the edge (``cliponaxis=False``) so that no reference disappears."""
    lo, hi = float(rng[0]), float(rng[1])
    inset = 0.04 * (hi - lo)  # just inside the edge: the mark stays clear of the titles around the plot
    idx, pos, syms, texts = [], [], [], []
    for i, v in enumerate(values):
        v = float(v)
        if lo <= v <= hi:
            continue
        up = v > hi
        idx.append(i)
        pos.append(hi - inset if up else lo + inset)
        syms.append(("triangle-up" if up else "triangle-down") if vertical else
                    ("triangle-right" if up else "triangle-left"))
        texts.append(f"{v:.3g}")
    return idx, pos, syms, texts


def off_axis_trace(name: str, xs: Sequence[Any], values: Sequence[float], rng: Sequence[float], *,
                   vertical: bool = True, legendgroup: str | None = None, color: str = "#333333",
                   hover: Sequence[str] | None = None) -> go.Scatter | None:
    """The trace of :func:`off_axis_marks` for reference marks at ``xs`` (``values`` on the value
    axis; for horizontal bars ``xs`` are the categories on y), or None when all are in range."""
    idx, pos, syms, texts = off_axis_marks(values, rng, vertical=vertical)
    if not idx:
        return None
    cats = [xs[i] for i in idx]
    hov = [f"{(hover[i] if hover else name)}<br>(off the axis: {float(values[i]):.3g})" for i in idx]
    common = dict(mode="markers+text", name=f"{name} (off the axis)", showlegend=False, legendgroup=legendgroup or name,
                  marker=dict(symbol=syms, size=11, color=color), text=texts, cliponaxis=False,
                  hovertext=hov, hoverinfo="text")
    mid = (float(rng[0]) + float(rng[1])) / 2
    if vertical:
        return go.Scatter(x=cats, y=pos, textposition=["bottom center" if p > mid else "top center" for p in pos],
                          **common)
    return go.Scatter(x=pos, y=cats, textposition=["middle left" if p > mid else "middle right" for p in pos],
                      **common)


def spacing(px: float, total_px: float, *, most: float = 0.45) -> float:
    """A subplot spacing of ``px`` pixels as the fraction of ``total_px`` make_subplots wants."""
    return min(most, px / max(total_px, 1.0))


def legend_width(names: Iterable[str], size: float = FONT_SIZE) -> float:
    """Width in pixels of a vertical legend listing ``names``."""
    return LEGEND_SYMBOL_PX + max((text_width(n, size) for n in names), default=0.0) + 12


# ------------------------------------------------------------------------------------ layout


def _axes(fig: go.Figure, letter: str) -> list[tuple[str, Any]]:
    names = [k for k in fig.layout.to_plotly_json() if re.fullmatch(letter + r"axis\d*", k)]
    return [(n, fig.layout[n]) for n in sorted(names or [f"{letter}axis"], key=lambda s: int(s[5:] or 1))]


def _trace_axis(trace: Any, letter: str) -> str:
    ref = getattr(trace, letter + "axis", None) or letter
    return letter + "axis" + ref[1:]


def _tick_labels(fig: go.Figure, name: str, axis: Any, letter: str) -> list[str]:
    """What the tick labels of axis ``name`` say (an estimate for numeric axes); none for an axis
    no trace is drawn on."""
    if axis.visible is False or axis.showticklabels is False:
        return []
    cats: list[str] = []
    used = numeric = False
    for tr in fig.data:
        if tr.type in ("table", "image") or _trace_axis(tr, letter) != name:
            continue
        used = True
        vals = getattr(tr, letter, None)
        for v in [] if vals is None else vals:
            if isinstance(v, str):
                cats.append(v)
            elif v is not None:
                numeric = True
    if not used:
        return []
    if axis.ticktext is not None:
        return [str(t) for t in axis.ticktext]
    if cats and axis.type not in ("linear", "log"):
        return list(dict.fromkeys(cats))
    return [NUMBER_LABEL] if numeric or axis.type in ("linear", "log") else []


def _domain(axis: Any) -> tuple[float, float]:
    d = axis.domain
    return (float(d[0]), float(d[1])) if d is not None else (0.0, 1.0)


def _title_text(obj: Any) -> str:
    t = obj.title
    return str(t.text) if t is not None and t.text else ""


def publication_layout(
    fig: go.Figure,
    *,
    plot_width: float,
    plot_height: float,
    legend: Literal["right", "bottom", "none"] = "right",
    legend_x: Mapping[str, float] | None = None,
) -> go.Figure:
    """Size ``fig`` so that its plot area is ``plot_width`` x ``plot_height`` pixels and every text
    lies inside the canvas; returns ``fig``.

    Margins come from the text: the y tick labels and title of the axes on the left edge, the x
    tick labels (turned 45 or 90 degrees when they would overlap) and title of the axes on the
    bottom edge, the top row's subplot titles and any other annotation (wrapped to their column),
    the title (wrapped to the figure's width) and the legend: ``right``, a column right of the plot
    as wide as its longest entry (several legends side by side); ``bottom``, under the plot, one
    legend in rows, several side by side, each at ``legend_x[name]`` (a fraction of the plot
    width: under its column of panels) when given; ``none``, hidden. Axes keep ``automargin`` as a
    safety net."""
    fig.update_layout(template="plotly_white", font=dict(size=FONT_SIZE), autosize=False)
    fig.update_xaxes(automargin=True, title_font_size=AXIS_TITLE_SIZE)
    fig.update_yaxes(automargin=True, title_font_size=AXIS_TITLE_SIZE)
    # ---- left / bottom: the axes on the plot area's edges
    left = bottom = float(PAD)
    for name, ax in _axes(fig, "y"):
        anchor = ax.anchor or "x"
        xa = fig.layout["xaxis" + anchor[1:]] if anchor != "free" else None
        if (xa is not None and _domain(xa)[0] > 0.02) or ax.side == "right" or ax.overlaying:
            continue
        labels = _tick_labels(fig, name, ax, "y")
        need = max((text_width(t) for t in labels), default=0.0) + (6 if labels else 0)
        if _title_text(ax):
            need += text_height(_title_text(ax), AXIS_TITLE_SIZE) + 8
        left = max(left, PAD + need)
    for name, ax in _axes(fig, "x"):
        anchor = ax.anchor or "y"
        ya = fig.layout["yaxis" + anchor[1:]] if anchor != "free" else None
        if ya is not None and _domain(ya)[0] > 0.02:
            continue
        labels = _tick_labels(fig, name, ax, "x")
        need = 0.0
        if labels:
            widest = max(text_width(t) for t in labels)
            axis_px = plot_width * (_domain(ax)[1] - _domain(ax)[0])
            room = axis_px / max(len(labels), 1)
            if ax.tickangle is None and labels != [NUMBER_LABEL] and widest + 8 > room:
                ax.tickangle = -90 if widest * 0.71 + 8 > 3 * room else -45
            angle = math.radians(abs(float(ax.tickangle or 0)))
            need = (widest * math.sin(angle) + FONT_SIZE * math.cos(angle) if angle else FONT_SIZE * LINE_HEIGHT) + 8
            if 0 < angle < math.pi / 2 and _domain(ax)[0] < 0.02:
                # a label turned less than upright leans left of its tick: the first one must fit
                left = max(left, PAD + widest * math.cos(angle) - room / 2)
        if _title_text(ax):
            need += text_height(_title_text(ax), AXIS_TITLE_SIZE) + 8
        bottom = max(bottom, PAD + need)
    # ---- the legends: each one's entries (a legend group counts once)
    entries: dict[str, dict[str, str]] = {}  # legend -> {legend group (or name): the entry's text}
    for tr in fig.data:
        if tr.type in ("table", "image") or tr.showlegend is False or not tr.name:
            continue
        entries.setdefault(getattr(tr, "legend", None) or "legend", {}).setdefault(tr.legendgroup or tr.name,
                                                                                   str(tr.name))
    n_shown = sum(len(v) for v in entries.values())
    if legend == "none" or n_shown == 0 or (n_shown < 2 and fig.layout.showlegend is not True):
        fig.update_layout(showlegend=False)
        legend = "none"
    sizes = {leg: (legend_width(names.values()), len(names) * (LEGEND_ROW_PX + LEGEND_GROUP_GAP) + 8)
             for leg, names in entries.items()}
    right = float(PAD)
    extra_bottom = 0.0
    if legend == "right":
        right = PAD + sum(w + 10 for w, _ in sizes.values())
        plot_height = max(plot_height, max(h for _, h in sizes.values()))
    width = left + plot_width + right
    if legend == "bottom":
        if len(sizes) == 1:  # one legend: rows of equal columns
            ((w, _),) = sizes.values()
            n = n_shown
            cols = max(1, int((width - 2 * PAD) // w))
            extra_bottom = math.ceil(n / cols) * (LEGEND_ROW_PX + LEGEND_GROUP_GAP) + 14
            fig.update_layout(legend=dict(orientation="h", entrywidth=w, entrywidthmode="pixels"))
        else:  # several: side by side, each a column, each at least as wide as its entries
            extra_bottom = max(h for _, h in sizes.values()) + 6
            if legend_x:
                for leg, (w, _) in sizes.items():
                    end = left + legend_x.get(leg, 0.0) * plot_width + w + PAD
                    if end > width:
                        plot_width += end - width
                        width = end
            width = max(width, 2 * PAD + sum(w + 10 for w, _ in sizes.values()))
            plot_width = width - left - right
    # ---- a title breaks between clauses: the figure is as wide as its longest clause (up to a limit)
    title = _title_text(fig.layout)
    if title:
        widest = max((run_width(c, TITLE_SIZE) for line in text_lines(title) if not _TAG.search(line)
                      for c in _clauses(line)), default=0.0)
        if min(widest, MAX_TITLE_CLAUSE_PX) + 2 * PAD > width:
            grow = min(widest, MAX_TITLE_CLAUSE_PX) + 2 * PAD - width
            width += grow
            plot_width += grow
    # ---- top: the title, wrapped; annotations (subplot titles) wrapped to their column
    sub_top = 0.0
    for ann in fig.layout.annotations:
        if ann.xref != "paper" or ann.yref != "paper" or not ann.text:
            continue
        is_title = ann.yanchor == "bottom"
        size = SUBPLOT_TITLE_SIZE if is_title else float(ann.font.size or FONT_SIZE)
        if is_title:
            ann.font.size = size
        ann.text = wrap_text(str(ann.text), (_column_px(fig, float(ann.x or 0.5), plot_width) if is_title
                                             else plot_width) - 8, size)
        if is_title and float(ann.y) > 0.98:
            sub_top = max(sub_top, text_height(str(ann.text), size) + 6)
    top = float(PAD)
    if title:
        wrapped = wrap_text(title, width - 2 * PAD, TITLE_SIZE)
        # plotly puts a one-line title's top at pad.t, but the first baseline of a title of
        # several lines there: that one moves down by its ascent
        pad_t = PAD + (round(0.85 * TITLE_SIZE) if len(text_lines(wrapped)) > 1 else 0)
        top = pad_t + text_height(wrapped, TITLE_SIZE) + 12
        fig.update_layout(title=dict(text=wrapped, x=0, xref="container", xanchor="left", y=1, yref="container",
                                     yanchor="top", pad=dict(l=PAD, t=pad_t), font=dict(size=TITLE_SIZE)))
    top += sub_top
    height = top + plot_height + bottom + extra_bottom
    fig.update_layout(width=round(width), height=round(height),
                      margin=dict(l=round(left), r=round(right), t=round(top), b=round(bottom + extra_bottom), pad=0,
                                  autoexpand=True))
    style = dict(tracegroupgap=LEGEND_GROUP_GAP, font=dict(size=FONT_SIZE), bgcolor="rgba(255,255,255,0)")
    if legend == "right":
        x = 1.0 + 10 / plot_width
        for leg, (w, _) in sizes.items():
            fig.update_layout({leg: dict(x=x, xanchor="left", y=1, yanchor="top", orientation="v", **style)})
            x += (w + 10) / plot_width
    elif legend == "bottom":
        # under the bottom axis' labels and title, in paper coordinates (a legend placed in the
        # container pushes the margins as if it stood in the plot area)
        x_px, y = PAD - left, -(bottom + 4) / plot_height
        for leg, (w, _) in sizes.items():
            if legend_x and leg in legend_x:
                x_px = legend_x[leg] * plot_width
            fig.update_layout({leg: dict(x=x_px / plot_width, xanchor="left", y=y, yanchor="top", **style)})
            x_px += w + 10
    return fig


def _column_px(fig: go.Figure, x: float, plot_width: float) -> float:
    """Width in pixels of the subplot column centred on paper coordinate ``x``."""
    best = (0.0, 1.0)
    for _, ax in _axes(fig, "x"):
        d0, d1 = _domain(ax)
        if d0 - 1e-6 <= x <= d1 + 1e-6 and d1 - d0 < best[1] - best[0] + 1e-9:
            best = (d0, d1)
    return (best[1] - best[0]) * plot_width


def wrap_annotations(fig: go.Figure) -> go.Figure:
    """Wrap the notes written inside the plot area (``xref``/``yref`` paper, not subplot titles)
    to its width, for notes added after :func:`publication_layout` (e.g. "nothing to draw: ...");
    idempotent. :func:`workbench.viz.export.save_figures` calls it before writing."""
    width = fig.layout.width
    if not width:
        return fig
    m = fig.layout.margin
    plot_width = float(width) - float(m.l if m.l is not None else 80) - float(m.r if m.r is not None else 80)
    for ann in fig.layout.annotations:
        if ann.xref != "paper" or ann.yref != "paper" or ann.yanchor == "bottom" or not ann.text:
            continue
        size = float(ann.font.size or FONT_SIZE)
        if text_width(str(ann.text), size) > plot_width - 8:
            ann.text = wrap_text(str(ann.text), plot_width - 8, size)
    return fig

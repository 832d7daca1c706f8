"""Run folders -> the papers' kinds of figures, written to ``figures/`` with a README.

A run folder is what ``workbench.pipeline.pretrain`` leaves (``docs``: pipeline module)::

    run_dir/config.json  metrics.jsonl  checkpoints/  eval/scores.json  summary.json

:func:`read_run` is tolerant: every file is optional, and what it found, used or could not
read is recorded on the :class:`RunInfo` (and in the README), never silently guessed.

Aggregates, performance profiles and probability of improvement all come from
:mod:`workbench.metrics` (rliable, stratified bootstrap); nothing is re-implemented here.
Every evaluation file of a run is read (``eval/scores.json`` from pretraining, the
``eval/scores_*.json`` notebook 05 writes). One comparison uses one evaluation protocol (step
cap, epsilon, game variant): by default the protocol that covers the most runs, preferring the
papers'; runs evaluated only otherwise are left out and named in the report and README
(``mix_protocols=True`` compares across protocols on purpose). Evaluations under a step cap
below the protocol's are partial episodes: titles and the README say so, and the papers'
numbers are not drawn next to them.

Only run folders are read: a folder whose ``config.json`` names a kind of ``workbench.run.KINDS``.
Anything else a glob matches (notebook 07's ``runs/explore``, this module's own ``runs/analysis``,
``runs/sweeps``) is left out and named in the report and README.

Runs of one kind whose *resolved* configurations (``config.json``'s ``resolved``, plus the
parameters it does not cover, such as the data split) differ only in seed, output folder, logging
or evaluation settings are runs of one *method*: :func:`method_labels` names each method by its
algorithm, model and the one or two settings that tell it apart from the others
(:func:`run_settings`). A method's runs are its seeds, each the per-game mean of its evaluation
episodes (:func:`method_scores`); evaluation episodes are never runs: under the papers' protocol
one policy's episodes are near-duplicates. A method with one run gets its mean and no interval,
and every interval says how many runs it rests on (:func:`honest_aggregates`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from safetensors import safe_open

from workbench import metrics as M
from workbench.algos.base import algo_label, algo_names, get_algo
from workbench.envs import MAX_AGENT_STEPS
from workbench.paths import resolve_path, shown_path
from workbench.reference import paper_tables as pt
from workbench.reference import released_jowa_means
from workbench.run import KINDS, Run
from workbench.viz import results_figures as F
from workbench.viz.export import FigureSaveStatus, save_figures
from workbench.viz.recipes import Built, FigureRecipe, Skip, draw

__all__ = ["DEFAULT_OUT_DIR", "RUN_ONLY_KEYS", "AnalysisReport", "RunInfo", "build_figures", "count_parameters",
           "curve_names", "explain_empty", "honest_aggregates", "method_labels", "method_scores", "method_settings",
           "not_a_run",
           "online_final_scores", "online_finetune_figure", "online_learning_curve_figure", "online_lr_selection",
           "online_runs", "paper_reference_points", "protocol_key", "protocol_text", "read_run",
           "released_reference_scores", "run_settings",
           "scaling_points", "select_evaluations", "setting_factors", "transfer_figure", "transfer_label",
           "transfer_scores"]

DEFAULT_OUT_DIR = "runs/analysis"
"""Where :func:`build_figures` (and notebook 06) write unless told otherwise: under the ignored
``runs/``, never over the repository's tracked ``figures/``."""

# Parameters that never distinguish methods (seeds are runs of one method); parameters named
# eval_* are the evaluation protocol, compared separately (select_evaluations).
RUN_ONLY_KEYS = {"seed", "output_dir", "resume", "device", "compile", "resolved", "num_envs",
                  "eval_episodes", "eval_max_steps", "record_steps", "dataset", "allow_slow_cpu", "cpu_threads"}
# Parameters whose value is resolved into other entries of ``resolved`` (0 / {} mean "the preset's").
_SHADOWED_PARAMS = {"algo_args", "agent_args", "eval_every", "steps", "lr", "batch_size", "frames"}
# Entries of ``resolved`` (by their last name) that never distinguish methods: where a run writes,
# how often it logs and checkpoints, the session's threads, and the evaluation protocol.
_RUN_ONLY_RESOLVED = {"output_dir", "threads", "log_every", "checkpoint_every", "subdir", "find_unused_parameters",
                      "eval_max_steps", "eval_episodes", "eval_every_frames", "log_replay", "seed", "device",
                      "num_envs"}
# Paper methods drawn as reference points when they have scores for every game of our runs.
_PAPER_METHODS = {
    "scaled_ql_c1": ("Scaled QL (80M)", "BC (80M)", "DT (200M)"),
    "jowa_t2": ("JOWA (150M)", "JOWA (40M)", "SQL (80M)", "MTBC (120M)"),
}


@dataclass
class RunInfo:
    """One run folder as read: its parts, and a record of what was found."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    scores: dict[str, Any] | None = None
    scores_file: Path | None = None
    evaluations: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    """Every readable evaluation file (pretraining's first, then newest first); ``scores`` is the
    one the comparison uses."""
    params: int | None = None
    found: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    kind: str | None = None
    """The run's kind (``workbench.run.KINDS``); None when its config.json could not be read."""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def algo(self) -> str:
        resolved = self.config.get("resolved") or {}
        return str(resolved.get("algo") or self.config.get("algo") or "unknown")

    @property
    def model(self) -> str:
        resolved = self.config.get("resolved") or {}
        return str(resolved.get("model") or self.config.get("model") or "unknown")


def count_parameters(checkpoint_dir: str | os.PathLike[str]) -> int:
    """Trainable parameters in a checkpoint's ``model.safetensors`` (target copies excluded: a
    Q-network's ``target.*`` and JOWA's ``world.target_q_head.*``), read from the safetensors
    header: no weights are loaded, nothing is unpickled."""
    total = 0
    with safe_open(str(Path(checkpoint_dir) / "model.safetensors"), framework="numpy") as f:
        for key in f.keys():
            if key.startswith("target.") or ".target_q_head." in f".{key}":
                continue
            total += int(np.prod(f.get_slice(key).get_shape()))
    return total


def read_run(run_dir: str | os.PathLike[str]) -> RunInfo:
    """Read a run folder through ``workbench.run.Run``; missing or unreadable parts are listed in
    ``problems`` (an analysis of many runs must not stop at one damaged folder)."""
    path = Path(run_dir)
    info = RunInfo(path=path)
    if not path.is_dir():
        info.problems.append("not a directory")
        return info
    run = Run(path)
    try:
        info.config = {**run.params, "resolved": run.resolved}
        info.kind = run.kind
        info.found.append("config.json")
    except (FileNotFoundError, ValueError) as exc:
        info.problems.append(f"{exc} (method label falls back to the folder name)")
        return info
    info.metrics, bad = run.all_metrics()
    info.found.append(f"metrics ({len(info.metrics)} records)")
    if bad:
        info.problems.append(f"metrics.jsonl: {bad} unreadable line(s) skipped")
    if not info.metrics:
        info.problems.append("no metrics records")
    for cand in run.score_files():
        try:
            doc = json.loads(cand.read_text())
        except json.JSONDecodeError as exc:
            info.problems.append(f"{cand.relative_to(path)} unreadable: {exc}")
            continue
        if isinstance(doc, dict) and isinstance(doc.get("per_game"), dict) and doc["per_game"]:
            info.evaluations.append((cand, doc))
            info.found.append(str(cand.relative_to(path)))
    if info.evaluations:
        info.scores_file, info.scores = info.evaluations[0]
    else:
        info.problems.append("no evaluation scores (eval/*.json with per_game)")
    try:
        ckpt = run.checkpoint()
        if ckpt is not None:
            info.params = count_parameters(ckpt)
            info.found.append(f"checkpoint {ckpt.relative_to(path)} ({info.params:,} parameters)")
    except Exception as exc:  # a damaged checkpoint must not stop the analysis
        info.problems.append(f"checkpoint unreadable: {type(exc).__name__}: {exc}")
    return info


def not_a_run(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a run folder (None: it is one). A run folder holds a ``config.json`` of
    a kind in ``workbench.run.KINDS``; a glob such as ``runs/*`` also matches other folders (notebook
    07's ``runs/explore``, the analysis' own ``runs/analysis``, ``runs/sweeps``), which the analysis
    leaves out, naming them."""
    p = Path(path)
    if not p.is_dir():
        return "not a directory"
    try:
        kind = Run(p).kind
    except FileNotFoundError:
        return f"config.json is missing: not a run folder (a run folder has a config.json of kind {', '.join(KINDS)})"
    except ValueError as exc:
        return str(exc)
    return None if kind in KINDS else f"unknown kind {kind!r}"


# ------------------------------------------------------------------------------ protocols

ProtocolKey = tuple[Any, Any, Any, Any]


def protocol_key(scores: dict[str, Any]) -> ProtocolKey:
    """What makes two evaluations comparable: step cap, epsilon, game mode and difficulty
    (None where an older scores file does not say)."""
    return (scores.get("max_agent_steps"), scores.get("epsilon"), scores.get("mode"), scores.get("difficulty"))


def _paper_comparable(scores: dict[str, Any]) -> bool | None:
    """True/False when the file says (or its cap shows) whether it follows the papers'
    protocol; None for older files that record neither."""
    if "comparable_to_papers" in scores:
        return bool(scores["comparable_to_papers"])
    cap = scores.get("max_agent_steps")
    return None if cap is None else cap == MAX_AGENT_STEPS


def protocol_text(key: ProtocolKey) -> str:
    cap, eps, mode, difficulty = key
    if cap is None:
        return "protocol not recorded"
    text = f"episodes capped at {cap:,} agent steps, epsilon {eps}"
    if mode is not None or difficulty is not None:
        text += f", mode {mode}, difficulty {difficulty}"
    return text


def select_evaluations(runs: Sequence[RunInfo], mix_protocols: bool = False) -> tuple[str, dict[str, str]]:
    """Choose each run's evaluation for one comparison; returns (the protocol's description,
    ``{run: why it was left out}``) and sets each run's ``scores``/``scores_file`` (None when
    left out).

    Without ``mix_protocols``, one protocol is used: the one most runs were evaluated under, ties
    going to the papers' protocol, then to the longer step cap."""
    if mix_protocols:
        for r in runs:
            r.scores_file, r.scores = r.evaluations[0] if r.evaluations else (None, None)
        keys = {protocol_key(sc) for r in runs for _, sc in r.evaluations[:1]}
        return "mixed on request: " + "; ".join(sorted(protocol_text(k) for k in keys)), {}
    counts: dict[ProtocolKey, int] = {}
    for r in runs:
        for key in dict.fromkeys(protocol_key(sc) for _, sc in r.evaluations):
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return "no evaluations", {}

    def rank(key: ProtocolKey) -> tuple[int, int, int]:
        sample = next(sc for r in runs for _, sc in r.evaluations if protocol_key(sc) == key)
        return counts[key], int(bool(_paper_comparable(sample))), key[0] or 0

    chosen = max(counts, key=rank)
    tie = _tie_text(chosen, [k for k in counts if k != chosen and counts[k] == counts[chosen]], counts, rank)
    left_out: dict[str, str] = {}
    for r in runs:
        match = [(f, sc) for f, sc in r.evaluations if protocol_key(sc) == chosen]
        r.scores_file, r.scores = match[0] if match else (None, None)
        if r.evaluations and not match:
            others = "; ".join(sorted({protocol_text(protocol_key(sc)) for _, sc in r.evaluations}))
            left_out[r.name] = (f"evaluated only under another protocol ({others}); the comparison uses "
                                f"{protocol_text(chosen)}{tie} (mix_protocols=True compares them anyway)")
    return protocol_text(chosen) + tie, left_out


def _tie_text(chosen: ProtocolKey, tied: Sequence[ProtocolKey], counts: dict[ProtocolKey, int],
              rank: Any) -> str:
    """'' without a tie; else why ``chosen`` won over the protocols that cover as many runs."""
    if not tied:
        return ""
    n = counts[chosen]
    mine = rank(chosen)
    reasons = []
    for key in tied:
        theirs = rank(key)
        why = ("the papers' protocol goes first" if mine[1] != theirs[1] else
               "the longer step cap goes first" if mine[2] != theirs[2] else "the first one found goes first")
        reasons.append(f"{protocol_text(key)} ({why})")
    return (f" — a tie: {n} run{'s' if n != 1 else ''} each under it and under " + "; ".join(reasons)
            + "; the runs of the other protocol are left out and named")


def curve_names(algo: str, keys: Iterable[str]) -> list[str]:
    """Learning-curve rows of one algorithm: its registry entry's curves that were logged, then
    every other logged ``loss/*`` term (every stage's), so no loss term goes undrawn."""
    keys = set(keys)
    curves = get_algo(algo).curves if algo in algo_names() else ()
    names = [k for k in curves if k in keys]
    return names + sorted(k for k in keys if k.startswith("loss/") and k not in names)


# ------------------------------------------------------------------------------ methods


def _flatten(value: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Nested dicts as ``{path: leaf}``; a list of dicts (the stages) by each entry's ``name``."""
    if isinstance(value, dict) and value:
        out: dict[tuple[str, ...], Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, (*path, str(k))))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten({k: x for k, x in v.items() if k != "name"}, (*path, str(v.get("name", i)))))
        return out
    return {path: value}


def run_settings(run: RunInfo) -> dict[str, Any]:
    """What makes ``run`` the method it is: its resolved configuration (``config.json``'s
    ``resolved``, flattened to dotted names such as ``settings.alpha`` or ``stages.train.lr``) and
    the parameters it does not resolve (the data ``split``, ``runs``, the planner's ``beam_width``).
    Left out: the seed, where the run writes, how it logs and checkpoints, its threads, and the
    evaluation protocol (compared by :func:`select_evaluations`); parameters whose 0 means "the
    preset's" appear only with their resolved value."""
    resolved = run.config.get("resolved") or {}
    flat = {".".join(k): v for k, v in _flatten(resolved).items() if k and not set(k) & _RUN_ONLY_RESOLVED}
    leaves = {k.rsplit(".", 1)[-1] for k in flat} | {k[-1] for k in _flatten(resolved) if k}
    params = {k: v for k, v in run.config.items()
              if k != "resolved" and k not in RUN_ONLY_KEYS and k not in _SHADOWED_PARAMS and k not in leaves
              and not k.startswith("eval_")}
    return {**params, **flat}


def _text(value: Any) -> str:
    """A setting's value as a label shows it."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return ",".join(_text(v) for v in value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _priority(key: str) -> tuple[int, str]:
    """Which of several settings that tell the same runs apart names them: what a user sets first
    (preset, games, data), then the algorithm's settings, batch size, steps, learning rate, the rest."""
    last = key.rsplit(".", 1)[-1]
    order = ["algo", "model", "preset", "games", "eval_games", "split", "runs", "init", "encoder", "mode",
             "difficulty"]
    if key in order:
        return order.index(key), key
    if key.startswith("settings."):
        return 20, key
    return {"batch_size": 30, "steps": 31, "frames": 31, "lr": 32}.get(last, 40), key


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key by its last name, or by more of its path where two keys share one."""
    out = {}
    for k in keys:
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            if sum(1 for other in keys if other == name or other.endswith("." + name)) == 1:
                break
        out[k] = name
    return out


def setting_factors(runs: Sequence[RunInfo]) -> tuple[list[str], list[dict[str, Any]]]:
    """The settings that differ between ``runs`` of one kind (:func:`run_settings`), in
    :func:`_priority` order, each once: a setting that always moves with one named before it (the
    learning rate the batch size's rule sets, a copy of a setting in each stage) is left out, it
    tells no runs apart the other does not. Returns (short names, per run ``{short name: value}``)."""
    values = [run_settings(r) for r in runs]
    keys = sorted({k for v in values for k in v}, key=_priority)
    kept: list[str] = []
    partitions: set[tuple[int, ...]] = set()
    for k in keys:
        texts = [_text(v.get(k)) for v in values]
        if len(set(texts)) < 2:
            continue
        first: dict[str, int] = {}
        partition = tuple(first.setdefault(t, len(first)) for t in texts)
        if partition in partitions:
            continue
        partitions.add(partition)
        kept.append(k)
    names = _short_names(kept)
    return [names[k] for k in kept], [{names[k]: v.get(k) for k in kept} for v in values]


def _distinguishing(levels: Sequence[dict[str, Any]], factors: Sequence[str],
                    always: Sequence[str] = ("algo", "model")) -> list[str]:
    """The fewest ``factors`` (greedily, in their order, after those in ``always``: a label names
    them anyway) whose values tell every two different ``levels`` apart: a label names these, not
    every setting that differs."""
    full = [json.dumps({k: _text(v) for k, v in lv.items()}, sort_keys=True) for lv in levels]

    def clashes(keys: Sequence[str]) -> int:
        seen: dict[tuple[str, ...], set[str]] = {}
        for lv, sig in zip(levels, full):
            seen.setdefault(tuple(_text(lv.get(k)) for k in keys), set()).add(sig)
        return sum(len(v) - 1 for v in seen.values())

    chosen = [k for k in always if k in factors]
    while clashes(chosen):
        best = min((k for k in factors if k not in chosen), key=lambda k: clashes([*chosen, k]))
        chosen.append(best)
    return [k for k in factors if k in chosen]


def method_labels(runs: Sequence[RunInfo]) -> list[str]:
    """A label per run: ``<algorithm>/<model>`` and, where runs of the same kind, algorithm and
    model differ in their resolved configuration, the one or two settings that tell them apart
    (``Scaled QL/resnet-tiny (alpha=0.1)``; :func:`method_settings` lists every setting that
    differs). Runs that differ in nothing else (seeds) share a label: they are one method's runs. A
    label that two kinds of run share gets the kind (``[online]``)."""
    labels = [r.name for r in runs]
    by_kind: dict[str | None, list[int]] = {}
    for i, r in enumerate(runs):
        if r.config:
            by_kind.setdefault(r.kind, []).append(i)
    kind_of: dict[str, set[str | None]] = {}
    for kind, idx in by_kind.items():
        names, levels = setting_factors([runs[i] for i in idx])
        by_prefix: dict[str, list[int]] = {}
        for j, i in enumerate(idx):
            by_prefix.setdefault(f"{algo_label(runs[i].algo)}/{runs[i].model}", []).append(j)
        for prefix, members in by_prefix.items():
            shown = [k for k in _distinguishing([levels[j] for j in members], names) if k not in ("algo", "model")]
            for j in members:
                extra = ", ".join(f"{k}={_text(levels[j][k])}" for k in shown)
                labels[idx[j]] = prefix + (f" ({extra})" if extra else "")
                kind_of.setdefault(labels[idx[j]], set()).add(kind)
    return [f"{lab} [{runs[i].kind}]" if len(kind_of.get(lab, ())) > 1 else lab for i, lab in enumerate(labels)]


def method_settings(runs: Sequence[RunInfo], labels: Sequence[str]) -> dict[str, dict[str, str]]:
    """``{method: {setting: value}}``: every setting that differs between the runs of the method's
    kind (:func:`setting_factors`), with the method's value: what its short label leaves out."""
    out: dict[str, dict[str, str]] = {}
    for kind in dict.fromkeys(r.kind for r in runs if r.config):
        idx = [i for i, r in enumerate(runs) if r.config and r.kind == kind]
        names, levels = setting_factors([runs[i] for i in idx])
        for i, lv in zip(idx, levels):
            out.setdefault(labels[i], {k: _text(lv[k]) for k in names if k not in ("algo", "model")
                                       and lv[k] is not None})
    return out


def method_scores(runs: Sequence[RunInfo], labels: Sequence[str]) -> tuple[dict[str, dict[str, list[float]]], str]:
    """``{method: {game: [the per-game mean score of each of its runs]}}`` for
    ``workbench.metrics``, and what a run is (always ``"seeds"``).

    A run is a seed: its mean over its evaluation episodes. Episodes never stand in for runs: under
    the papers' evaluation protocol (no sticky actions, epsilon 0.001) one policy's episodes are
    near-duplicates, so an interval over them measures nothing. A method with one run has one value
    per game: :func:`honest_aggregates` gives it its mean and no interval. Games are those every
    run of the method was evaluated on.
    """
    groups: dict[str, list[dict[str, Any]]] = {}  # label -> the scores.json of each of its runs
    for r, lab in zip(runs, labels):
        if r.scores is not None:
            groups.setdefault(lab, []).append(r.scores)
    out: dict[str, dict[str, list[float]]] = {}
    for lab, rs in groups.items():
        games = [g for g in rs[0]["per_game"] if all(g in sc["per_game"] for sc in rs)]
        out[lab] = {g: [float(sc["per_game"][g]["mean"]) for sc in rs] for g in games}
    return out, "seeds"


def _runs_per_game(per: Mapping[str, Sequence[float]]) -> int:
    return min(len(v) for v in per.values()) if per else 0


def honest_aggregates(scores: dict[str, dict[str, list[float]]], kind: M.Normalization = "human", *,
                      reps: int = 2000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """``workbench.metrics.aggregate`` of each method, with only the intervals its runs support.

    ``n`` is the fewest runs any of the method's games has (rliable needs as many per game; each
    game keeps its first ``n``). With ``n`` < 2 the point estimates of the one run and every
    ``*_ci`` None (one run measures no spread); with one game and 2-3 runs the mean's and IQM's
    interval is the runs' range (min to max: what a 95% bootstrap of so few runs is); otherwise
    rliable's stratified-bootstrap 95% CI (method ``i`` seeded ``seed + i``, as ``metrics.aggregate``
    seeds them). Each entry adds ``num_runs`` and ``interval``: what the interval is and how many
    runs it rests on."""
    out: dict[str, dict[str, Any]] = {}
    for i, (lab, per) in enumerate(scores.items()):
        n = _runs_per_game(per)
        cut = {g: list(v[:n]) for g, v in per.items()}
        entry: dict[str, Any]
        if n < 2:
            norm = M.normalize(cut, kind)
            entry = dict(M.aggregate_point(M.score_matrix(norm)))
            entry.update({f"{k}_ci": None for k in list(entry)})
            entry.update(num_games=len(norm), games=list(norm))
        else:
            entry = M.aggregate({lab: cut}, kind, reps=reps, seed=seed + i)[lab]
            if len(cut) == 1 and n <= 3:  # one game, 2-3 runs: mean and IQM are their mean; the interval their range
                vals = [float(x) for x in M.normalize(cut, kind)[next(iter(cut))]]
                entry.update({f"{k}_ci": [min(vals), max(vals)] for k in ("mean", "iqm")})
        out[lab] = {**entry, "num_runs": n, "interval": _aggregate_interval(cut, n)}
    return out


def _interval_note(agg: dict[str, dict[str, Any]]) -> str:
    """What each method's interval is and how many runs it rests on, for a figure's description."""
    return "; ".join(f"{lab}: {a['interval']}" for lab, a in agg.items())


def explain_empty(fig: go.Figure, why: str) -> go.Figure:
    """Write ``why`` inside ``fig`` when it draws nothing (no trace with a point, no table row), so
    an empty plot says what it lacks instead of showing blank axes."""
    for tr in fig.data:
        if tr.type == "table":
            if any(len(col) for col in (tr.cells.values or ())):
                return fig
            continue
        if any(getattr(tr, a, None) is not None and len(getattr(tr, a)) for a in ("x", "y")):
            return fig
    fig.add_annotation(text=why, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=14, color="#b00"))
    return fig


def paper_reference_points(games: Iterable[str]) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """The papers' numbers for comparison.

    Returns (per-game raw scores of selected paper methods restricted to ``games`` — only methods
    with every game — as ``{"paper: <method> [<table>]": {game: score}}``, and the printed
    aggregate IQMs of methods whose names give a parameter count, as scaling reference points).
    """
    games = list(games)
    per_game: dict[str, dict[str, float]] = {}
    for table, methods in _PAPER_METHODS.items():
        for m in methods:
            col = pt.TABLES[table].get(m, {})
            if games and all(g in col for g in games):
                per_game[f"paper: {m} [{table}]"] = {g: col[g] for g in games}
    points = []
    for table in ("scaled_ql_c1", "jowa_t2"):
        if pt.NORMALIZATION.get(table) != "human":
            continue
        for m, agg in pt.AGGREGATES[table].items():
            size = re.search(r"\((\d+(?:\.\d+)?)M\)", m)
            # Only the Q-learning / world-model methods this workbench implements.
            if size and "iqm" in agg and re.match(r"(Scaled QL|SQL|JOWA) \(", m):
                points.append({"label": f"{m} [{table}]", "params": float(size.group(1)) * 1e6,
                               "iqm": float(agg["iqm"])})
    return per_game, points


def released_reference_scores(runs: Sequence[RunInfo], games: Iterable[str]) -> dict[str, dict[str, float]]:
    """For runs converted from JOWA's released checkpoints (``resolved.converted_from``,
    :mod:`workbench.convert`): the release's own per-game mean scores
    (:func:`workbench.reference.released_jowa_means`, 16 episodes per game) as
    ``{"released JOWA-<size>": {game: score}}``, one entry per converted size, when the release
    has every one of ``games`` (its 15 pretraining games)."""
    games = list(games)
    found = [(r.config.get("resolved") or {}).get("converted_from") for r in runs]
    sizes = sorted({str(cf["size"]) for cf in found if isinstance(cf, dict) and cf.get("size")})
    out: dict[str, dict[str, float]] = {}
    for size in sizes:
        means = released_jowa_means(size)
        if games and all(g in means for g in games):
            out[f"released JOWA-{size.upper()}"] = {g: means[g] for g in games}
    return out


@dataclass
class AnalysisReport:
    """What :func:`build_figures` made: figures, files, skipped figures with reasons, runs."""

    out_dir: Path
    runs: list[RunInfo]
    labels: list[str]
    figures: dict[str, go.Figure] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    saved: dict[str, FigureSaveStatus] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    runs_are: str = "episodes"
    protocol: str = ""
    left_out: dict[str, str] = field(default_factory=dict)
    comparable_to_papers: bool | None = None
    finetune_runs: list[RunInfo] = field(default_factory=list)
    """Runs of kind 'finetune' (drawn in the transfer figure only)."""
    not_runs: dict[str, str] = field(default_factory=dict)
    """Folders given that are not run folders, and why (left out of everything)."""
    intervals: dict[str, str] = field(default_factory=dict)
    """Per method: what its aggregates' interval is and how many runs it rests on."""

    def summary(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol, "comparable_to_papers": self.comparable_to_papers,
            "left_out": self.left_out, "not_runs": self.not_runs, "intervals": self.intervals,
            "out_dir": str(self.out_dir),
            "runs": {r.name: {"method": lab, "found": r.found, "problems": r.problems}
                     for r, lab in zip(self.runs, self.labels)},
            "figures": {k: {"html": str(s.html), "png": str(s.png) if s.png else None, "note": s.message}
                        for k, s in self.saved.items()},
            "skipped": self.skipped,
            "bootstrap_runs_are": self.runs_are,
        }

    def display(self) -> None:
        """Show every figure (in a notebook)."""
        from IPython.display import display  # noqa: PLC0415  (IPython: optional, notebook display only)

        for fig in self.figures.values():
            display(fig)


def _learning_metrics(runs: Sequence[RunInfo]) -> list[str]:
    """Rows of the learning-curve figure: each run's algorithm's own curves (its registry
    entry's ``curves``), in order, each only when some run logs it; the total ``loss`` first when
    runs of different algorithms are drawn together (the one key every run shares)."""
    keys = {k for r in runs for rec in r.metrics for k in rec}
    algos = list(dict.fromkeys(r.algo for r in runs if r.metrics))
    names: list[str] = []
    for algo in algos:
        own = {k for r in runs if r.algo == algo for rec in r.metrics for k in rec}
        names += [k for k in curve_names(algo, own) if k not in names]
    if "loss" in keys and (len(algos) > 1 or not names):
        names = ["loss"] + names
    names += [k for k in ("eval/iqm",) if k in keys]
    return names


def scaling_points(runs: Sequence[RunInfo], labels: Sequence[str], agg: dict[str, dict[str, Any]]
                   ) -> list[dict[str, Any]]:
    """The scaling figure's points: per method with a checkpoint, its algorithm, parameters and
    IQM with CI (``agg``: ``workbench.metrics.aggregate`` of the runs grouped by ``labels``)."""
    points = []
    for lab in agg:
        members = [r for r, label in zip(runs, labels) if label == lab and r.params]
        if members:
            points.append({"family": members[0].algo, "params": members[0].params, "iqm": agg[lab]["iqm"],
                           "iqm_ci": agg[lab]["iqm_ci"], "label": lab})
    return points


def _runs_comparable(runs: Sequence[RunInfo]) -> bool | None:
    """Whether the evaluations the comparison uses follow the papers' protocol (None: unknown)."""
    used = [r.scores for r in runs if r.scores is not None]
    flags = [_paper_comparable(sc) for sc in used]
    return None if not used or None in flags else all(flags)


# ------------------------------------------------------------------------------ figure recipes


@dataclass(frozen=True)
class _Analysis:
    """What :func:`build_figures`' recipes draw from; the derived numbers are computed on first use."""

    run_dirs: Sequence[str | os.PathLike[str]]
    runs: list[RunInfo]
    labels: list[str]
    finetuned: list[RunInfo]
    protocol: str
    comparable: bool | None
    ours: dict[str, dict[str, list[float]]]
    runs_are: str
    include_paper_reference: bool
    reps: int
    seed: int

    @property
    def caveat(self) -> str:
        """Scores of episodes cut at a small cap are partial returns: every title says so."""
        return "" if self.comparable is not False else (
            f" — {self.protocol}: truncated episodes, not comparable to the papers")

    @property
    def run_note(self) -> str:
        return ("runs = seeds (per-game mean of each seed; evaluation episodes are never runs; a method "
                "with one run gets no interval)")

    def runs_of(self, method: str) -> int:
        """Runs per game ``method`` has (the fewest of its games)."""
        return _runs_per_game(self.ours.get(method, {}))

    @property
    def games(self) -> list[str]:
        return sorted(set.intersection(*(set(v) for v in self.ours.values()))) if self.ours else []

    @cached_property
    def kind(self) -> M.Normalization:
        """Atari: human-normalized; MinAtar: by its scripted expert (workbench.reference's scores.csv)."""
        return M.default_normalization(sorted({g for v in self.ours.values() for g in v}))

    @property
    def normed(self) -> str:
        return f"{self.kind}-normalized" if self.kind != "none" else "raw (no common reference score)"

    @cached_property
    def aggregates(self) -> tuple[dict[str, dict[str, Any]], str | None]:
        """(``metrics.aggregate`` of our methods, why it failed)."""
        if not self.ours:
            return {}, None
        try:
            return honest_aggregates(self.ours, self.kind, reps=self.reps, seed=self.seed), None
        except ValueError as exc:
            return {}, f"metrics.aggregate failed: {exc}"

    @property
    def agg(self) -> dict[str, dict[str, Any]]:
        return self.aggregates[0]

    @cached_property
    def paper(self) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
        """The papers' per-game scores and printed IQMs (:func:`paper_reference_points`), when drawn."""
        if self.include_paper_reference and self.comparable is not False and self.kind == "human":
            per_game, points = paper_reference_points(self.games)
            return {**per_game, **released_reference_scores(self.runs, self.games)}, points
        return {}, []

    @cached_property
    def has_online(self) -> bool:
        return bool(online_runs(self.run_dirs))


def _curves(a: _Analysis) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    curves = {f"{lab} [{r.name}]": r.metrics for r, lab in zip(a.runs, a.labels) if r.metrics}
    return curves, _learning_metrics(a.runs)


def _no_curves(a: _Analysis) -> str | None:
    curves, names = _curves(a)
    return None if curves and names else "no metrics.jsonl records with loss metrics"


def _learning_curves(a: _Analysis) -> Built:
    curves, names = _curves(a)
    return F.make_learning_curve_figure(curves, names), (
        f"Training metrics {', '.join(names)} against gradient step, from each run's metrics.jsonl "
        "(each algorithm draws the curves its registry entry names; a run appears in the rows of the metrics "
        "it logs; `loss` is each run's total; JOWA's stage 1 comes before its stage 2 on the step axis).")


def _no_aggregates(a: _Analysis) -> str | None:
    agg, error = a.aggregates
    return None if agg else error or "no run has evaluation scores"


def _aggregates(a: _Analysis) -> Built:
    """Aggregates with CIs (+ paper methods on the same games, one run per game: no CI)."""
    paper_scores = a.paper[0]
    shown = dict(a.agg)
    if paper_scores:
        shown.update(M.aggregate(paper_scores, "human", reps=a.reps, seed=a.seed))
    fig = F.make_aggregate_figure(shown, title=f"Aggregate {a.normed} scores (95% bootstrap CIs; none over 1 run)"
                                  + a.caveat)
    for tr in fig.data:  # the hover says what each interval rests on
        entry = a.agg.get(tr.y[0]) if tr.y else None
        if entry is not None:
            tr.hovertext = [f"{tr.y[0]}<br>{float(tr.x[0]):.3f}<br>{entry['interval']}"]
    return fig, (
        f"{a.normed.capitalize()} median, IQM, mean and optimality gap per method (workbench.metrics.aggregate, "
        f"{a.reps} reps, {a.run_note}). Intervals, and the runs each rests on: {_interval_note(a.agg)}. "
        + ("Bars named 'paper: ...' are the papers' per-game raw scores (workbench.reference.paper_tables) "
           f"on the same games ({', '.join(a.games)}), one score per game, so no interval."
           + (" Bars named 'released JOWA-<size>' (drawn for runs converted from the released checkpoints) are the "
              "release's own per-game means over its 16 episodes (workbench.reference.released_jowa_means)."
              if any(k.startswith("released ") for k in paper_scores) else "")
           if paper_scores else "No paper reference bars (none covers these games or disabled)."))


def _paper_reference_not_drawn(a: _Analysis) -> str | None:
    if a.include_paper_reference and a.comparable is False:
        return ("the papers' numbers are full 108,000-frame episodes; these evaluations "
                f"are not ({a.protocol}), so they are not drawn together")
    return None


def _needs_aggregates(a: _Analysis) -> str | None:
    return None if a.agg else "no aggregates"


def _score_axis(kind: str) -> str:
    """The performance profile's x label for a normalization kind (``human``, ``expert``, ``dqn``, ``none``)."""
    if kind == "none":
        return "Raw score (τ)"
    name = "DQN" if kind == "dqn" else kind.capitalize()
    return f"{name}-normalized score (τ)"


def _performance_profiles(a: _Analysis) -> Built:
    prof = M.performance_profile(a.ours, a.kind, reps=a.reps, seed=a.seed)
    single = [m for m in prof["methods"] if a.runs_of(m) < 2]
    return F.make_performance_profile_figure(
        prof["taus"], {m: v["profile"] for m, v in prof["methods"].items()},
        {m: [v["lo"], v["hi"]] for m, v in prof["methods"].items() if m not in single},
        title="Performance profiles" + a.caveat, xlabel=_score_axis(a.kind)), (
        f"Fraction of runs with {a.normed} score above tau, with 95% CI bands "
        f"(workbench.metrics.performance_profile, {a.run_note}); runs per game: "
        + ", ".join(f"{m}: {a.runs_of(m)}" for m in prof["methods"])
        + (f". One run, so no band: {', '.join(single)}." if single else "."))


def _method_pairs(a: _Analysis) -> list[tuple[str, str]]:
    """Unordered pairs of methods evaluated on the same games."""
    methods = list(a.ours)
    return [(x, y) for i, x in enumerate(methods) for y in methods[i + 1:] if set(a.ours[x]) == set(a.ours[y])]


def _no_method_pairs(a: _Analysis) -> str | None:
    if len(a.ours) < 2:
        return f"needs >= 2 methods with scores, found {len(a.ours)}"
    return None if _method_pairs(a) else "no two methods were evaluated on the same games"


def _probability_of_improvement(a: _Analysis) -> Built:
    poi = M.probability_of_improvement(a.ours, _method_pairs(a), a.kind, reps=a.reps, seed=a.seed)
    single = [k for k, v in poi.items() if min(a.runs_of(v["x"]), a.runs_of(v["y"])) < 2]
    for k in single:
        poi[k]["ci"] = None
    fig = F.make_probability_of_improvement_figure(poi, title="Probability of improvement" + a.caveat)
    for tr in fig.data:
        tr.hovertext = [f"P({v['x']} > {v['y']}) = {v['probability']:.3f}<br>"
                        + (f"no interval: {min(a.runs_of(v['x']), a.runs_of(v['y']))} run" if k in single else
                           f"95% CI [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}] over {a.runs_of(v['x'])} vs "
                           f"{a.runs_of(v['y'])} runs per game") for k, v in poi.items()]
    return fig, (
        f"P(X > Y) for each pair of methods on the same games with 95% CIs "
        f"(workbench.metrics.probability_of_improvement, {a.run_note})"
        + (f"; a method with one run, so no interval: {', '.join(single)}." if single else "."))


def _no_scaling_points(a: _Analysis) -> str | None:
    points = scaling_points(a.runs, a.labels, a.agg)
    return None if points else "no run has both a checkpoint and evaluation scores"


def _scaling(a: _Analysis) -> Built:
    """Parameters vs IQM, one line per algorithm."""
    paper_points = a.paper[1]
    return F.make_scaling_figure(scaling_points(a.runs, a.labels, a.agg), paper_points or None,
                                 title="Scaling: parameters vs IQM" + a.caveat), (
        f"Parameters (from each checkpoint's safetensors header) vs {a.normed} IQM with 95% CIs (none for a method "
        "with one run), one line per algorithm"
        + ("; open diamonds are the papers' printed IQMs (workbench.reference.paper_tables.AGGREGATES, "
           "their own game sets, not ours)." if paper_points else "."))


def _ablation_table(a: _Analysis) -> Built:
    rows = []
    for lab, agg in a.agg.items():
        members = [r for r, label in zip(a.runs, a.labels) if label == lab]
        rows.append({"method": lab, "runs": len(members), "games": agg["num_games"],
                     "params": f"{members[0].params:,}" if members[0].params else "",
                     "IQM": agg["iqm"], "IQM interval": agg["iqm_ci"] if agg["iqm_ci"] is not None else "none (1 run)",
                     "median": agg["median"], "mean": agg["mean"], "optimality gap": agg["optimality_gap"],
                     "interval": agg["interval"]})
    return F.make_ablation_table_figure(rows, title="Methods and ablations" + a.caveat), (
        f"One row per method (named by the settings of their resolved configurations that tell the runs apart): "
        f"{a.normed} aggregates from workbench.metrics.aggregate ({a.run_note}).")


def _online_curves(a: _Analysis) -> Built:
    """Paper 000, Figure A.1, from runs of kind 'online'."""
    return online_learning_curve_figure(a.run_dirs), (
        "Evaluation score against training frames of each online run (curve.json), one panel per game "
        "variant, as in Figure A.1.")


def _no_finished_online(a: _Analysis) -> str | None:
    return None if online_final_scores(a.run_dirs) else "no online run has finished its planned frames"


def _online_finetune(a: _Analysis) -> Built:
    """Paper 000, Figure 8, from runs of kind 'online'."""
    selection = online_lr_selection(a.run_dirs)
    chosen = "; ".join(f"{variant}, {init}: {_lr_note(sel)}" for variant, per in selection.items()
                       for init, sel in per.items())
    single = [f"{variant}, {init}" for variant, per in selection.items() for init, sel in per.items()
              if len(sel["scores"]) < 2]
    return online_finetune_figure(a.run_dirs), (
        "Final evaluation score per game variant and initialization (scratch vs pretrained encoder) at the best "
        "learning rate per game and method, as in Figure 8 (Appendix B.4: the paper sweeps {1e-5, 5e-5} and picks "
        "the best rate per game for every method); runs of the other rates are not pooled in. The bar is the mean "
        "over that rate's runs, the error bar their min and max (their range)"
        + (f"; one run, so no interval: {', '.join(single)}" if single else "") + f". Chosen: {chosen}.")


def _transfer(a: _Analysis) -> Built:
    """Offline fine-tuning (Scaled QL Figure 7, JOWA Table 3) from runs of kind 'finetune'."""
    try:
        return transfer_figure(a.finetuned, reps=a.reps, seed=a.seed, include_paper_reference=a.include_paper_reference)
    except ValueError as exc:
        raise Skip(str(exc)) from exc


# What an empty figure of build_figures says inside its plot.
_EMPTY = {
    "learning_curves": "nothing to draw: no run logged these metrics (metrics.jsonl)",
    "online_curves": "nothing to draw: no online run has evaluated yet (its curve.json is empty)",
}

# build_figures' figures, in order. "paper reference" draws nothing: it reports why the papers'
# bars and marks are left out of the aggregates and scaling figures.
_RECIPES: tuple[FigureRecipe[_Analysis], ...] = (
    FigureRecipe("learning_curves", _learning_curves, _no_curves),
    FigureRecipe("aggregates", _aggregates, _no_aggregates),
    FigureRecipe("paper reference", None, _paper_reference_not_drawn),
    FigureRecipe("performance_profiles", _performance_profiles, _needs_aggregates),
    FigureRecipe("probability_of_improvement", _probability_of_improvement, _no_method_pairs),
    FigureRecipe("scaling", _scaling, _no_scaling_points),
    FigureRecipe("ablation_table", _ablation_table, _needs_aggregates),
    FigureRecipe("online_curves", _online_curves, applies=lambda a: a.has_online),
    FigureRecipe("online_finetune", _online_finetune, _no_finished_online, applies=lambda a: a.has_online),
    FigureRecipe("transfer", _transfer, applies=lambda a: bool(a.finetuned)),
)


def build_figures(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] | None = None,
    include_paper_reference: bool = True,
    *,
    png: bool = True,
    reps: int = 2000,
    seed: int = 0,
    mix_protocols: bool = False,
    readme_notes: str | os.PathLike[str] = "",
) -> AnalysisReport:
    """Read runs, draw every figure the data supports, write PNG + HTML and ``README.md``.

    ``readme_notes`` (a markdown file, e.g. a study's findings) opens the README, above the generated
    account of the runs and figures, so a re-run of the notebook rewrites both.

    Figures (``_RECIPES``): ``learning_curves``, ``aggregates`` (median / IQM / mean / optimality gap
    with 95% CIs), ``performance_profiles``, ``probability_of_improvement`` (needs >= 2 methods on
    the same games), ``scaling`` (parameters vs IQM), ``ablation_table``, and from online and
    fine-tuning runs ``online_curves``, ``online_finetune``, ``transfer``. A figure the data
    cannot support is skipped with its reason in the report and README; a drawn figure with nothing
    in it says why inside the plot. Runs evaluated under another protocol than the comparison's are
    left out (and named) unless ``mix_protocols``; folders that are not run folders (:func:`not_a_run`)
    are left out and named too.

    ``out_dir`` defaults to :data:`DEFAULT_OUT_DIR` (``runs/analysis`` of the project): the
    repository's tracked ``figures/`` is written only when named.
    """
    if not run_dirs:
        raise ValueError("build_figures: no run directories given (check the glob pattern)")
    if readme_notes and not Path(readme_notes).is_file():
        raise FileNotFoundError(f"build_figures: readme_notes {str(readme_notes)!r} is not a file")
    notes = Path(readme_notes).read_text() if readme_notes else ""
    not_runs = {str(d): why for d in run_dirs if (why := not_a_run(d)) is not None}
    run_dirs = [d for d in run_dirs if str(d) not in not_runs]
    runs = [read_run(d) for d in run_dirs]
    # Fine-tuning runs are compared among themselves (the transfer figure), not with pretraining.
    finetuned = [r for r in runs if r.kind == "finetune"]
    runs = [r for r in runs if r.kind != "finetune"]
    labels = method_labels(runs)
    rep = AnalysisReport(out_dir=Path(out_dir) if out_dir is not None else resolve_path(DEFAULT_OUT_DIR), runs=runs,
                         labels=labels, finetune_runs=finetuned, not_runs=not_runs)
    rep.protocol, rep.left_out = select_evaluations(runs, mix_protocols)
    rep.comparable_to_papers = _runs_comparable(runs)
    ours, rep.runs_are = method_scores(runs, labels)
    analysis = _Analysis(
        run_dirs=run_dirs, runs=runs, labels=labels, finetuned=finetuned, protocol=rep.protocol,
        comparable=rep.comparable_to_papers, ours=ours, runs_are=rep.runs_are,
        include_paper_reference=include_paper_reference, reps=reps, seed=seed)
    drawn = draw(_RECIPES, analysis)
    rep.figures, rep.descriptions, rep.skipped = drawn.figures, drawn.descriptions, drawn.skipped
    rep.intervals = {lab: agg["interval"] for lab, agg in analysis.agg.items()}
    for name, fig in rep.figures.items():
        explain_empty(fig, _EMPTY.get(name, "nothing to draw: these runs hold no data for this figure"))
    paths: dict[str | os.PathLike[str], Any] = {rep.out_dir / n: f for n, f in rep.figures.items()}
    rep.saved = dict(zip(rep.figures, save_figures(paths, png=png)))
    _write_readme(rep, notes)
    return rep


# ------------------------------------------------------------------------------ online fine-tuning


def _variant_title(resolved: dict[str, Any]) -> str:
    games = resolved.get("games") or ["?"]
    title = str(games[0])
    if resolved.get("mode") is not None:
        title += f" mode {resolved['mode']}"
    if resolved.get("difficulty") is not None:
        title += f" difficulty {resolved['difficulty']}"
    return title


def _init_label(resolved: dict[str, Any]) -> str:
    """Figure 8's groups: 'scratch' or 'pretrained (<encoder>)', with the model."""
    init = str(resolved.get("init", "scratch"))
    label = "scratch" if init == "scratch" else f"pretrained ({init.split('-', 1)[-1]})"
    return f"{label}, {resolved.get('model', '?')}"


def online_runs(run_dirs: Sequence[str | os.PathLike[str]]) -> list[tuple[Path, dict[str, Any], list[dict[str, Any]]]]:
    """(folder, resolved config, evaluation curve) of every ``online`` run among ``run_dirs``."""
    out = []
    for d in run_dirs:
        run = Run(Path(d))
        try:
            if run.kind != "online":
                continue
        except (FileNotFoundError, ValueError):
            continue
        path = run.path / "curve.json"
        curve = json.loads(path.read_text()) if path.is_file() else []
        out.append((run.path, run.resolved, list(curve)))
    return out


def online_learning_curve_figure(run_dirs: Sequence[str | os.PathLike[str]]) -> go.Figure:
    """Figure A.1: evaluation score vs training frames of online runs, one panel per variant."""
    curves: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for path, resolved, curve in online_runs(run_dirs):
        label = f"{_init_label(resolved)} [{path.name}]"
        curves.setdefault(_variant_title(resolved), {})[label] = [(float(c["frames"]), float(c["score"]))
                                                                  for c in curve]
    if not curves:
        raise ValueError(f"no online runs (config kind 'online') among {[str(d) for d in run_dirs]}")
    return F.make_online_curves_figure(curves)


def _run_lr(resolved: dict[str, Any]) -> float | None:
    """The Adam learning rate an online run used (``resolved["settings"]["lr"]``; None if unrecorded)."""
    lr = (resolved.get("settings") or {}).get("lr")
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None


def _lr_text(lr: float | None) -> str:
    return "lr not recorded" if lr is None else f"lr {lr:g}"


def online_lr_selection(run_dirs: Sequence[str | os.PathLike[str]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Figure 8's learning-rate choice: ``{variant: {initialization: {"lr", "scores", "by_lr"}}}``.

    Paper 000, Appendix B.4: "We swept over two learning rates, {1e-05, 5e-05} for all the methods
    and picked the best learning rate per-game for all the methods". So runs are grouped by game
    variant, initialization *and* learning rate (``resolved["settings"]["lr"]``), and per variant and
    initialization the learning rate whose runs have the highest mean final score is kept (``lr``;
    a tie goes to the smaller rate); ``scores`` are its runs' final scores, ``by_lr`` every rate's.
    A run counts once it has reached its planned frames (its last curve point)."""
    pooled: dict[str, dict[str, dict[float | None, list[float]]]] = {}
    for _, resolved, curve in online_runs(run_dirs):
        if not curve or curve[-1]["frames"] < int(resolved.get("agent_steps", 0)) * 4:
            continue
        pooled.setdefault(_variant_title(resolved), {}).setdefault(_init_label(resolved), {}).setdefault(
            _run_lr(resolved), []).append(float(curve[-1]["score"]))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for variant, per_init in pooled.items():
        for init, by_lr in per_init.items():
            order = sorted(by_lr, key=lambda lr: (-float(np.mean(by_lr[lr])), -1.0 if lr is None else lr))
            best = order[0]
            out.setdefault(variant, {})[init] = {"lr": best, "scores": list(by_lr[best]),
                                                 "by_lr": {lr: list(by_lr[lr]) for lr in sorted(
                                                     by_lr, key=lambda x: -1.0 if x is None else x)}}
    return out


def online_final_scores(run_dirs: Sequence[str | os.PathLike[str]]) -> dict[str, dict[str, list[float]]]:
    """``{variant: {initialization: [final evaluation score of each run]}}`` (Figure 8's bars): the
    runs of the best learning rate per variant and initialization (:func:`online_lr_selection`), as
    the paper reports; runs of other learning rates are not pooled in."""
    return {variant: {init: sel["scores"] for init, sel in per.items()}
            for variant, per in online_lr_selection(run_dirs).items()}


def _lr_note(sel: dict[str, Any]) -> str:
    """A bar's learning-rate line: the rate kept and every swept rate's mean final score."""
    swept = ", ".join(f"{_lr_text(lr)}: mean {np.mean(v):.4g} over {len(v)} run(s)" for lr, v in sel["by_lr"].items())
    return f"best {_lr_text(sel['lr'])} (swept: {swept})"


def online_finetune_figure(run_dirs: Sequence[str | os.PathLike[str]]) -> go.Figure:
    """Figure 8 (right): final score per variant, pretrained vs scratch, at the best learning rate
    per game and method (:func:`online_lr_selection`), min/max over that rate's runs."""
    selection = online_lr_selection(run_dirs)
    if not selection:
        raise ValueError(f"no finished online runs among {[str(d) for d in run_dirs]}")
    bars = {variant: {init: sel["scores"] for init, sel in per.items()} for variant, per in selection.items()}
    notes = {variant: {init: _lr_note(sel) for init, sel in per.items()} for variant, per in selection.items()}
    return F.make_finetune_bars_figure(
        bars, notes=notes,
        title="Online fine-tuning on game variants at the best learning rate per game and method "
              "(bar: mean; error bars: min/max over that rate's runs)")


# ------------------------------------------------------------------------------ offline fine-tuning

def transfer_label(resolved: dict[str, Any]) -> str:
    """A fine-tuning run's method in the transfer figure: algorithm, init, encoder, model, and the
    report rule when it selects on the evaluation environment."""
    algo = str(resolved.get("algo", "?"))
    name = algo_label(algo)
    # Runs record whether they started from the checkpoint; older ones only name the method.
    pretrained = resolved.get("pretrained", "transfer" in str(resolved.get("method", "")))
    if pretrained:
        detail = "pretrained" + (", frozen encoder" if resolved.get("frozen_parts") else "")
    else:
        detail = "scratch"
    label = f"{name} ({detail}), {resolved.get('model', '?')}"
    if resolved.get("report") == "best_snapshot":
        label += " [best snapshot: selected on the eval env]"
    return label


def transfer_scores(runs: Sequence[RunInfo]) -> tuple[dict[str, dict[str, list[float]]], str, bool | None]:
    """``({method: {game: [raw score of each run]}}, what a run is, comparable to the papers)``
    from fine-tuning runs' reported scores (``eval/scores.json``). A run is a seed: its mean over
    its evaluation episodes. Episodes never stand in for runs: under the papers' evaluation protocol
    (no sticky actions, epsilon 0.001) one policy's episodes are near-duplicates, so an interval over
    them measures nothing. A method with one seed on a game gets no interval (``transfer_figure``)."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    flags: list[bool | None] = []
    for r in runs:
        resolved = r.config.get("resolved") or {}
        reported = [sc for f, sc in r.evaluations if f.name == "scores.json"]
        games = resolved.get("eval_games") or []
        if not reported or not games or games[0] not in reported[0]["per_game"]:
            continue
        flags.append(_paper_comparable(reported[0]))
        groups.setdefault(transfer_label(resolved), {}).setdefault(games[0], []).append(
            reported[0]["per_game"][games[0]])
    if not groups:
        raise ValueError("no fine-tuning run has its reported scores (eval/scores.json)")
    out = {lab: {g: [float(x["mean"]) for x in v] for g, v in per.items()} for lab, per in groups.items()}
    comparable = None if None in flags else all(bool(f) for f in flags)
    return out, "seeds", comparable


def _aggregate_interval(per: dict[str, list[float]], n: int) -> str:
    """What an aggregate's interval over ``per`` (``{game: normalized runs}``, ``n`` runs each) is."""
    games = len(per)
    if n < 2:
        return f"no interval: {n} run per game ({games} game{'s' if games != 1 else ''})"
    if games == 1 and n <= 3:
        return f"range (min to max) of {n} runs"
    return f"95% CI, stratified bootstrap over {games} game{'s' if games != 1 else ''} x {n} runs"


def transfer_figure(runs: Sequence[RunInfo], *, reps: int = 2000, seed: int = 0,
                    include_paper_reference: bool = True) -> tuple[go.Figure, str]:
    """Scaled QL Figure 7 / JOWA Table 3 from fine-tuning runs: DQN-normalized scores per held-out
    game and method, aggregates with their intervals, and the papers' values as marked references.
    Returns (figure, description).

    Runs are seeds (:func:`transfer_scores`). Per game, the error bar is the seeds' range (min to
    max); with one seed there is none. Aggregates (mean, IQM over ``n`` runs per game, ``n`` the
    fewest any game has) carry rliable's stratified-bootstrap 95% CI (``workbench.metrics.aggregate``)
    when every game has 2 or more runs, the range when one game has 2 or 3, and no interval with 1;
    the figure and the description say which, and on how many runs."""
    raw, _, comparable = transfer_scores(runs)
    games = sorted({g for per in raw.values() for g in per})
    no_ref = [g for g in games if not M.has_reference(g, "dqn")]
    ours = {lab: {g: v for g, v in per.items() if g not in no_ref} for lab, per in raw.items()}
    ours = {lab: per for lab, per in ours.items() if per}
    if not ours:
        raise ValueError(f"no DQN reference score for {', '.join(no_ref)} (games with one: "
                         f"{', '.join(g for g in M.reference_scores() if M.has_reference(g, 'dqn'))})")
    per_game = {lab: {g: [float(x) for x in M.normalize_score(g, np.asarray(v, float), "dqn")] for g, v in per.items()}
                for lab, per in ours.items()}
    aggregates = honest_aggregates(ours, "dqn", reps=reps, seed=seed)
    paper_games = {g: {m: pt.JOWA_T17[m][g] for m in pt.methods("jowa_t17") if g in pt.JOWA_T17[m]} for g in games}
    paper_per_game: dict[str, dict[str, float]] = {}
    paper_agg: dict[str, dict[str, float]] = {}
    notes = []
    if include_paper_reference and comparable is False:
        notes.append("the papers' values are not drawn: these evaluations stop episodes early (not comparable)")
    elif include_paper_reference:
        for m in pt.methods("jowa_t17"):
            col = {g: float(M.normalize_score(g, paper_games[g][m], "dqn")) for g in games if m in paper_games[g]}
            if col:
                paper_per_game[f"{m} [JOWA Table 17]"] = col
        paper_agg = {f"{m} [JOWA Table 3, its 5 games]": dict(v) for m, v in pt.JOWA_T17_AGGREGATES.items()}
    # Scaled QL Figure 7 prints no per-game values: its two claims, next to our own ratio.
    def mean_of(lab: str) -> float:
        return float(np.mean([np.mean(v) for v in per_game[lab].values()]))

    ratios = []
    for lab in per_game:
        if "(pretrained" in lab:
            twin = lab.split(" (")[0] + " (scratch)," + lab.split("),", 1)[1]
            if twin in per_game and set(per_game[twin]) == set(per_game[lab]) and mean_of(twin) > 0:
                ratios.append(f"ours: {lab} / scratch = {mean_of(lab) / mean_of(twin):.2f}")
    claims = "; ".join(f"{k} = {v:.2f}" for k, v in pt.SCALED_QL_FIG7_CLAIMS.items())
    note = f"paper 000 Fig. 7 (no per-game values printed): {claims}" + (f". {'; '.join(ratios)}" if ratios else "")
    caveat = "" if comparable is not False else " — truncated episodes, not comparable to the papers"
    fig = F.make_transfer_figure(per_game, aggregates, paper_per_game=paper_per_game or None,
                                 paper_aggregates=paper_agg or None, title="Offline fine-tuning to held-out games"
                                 + caveat, note=note)
    single = sorted(f"{lab} on {g}" for lab, per in per_game.items() for g, v in per.items() if len(v) < 2)
    run_note = "runs = seeds (per-game mean of each seed; evaluation episodes are never runs)"
    intervals = "; ".join(f"{lab}: {a['interval']}" for lab, a in aggregates.items())
    text = ("DQN-normalized scores of fine-tuning runs per held-out game and method (bar: mean over runs, error bar: "
            "the runs' range, min to max; none where a method has 1 run) and their mean and IQM "
            f"(workbench.metrics.aggregate, {reps} reps, {run_note}). Aggregate intervals: {intervals}. "
            + (f"One run, so no interval: {', '.join(single)}. " if single else "")
            + "As Scaled QL Figure 7 and JOWA Table 3. "
            + ("Open markers named 'paper: ...' are JOWA Table 17's per-game scores and Table 3's printed aggregates "
               "(workbench.reference.paper_tables), one printed number each. " if paper_per_game or paper_agg else "")
            + f"Scaled QL Figure 7's claims: {claims}" + (f"; {'; '.join(ratios)}" if ratios else "") + ". "
            + (f"Left out (no DQN reference score): {', '.join(no_ref)}. " if no_ref else "")
            + " ".join(n[0].upper() + n[1:] + "." for n in notes)
            + " Methods marked [best snapshot] chose their checkpoint on the evaluation environment (optimistic).")
    return fig, text


def _truncation_note(scores: dict[str, Any] | None) -> str:
    """Flag evaluations cut short by a step cap: their scores are partial episodes."""
    per_game = (scores or {}).get("per_game", {})
    flags = [t for g in per_game.values() for t in g.get("truncated", [])]
    if not any(flags):
        return ""
    return (f"; **{sum(flags)} of {len(flags)} evaluation episodes were truncated at the step cap**, "
            "so their scores are partial-episode returns, not comparable to full episodes")


def _write_readme(rep: AnalysisReport, notes: str = "") -> None:
    lines = [notes.rstrip(), ""] if notes.strip() else []
    lines += ["# Figures" if not lines else "# How these figures were made", "",
             "Written by `workbench.viz.analysis.build_figures` (notebook `notebooks/06_analysis.ipynb`). "
             "Do not edit by hand: re-run the notebook.", "", "## Runs", ""]
    for r, lab in zip(rep.runs, rep.labels):
        lines.append(f"- `{shown_path(r.path)}` → method **{lab}**; found: {', '.join(r.found) or 'nothing'}"
                     + (f"; problems: {'; '.join(r.problems)}" if r.problems else "")
                     + _truncation_note(r.scores))
    if rep.finetune_runs:
        lines += ["", "Fine-tuning runs (the `transfer` figure only):", ""]
        lines += [f"- `{shown_path(r.path)}` → **{transfer_label(r.config.get('resolved') or {})}**" + _truncation_note(
            r.evaluations[0][1] if r.evaluations else None) for r in rep.finetune_runs]
    if rep.not_runs:
        lines += ["", "Not run folders, left out (a run folder has a config.json of a workbench run kind):", ""]
        lines += [f"- `{shown_path(d)}`: {why}" for d, why in rep.not_runs.items()]
    settings = method_settings(rep.runs, rep.labels)
    if any(settings.values()):
        lines += ["", "Methods: runs of one method differ only in seed (and where they write, log or are "
                  "evaluated); every setting of the resolved configurations that differs between methods:", ""]
        lines += [f"- **{lab}** ({rep.labels.count(lab)} run{'s' if rep.labels.count(lab) != 1 else ''}): "
                  + ", ".join(f"{k}={v}" for k, v in values.items()) for lab, values in settings.items()]
    lines += ["", "## Evaluation protocol", "", f"Compared: {rep.protocol}."]
    if rep.comparable_to_papers is False:
        lines.append("**These evaluations stop episodes early (or change the protocol): the scores are not "
                     "comparable to the papers' numbers.**")
    if rep.left_out:
        lines += ["", "Left out of the comparison:", ""]
        lines += [f"- `{name}`: {why}" for name, why in rep.left_out.items()]
    lines += ["", "## Figures", ""]
    for name, text in rep.descriptions.items():
        s = rep.saved.get(name)
        files = f"`{s.html.name}`" + (f", `{s.png.name}`" if s and s.png else "") if s else ""
        note = f" ({s.message})" if s and not s.png else ""
        lines.append(f"- **{name}** ({files}){note}: {text}")
    if rep.skipped:
        lines += ["", "## Not drawn", ""]
        lines += [f"- **{k}**: {v}" for k, v in rep.skipped.items()]
    js = rep.out_dir / "plotly.min.js"
    lines += ["", "## Files", "",
              "Each figure is an interactive `<name>.html` (hover, zoom) and, when Chromium was available, "
              "a static `<name>.png`."]
    if js.is_file():
        lines.append(f"The HTML files load the one shared `plotly.min.js` beside them "
                     f"({js.stat().st_size / 1e6:.1f} MB, written by plotly): keep it with them; they work offline.")
    rep.out_dir.mkdir(parents=True, exist_ok=True)
    (rep.out_dir / "README.md").write_text("\n".join(lines) + "\n")

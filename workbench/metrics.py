"""Reference scores, normalization and rliable aggregates; ``python -m workbench.metrics``.

Reference scores live in ``workbench/reference/scores.csv`` (package data): random and human
scores of the standard 57-game table plus Carnival (JOWA Table 2: random 0, human 3800) and
Pooyan, and DQN scores for JOWA's 5 held-out games (JOWA Table 17) and Scaled QL Figure 7's 5
(the same DQN, no-op starts, of the C51/Rainbow papers' tables; the CSV's ``source`` column cites each).

Pooyan's random score (the one choice made here; the CSV's ``source`` column repeats it):
Pooyan has no entry in the standard table. We use 472.0, the mean of 20 episodes of a uniform
random agent under our eval protocol (s.e. 49.4). Scaled QL's printed IQMs are sensitive to it:
they reproduce exactly only for a Pooyan random score between about 75 and 190 (see
``tests/test_metrics.py``), so the paper used some other, unstated value.

Aggregates follow Agarwal et al. (2021) via rliable: IQM (25% trimmed mean over all runs x games),
median of per-game means, mean, optimality gap (gamma = 1), with stratified-bootstrap percentile
CIs (resampling runs within each game; with one run per game the interval collapses to the
point), performance profiles and probability of improvement. Bootstraps use a seeded
``RandomState``, so results are reproducible.

Score input: ``{game: [score per run, ...] or number}``; every game of a method must have the
same number of runs (rliable's score matrix is ``(num_runs, num_games)``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import difflib
import json
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from workbench.games import DQN_REPLAY_GAMES, canonical_game

__all__ = [
    "NORMALIZATIONS",
    "default_normalization",
    "reference_scores",
    "has_reference",
    "normalize_score",
    "normalize",
    "score_matrix",
    "aggregate_point",
    "aggregate",
    "performance_profile",
    "probability_of_improvement",
    "stratified_bootstrap",
    "interval_over_runs",
    "main",
]

Normalization = Literal["human", "dqn", "expert", "none"]
#: "expert": MinAtar's scripted policies (the suite has no human scores); see the reference CSV's source column.
NORMALIZATIONS = ("human", "dqn", "expert", "none")
METRICS = ("iqm", "median", "mean", "optimality_gap")


@lru_cache(maxsize=1)
def reference_scores() -> dict[str, dict[str, float]]:
    """``{game: {"random": x, "human": x, "dqn": x, "expert": x}}`` from the package CSV (absent: not there)."""
    out: dict[str, dict[str, float]] = {}
    text = resources.files("workbench.reference").joinpath("scores.csv").read_text()
    for row in csv.DictReader(text.splitlines()):
        out[row["game"]] = {k: float(row[k]) for k in ("random", "human", "dqn", "expert") if row.get(k)}
    return out


def default_normalization(games: Sequence[str]) -> Normalization:
    """The normalization every one of ``games`` has: human (Atari), else expert (MinAtar), else none."""
    kinds: tuple[Normalization, ...] = ("human", "expert")
    for kind in kinds:
        if games and all(has_reference(g, kind) for g in games):
            return kind
    return "none"


def _check_kind(kind: str) -> None:
    if kind not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {kind!r}: valid are {list(NORMALIZATIONS)}")


def _games_with_reference(kind: Normalization) -> list[str]:
    return sorted(g for g, r in reference_scores().items() if kind in r and "random" in r)


def has_reference(game: str, kind: Normalization = "human") -> bool:
    """Whether ``game`` (canonical name, looked up as given) has what ``kind`` normalization needs:
    its random score and its ``kind`` score. Always true for ``kind="none"``."""
    _check_kind(kind)
    if kind == "none":
        return True
    r = reference_scores().get(game, {})
    return "random" in r and kind in r


def normalize_score(game: str, score: Any, kind: Normalization = "human") -> Any:
    """``(score - random) / (ref - random)`` of one game, ref = its human, DQN or expert score.

    The one place this formula is written: every normalized score in the workbench comes from
    here. ``game`` is a canonical name (looked up as given); ``score`` a number or a numpy array
    (normalized elementwise, same type back). ``kind="none"`` returns ``score`` unchanged. A game
    without the reference scores ``kind`` needs raises ValueError naming the games that have them.
    """
    if not has_reference(game, kind):
        raise ValueError(
            f"no {kind} reference score for {game}; games with one: "
            f"{', '.join(_games_with_reference(kind))}"
        )
    if kind == "none":
        return score
    r = reference_scores()[game]
    return (score - r["random"]) / (r[kind] - r["random"])


def _game_name(name: str) -> str:
    """Canonical name; also accepts reference-table games outside DQN-Replay (Defender, Surround)."""
    try:
        return canonical_game(name)
    except ValueError:
        key = str(name).replace("_", "").replace("-", "").replace(" ", "").lower()
        known = {g.lower(): g for g in [*DQN_REPLAY_GAMES, *reference_scores()]}
        if key in known:
            return known[key]
        close = difflib.get_close_matches(key, list(known), n=5, cutoff=0.5)
        hint = ", ".join(known[c] for c in close) if close else ", ".join(sorted(known.values()))
        raise ValueError(f"unknown game {name!r}: did you mean {hint}?") from None


def _is_number(x: Any) -> bool:
    """An int or float (Python or numpy); booleans are not numbers here."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _runs(game: str, value: Any) -> np.ndarray:
    """One game's scores as a float64 array of runs. Every score must be a finite number: a
    boolean, a string or null is refused (``float(True)`` would count as a score of 1), and so
    is NaN or infinity; the message names the run."""
    items: list[Any]
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf":
            raise ValueError(f"scores of {game} must be numbers, got an array of {value.dtype} ({value!r})")
        if value.ndim > 1:
            raise ValueError(f"scores of {game} must be a number or a non-empty list, got {value!r}")
        items = np.atleast_1d(value).tolist()
    elif hasattr(value, "__iter__") and not isinstance(value, (str, bytes, dict)):
        items = list(value)  # a list, a tuple, a pandas Series, ...
    else:
        items = [value]
    if not items:
        raise ValueError(f"scores of {game} must be a number or a non-empty list, got {value!r}")
    for i, x in enumerate(items):
        if not _is_number(x):
            raise ValueError(f"scores of {game}: run {i} is {x!r}, not a number (booleans, strings, null and "
                             "lists are not scores)")
        if not math.isfinite(x):
            raise ValueError(f"scores of {game}: run {i} is {x!r}; non-finite scores are refused")
    return np.asarray(items, dtype=np.float64)


def normalize(
    scores: Mapping[str, Sequence[float] | float], kind: Normalization = "human"
) -> dict[str, np.ndarray]:
    """Normalize raw scores per game: ``(s - random) / (ref - random)`` with ref = human or dqn.

    Returns ``{canonical game: float64 array of runs}``; ``kind="none"`` returns raw scores.
    Unknown games and missing reference scores raise ValueError naming them.
    """
    _check_kind(kind)
    if not scores:
        raise ValueError("no scores given")
    out: dict[str, np.ndarray] = {}
    missing: list[str] = []
    for name, value in scores.items():
        game = _game_name(name)
        if game in out:
            raise ValueError(f"game {game} given twice (as {name!r})")
        runs = _runs(game, value)
        if not has_reference(game, kind):
            missing.append(game)  # reported all together below
            continue
        out[game] = normalize_score(game, runs, kind)
    if missing:
        raise ValueError(
            f"no {kind} reference score for {', '.join(missing)}; "
            f"games with one: {', '.join(_games_with_reference(kind))}"
        )
    return out


def score_matrix(normalized: Mapping[str, np.ndarray]) -> np.ndarray:
    """``(num_runs, num_games)`` matrix of normalized scores, games in the mapping's order."""
    counts = {g: len(v) for g, v in normalized.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"every game needs the same number of runs, got {counts}")
    return np.stack([np.asarray(v, np.float64) for v in normalized.values()], axis=1)


def _metric_fns() -> dict[str, Any]:
    from rliable import metrics as rm  # noqa: PLC0415  (rliable loads arch/pandas: ~2-4 s)

    return {
        "iqm": rm.aggregate_iqm,
        "median": rm.aggregate_median,
        "mean": rm.aggregate_mean,
        "optimality_gap": rm.aggregate_optimality_gap,
    }


def aggregate_point(matrix: np.ndarray) -> dict[str, float]:
    """Point estimates of IQM, median, mean and optimality gap of a ``(runs, games)`` matrix."""
    return {k: float(f(matrix)) for k, f in _metric_fns().items()}


def _random_state(seed: int) -> np.random.RandomState:
    return np.random.RandomState(int(seed) % (2**32))


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed numpy's legacy global RNG for the duration of a bootstrap, then restore it.

    rliable 1.2's StratifiedBootstrap draws its resampling indices from ``np.random.choice`` (the
    global RNG) and ignores ``random_state``; seeding the global RNG is what makes it reproducible.
    """
    state = np.random.get_state()
    np.random.seed(int(seed) % (2**32))
    try:
        with warnings.catch_warnings():  # arch deprecates RandomState; rliable still passes it
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        np.random.set_state(state)


def aggregate(
    scores: Mapping[str, Mapping[str, Sequence[float] | float]],
    kind: Normalization = "human",
    *,
    reps: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Aggregates per method with stratified-bootstrap CIs (rliable).

    ``scores``: ``{method: {game: runs or number}}``. Returns ``{method: {"iqm", "median",
    "mean", "optimality_gap", "<metric>_ci": [lo, hi], "num_games", "num_runs", "games"}}``.
    """
    from rliable import library as rly  # noqa: PLC0415  (rliable loads arch/pandas: ~2-4 s)

    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    fns = _metric_fns()
    order = list(fns)

    def all_metrics(m: np.ndarray) -> np.ndarray:
        return np.array([fns[k](m) for k in order])

    out: dict[str, dict[str, Any]] = {}
    for i, (method, per_game) in enumerate(scores.items()):
        if not isinstance(per_game, Mapping):
            raise ValueError(f"scores of method {method!r} must be {{game: scores}}")
        norm = normalize(per_game, kind)
        mat = score_matrix(norm)
        with _seeded(seed + i):
            point, ci = rly.get_interval_estimates(
                {method: mat},
                all_metrics,
                reps=reps,
                confidence_interval_size=confidence,
                random_state=_random_state(seed + i),
            )
        res: dict[str, Any] = {k: float(point[method][j]) for j, k in enumerate(order)}
        for j, k in enumerate(order):
            res[f"{k}_ci"] = [float(ci[method][0][j]), float(ci[method][1][j])]
        res.update(num_games=mat.shape[1], num_runs=mat.shape[0], games=list(norm))
        out[method] = res
    return out


#: How :func:`interval_over_runs` labels its result: no interval, the runs' range, a bootstrap CI.
INTERVAL_KINDS = ("none", "range", "ci")


def stratified_bootstrap(per_game: Mapping[str, Sequence[float] | np.ndarray] | Sequence[Sequence[float]], *,
                         reps: int = 2000, seed: int = 0) -> np.ndarray:
    """Bootstrap replicates of the mean over games of per-game mean run scores, resampling runs
    with replacement *within each game* (rliable's stratified bootstrap, Agarwal et al. 2021: a
    game is a stratum, so a replicate never moves a score from one game to another).

    ``per_game``: ``{game: [score of each run]}`` (or a list of lists); games may have different
    numbers of runs. Indices come from ``np.random.default_rng(seed)``, game after game in the
    mapping's order, ``(reps, runs)`` at a time: with one game this is exactly the ordinary
    percentile bootstrap of the mean over runs. Returns the ``reps`` replicates."""
    groups = list(per_game.values()) if isinstance(per_game, Mapping) else list(per_game)
    if not groups:
        raise ValueError("stratified_bootstrap needs at least one game")
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    rng = np.random.default_rng(seed)
    total = np.zeros(reps)
    for i, runs in enumerate(groups):
        x = np.asarray(runs, np.float64)
        if x.ndim != 1 or x.size == 0:
            raise ValueError(f"game {i} of stratified_bootstrap has no runs")
        total += x[rng.integers(0, x.size, size=(reps, x.size))].mean(axis=1)
    return total / len(groups)


def interval_over_runs(per_game: Mapping[str, Sequence[float] | np.ndarray] | Sequence[float] | np.ndarray, *,
                       reps: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """The honest interval of a mean over runs (seeds), and what it rests on.

    ``per_game``: one game's runs (a list), or ``{game: runs}`` (the mean over games of per-game
    means, resampled within each game by :func:`stratified_bootstrap`). Returns ``{"kind", "lo",
    "hi", "mean", "runs", "games", "text"}``, ``kind`` one of :data:`INTERVAL_KINDS`:

    - ``"none"``: some game has fewer than 2 runs. One run measures no spread: ``lo``/``hi`` are
      None and ``text`` says so (evaluation episodes are not runs: under the papers' evaluation
      protocol they are near-duplicates of one policy).
    - ``"range"``: one game with 2 or 3 runs. A 95% percentile bootstrap of their mean is then
      their minimum and maximum (all 2 or 3 draws landing on the lowest run has probability 1/4 or
      1/27, above 2.5%), so it is reported as what it is: the range.
    - ``"ci"``: the ``confidence`` (default 95%) percentile interval of :func:`stratified_bootstrap`.
    """
    groups: dict[str, list[float]] = ({str(g): [float(v) for v in runs] for g, runs in per_game.items()}
                                      if isinstance(per_game, Mapping) else {"": [float(v) for v in per_game]})
    if not groups or any(not runs for runs in groups.values()):
        raise ValueError("interval_over_runs needs at least one run of every game")
    counts = sorted({len(r) for r in groups.values()})
    mean = float(np.mean([np.mean(r) for r in groups.values()]))
    n, games = counts[0], len(groups)
    runs_text = f"{n} run{'s' if n != 1 else ''}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} runs"
    where = "" if games == 1 else f" per game, {games} games"
    out: dict[str, Any] = {"mean": mean, "runs": n, "games": games}
    if n < 2:
        return {**out, "kind": "none", "lo": None, "hi": None,
                "text": f"no interval: {runs_text}{where} (one run measures no spread)"}
    if games == 1 and n <= 3:
        runs = next(iter(groups.values()))
        return {**out, "kind": "range", "lo": float(min(runs)), "hi": float(max(runs)),
                "text": f"range (min to max) of {runs_text}"}
    reps_ = stratified_bootstrap(groups, reps=reps, seed=seed)
    tail = (1.0 - confidence) / 2 * 100
    label = f"{round(confidence * 100):d}% CI"
    return {**out, "kind": "ci", "lo": float(np.percentile(reps_, tail)), "hi": float(np.percentile(reps_, 100 - tail)),
            "text": f"{label}, stratified bootstrap over {runs_text}{where} ({reps} reps)"}


def performance_profile(
    scores: Mapping[str, Mapping[str, Sequence[float] | float]],
    kind: Normalization = "human",
    *,
    taus: Sequence[float] | np.ndarray | None = None,
    reps: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Run-score performance profiles: fraction of runs with normalized score > tau.

    Returns ``{"taus": [...], "methods": {method: {"profile": [...], "lo": [...], "hi": [...]}}}``
    (rliable's ``create_performance_profile``: score distributions over all runs x games, with
    its stratified bootstrap, seeded).
    """
    from rliable import library as rly  # noqa: PLC0415  (rliable loads arch/pandas: ~2-4 s)

    mats = {m: score_matrix(normalize(s, kind)) for m, s in scores.items()}
    if taus is None:
        hi = max(float(np.max(m)) for m in mats.values())
        taus = np.linspace(min(0.0, min(float(np.min(m)) for m in mats.values())), hi, 81)
    taus = np.asarray(taus, np.float64)
    out: dict[str, Any] = {"taus": taus.tolist(), "methods": {}}
    for i, (method, mat) in enumerate(mats.items()):
        with _seeded(seed + i):
            point, ci = rly.create_performance_profile(
                {method: mat}, taus, reps=reps, confidence_interval_size=confidence
            )
        out["methods"][method] = {
            "profile": np.asarray(point[method]).tolist(),
            "lo": np.asarray(ci[method][0]).tolist(),
            "hi": np.asarray(ci[method][1]).tolist(),
        }
    return out


def probability_of_improvement(
    scores: Mapping[str, Mapping[str, Sequence[float] | float]],
    pairs: Sequence[tuple[str, str]] | None = None,
    kind: Normalization = "human",
    *,
    reps: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """P(X > Y) for method pairs (default: every ordered pair of distinct methods), with CIs.

    Both methods must cover the same games. Returns ``{"X vs Y": {"x", "y", "probability",
    "ci": [lo, hi]}}``.
    """
    from rliable import library as rly  # noqa: PLC0415  (rliable loads arch/pandas: ~2-4 s)
    from rliable import metrics as rm  # noqa: PLC0415  (rliable loads arch/pandas: ~2-4 s)

    names = list(scores)
    if pairs is None:
        pairs = [(a, b) for a in names for b in names if a != b]
    out: dict[str, dict[str, Any]] = {}
    for i, (x, y) in enumerate(pairs):
        for m in (x, y):
            if m not in scores:
                raise ValueError(f"unknown method {m!r}: methods are {names}")
        nx, ny = normalize(scores[x], kind), normalize(scores[y], kind)
        if set(nx) != set(ny):
            raise ValueError(
                f"{x} and {y} cover different games: {sorted(set(nx) ^ set(ny))} in only one"
            )
        mx = score_matrix(nx)
        my = score_matrix({g: ny[g] for g in nx})
        key = f"{x} vs {y}"
        with _seeded(seed + i):
            point, ci = rly.get_interval_estimates(
                {key: [mx, my]},
                rm.probability_of_improvement,
                reps=reps,
                confidence_interval_size=confidence,
                random_state=_random_state(seed + i),
            )
        out[key] = {
            "x": x,
            "y": y,
            "probability": float(np.ravel(point[key])[0]),
            "ci": [float(np.ravel(ci[key][0])[0]), float(np.ravel(ci[key][1])[0])],
        }
    return out


_CLI_FORMATS = """\
input formats (detected per file):
  evaluator scores JSON   what workbench.evaluate / notebooks 02 and 05 write (eval/scores*.json):
                          {"per_game": {"Pong": {"scores": [...], ...}, ...}, "max_agent_steps": ...,
                           "comparable_to_papers": ...}. Its episodes are the runs of one method,
                          named after the file; several files compare several methods.
  method table            {"method": {"Game": [score, ...] or score}}: one list of runs per game
                          (e.g. per-seed means), one or more methods.
Scores are raw game scores; --normalize picks the reference. Output: JSON per method with
median / iqm / mean / optimality_gap and 95% CIs; evaluator files add their truncated_episodes and
comparable_to_papers (false when episodes were capped below the protocol's 27,000 steps)."""


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"error: no such file: {path}") from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {path} is not valid JSON: {e}") from None


def _file_runs(path: str, entry: str, game: str, value: Any) -> np.ndarray:
    """:func:`_runs` of one entry of a scores file; a bad score is an error naming the file and entry."""
    try:
        return _runs(str(game), value)
    except ValueError as exc:
        raise SystemExit(f"error: {path}: {entry}: {exc}") from None


def _load_scores_json(paths: Sequence[str]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(``{method: {game: scores}}``, ``{method: protocol flags}``) from evaluator scores files
    and/or method tables (see ``_CLI_FORMATS``)."""
    data: dict[str, dict[str, Any]] = {}
    flags: dict[str, dict[str, Any]] = {}
    for path in paths:
        doc = _read_json(path)
        if isinstance(doc, dict) and isinstance(doc.get("per_game"), dict):  # the evaluator's own file
            name = Path(path).stem if len(paths) == 1 else str(path)
            data[name] = {}
            for game, entry in doc["per_game"].items():
                if not isinstance(entry, dict) or not isinstance(entry.get("scores"), list):
                    raise SystemExit(f"error: {path}: every per_game entry needs a 'scores' list of numbers; "
                                     f"per_game[{game!r}] has none")
                data[name][game] = _file_runs(path, f"per_game[{game!r}]['scores']", game, entry["scores"]).tolist()
            flags[name] = {k: doc[k] for k in ("max_agent_steps", "truncated_episodes", "comparable_to_papers", "note")
                           if k in doc}
        elif isinstance(doc, dict) and doc and all(isinstance(v, dict) for v in doc.values()):
            for method, games in doc.items():
                for game, value in games.items():
                    _file_runs(path, f"method {method!r}, game {game!r}", game, value)
            data.update(doc)
        else:
            raise SystemExit(f"error: {path} is neither an evaluator scores JSON (with 'per_game') nor a method "
                             'table {"method": {"Game": [score, ...] or number}}; see --help')
    return data, flags


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: aggregates with CIs of one or more scores files (formats: ``--help``)."""
    p = argparse.ArgumentParser(
        prog="python -m workbench.metrics",
        description="Normalized-score aggregates (IQM, median, mean, optimality gap) with "
        "stratified-bootstrap CIs (rliable).",
        epilog=_CLI_FORMATS, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scores", metavar="SCORES.json", nargs="+",
                   help="evaluator scores JSON(s) (eval/scores*.json) or a method table; see below")
    p.add_argument("--normalize", choices=NORMALIZATIONS, default="human")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replications")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        data, flags = _load_scores_json(args.scores)
    except SystemExit as exc:  # a bad input file: its message, exit code 2 like every validation error
        print(exc.code, file=sys.stderr)
        return 2
    try:
        res = aggregate(data, args.normalize, reps=args.reps, seed=args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, r in res.items():
        r.pop("games")
        for k, v in list(r.items()):
            if isinstance(v, float) and not math.isfinite(v):
                r[k] = None
        r.update(flags.get(name, {}))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

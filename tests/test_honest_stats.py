"""Honest statistics (issue 26 items 3, 4, 5, 8; issue 27's malformed behaviour.json):

- every game a figure DQN-normalizes has a DQN reference score (Scaled QL Figure 7's five games);
- Figure 8 reports the best learning rate per game and method, not the rates pooled;
- no interval from one run, the range (not a "95% CI") from 2-3 runs, a stratified bootstrap that
  resamples within each game;
- the study's generated sentences follow its rows, and say what each interval and scale is;
- ``python -m workbench.study summary`` on a malformed ``behaviour.json``: one line, exit 2.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from workbench import metrics as M
from workbench import study as S
from workbench.reference import paper_tables as pt
from workbench.run import Run

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------- helpers


def _finetune_run(path: Path, method: str, seed: int, scores: list[float], game: str) -> Path:
    """A finished fine-tuning run folder: its config and its reported scores (eval/scores.json)."""
    run = Run(path)
    run.create("finetune", {"checkpoint": "src", "game": game, "method": method, "seed": seed},
               {"algo": "scaled_ql", "model": "resnet-tiny", "method": method, "encoder": "finetuned",
                "report": "final", "eval_games": [game], "games": [game], "stages": [{"name": "train", "subdir": ""}]})
    (run.path / "eval").mkdir()
    doc = {"per_game": {game: {"mean": sum(scores) / len(scores), "scores": scores}}, "max_agent_steps": 27_000,
           "epsilon": 0.001, "comparable_to_papers": True}
    (run.path / "eval" / "scores.json").write_text(json.dumps(doc))
    return run.path


def _online_run(path: Path, game: str, init: str, lr: float, final: float, steps: int = 100) -> Path:
    """A finished online run: config with its learning rate, and a curve ending at its planned frames."""
    run = Run(path)
    run.create("online", {"seed": 0, "lr": lr}, {"algo": "online_c51", "model": "resnet-tiny", "games": [game],
                                                 "mode": None, "difficulty": None, "init": init, "agent_steps": steps,
                                                 "settings": {"lr": lr}})
    (path / "curve.json").write_text(json.dumps([{"step": 0, "frames": 0, "score": 0.0},
                                                 {"step": steps, "frames": 4 * steps, "score": final}]))
    return path


def _dqn(game: str, x: float) -> float:
    r = M.reference_scores()[game]
    return (x - r["random"]) / (r["dqn"] - r["random"])


# ------------------------------------------------------------------------- item 3: Figure 7's games


def test_every_game_a_figure_dqn_normalizes_has_a_cited_dqn_score(tmp_path: Path) -> None:
    from workbench.viz.analysis import read_run, transfer_figure

    ref = M.reference_scores()
    # Scaled QL Figure 7's games and JOWA Table 17's: the same DQN (no-op starts, C51/Rainbow tables).
    expected = {"Alien": 1620.0, "SpaceInvaders": 1692.3, "StarGunner": 54282.0, "MsPacman": 3085.6, "Pong": 19.5,
                "Gravitar": 473.0, "Robotank": 63.9, "YarsRevenge": 18089.9}
    assert {g: ref[g]["dqn"] for g in expected} == expected
    for g in pt.JOWA_T17["DQN"]:
        assert ref[g]["dqn"] == pt.JOWA_T17["DQN"][g]
    text = (REPO / "workbench" / "reference" / "scores.csv").read_text()
    for line in text.splitlines():
        if line.split(",", 1)[0] in expected:
            assert "dqn:" in line and ("C51" in line or "JOWA Table 17" in line), line
    # The transfer figure draws all five of Figure 7's games.
    dirs = [_finetune_run(tmp_path / f"{g}{m}{s}", m, s, [ref[g]["random"] + 100.0 * (s + 1)], g)
            for g in pt.SCALED_QL_FIG7_GAMES for m in ("transfer", "scratch") for s in range(2)]
    fig, text = transfer_figure([read_run(d) for d in dirs], reps=50)
    bars = [t for t in fig.data if t.type == "bar" and t.xaxis == "x"]
    assert {name for t in bars for name in t.x} == set(pt.SCALED_QL_FIG7_GAMES)
    pre = next(t for t in bars if t.name == "Scaled QL (pretrained), resnet-tiny")
    got = dict(zip(pre.x, pre.y))
    for g in pt.SCALED_QL_FIG7_GAMES:
        assert got[g] == pytest.approx(_dqn(g, ref[g]["random"] + 150.0))
    assert "Left out" not in text


# ----------------------------------------------------------------------- item 4: Figure 8's best lr


def test_figure_8_keeps_the_best_learning_rate_per_game_and_method_not_the_pool(tmp_path: Path) -> None:
    from workbench.viz.analysis import online_final_scores, online_finetune_figure, online_lr_selection

    runs = {  # (game, init, lr): final scores of its runs
        ("Breakout", "scratch", 1e-5): [10.0, 12.0], ("Breakout", "scratch", 5e-5): [2.0, 4.0],
        ("Breakout", "pretrained-finetuned", 1e-5): [1.0, 3.0],
        ("Breakout", "pretrained-finetuned", 5e-5): [20.0, 22.0],
        ("Hero", "scratch", 1e-5): [30.0, 30.0], ("Hero", "scratch", 5e-5): [0.0, 0.0],
        ("Hero", "pretrained-finetuned", 1e-5): [18.0, 18.0], ("Hero", "pretrained-finetuned", 5e-5): [18.0, 18.0],
    }
    dirs = [_online_run(tmp_path / f"{g}-{init}-{lr}-{i}", g, init, lr, v)
            for (g, init, lr), vals in runs.items() for i, v in enumerate(vals)]
    scratch, pre = "scratch, resnet-tiny", "pretrained (finetuned), resnet-tiny"
    # By hand. Pooled, Hero ranks pretrained first ((18+18+18+18)/4 = 18 > (30+30+0+0)/4 = 15); at each
    # method's best rate scratch wins (30 at 1e-5 against 18, a tie broken toward the smaller rate).
    # Breakout: scratch 1e-5 (mean 11 > 3), pretrained 5e-5 (mean 21 > 2).
    assert online_final_scores(dirs) == {"Breakout": {scratch: [10.0, 12.0], pre: [20.0, 22.0]},
                                         "Hero": {scratch: [30.0, 30.0], pre: [18.0, 18.0]}}
    sel = online_lr_selection(dirs)
    assert (sel["Breakout"][scratch]["lr"], sel["Breakout"][pre]["lr"]) == (1e-5, 5e-5)
    assert (sel["Hero"][scratch]["lr"], sel["Hero"][pre]["lr"]) == (1e-5, 1e-5)
    assert sel["Hero"][scratch]["by_lr"] == {1e-5: [30.0, 30.0], 5e-5: [0.0, 0.0]}
    fig = online_finetune_figure(dirs)
    assert "best learning rate per game and method" in fig.layout.title.text
    hero = {t.name: t for t in fig.data if t.xaxis == "x2"}
    assert list(hero[scratch].y) == [30.0] and list(hero[pre].y) == [18.0]
    assert "best lr 1e-05" in hero[scratch].hovertemplate and "lr 5e-05: mean 0" in hero[scratch].hovertemplate


# ---------------------------------------------------------------------------- item 5: intervals


def test_one_run_gives_no_interval_and_says_so(tmp_path: Path) -> None:
    from workbench.viz.analysis import read_run, transfer_figure

    # One seed per method, 8 near-identical evaluation episodes each: the episodes are not runs.
    dirs = [_finetune_run(tmp_path / m, m, 0, [-10.0, -10.0, -9.0, -10.0, -10.0, -10.0, -11.0, -10.0], "Pong")
            for m in ("transfer", "scratch")]
    fig, text = transfer_figure([read_run(d) for d in dirs], reps=50)
    per_game = [t for t in fig.data if t.type == "bar" and t.xaxis == "x"]
    assert per_game and all(list(t.error_y.array) == [None] for t in per_game)
    assert all("1 run: no interval" in t.hovertext[0] for t in per_game)
    aggregate_bars = [t for t in fig.data if t.type == "bar" and t.xaxis != "x"]
    assert aggregate_bars and all(t.error_y.array is None for t in aggregate_bars)
    assert "no interval: 1 run per game" in text and "One run, so no interval" in text
    assert "episodes" not in text.split("runs = ")[1].split(";")[0]  # a run is a seed
    iv = M.interval_over_runs([5.0])
    assert (iv["kind"], iv["lo"], iv["hi"], iv["runs"]) == ("none", None, None, 1) and "no interval" in iv["text"]


def test_three_runs_are_the_range_with_their_exact_min_and_max(tmp_path: Path) -> None:
    from workbench.viz.analysis import read_run, transfer_figure

    # The transfer figure: 3 seeds on one game -> the aggregate's interval is the range, so named.
    vals = [-12.0, -4.0, -8.0]
    dirs = [_finetune_run(tmp_path / f"s{s}", "transfer", s, [v, v], "Pong") for s, v in enumerate(vals)]
    fig, text = transfer_figure([read_run(d) for d in dirs], reps=50)
    agg = [t for t in fig.data if t.type == "bar" and t.xaxis == "x2"][0]
    lo, hi = _dqn("Pong", -12.0), _dqn("Pong", -4.0)
    mean = np.mean([_dqn("Pong", v) for v in vals])
    assert agg.y[0] == pytest.approx(mean)
    assert agg.error_y.array[0] == pytest.approx(hi - mean) and agg.error_y.arrayminus[0] == pytest.approx(mean - lo)
    assert "range (min to max) of 3 runs" in text and "range (min to max) of 3 runs" in fig.layout.annotations[1].text
    iv = M.interval_over_runs([3.0, 9.5, 4.0])
    assert (iv["kind"], iv["lo"], iv["hi"]) == ("range", 3.0, 9.5) and iv["text"] == "range (min to max) of 3 runs"
    assert M.interval_over_runs([2.0, 1.0])["kind"] == "range"
    four = M.interval_over_runs([1.0, 2.0, 3.0, 10.0], reps=500)
    assert four["kind"] == "ci" and "95% CI, stratified bootstrap over 4 runs" in four["text"]


def test_the_stratified_bootstrap_resamples_within_each_game_as_enumeration_says() -> None:
    games = {"A": [0.0, 1.0], "B": [10.0, 20.0, 40.0]}
    # Brute force: every resample of each game's runs with replacement, equally likely.
    exact: Counter[float] = Counter()
    for a in itertools.product(games["A"], repeat=2):
        for b in itertools.product(games["B"], repeat=3):
            exact[round(float(np.mean(a) + np.mean(b)) / 2, 9)] += 1
    total = sum(exact.values())
    reps = M.stratified_bootstrap(games, reps=40_000, seed=1)
    got = Counter(round(float(x), 9) for x in reps)
    assert set(got) <= set(exact)  # a score never moves to another game: no pooled value appears
    for value, count in exact.items():
        assert got[value] / reps.size == pytest.approx(count / total, abs=0.01)
    # A pooled bootstrap would draw values the stratified one never does.
    pooled = np.random.default_rng(0).choice([0.0, 1.0, 10.0, 20.0, 40.0], size=(1000, 5))
    assert any(round((p[:2].mean() + p[2:].mean()) / 2, 9) not in exact for p in pooled)
    # One game: the ordinary percentile bootstrap of the mean, same draws.
    x = np.array([1.0, 5.0, 2.0, 8.0, 3.0])
    idx = np.random.default_rng(7).integers(0, 5, size=(300, 5))
    np.testing.assert_allclose(M.stratified_bootstrap({"g": x}, reps=300, seed=7), x[idx].mean(axis=1))


# ------------------------------------------------------------------------- item 8: study wording


def _study(tmp_path: Path, scores: dict[int, dict[str, float]], random_returns: dict | None = None) -> Path:
    """A fake two-game study sweep (MTBC; Scaled QL; Scaled QL without feature norm) with finished
    points scoring ``scores[seed]``; returns the sweep file."""
    from workbench.fileio import atomic_write_json
    from workbench.sweep import load_sweep

    data = tmp_path / "data"
    data.mkdir()
    behaviour = {"games": ["Breakout", "Freeway"], "random": {"Breakout": 1.0, "Freeway": 0.0},
                 "behaviour": {"sub_optimal": {"Breakout": 2.0, "Freeway": 1.0},
                               "near_optimal": {"Breakout": 8.0, "Freeway": 14.0}}}
    if random_returns:
        behaviour["random_returns"] = random_returns
    (data / S.BEHAVIOUR_FILE).write_text(json.dumps(behaviour))
    sweep_doc = {"name": "fake_study", "output_dir": str(tmp_path / "sweep"),
                 "base": {"games": "Breakout,Freeway", "dataset": str(data), "split": "near_optimal",
                          "device": "cpu"},
                 "factors": {"algo": ["scaled_ql", "bc", "scaled_ql"], "model": ["resnet-tiny"] * 3,
                             "algo_args": [{}, {}, {"feature_norm": False}]},
                 "seeds": [0, 1, 2], "combine": "zip"}
    sweep_file = tmp_path / "fake_study.json"
    sweep_file.write_text(json.dumps(sweep_doc))
    sweep = load_sweep(sweep_file)
    for i, point in enumerate(sweep.points):
        combo, seed = divmod(i, 3)
        per = {g: {"mean": v + (-seed * 5.5 if combo == 2 and g == "Freeway" else 0.0)}
               for g, v in scores[seed].items()}
        atomic_write_json(point.run_dir / "eval" / "scores.json", {"per_game": per})
        atomic_write_json(point.run_dir / "summary.json", {})
        atomic_write_json(sweep.status_path(point), {"state": "done", "params": point.params})
    return sweep_file


def test_generated_sentences_follow_the_rows_where_a_row_contradicts_every_method_above_random(
        tmp_path: Path) -> None:
    # Freeway: MTBC and Scaled QL score 11-11.5 in every seed; without feature norm the seeds score
    # 11.5, 6 and 0 (range [0, 11.5]), which overlaps random's interval (within [0, 1]).
    sweep_file = _study(tmp_path, {0: {"Breakout": 5.0, "Freeway": 11.5}, 1: {"Breakout": 6.0, "Freeway": 11.5},
                                   2: {"Breakout": 7.0, "Freeway": 11.0}},
                        random_returns={"Breakout": [0.0, 2.0] * 4, "Freeway": [0.0, 1.0] * 4})
    out = S.build_summary([sweep_file], reps=300, seed=0)
    rows = {(r["method"], r["game"]): r for r in out["results"]}
    nofn = rows[("Scaled QL (no feature norm)", "Freeway")]
    assert nofn["interval"] == "range" and nofn["ci"] == [0.0, 11.5] and nofn["n_runs"] == 3
    assert nofn["above_random"] is False and rows[("MTBC", "Freeway")]["above_random"] is True
    freeway = [f for f in out["findings"] if f.startswith("Freeway:") and "random's interval" in f]
    assert len(freeway) == 1
    sentence = freeway[0]
    assert "every" not in sentence and "2 of 3 rows' intervals lie above random's interval" in sentence
    assert "Scaled QL (no feature norm), near_optimal [0, 11.5] (range of 3 runs)" in sentence
    assert any(f.startswith("Breakout: every row's interval (3 rows) lies above random's interval") for f in
               out["findings"])
    # Every interval and scale is defined, and the Atari scale's mixed protocols are said.
    for key in ("ci", "random_ci", "aggregate", "behaviour", "behaviour_scale_protocol", "runs"):
        assert key in out["definitions"]
    assert "range" in out["definitions"]["ci"] and "stratified" in out["definitions"]["aggregate"]
    assert out["behaviour_scale_protocol"]["Freeway"].startswith("mixed protocols")
    assert "sticky actions 0.25" in out["behaviour_scale_protocol"]["Freeway"]
    agg = {a["method"]: a for a in out["aggregates"]}
    assert agg["MTBC"]["interval"] == "95% CI, stratified bootstrap (rliable) over 2 games x 3 runs"
    assert agg["MTBC"]["scale_protocol"] == ["mixed protocols"]
    table = S.summary_table(out)
    assert "11.3 (range 11.0 to 11.5)*" in table and "| 3 (range) |" in table and sentence in table


def test_study_findings_never_say_every_when_a_row_falls_short() -> None:
    # The old doc's sentence, "every method's CI is above random on Freeway", against its own row.
    summary = {"games": ["Freeway"], "behaviour": {"sub_optimal": {}, "near_optimal": {}}, "results": [
        {"method": "Scaled QL", "split": "sub_optimal", "game": "Freeway", "mean": 10.9, "ci": [10.8, 10.9],
         "interval": "range", "n_runs": 3, "above_random": True},
        {"method": "MTBC", "split": "sub_optimal", "game": "Freeway", "mean": 10.8, "ci": [10.8, 10.8],
         "interval": "range", "n_runs": 3, "above_random": True},
        {"method": "Scaled QL (no feature norm)", "split": "sub_optimal", "game": "Freeway", "mean": 7.2,
         "ci": [0.0, 11.5], "interval": "range", "n_runs": 3, "above_random": False},
        {"method": "MGDT", "split": "sub_optimal", "game": "Freeway", "mean": 9.0, "ci": None, "interval": "none",
         "n_runs": 1, "above_random": None}]}
    (sentence,) = S.findings(summary)
    assert sentence == ("Freeway: 2 of 3 rows' intervals lie above random's interval; not: Scaled QL (no feature "
                        "norm), sub_optimal [0, 11.5] (range of 3 runs); no interval (1 run): MGDT, sub_optimal.")


# ------------------------------------------------------------------ issue 27: malformed behaviour.json


@pytest.mark.parametrize("content, complaint", [
    ('["Breakout"]', "must be a JSON object, got list"),
    ('{"games": ["Breakout"], "behaviour": {"sub_optimal": {}, "near_optimal": {}}}', "missing key 'random'"),
    ('{"games": ["Breakout"], "random": {"Breakout": "1.0"}, "behaviour": {}}', "random['Breakout'] must be a finite"),
    ("games: [Breakout]", "not valid JSON"),
])
@pytest.mark.slow
def test_summary_command_on_a_malformed_behaviour_file_names_it_in_one_line_and_exits_2(
        tmp_path: Path, content: str, complaint: str) -> None:
    bad = tmp_path / "behaviour.json"
    bad.write_text(content)
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"name": "bad_behaviour", "output_dir": str(tmp_path / "sweep"),
                                 "base": {"games": "Breakout", "device": "cpu"},
                                 "factors": {"algo": ["bc"]}, "seeds": [0]}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "workbench.study", "summary", str(sweep), "--behaviour", str(bad),
                           "--out", str(tmp_path / "out.json")], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, err
    assert err.startswith("python -m workbench.study summary: error: ")
    assert str(bad) in err and complaint in err
    assert not (tmp_path / "out.json").exists()

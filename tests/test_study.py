"""The small-scale study (workbench.study): scripted behaviour, the recorded learning history and
its behaviour line, and the results summary against direct computations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from workbench import metrics
from workbench import study as S
from workbench.baselines import UniformPolicy
from workbench.data import dqn_replay as dr


def _play(game: str, scripted: bool, steps: int, seed: int) -> float:
    """Total raw reward of ``steps`` agent steps (episodes capped at 300 steps) of the heuristic or
    of uniform random actions, in the data protocol's environment."""
    from workbench import games as G

    env, ram = S._env_with_ram(game, seed, cap=300)
    policy = S.ScriptedPolicy(game, ram)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    stack = np.zeros((1, 4, 84, 84), np.uint8)
    total = 0.0
    for _ in range(steps):
        a = int(policy.act(stack, np.zeros(1, np.int64))[0]) if scripted else int(rng.integers(G.num_actions(game)))
        _, r, term, trunc, _ = env.step(a)
        total += float(r)
        if term or trunc:
            env.reset()
    env.close()
    return total


@pytest.mark.slow
@pytest.mark.parametrize("game, margin", [("Breakout", 5.0), ("Freeway", 3.0), ("Pong", 2.0)])
def test_scripted_policy_beats_random(game: str, margin: float) -> None:
    # Two fixed seeds, 600 agent steps each: the heuristic's return is clearly above random play's.
    for seed in (0, 1):
        scripted, random = _play(game, True, 600, seed), _play(game, False, 600, seed)
        assert scripted >= random + margin, (game, seed, scripted, random)


@pytest.mark.slow
def test_space_invaders_fire_beats_random_per_episode() -> None:
    # Random play dies sooner, so totals over a fixed number of steps would compare different episode
    # counts: compare mean returns of complete episodes (cap 1,000), random pooled over 4 seeds (its
    # per-episode returns range from about 50 to 600). Measured: FIRE 285 per episode, random about 180.
    from workbench import games as G

    def episodes(scripted: bool, seed: int) -> list[float]:
        env, ram = S._env_with_ram("SpaceInvaders", seed, cap=1000)
        policy, rng = S.ScriptedPolicy("SpaceInvaders", ram), np.random.default_rng(seed)
        env.reset(seed=seed)
        stack, done, ret = np.zeros((1, 4, 84, 84), np.uint8), [], 0.0
        n = G.num_actions("SpaceInvaders")
        for _ in range(2000):
            a = int(policy.act(stack, np.zeros(1, np.int64))[0]) if scripted else int(rng.integers(n))
            _, r, term, trunc, _ = env.step(a)
            ret += float(r)
            if term or trunc:
                done.append(ret)
                ret = 0.0
                env.reset()
        env.close()
        return done

    fire = [r for seed in (0, 1) for r in episodes(True, seed)]
    rand = [r for seed in range(4) for r in episodes(False, seed)]
    assert len(fire) >= 2 and len(rand) >= 8
    assert np.mean(fire) >= np.mean(rand) + 50.0, (fire, rand)


def test_scripted_policy_refuses_unknown_game_and_batches() -> None:
    with pytest.raises(ValueError, match="scripted games: Breakout, Freeway, Pong, SpaceInvaders"):
        S.ScriptedPolicy("Seaquest", lambda: np.zeros(128, np.uint8))
    with pytest.raises(ValueError, match="one environment"):
        S.ScriptedPolicy("Pong", lambda: np.zeros(128, np.uint8)).act(np.zeros((2, 4, 84, 84), np.uint8),
                                                                     np.zeros(2, np.int64))


def test_epsilon_schedule_and_spec_validation() -> None:
    assert S.epsilon_schedule(5, 1.0, 0.0) == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert S.epsilon_schedule(3, 1.0, 0.04, "geometric") == pytest.approx([1.0, 0.2, 0.04])
    with pytest.raises(ValueError, match="use decay='linear'"):
        S.HistorySpec(eps_end=0.0)
    with pytest.raises(ValueError, match="valid: geometric, linear"):
        S.HistorySpec(decay="cosine")
    assert S.epsilon_schedule(1, 1.0, 0.1) == [0.1]
    with pytest.raises(ValueError, match="scripted games"):
        S.HistorySpec(games="Breakout,Seaquest")
    with pytest.raises(ValueError, match="eps_end must be in"):
        S.HistorySpec(eps_end=1.5)


def _episodes_from_files(replay_logs: Path, n: int) -> list[tuple[int, float]]:
    """(checkpoint of the terminal row, clipped return) of every episode, from the files alone."""
    out, total = [], 0.0
    for k in range(n):
        ck = dr.load_checkpoint(replay_logs, k)
        for r, t in zip(ck["reward"], ck["terminal"]):
            total += float(r)
            if t:
                out.append((k, total))
                total = 0.0
    return out


@pytest.mark.slow
def test_record_history_behaviour_line_matches_the_recorded_data(tmp_path: Path) -> None:
    spec = S.HistorySpec(output_dir=str(tmp_path / "data"), games="Freeway,Breakout", checkpoints=5, rows=300,
                         eps_start=1.0, eps_end=0.0, decay="linear", episode_cap=120, random_episodes=2, seed=3)
    doc = S.record_history(spec, progress=False)
    saved = json.loads((tmp_path / "data" / S.BEHAVIOUR_FILE).read_text())
    assert saved == json.loads(json.dumps(doc))
    for game in ("Freeway", "Breakout"):
        logs = tmp_path / "data" / game / "1" / "replay_logs"
        assert dr.list_checkpoints(logs) == [0, 1, 2, 3, 4]  # the short tail was trimmed
        entry = doc["per_game"][game]
        files = _episodes_from_files(logs, 5)
        for k, ck in enumerate(entry["checkpoints"]):
            assert ck["epsilon"] == pytest.approx(1.0 - k / 4)
            assert ck["clipped_returns"] == pytest.approx([ret for c, ret in files if c == k])
            assert len(ck["returns"]) == ck["episodes"]
            if ck["episodes"]:
                assert ck["mean_return"] == pytest.approx(np.mean(ck["returns"]))
        # The raw returns are the recorder's own episode returns, in order.
        info = json.loads((logs / "record_info.json").read_text())
        raw = [r for ck in entry["checkpoints"] for r in ck["returns"]]
        assert raw == pytest.approx(info["episode_returns"][: len(raw)])
        # Splits: the first 20% of 5 checkpoints is checkpoint 0; near-optimal is all of them.
        sub = entry["checkpoints"][0]["returns"]
        assert doc["behaviour"]["sub_optimal"][game] == (pytest.approx(np.mean(sub)) if sub else None)
        assert doc["behaviour"]["near_optimal"][game] == pytest.approx(np.mean(raw))
    # Epsilon really changes the behaviour: uniform actions in checkpoint 0 (epsilon 1), only the
    # heuristic's UP in the last one (epsilon 0), on Freeway; padding rows excluded.
    logs = tmp_path / "data" / "Freeway" / "1" / "replay_logs"
    first, last = dr.load_checkpoint(logs, 0), dr.load_checkpoint(logs, 4)
    played0 = first["action"][first["observation"].reshape(300, -1).any(axis=1)]
    played4 = last["action"][last["observation"].reshape(300, -1).any(axis=1)]
    assert set(played4.tolist()) == {1}
    assert 0.2 < float(np.mean(played0 == 1)) < 0.5
    assert set(doc["random"]) == {"Freeway", "Breakout"}
    assert {g: len(r) for g, r in doc["random_returns"].items()} == {"Freeway": 2, "Breakout": 2}
    assert doc["random"] == {g: pytest.approx(np.mean(r)) for g, r in doc["random_returns"].items()}


# ---------------------------------------------------------------------------------------------- summary


def _fake_sweep(tmp_path: Path) -> tuple[dict, dict]:
    data = tmp_path / "data"
    data.mkdir()
    behaviour = {"games": ["Breakout", "Pong"], "random": {"Breakout": 1.0, "Pong": -5.0},
                 "behaviour": {"sub_optimal": {"Breakout": 2.0, "Pong": -4.0},
                               "near_optimal": {"Breakout": 8.0, "Pong": -1.0}}}
    (data / S.BEHAVIOUR_FILE).write_text(json.dumps(behaviour))
    sweep = {
        "name": "fake_study", "output_dir": str(tmp_path / "sweep"),
        "base": {"games": "Breakout,Pong", "dataset": str(data), "split": "sub_optimal", "device": "cpu"},
        "factors": {"algo": ["scaled_ql", "bc", "scaled_ql", "scaled_ql"],
                    "model": ["resnet-tiny", "resnet-tiny", "resnet-tiny", "resnet18"],
                    "algo_args": [{}, {}, {"feature_norm": False}, {}]},
        "seeds": [0, 1, 2], "combine": "zip",
    }
    return sweep, behaviour


def test_summary_matches_a_direct_computation(tmp_path: Path) -> None:
    from workbench.fileio import atomic_write_json
    from workbench.sweep import load_sweep

    sweep_doc, behaviour = _fake_sweep(tmp_path)
    sweep_file = tmp_path / "fake_study.json"
    sweep_file.write_text(json.dumps(sweep_doc))
    sweep = load_sweep(sweep_file)
    rng = np.random.default_rng(7)
    expected: dict[tuple[str, str], list[float]] = {}
    labels = {0: "Scaled QL", 1: "MTBC", 2: "Scaled QL (no feature norm)", 3: "Scaled QL [resnet18]"}
    for i, point in enumerate(sweep.points):
        combo = i // 3
        if point.id.endswith("seed-2") and combo == 1:
            continue  # a point that did not finish is left out
        scores = {"Breakout": float(rng.integers(0, 20)), "Pong": float(rng.integers(-10, 0))}
        run = point.run_dir
        atomic_write_json(run / "eval" / "scores.json", {"per_game": {g: {"mean": v} for g, v in scores.items()}})
        atomic_write_json(run / "summary.json", {})
        atomic_write_json(sweep.status_path(point), {"state": "done", "params": point.params})
        for g, v in scores.items():
            expected.setdefault((labels[combo], g), []).append(v)

    out = S.build_summary([sweep_file], reps=500, seed=3)
    assert out["games"] == ["Breakout", "Pong"]
    assert out["random"] == behaviour["random"] and out["behaviour"] == behaviour["behaviour"]
    rows = {(r["method"], r["game"]): r for r in out["results"]}
    assert set(rows) == set(expected)
    for (method, game), runs in expected.items():
        row = rows[(method, game)]
        assert row["split"] == "sub_optimal"
        assert row["runs"] == runs
        assert row["mean"] == pytest.approx(np.mean(runs))
        # 2-3 runs: their range (a 95% percentile bootstrap of so few is min to max), named as such.
        assert len(runs) <= 3 and row["ci"] == [min(runs), max(runs)]
        assert (row["interval"], row["n_runs"]) == ("range", len(runs))
        assert row["above_random"] == (row["ci"][0] > behaviour["random"][game])  # this file kept no episodes
        assert row["vs_behaviour"] == pytest.approx(np.mean(runs) - behaviour["behaviour"]["sub_optimal"][game])
    assert len(rows[("MTBC", "Pong")]["runs"]) == 2
    # the fake status files carry no timestamps: 0 seconds; every point has the sweep's default steps (0)
    assert out["sweeps"]["fake_study"] == {"file": str(sweep_file), "points_done": 11, "points": 12,
                                           "point_seconds": 0.0, "steps_per_point": [0]}
    # Aggregate rows: workbench.metrics' IQM with its stratified bootstrap, of scores normalized by
    # hand to 0 = random, 1 = near-optimal behaviour (Breakout: random 1, behaviour 8; Pong: -5, -1).
    agg = {r["method"]: r for r in out["aggregates"]}
    for method in labels.values():
        normalized = {"Breakout": [(v - 1.0) / 7.0 for v in expected[(method, "Breakout")]],
                      "Pong": [(v + 5.0) / 4.0 for v in expected[(method, "Pong")]]}
        ref = metrics.aggregate({"m": normalized}, "none", reps=500, seed=3)["m"]
        assert agg[method]["mean"] == pytest.approx(ref["iqm"])
        assert agg[method]["ci"] == pytest.approx(ref["iqm_ci"])


def test_above_random_needs_the_ci_above_random_s_ci_where_its_episodes_were_kept(tmp_path: Path) -> None:
    from workbench.fileio import atomic_write_json
    from workbench.sweep import load_sweep

    sweep_doc, behaviour = _fake_sweep(tmp_path)
    # Random Breakout episodes 0 and 10: mean 5, bootstrap CI [0, 10]; Pong always -5: CI [-5, -5].
    behaviour["random"] = {"Breakout": 5.0, "Pong": -5.0}
    behaviour["random_returns"] = {"Breakout": [0.0, 10.0] * 4, "Pong": [-5.0] * 8}
    (tmp_path / "data" / S.BEHAVIOUR_FILE).write_text(json.dumps(behaviour))
    sweep_file = _write(tmp_path / "fake_study.json", sweep_doc)
    sweep = load_sweep(sweep_file)
    for point in sweep.points:  # every run scores 7 on Breakout (above random's mean, inside its CI), -4 on Pong
        atomic_write_json(point.run_dir / "eval" / "scores.json",
                          {"per_game": {"Breakout": {"mean": 7.0}, "Pong": {"mean": -4.0}}})
        atomic_write_json(point.run_dir / "summary.json", {})
        atomic_write_json(sweep.status_path(point), {"state": "done", "params": point.params})
    out = S.build_summary([sweep_file], reps=500, seed=3)
    lo, hi = out["random_ci"]["Breakout"]
    assert 0.0 <= lo < 5.0 < hi <= 10.0 and out["random_ci"]["Pong"] == [-5.0, -5.0]
    assert {r["game"]: r["above_random"] for r in out["results"] if r["method"] == "MTBC"} == {"Breakout": False,
                                                                                              "Pong": True}


def test_summary_says_which_rows_beat_the_best_constant_action_and_the_behaviour(tmp_path: Path) -> None:
    from workbench.fileio import atomic_write_json
    from workbench.sweep import load_sweep

    sweep_doc, behaviour = _fake_sweep(tmp_path)
    behaviour["constant_best"] = {"Breakout": {"action": "FIRE", "index": 1, "mean": 6.0, "scores": [6.0] * 8},
                                  "Pong": {"action": "NOOP", "index": 0, "mean": -4.5, "scores": [-4.0, -5.0] * 4}}
    (tmp_path / "data" / S.BEHAVIOUR_FILE).write_text(json.dumps(behaviour))
    sweep_file = _write(tmp_path / "fake_study.json", sweep_doc)
    sweep = load_sweep(sweep_file)
    for point in sweep.points:  # every run: 7 on Breakout, -4 on Pong (CIs [7, 7] and [-4, -4]), 90 s
        atomic_write_json(point.run_dir / "eval" / "scores.json",
                          {"per_game": {"Breakout": {"mean": 7.0}, "Pong": {"mean": -4.0}}})
        atomic_write_json(point.run_dir / "summary.json", {})
        atomic_write_json(sweep.status_path(point), {"state": "done", "params": point.params,
                                                     "started": "2026-12-01T10:00:00+0000",
                                                     "finished": "2026-12-01T10:01:30+0000", "seconds": 90.0})
    out = S.build_summary([sweep_file], reps=500, seed=3)
    assert out["sweeps"]["fake_study"]["point_seconds"] == 90.0 * 12
    assert out["baselines"]["Breakout"] == {
        "random": 1.0, "random_ci": None, "constant_best": {"action": "FIRE", "mean": 6.0, "ci": [6.0, 6.0]},
        "behaviour": {"sub_optimal": 2.0, "near_optimal": 8.0}, "behaviour_eval_protocol": None}
    lo, hi = out["baselines"]["Pong"]["constant_best"]["ci"]
    assert -5.0 <= lo < -4.5 < hi <= -4.0
    mtbc = {r["game"]: r for r in out["results"] if r["method"] == "MTBC"}
    # 7 > 6 (FIRE) and > 2 (behaviour); -4 > -4.5 (NOOP's mean) but not above the behaviour's -4.
    assert (mtbc["Breakout"]["beats_constant"], mtbc["Breakout"]["beats_behaviour"]) == (True, True)
    assert (mtbc["Pong"]["beats_constant"], mtbc["Pong"]["beats_behaviour"]) == (True, False)
    table = S.summary_table(out)
    assert "| best constant action | | 6.0 (FIRE) | -4.5 (NOOP) |" in table
    assert "| MTBC | sub_optimal |" in table and "| 2 of 2 | 1 of 2 | 1 of 2 |" in table
    assert [mtbc[g]["beats_sub_optimal_behaviour"] for g in ("Breakout", "Pong")] == [True, False]


def test_the_reference_model_of_each_algorithm_is_the_one_most_of_its_points_use() -> None:
    from workbench.sweep import load_sweep

    refs = S.reference_models([load_sweep("sweeps/minatar_study.yaml")])
    assert (refs["scaled_ql"], refs["bc"], refs["mgdt"]) == ("minatar-cnn", "minatar-cnn", "mgdt-tiny")
    assert S.reference_models([load_sweep("sweeps/small_scale_study.yaml")])["scaled_ql"] == "resnet-tiny"


def test_bootstrap_ci_of_constant_runs_is_the_value_and_empty_is_refused() -> None:
    assert S.bootstrap_ci([4.0, 4.0, 4.0]) == (4.0, 4.0)
    with pytest.raises(ValueError, match="at least one"):
        S.bootstrap_ci([])


def test_summary_needs_the_behaviour_file(tmp_path: Path) -> None:
    sweep_doc, _ = _fake_sweep(tmp_path)
    (tmp_path / "data" / S.BEHAVIOUR_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="python -m workbench.study data"):
        S.build_summary([_write(tmp_path / "s.json", sweep_doc)])


def _write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_study_sweeps_validate_and_the_quick_one_is_the_same_study() -> None:
    from workbench.sweep import load_sweep

    full, quick = load_sweep("sweeps/small_scale_study.yaml"), load_sweep("sweeps/small_scale_study_quick.yaml")
    assert full.factors == quick.factors and full.combine == quick.combine == "zip"
    assert full.seeds == [0, 1, 2] and set(quick.seeds) <= set(full.seeds)
    assert len(full.points) == 27
    # Every comparison of the issue is there: methods x splits, MSE, feature norm off, a second size.
    combos = {(p.params["algo"], p.params["model"], p.params["split"], p.params["algo_args"].get("feature_norm", True))
              for p in full.points}
    for algo, model in (("scaled_ql", "resnet-tiny"), ("bc", "resnet-tiny"), ("mgdt", "mgdt-tiny")):
        for split in S.SPLITS:
            assert (algo, model, split, True) in combos
    assert {("cql_mse", "resnet-tiny", "sub_optimal", True), ("scaled_ql", "resnet-tiny", "sub_optimal", False),
            ("scaled_ql", "resnet-small", "sub_optimal", True)} <= combos
    for sweep in (full, quick):
        assert all(p.params["games"] == "Breakout,Freeway,Pong,SpaceInvaders" for p in sweep.points)
        assert sweep.base["dataset"].startswith("data/small_scale_study")


def test_command_line_help_and_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The help prints every HistorySpec field (a '%' in a docstring once broke argparse's formatting).
    with pytest.raises(SystemExit) as exit_info:
        S.main(["data", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--episode-cap" in out and "the first 20%" in out
    # A game without a scripted policy: exit 2 naming the valid ones, nothing written.
    assert S.main(["data", "--output-dir", str(tmp_path / "d"), "--games", "Seaquest"]) == 2
    assert "scripted games: Breakout, Freeway, Pong, SpaceInvaders, MinAtar-Asterix" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    # A summary without the data's behaviour file says how to make it.
    sweep_doc, _ = _fake_sweep(tmp_path)
    (tmp_path / "data" / S.BEHAVIOUR_FILE).unlink()
    assert S.main(["summary", str(_write(tmp_path / "s.json", sweep_doc)), "--out", str(tmp_path / "o.json")]) == 2
    assert "python -m workbench.study data" in capsys.readouterr().err


def test_summary_table_lays_out_every_number_of_the_summary() -> None:
    summary = {
        "games": ["Breakout", "Pong"], "random": {"Breakout": 1.25, "Pong": -20.5},
        "random_ci": {"Breakout": [0.5, 2.0], "Pong": [-21.0, -20.0]},
        "behaviour": {"sub_optimal": {"Breakout": 2.0, "Pong": -18.0},
                      "near_optimal": {"Breakout": 11.0, "Pong": None}},
        "results": [
            {"method": "MTBC", "split": "sub_optimal", "game": "Breakout", "mean": 3.0, "ci": [2.5, 3.5],
             "above_random": True},
            {"method": "MTBC", "split": "sub_optimal", "game": "Pong", "mean": -21.0, "ci": [-21.0, -21.0],
             "above_random": False},
            {"method": "Scaled QL", "split": "near_optimal", "game": "Pong", "mean": -19.0, "ci": [-20.0, -18.0],
             "above_random": False},
        ],
        "aggregates": [{"method": "MTBC", "split": "sub_optimal", "mean": 0.125, "ci": [0.0, 0.25]}],
    }
    assert S.summary_table(summary).splitlines() == [
        "| method | split | Breakout | Pong | IQM, behaviour-normalized | beats constant | beats behaviour | "
        "beats sub-optimal behaviour |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        "| random | | 1.2 [0.5, 2.0] | -20.5 [-21.0, -20.0] | 0 | | | |",
        "| behaviour | sub_optimal | 2.0 | -18.0 | | | | |",
        "| behaviour | near_optimal | 11.0 |  | 1 | | | |",
        "| MTBC | sub_optimal | 3.0 [2.5, 3.5]* | -21.0 [-21.0, -21.0] | 0.12 [0.00, 0.25] |  |  |  |",
        "| Scaled QL | near_optimal |  | -19.0 [-20.0, -18.0] |  |  |  |  |",
    ]


def test_action_profile_tells_a_frame_blind_policy_from_one_that_varies() -> None:
    # The SpaceInvaders heuristic fires whatever the screen: one action on every step.
    fire = S.action_profile(S.ScriptedPolicy("SpaceInvaders", lambda: np.zeros(128, np.uint8)), "SpaceInvaders",
                            seeds=(0, 1), max_steps=120)
    assert fire == {"modal_action": "FIRE", "modal_fraction": 1.0, "actions_used": 1, "steps": 240}
    # Uniform random actions over the 6 of the minimal set: the most frequent near 1/6, all six used.
    uniform = S.action_profile(UniformPolicy(), "SpaceInvaders", seeds=(0,), max_steps=300, epsilon=1.0)
    assert uniform["actions_used"] == 6 and 100 < uniform["steps"] <= 300  # random play may lose first
    assert 1 / 6 <= uniform["modal_fraction"] < 0.3


@pytest.mark.slow
def test_sweep_action_profiles_read_each_finished_point_s_checkpoint(tmp_path: Path) -> None:
    from workbench.config import PretrainConfig
    from workbench.fileio import atomic_write_json
    from workbench.pipeline import pretrain
    from workbench.sweep import load_sweep

    doc = {"name": "profiles", "output_dir": str(tmp_path / "sweep"),
           "base": {"games": "Pong", "record_steps": 200, "steps": 2, "batch_size": 8, "eval_episodes": 1,
                    "eval_max_steps": 20, "num_envs": 1, "device": "cpu"},
           "factors": {"algo": ["bc", "scaled_ql"]}, "seeds": [0], "combine": "zip"}
    sweep_file = _write(tmp_path / "profiles.json", doc)
    sweep = load_sweep(sweep_file)
    first, second = sweep.points
    pretrain(PretrainConfig.from_params(**{**first.params, "output_dir": str(first.run_dir)}), progress=False)
    atomic_write_json(sweep.status_path(first), {"state": "done", "params": first.params})
    # The second point never ran: it is left out, not an error.
    out = S.sweep_action_profiles([sweep_file], max_steps=40, progress=False)
    assert [(r["method"], r["split"], r["game"]) for r in out["rows"]] == [("MTBC", "all", "Pong")]
    row = out["rows"][0]
    direct = S.action_profile(first.run_dir, "Pong", max_steps=40)
    assert row["modal_fraction"] == [direct["modal_fraction"]] and row["modal_action"] == [direct["modal_action"]]
    assert 1 / 6 <= direct["modal_fraction"] <= 1.0 and direct["steps"] == 40


def test_study_scores_figure_draws_each_row_and_the_reference_lines_at_their_values() -> None:
    from workbench.viz.results_figures import make_study_scores_figure

    summary = {
        "games": ["Breakout", "Pong"],
        "baselines": {"Breakout": {"random": 1.0, "constant_best": {"action": "FIRE", "mean": 0.5},
                                   "behaviour": {"sub_optimal": 2.0, "near_optimal": 8.0}},
                      "Pong": {"random": -20.0, "constant_best": {"action": "NOOP", "mean": -21.0},
                               "behaviour": {"sub_optimal": -18.0, "near_optimal": None}}},
        "results": [{"method": "MTBC", "split": "sub_optimal", "game": "Breakout", "mean": 3.0, "ci": [2.0, 4.5]},
                    {"method": "MTBC", "split": "sub_optimal", "game": "Pong", "mean": -19.0, "ci": [-20.0, -18.0]}],
    }
    fig = make_study_scores_figure(summary)
    bars = [t for t in fig.data if t.type == "bar"]
    assert [(b.y[0], b.error_y.array[0], b.error_y.arrayminus[0]) for b in bars] == [(3.0, 1.5, 1.0), (-19.0, 1.0, 1.0)]
    lines = {(t.name, t.xaxis): t.y[0] for t in fig.data if t.type == "scatter"}
    assert lines == {("random", "x"): 1.0, ("best constant action", "x"): 0.5, ("behaviour, sub-optimal", "x"): 2.0,
                     ("behaviour, near-optimal", "x"): 8.0, ("random", "x2"): -20.0,
                     ("best constant action", "x2"): -21.0, ("behaviour, sub-optimal", "x2"): -18.0}


def test_the_minatar_study_and_the_atari_run_give_every_method_the_same_budget() -> None:
    from workbench.sweep import load_sweep

    study = load_sweep("sweeps/minatar_study.yaml")
    assert len(study.points) == 55 and study.seeds == [0, 1, 2, 3, 4]
    assert {(p.params["steps"], p.params["batch_size"], p.params["lr"]) for p in study.points} == {(4000, 64, 0.0003)}
    combos = {(p.params["algo"], p.params["model"], p.params["split"], p.params["algo_args"].get("feature_norm", True))
              for p in study.points}
    for algo, model in (("scaled_ql", "minatar-cnn"), ("cql_mse", "minatar-cnn"), ("bc", "minatar-cnn"),
                        ("mgdt", "mgdt-tiny")):
        assert {(algo, model, split, True) for split in S.SPLITS} <= combos
    assert {("scaled_ql", "minatar-cnn", "near_optimal", False), ("scaled_ql", "resnet-tiny", "near_optimal", True),
            ("scaled_ql", "resnet-small", "near_optimal", True)} <= combos
    atari = load_sweep("sweeps/atari_learning.yaml")
    assert len(atari.points) == 3 and {p.params["model"] for p in atari.points} == {"nature-cnn"}

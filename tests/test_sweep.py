"""Ablation sweeps end to end: declaration, validation, the submitit path, resume after a kill,
failure reports, and the explorer's plotted numbers against ``workbench.metrics``.

The runs are tiny (resnet-tiny, 4 steps, 100 recorded steps) and shared by the module: one 2 x 2
grid (feature normalization on/off x seeds 0, 1) run through submitit's local executor, read by
the explorer tests. PNG export is switched off for the points (``BROWSER_PATH`` names no
browser): starting Chromium per point would double their time and is tested elsewhere.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from workbench import metrics as M
from workbench.config import PretrainConfig
from workbench.sweep import load_sweep, run_sweep, sweep_status

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(model="resnet-tiny", games="Pong,Breakout", steps=4, batch_size=8, record_steps=100,
            eval_episodes=2, eval_max_steps=300, num_envs=1, device="cpu")


def declaration(root: Path, **changes) -> dict:
    doc = {"name": "t", "base": dict(TINY), "factors": {"feature_norm": [True, False]}, "seeds": [0, 1],
           "output_dir": str(root)}
    doc.update(changes)
    return doc


@pytest.fixture(scope="module")
def no_png():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BROWSER_PATH", "/nonexistent-browser")  # the point processes inherit it
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


# ------------------------------------------------------------------------------------- validation


def test_factors_must_be_reachable_settings_and_the_error_lists_them(tmp_path):
    with pytest.raises(ValueError) as exc:
        load_sweep(declaration(tmp_path, factors={"feature_nrom": [True, False]}))
    msg = str(exc.value)
    assert "'feature_nrom'" in msg and "feature_norm" in msg and "alpha" in msg and "model" in msg  # both kinds
    with pytest.raises(ValueError, match=r"unknown sweep key\(s\) 'factor' \(did you mean 'factors'\?\)"):
        load_sweep({"factor": {"alpha": [0.1]}, "name": "x"})
    # A JOWA setting is not a Scaled QL setting, and the other way round.
    with pytest.raises(ValueError, match="not a reachable setting.*scaled_ql settings"):
        load_sweep(declaration(tmp_path, factors={"beta": [0.0, 0.1]}))
    jowa = load_sweep(declaration(tmp_path, base={**TINY, "model": "jowa-tiny"}, factors={"beta": [0.0, 0.1]}))
    assert [PretrainConfig.from_params(**p.params).settings.beta for p in jowa.points] == [0.0, 0.0, 0.1, 0.1]


def test_invalid_levels_and_declarations_are_rejected_before_anything_runs(tmp_path):
    cases = [
        (dict(factors={"feature_norm": [True, "maybe"]}), "feature_norm"),  # a bool setting
        (dict(factors={"model": ["resnet-tiny", "resnet-huge"]}), "resnet-huge.*valid models"),
        (dict(factors={"lr": [0.1, -1.0]}), "lr must be"),
        (dict(factors={"seed": [0, 1]}), "'seed' is set by the sweep"),
        (dict(factors={"alpha": [0.1, 0.1]}), "repeats a level"),
        (dict(factors={"alpha": [0.1, 0.2], "n_step": [1]}, combine="zip"), "same number of levels"),
        (dict(combine="diagonal"), "valid: grid, zip"),
        (dict(seeds=[0, 0]), "repeat"),
        (dict(executor={"kind": "kubernetes"}), "valid kinds: local, slurm"),
        (dict(executor={"kind": "slurm", "gpus": 1}), "'gpus'; valid executor keys: kind, .*gpus_per_node"),
        (dict(factors={"feature_norm": []}), "non-empty list"),
    ]
    for changes, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            load_sweep(declaration(tmp_path, **changes))
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # validation writes nothing


def test_grid_and_zip_points_carry_each_level_into_the_config(tmp_path):
    grid = load_sweep(declaration(tmp_path, factors={"feature_norm": [True, False], "algo_args.alpha": [0.1, 0.5]},
                                  seeds=[3]))
    got = {(PretrainConfig.from_params(**p.params).settings.feature_norm,
            PretrainConfig.from_params(**p.params).settings.alpha) for p in grid.points}
    assert got == {(True, 0.1), (True, 0.5), (False, 0.1), (False, 0.5)}
    assert all(p.params["seed"] == 3 and Path(p.params["output_dir"]).parent == tmp_path for p in grid.points)
    zipped = load_sweep(declaration(tmp_path, factors={"algo": ["scaled_ql", "cql_mse"], "n_step": [1, 3]},
                                    combine="zip", seeds=[0]))
    resolved = [PretrainConfig.from_params(**p.params).resolve() for p in zipped.points]
    assert [(r["algo"], r["settings"]["n_step"]) for r in resolved] == [("scaled_ql", 1), ("cql_mse", 3)]


def test_example_sweeps_validate_and_switch_to_paper_scale_with_the_preset():
    files = sorted((ROOT / "sweeps").glob("*.yaml"))
    assert {f.stem for f in files} >= {"feature_norm_cpu", "scaled_ql_ablations_cpu", "jowa_ablations_cpu"}
    fn = load_sweep(ROOT / "sweeps" / "feature_norm_cpu.yaml")
    assert len(fn.points) == 4 and {p.levels["feature_norm"] for p in fn.points} == {True, False}
    for f in files:
        # These pin their sizes on purpose: a tiny wiring sweep, and the CPU studies whose methods
        # share one gradient budget and the data's episode cap (tests/test_study.py checks them).
        if f.stem in ("feature_norm_cpu", "small_scale_study", "small_scale_study_quick", "minatar_study",
                      "atari_learning"):
            continue
        cpu = load_sweep(f)
        paper = load_sweep(f, {"preset": "paper", "dataset": "/data/dqn-replay"})
        for c, p in zip(cpu.points, paper.points):
            rc = PretrainConfig.from_params(**c.params).resolve()
            rp = PretrainConfig.from_params(**p.params).resolve()
            # The papers' protocol and sizes, not the CPU ones: nothing in the file pins them.
            assert rp["eval_max_steps"] == 27_000 and rp["eval_episodes"] == 16, f.name
            assert sum(s["steps"] for s in rp["stages"]) >= 100 * sum(s["steps"] for s in rc["stages"]), f.name
            assert rp["batch_size"] > rc["batch_size"], f.name


def test_cli_dry_run_and_bad_file(tmp_path):
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(yaml.safe_dump(declaration(tmp_path / "out")))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ok = subprocess.run([sys.executable, "-m", "workbench.sweep", "run", str(sweep_file), "--dry-run"],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and ok.stdout.count("pending") == 5, ok.stdout + ok.stderr  # header + 4 points
    assert not (tmp_path / "out").exists()
    sweep_file.write_text(yaml.safe_dump(declaration(tmp_path / "out", factors={"alhpa": [0.1]})))
    bad = subprocess.run([sys.executable, "-m", "workbench.sweep", "run", str(sweep_file)],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "'alhpa'" in bad.stderr and "valid factors" in bad.stderr


# ------------------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def grid(tmp_path_factory, no_png):
    """A 2 x 2 grid (feature_norm x seed) run through submitit's local executor (the Slurm path)."""
    root = tmp_path_factory.mktemp("grid") / "sweep"
    sweep = load_sweep(declaration(root, name="grid", executor={"kind": "slurm", "cluster": "local", "array": True,
                                                                 "timeout_min": 10}))
    index = run_sweep(sweep, progress=False)
    return sweep, index


def test_submitit_local_executor_runs_the_grid(grid):
    sweep, index = grid
    assert index["counts"] == {"done": 4}, json.dumps(index["points"], indent=1)[:3000]
    on_disk = json.loads(sweep.index_path.read_text())
    assert {(p["levels"]["feature_norm"], p["levels"]["seed"]) for p in on_disk["points"]} == {
        (True, 0), (True, 1), (False, 0), (False, 1)}
    for p in on_disk["points"]:
        assert p["state"] == "done" and p["job_id"], p  # a submitit job id, recorded by the job itself
        config = json.loads((Path(p["run_dir"]) / "config.json").read_text())
        assert config["resolved"]["settings"]["feature_norm"] is p["levels"]["feature_norm"]
        assert config["params"]["seed"] == p["levels"]["seed"]
        record = json.loads(Path(p["notebook"]).read_text())  # the executed notebook is the record
        injected = [c for c in record["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert injected and f"seed = {p['levels']['seed']}" in "".join(injected[0]["source"])
    assert list((sweep.root / "submitit").rglob("*_log.out"))  # submitit's own job logs
    # Running again does nothing: every point is done with the same parameters.
    before = {p.id: sweep.record_path(p).stat().st_mtime for p in sweep.points}
    again = run_sweep(sweep, progress=False)
    assert again["counts"] == {"done": 4}
    assert before == {p.id: sweep.record_path(p).stat().st_mtime for p in sweep.points}


def test_resume_after_a_killed_point(tmp_path, no_png):
    """Kill the sweep (and its kernel) while point 2 evaluates; status says interrupted; the re-run
    skips point 1 and resumes point 2 from its checkpoint."""
    from workbench.checkpoint import latest_checkpoint

    sweep_file = tmp_path / "resume.yaml"
    sweep_file.write_text(yaml.safe_dump(declaration(tmp_path / "out", name="resume",
                                                     factors={"feature_norm": [False]})))
    sweep = load_sweep(sweep_file)
    first, second = sweep.points
    proc = subprocess.Popen([sys.executable, "-m", "workbench.sweep", "run", str(sweep_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while latest_checkpoint(second.run_dir) is None:
            assert proc.poll() is None, "the sweep ended before point 2 saved a checkpoint"
            assert time.monotonic() < deadline, "point 2 never saved a checkpoint"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        holder = json.loads((second.run_dir / ".workbench-lock").read_text() or "{}")
        if holder.get("pid"):  # the kernel runs in a session of its own: kill it too
            try:
                os.kill(holder["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (second.run_dir / "summary.json").exists(), "point 2 finished before the kill"
    time.sleep(0.5)
    states = {p["id"]: p["state"] for p in sweep_status(sweep)["points"]}
    assert states == {first.id: "done", second.id: "interrupted"}
    out = subprocess.run([sys.executable, "-m", "workbench.sweep", "status", str(sweep_file)],
                         capture_output=True, text=True)
    assert "1 done, 1 interrupted" in out.stdout and f"interrupted {second.id}" in " ".join(out.stdout.split())

    record_mtime = sweep.record_path(first).stat().st_mtime
    index = run_sweep(sweep, progress=False)
    assert index["counts"] == {"done": 2}
    assert sweep.record_path(first).stat().st_mtime == record_mtime  # skipped, not re-run
    summary = json.loads((second.run_dir / "summary.json").read_text())
    assert summary["resumed_from"] == 4 and summary["steps"] == 4  # resumed at the checkpoint, not restarted


def test_a_failing_point_reports_its_cell_and_error(tmp_path, no_png):
    sweep_file = tmp_path / "fail.yaml"
    sweep_file.write_text(yaml.safe_dump(declaration(tmp_path / "out", name="fail", seeds=[0],
                                                     factors={"feature_norm": [True]},
                                                     base={**TINY, "dataset": str(tmp_path / "no-such-store")})))
    run = subprocess.run([sys.executable, "-m", "workbench.sweep", "run", str(sweep_file)], capture_output=True,
                         text=True)
    assert run.returncode == 1, run.stdout + run.stderr
    (point,) = json.loads((tmp_path / "out" / "sweep.json").read_text())["points"]
    assert point["state"] == "failed"
    err = point["error"]
    assert err["ename"] == "FileNotFoundError" and "no-such-store" in err["evalue"] and isinstance(err["cell"], int)
    status = subprocess.run([sys.executable, "-m", "workbench.sweep", "status", str(sweep_file)],
                            capture_output=True, text=True)
    assert f"cell {err['cell']}: FileNotFoundError" in status.stdout and "1 failed" in status.stdout


# ------------------------------------------------------------------------------------- the explorer


def _expected_scores(sweep, games=("Breakout", "Pong")) -> dict[str, dict[str, list[float]]]:
    """{feature_norm=level: {game: [per-seed mean score]}} read straight from the eval files."""
    out: dict[str, dict[str, list[float]]] = {}
    for level in (True, False):
        label = f"feature_norm={level}"
        for seed in (0, 1):
            (p,) = [p for p in sweep.points if p.levels == {"feature_norm": level, "seed": seed}]
            per_game = json.loads((p.run_dir / "eval" / "scores.json").read_text())["per_game"]
            for g in games:
                episodes = per_game[g]["scores"]
                out.setdefault(label, {}).setdefault(g, []).append(sum(episodes) / len(episodes))
    return out


def _plotted(fig) -> tuple[list[float], list[float], list[float]]:
    (trace,) = fig.data
    y = list(trace.y)
    return y, [v + e for v, e in zip(y, trace.error_y.array)], [v - e for v, e in zip(y, trace.error_y.arrayminus)]


def test_explorer_plots_equal_workbench_metrics_with_the_widgets_driven_headlessly(grid, tmp_path):
    from workbench.viz.ablation import AblationExplorer, load_ablation, paper_figures

    sweep, _ = grid
    data = load_ablation(sweep.index_path.parent)
    assert data.factors == {"feature_norm": [True, False]} and len(data.runs) == 4
    ex = AblationExplorer(data, reps=200, out_dir=tmp_path / "figs")
    expected = _expected_scores(sweep)

    def check(metric: str, kind: str, scores: dict) -> None:
        agg = M.aggregate(scores, kind, reps=200, seed=0)
        y, hi, lo = _plotted(ex.figures["aggregates"])
        assert list(ex.figures["aggregates"].data[0].x) == ["True", "False"]
        assert y == pytest.approx([agg[k][metric] for k in scores])
        assert hi == pytest.approx([agg[k][f"{metric}_ci"][1] for k in scores])
        assert lo == pytest.approx([agg[k][f"{metric}_ci"][0] for k in scores])

    check("iqm", "human", expected)
    ex.controls["metric"].value = "optimality_gap"
    check("optimality_gap", "human", expected)
    # Performance profiles and P(A > B) are workbench.metrics' numbers too.
    prof = M.performance_profile(expected, "human", reps=200, seed=0)
    drawn = {t.name: list(t.y) for t in ex.figures["performance_profiles"].data if t.name in expected}
    assert drawn["feature_norm=True"] == pytest.approx(prof["methods"]["feature_norm=True"]["profile"])
    a, b = "feature_norm=False", "feature_norm=True"
    assert (ex.controls["level_a"].value, ex.controls["level_b"].value) == (a, b)
    poi = M.probability_of_improvement(expected, [(a, b)], "human", reps=200, seed=0)
    drawn_poi = list(ex.figures["probability_of_improvement"].data[0].x)
    assert drawn_poi == pytest.approx([poi[f"{a} vs {b}"]["probability"]])
    # A game subset, then DQN normalization (which Breakout lacks: a clear message, then Pong alone).
    ex.controls["games"].value = ("Pong",)
    pong = {k: {"Pong": v["Pong"]} for k, v in expected.items()}
    check("optimality_gap", "human", pong)
    ex.controls["games"].value = ("Breakout", "Pong")
    ex.controls["normalization"].value = "dqn"
    assert "no dqn reference score for Breakout" in ex.message.value
    ex.controls["games"].value = ("Pong",)
    check("optimality_gap", "dqn", pong)
    # Learning curves: every run's logged loss, coloured by its level.
    curves = ex.figures["learning_curves"].data
    assert len(curves) == 4 and {t.legendgroup for t in curves} == set(expected)
    # Export: every view as HTML (+ PNG when Chromium is there) and a README naming sweep and runs.
    statuses = ex.export()
    readme = (tmp_path / "figs" / "README.md").read_text()
    assert len(statuses) == 5 and all(s.html.is_file() for s in statuses)
    assert "sweep **grid**" in readme and all(str(r.path) in readme for r in data.runs)
    assert "normalization = dqn" in readme and "games = Pong" in readme
    # The papers' figures from the same runs, with the papers' numbers where games match.
    figs, skipped = paper_figures(data, tmp_path / "papers", reps=200, png=False)
    assert {"scaled_ql_fig2_profiles", "scaled_ql_fig4_per_game", "scaled_ql_fig5_scaling",
            "scaled_ql_fig6_ablations", "jowa_fig4_scaling", "jowa_table2_per_game",
            "jowa_table4_5_ablations"} <= set(figs) and not skipped
    marks = {t.name: (list(t.x), list(t.y)) for t in figs["scaled_ql_fig4_per_game"].data
             if t.name.startswith("paper:")}
    from workbench.reference.paper_tables import SCALED_QL_C1

    # Table C.1's 40 games include Breakout, not Pong: the mark is drawn where the games match.
    assert marks["paper: DT (200M) [Table C.1]"] == (
        ["Breakout"], [pytest.approx(M.normalize_score("Breakout", SCALED_QL_C1["DT (200M)"]["Breakout"]))])
    iqm_bars = figs["scaled_ql_fig6_ablations"].data[0]
    assert list(iqm_bars.y) == pytest.approx([M.aggregate(expected, "human", reps=200, seed=0)[k]["iqm"]
                                              for k in expected])


def test_parallel_local_points_share_the_cpus_instead_of_oversubscribing():
    from workbench.sweep import THREAD_VARIABLES, point_environment

    # One point at a time keeps the libraries' own choice (one thread per core).
    assert point_environment(1, {"PATH": "/bin"}, cpus=8) == {"PATH": "/bin"}
    # N at a time: each gets its share of the cores, at least one.
    shared = point_environment(2, {"PATH": "/bin"}, cpus=8)
    assert {v: shared[v] for v in THREAD_VARIABLES} == {v: "4" for v in THREAD_VARIABLES}
    assert shared["PATH"] == "/bin"
    assert {point_environment(3, {}, cpus=2)[v] for v in THREAD_VARIABLES} == {"1"}
    # What the user set wins.
    assert point_environment(2, {"OMP_NUM_THREADS": "3"}, cpus=8)["OMP_NUM_THREADS"] == "3"
    # And torch in the point's process takes it.
    env = point_environment(2, {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}, cpus=2)
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"

"""Notebook defaults touch no tracked file, and the analysis groups and counts runs honestly.

- Every notebook's output paths default to ``runs/`` (ignored by git) or to a folder derived
  under it; notebook 06 run with nothing but its defaults in a git checkout leaves
  ``git status`` clean and writes ``runs/analysis/`` (it used to overwrite ``figures/``).
- Notebook 03's default game is held out by every fine-tuning protocol and is no training game
  of notebook 02's default run; notebook 05's default cap is the run's own, with an estimate
  printed before the evaluation, and an ``output`` that is a folder stops in the config cell.
- Every notebook, 01 to 07, run with its defaults in that order on a fresh clone of this checkout,
  succeeds, changes no tracked file and writes only under ``runs/`` (the slowest test here: about
  6 minutes on the shared 2-core machine, 04 and 02 the longest).
- ``build_figures`` groups runs by their resolved configurations (``batch_size=0`` and
  ``batch_size=32`` that resolved to 32 are one method), labels them by the one setting that
  differs, leaves out folders that are not runs, explains a protocol tie, and never uses
  evaluation episodes as runs: a method with one run gets its mean and no interval.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import papermill as pm
import pytest
import torch
from test_notebooks import NB, ROOT, project

from workbench import metrics as M
from workbench.algos.base import get_algo
from workbench.checkpoint import save_checkpoint
from workbench.config import EvaluateConfig
from workbench.paths import ROOT_ENV
from workbench.run import Run
from workbench.viz.ablation import curves_figure, load_ablation
from workbench.viz.analysis import build_figures, method_labels, method_scores, read_run

OUTPUT_PARAMS = ("output_dir", "out_dir", "output")
"""Parameters naming where a notebook writes."""


@pytest.fixture(autouse=True)
def _no_root_override(monkeypatch):
    monkeypatch.delenv(ROOT_ENV, raising=False)  # kernels find the project root themselves


def _execute(root: Path, notebook: str, timeout: int = 600, **params) -> Path:
    """Run ``notebook`` of the project at ``root`` (kernel in ``root/notebooks``) with ``params``."""
    out = root / f"out_{notebook}"
    pm.execute_notebook(str(root / "notebooks" / notebook), str(out), parameters=params, kernel_name="python3",
                        cwd=str(root / "notebooks"), progress_bar=False, execution_timeout=timeout)
    return out


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.email=t@t", "-c", "user.name=t", *args],
                          check=True, capture_output=True, text=True).stdout


def _git_project(root: Path) -> Path:
    """A checkout as a clone has it: pyproject, notebooks, .gitignore and the tracked figures/
    (README and a PNG), committed."""
    project(root)
    shutil.copy(ROOT / ".gitignore", root / ".gitignore")
    (root / "figures").mkdir()
    shutil.copy(ROOT / "figures" / "README.md", root / "figures" / "README.md")
    shutil.copy(ROOT / "figures" / "aggregates.png", root / "figures" / "aggregates.png")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "checkout")
    assert _git(root, "status", "--porcelain") == ""
    return root


def _fake_run(root: Path, name: str, *, seed: int, alpha: float, raw_batch: int, means: dict[str, float],
              cap: int = 1000, episodes: tuple[float, ...] = (-1.0, 1.0)) -> Path:
    """A pretraining run folder: raw parameters as a user gave them (0 = the preset's), the
    resolved configuration they became, metrics, a checkpoint and its evaluation."""
    d = root / name
    params = {"model": "resnet-tiny", "algo": "auto", "algo_args": {} if alpha == 0.05 else {"alpha": alpha},
              "batch_size": raw_batch, "lr": 0.0, "steps": 0, "seed": seed, "games": "Assault,Breakout",
              "output_dir": str(d), "beam_width": "2", "eval_max_steps": 0}
    resolved = {"algo": "scaled_ql", "model": "resnet-tiny", "games": ["Assault", "Breakout"],
                "settings": {"alpha": alpha, "n_step": 3, "feature_norm": True}, "preset": "cpu", "batch_size": 32,
                "stages": [{"name": "train", "subdir": "", "steps": 300, "lr": 5e-5}], "eval_max_steps": cap,
                "output_dir": str(d), "threads": {"torch": 1 + seed}}
    Run(d).create("pretrain", params, resolved)
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / (s + 1)}) + "\n"
                                             for s in range(0, 50, 10)))
    save_checkpoint(d, 50, torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)))
    per_game = {g: {"scores": [m + e for e in episodes], "mean": m, "truncated": [False] * len(episodes)}
                for g, m in means.items()}
    (d / "eval").mkdir()
    (d / "eval" / "scores.json").write_text(json.dumps({
        "per_game": per_game, "max_agent_steps": cap, "epsilon": 0.001, "mode": None, "difficulty": None,
        "comparable_to_papers": cap == 27_000}))
    return d


def _not_a_run(root: Path) -> Path:
    """What notebook 07 leaves in runs/explore: files, no config.json."""
    d = root / "explore"
    d.mkdir(parents=True)
    (d / "rollout.mp4").write_bytes(b"\0")
    return d


# ------------------------------------------------------------------------------------- defaults


def test_every_notebook_writes_under_runs_by_default():
    """An output path left at its default is '' (a folder the job derives under runs/ or inside
    the run it reads) or a path under runs/, which git ignores: never figures/ or data/."""
    notebooks = sorted(NB.glob("*.ipynb"))
    assert len(notebooks) == 7
    checked = []
    for nb in notebooks:
        params = pm.inspect_notebook(str(nb))
        outputs = {name: eval(spec["default"]) for name, spec in params.items()  # noqa: S307
                   if name in OUTPUT_PARAMS}
        for name, default in outputs.items():
            checked.append((nb.name, name, default))
        if "checkpoint" in params:  # 05 writes into the run it evaluates
            checked.append((nb.name, "checkpoint", eval(params["checkpoint"]["default"])))  # noqa: S307
    outside = [c for c in checked if c[2] != "" and Path(c[2]).parts[0] != "runs"]
    assert outside == []
    assert {nb for nb, _, _ in checked} == {p.name for p in notebooks}  # every notebook names where it writes
    assert "runs/" in (ROOT / ".gitignore").read_text().split()


def test_finetune_default_game_is_held_out_and_no_training_game_of_the_default_run():
    game = eval(pm.inspect_notebook(str(NB / "03_finetune.ipynb"))["game"]["default"])  # noqa: S307
    trained = eval(pm.inspect_notebook(str(NB / "02_pretrain.ipynb"))["games"]["default"]).split(",")  # noqa: S307
    assert game not in trained
    for algo in ("scaled_ql", "jowa", "mgdt"):
        assert game in get_algo(algo).finetune.held_out_games, algo


def test_evaluate_config_rejects_a_folder_as_output_naming_it(tmp_path):
    folder = tmp_path / "scores"
    folder.mkdir()
    with pytest.raises(ValueError, match="is a folder") as err:
        EvaluateConfig(output=str(folder))
    assert str(folder) in str(err.value) and ".json" in str(err.value)
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(ValueError, match="is a file"):
        EvaluateConfig(output=str(tmp_path / "file.json" / "scores.json"))
    assert EvaluateConfig(output=str(tmp_path / "new" / "scores.json")).output.endswith("scores.json")


def test_evaluate_config_default_cap_is_the_runs_own(tmp_path):
    run = _fake_run(tmp_path, "r", seed=0, alpha=0.05, raw_batch=0, means={"Assault": 1.0, "Breakout": 1.0}, cap=250)
    assert EvaluateConfig.from_params(checkpoint=str(run)).max_steps == 250
    assert EvaluateConfig.from_params(checkpoint=str(run), max_steps=40).max_steps == 40
    with pytest.raises(ValueError, match="not a readable workbench run") as err:
        EvaluateConfig.from_params(checkpoint=str(tmp_path / "nothing"))
    assert str(tmp_path / "nothing") in str(err.value)


@pytest.mark.slow
def test_evaluate_notebook_stops_at_once_on_an_output_folder(tmp_path):
    root = project(tmp_path)
    (root / "runs" / "scores").mkdir(parents=True)
    with pytest.raises(pm.PapermillExecutionError) as err:
        _execute(root, "05_evaluate.ipynb", output="runs/scores")
    text = str(err.value)
    assert "is a folder" in text and str(root / "runs" / "scores") in text and "IsADirectoryError" not in text
    assert "EvaluateConfig.from_params" in err.value.source  # the config cell, before any evaluation
    assert [p.name for p in (root / "runs").iterdir()] == ["scores"]


@pytest.mark.slow
def test_analysis_notebook_with_its_defaults_leaves_tracked_files_alone(tmp_path):
    """papermill notebooks/06_analysis.ipynb out.ipynb, no parameters, in a checkout whose runs/
    holds two methods' runs and notebook 07's output: git status stays clean (figures/ untouched),
    the figures land in runs/analysis/, grouped by the one resolved setting that differs."""
    root = _git_project(tmp_path / "checkout")
    runs = root / "runs"
    for seed in (0, 1):
        _fake_run(runs, f"a{seed}", seed=seed, alpha=0.05, raw_batch=0,
                  means={"Assault": 300.0 + 10 * seed, "Breakout": 10.0 + seed})
        _fake_run(runs, f"b{seed}", seed=seed, alpha=0.1, raw_batch=32,
                  means={"Assault": 500.0 + 10 * seed, "Breakout": 30.0 + seed})
    _not_a_run(runs)
    before = {p: p.read_bytes() for p in (root / "figures").iterdir()}
    executed = json.loads(_execute(root, "06_analysis.ipynb").read_text())
    assert _git(root, "status", "--porcelain") == ""
    assert {p: p.read_bytes() for p in (root / "figures").iterdir()} == before
    out = runs / "analysis"
    assert (out / "aggregates.html").is_file() and (out / "papers" / "README.md").is_file()
    readme = (out / "README.md").read_text()
    assert "method **Scaled QL/resnet-tiny (alpha=0.05)**" in readme
    assert "method **Scaled QL/resnet-tiny (alpha=0.1)**" in readme
    assert "batch_size" not in readme.split("## Evaluation protocol")[0] and "algo_args" not in readme
    # notebook 07's folder is no run: left out, and the notebook's summary of the runs says so
    shown = "".join(t for c in executed["cells"] for o in c.get("outputs", ())
                    for t in o.get("data", {}).get("text/plain", ()))
    assert f"{runs / 'explore'} (not a run: config.json is missing" in shown
    assert "explore" not in readme


# ------------------------------------------------------------------------------------- grouping


@pytest.mark.slow  # seconds: the fast loop keeps under a minute
def test_runs_are_grouped_by_their_resolved_settings_and_non_runs_are_left_out(tmp_path):
    """Two seeds each of two methods that differ in alpha only: raw parameters that resolved to
    the same values (batch_size 0 and 32 -> 32, algo_args {} -> alpha 0.05), output folders and
    threads do not split them. notebook 07's runs/explore is no run: left out and named."""
    dirs = [_fake_run(tmp_path, f"{m}{seed}", seed=seed, alpha=alpha, raw_batch=batch,
                      means={"Assault": 300.0 + seed, "Breakout": 10.0})
            for m, alpha in (("a", 0.05), ("b", 0.1)) for seed, batch in ((0, 0), (1, 32))]
    explore = _not_a_run(tmp_path)
    runs = [read_run(d) for d in dirs]
    assert method_labels(runs) == ["Scaled QL/resnet-tiny (alpha=0.05)"] * 2 + ["Scaled QL/resnet-tiny (alpha=0.1)"] * 2
    rep = build_figures([*dirs, explore], tmp_path / "figs", png=False, reps=100)
    assert [r.name for r in rep.runs] == ["a0", "a1", "b0", "b1"]
    assert list(rep.not_runs) == [str(explore)] and "config.json is missing" in rep.not_runs[str(explore)]
    iqm = {tr.y[0] for tr in rep.figures["aggregates"].data if tr.xaxis == "x2"}
    assert {m for m in iqm if not m.startswith("paper:")} == {"Scaled QL/resnet-tiny (alpha=0.05)",
                                                              "Scaled QL/resnet-tiny (alpha=0.1)"}
    assert f"`{explore}`: config.json is missing" in (tmp_path / "figs" / "README.md").read_text()
    data = load_ablation([str(d) for d in (*dirs, explore)])
    assert data.factors == {"alpha": [0.05, 0.1]} and len(data.runs) == 4
    assert any(str(explore) in n for n in data.not_done)


def test_a_method_with_one_run_gets_its_mean_and_no_interval(tmp_path):
    """Method 'a' has one run (its evaluation episodes differ, but they are not runs); 'b' two.
    'a' is its run's per-game mean and has no interval; 'b' has a bootstrap CI over 2 runs."""
    a = _fake_run(tmp_path, "a", seed=0, alpha=0.05, raw_batch=0, means={"Assault": 300.0, "Breakout": 10.0},
                  episodes=(-50.0, -5.0, 5.0, 50.0))
    b = [_fake_run(tmp_path, f"b{s}", seed=s, alpha=0.1, raw_batch=0,
                   means={"Assault": 500.0 + 40 * s, "Breakout": 30.0 + 4 * s}) for s in (0, 1)]
    runs = [read_run(d) for d in (a, *b)]
    labels = method_labels(runs)
    scores, runs_are = method_scores(runs, labels)
    assert runs_are == "seeds"
    assert scores[labels[0]] == {"Assault": [300.0], "Breakout": [10.0]}  # the run's mean, not its 4 episodes
    assert scores[labels[1]] == {"Assault": [500.0, 540.0], "Breakout": [30.0, 34.0]}

    rep = build_figures([a, *b], tmp_path / "figs", png=False, reps=200, include_paper_reference=False)
    assert rep.intervals[labels[0]].startswith("no interval: 1 run")
    assert rep.intervals[labels[1]].startswith("95% CI") and "2 runs" in rep.intervals[labels[1]]
    want = float(np.mean([M.normalize_score("Assault", 300.0), M.normalize_score("Breakout", 10.0)]))
    for tr in rep.figures["aggregates"].data:
        if tr.y[0] == labels[0]:
            assert list(tr.error_x.array) == [0.0] and list(tr.error_x.arrayminus) == [0.0]
            if tr.xaxis == "x2":  # IQM of two games, one run each: their mean
                assert tr.x[0] == pytest.approx(want)
        elif tr.xaxis == "x2":  # the IQM of two runs per game has its bootstrap interval
            assert tr.error_x.array[0] + tr.error_x.arrayminus[0] > 0
    bands = {t.name for t in rep.figures["performance_profiles"].data if t.fill == "toself"}
    assert bands == {f"{labels[1]} CI"}
    readme = (tmp_path / "figs" / "README.md").read_text()
    assert f"{labels[0]}: no interval: 1 run" in readme


def test_a_protocol_tie_is_explained_and_its_left_out_run_named(tmp_path):
    a = _fake_run(tmp_path, "a", seed=0, alpha=0.05, raw_batch=0, means={"Assault": 300.0, "Breakout": 10.0},
                  cap=1000)
    b = _fake_run(tmp_path, "b", seed=0, alpha=0.1, raw_batch=0, means={"Assault": 500.0, "Breakout": 30.0},
                  cap=250)
    rep = build_figures([a, b], tmp_path / "figs", png=False, reps=100)
    assert rep.protocol.startswith("episodes capped at 1,000 agent steps") and "a tie" in rep.protocol
    assert "250 agent steps" in rep.protocol and "longer step cap" in rep.protocol
    assert list(rep.left_out) == ["b"] and "a tie" in rep.left_out["b"]


def test_an_empty_plot_says_why_inside_it(tmp_path):
    dirs = [_fake_run(tmp_path, f"{m}", seed=0, alpha=alpha, raw_batch=0, means={"Assault": 1.0, "Breakout": 1.0})
            for m, alpha in (("a", 0.05), ("b", 0.1))]
    fig = curves_figure(load_ablation([str(d) for d in dirs]), "alpha", None, "loss/never_logged")
    assert len(fig.data) == 0
    assert [a.text for a in fig.layout.annotations] == [
        "nothing to draw: no run logged 'loss/never_logged' in its metrics.jsonl"]


# ------------------------------------------------------------------------------------- every notebook, its defaults

# The order a user runs them in: 03, 05 and 07 read the run 02 writes (runs/pretrain-resnet-tiny).
ALL_NOTEBOOKS = ("01_collect_data.ipynb", "02_pretrain.ipynb", "03_finetune.ipynb", "04_finetune_online.ipynb",
                 "05_evaluate.ipynb", "06_analysis.ipynb", "07_explore_checkpoint.ipynb")


def _fresh_checkout(dest: Path) -> Path:
    """``git clone`` of this checkout with the working tree's changes on top (tracked files as they
    are now, deleted ones removed, new files not ignored added), committed: a clone as a user has
    it, of the code under test."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True, capture_output=True)
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True, text=True).stdout
    for rel in filter(None, listed.split("\0")):
        src, dst = ROOT / rel, dest / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        elif dst.is_file():
            dst.unlink()
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "--allow-empty", "-m", "the working tree under test")
    assert _git(dest, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""
    return dest


def _changes(root: Path) -> tuple[list[str], list[str]]:
    """(tracked files changed, paths of new files, ignored ones included) in the checkout at ``root``."""
    lines = _git(root, "status", "--porcelain", "--ignored", "--untracked-files=all").splitlines()
    return [s for s in lines if s[:2] not in ("??", "!!")], [s[3:] for s in lines if s[:2] in ("??", "!!")]


def _printed(notebook: Path, cell: int) -> str:
    outputs = json.loads(notebook.read_text())["cells"][cell]["outputs"]
    return "".join(t for o in outputs if o.get("name") == "stdout" for t in o["text"])


@pytest.mark.slow
def test_every_notebook_runs_with_its_defaults_on_a_fresh_clone_and_writes_only_under_runs(tmp_path):
    """issue 29: each notebook of notebooks/, run with papermill and no parameter in the order a
    user follows, on a fresh clone: it succeeds, changes no tracked file, and everything it writes
    lies under runs/ (papermill's executed copies go outside the clone). 03's defaults fine-tune
    02's default run on a game it did not train on; 05's evaluate that run at its own step cap,
    printing the work and its measured speed first; 06 analyses runs/* (02's, 03's and 04's runs,
    evaluated on different games); 07 plays 02's run."""
    from workbench.eval_estimate import estimate_evaluation

    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    root = _fresh_checkout(tmp_path / "clone")
    executed = tmp_path / "executed"
    executed.mkdir()
    seen: set[str] = set()
    times: dict[str, float] = {}
    for name in ALL_NOTEBOOKS:
        start = time.monotonic()
        pm.execute_notebook(str(root / "notebooks" / name), str(executed / name), kernel_name="python3",
                            cwd=str(root / "notebooks"), progress_bar=False, execution_timeout=1800)
        times[name] = time.monotonic() - start
        print(f"{name}: {times[name]:.0f} s with its defaults", flush=True)
        changed, new = _changes(root)
        assert changed == [], f"{name} changed tracked files: {changed}"
        outside = [p for p in new if not p.startswith("runs/")]
        assert outside == [], f"{name} wrote outside runs/: {outside}"
        assert set(new) - seen, f"{name} wrote nothing under runs/"
        seen |= set(new)
    print("every notebook:", ", ".join(f"{n[:2]} {t:.0f} s" for n, t in times.items()), flush=True)
    written = {p.split("/")[1] for p in seen}
    assert {"recorded", "pretrain-resnet-tiny", "analysis", "explore"} <= written, written
    assert "finetune-pretrain-resnet-tiny-MsPacman-transfer-seed0" in written  # a held-out game
    assert any(w.startswith("online-") for w in written)
    run = root / "runs" / "pretrain-resnet-tiny"
    # 05: the run's own cap, the steps and measured speed printed before the evaluation.
    cap = json.loads((run / "config.json").read_text())["resolved"]["eval_max_steps"]
    scores = json.loads((run / "eval" / "scores_Pong-Breakout.json").read_text())
    assert scores["max_agent_steps"] == cap and {len(g["scores"]) for g in scores["per_game"].values()} == {4}
    printed = _printed(executed / "05_evaluate.ipynb", 2)  # the config cell
    assert f"4 episodes capped at {cap:,} agent steps" in printed and "decisions/s" in printed
    est = estimate_evaluation(EvaluateConfig(checkpoint=str(run)))
    assert est.games == ("Pong", "Breakout") and est.decisions == cap and est.agent_steps == 8 * cap
    assert est.decisions_per_s and est.reference_decisions_per_s and est.references == 1 + 6  # Pong: 6 actions
    assert est.seconds == pytest.approx(cap / est.decisions_per_s + 7 * cap / est.reference_decisions_per_s)
    # 06 and 07 read the runs through relative default paths, from a kernel in notebooks/.
    assert (root / "runs" / "analysis" / "README.md").is_file()
    assert (root / "runs" / "explore" / "rollout.mp4").is_file()


def test_every_figure_names_the_normalization_the_analysis_used(tmp_path):
    # MinAtar scores are normalized by the scripted expert: the profile's axis must say so too
    means = {"MinAtar-Breakout": 2.0, "MinAtar-Asterix": 1.0}
    runs = [_fake_run(tmp_path, f"m{s}", seed=s, alpha=0.05, raw_batch=0, means=means) for s in range(2)]
    rep = build_figures(runs, tmp_path / "figs", png=False, reps=50, include_paper_reference=False)
    assert "expert-normalized" in rep.figures["aggregates"].layout.title.text
    assert rep.figures["performance_profiles"].layout.xaxis.title.text == "Expert-normalized score (τ)"

"""Relative paths follow the shell on command lines and the notebook's project in notebooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench import paths

CHECKOUT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_root_override(monkeypatch):
    monkeypatch.delenv(paths.ROOT_ENV, raising=False)


def test_command_lines_use_the_current_directory_and_notebooks_their_project(tmp_path, monkeypatch):
    repo = tmp_path / "my_repo"
    (repo / "experiments").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    monkeypatch.chdir(repo / "experiments")
    assert paths.project_root() == repo / "experiments"  # a user's own pyproject above does not matter
    assert paths.resolve_path("runs/x") == repo / "experiments" / "runs" / "x"
    monkeypatch.setattr(paths, "in_notebook_kernel", lambda: True)
    assert paths.project_root() == repo  # a notebook in experiments/ resolves against its project
    monkeypatch.chdir(tmp_path)
    assert paths.project_root() == tmp_path  # a kernel with no project above: its own folder
    monkeypatch.setenv(paths.ROOT_ENV, str(repo / "experiments"))
    assert paths.project_root() == repo / "experiments"  # the one override
    assert paths.resolve_path("/abs/path") == Path("/abs/path")
    assert not paths.in_notebook_kernel.__module__.startswith("tests")  # the real check is not the patch


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != paths.ROOT_ENV}
    env.update(TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


TINY = ["--games", "MinAtar-Breakout", "--model", "minatar-cnn", "--steps", "2", "--batch-size", "8",
        "--eval-episodes", "1", "--eval-max-steps", "20", "--num-envs", "1", "--eval-references", "false",
        "--device", "cpu"]


@pytest.mark.slow
def test_pipeline_dataset_and_sweep_from_a_folder_outside_any_project(tmp_path):
    before = sorted(p.name for p in CHECKOUT.iterdir())
    work = tmp_path / "work"
    work.mkdir()
    _run(["workbench.pipeline", *TINY, "--record-steps", "200", "--output-dir", "x"], work)
    assert (work / "x" / "summary.json").is_file() and (work / "x" / "data" / "store" / "manifest.json").is_file()
    _run(["workbench.pipeline", *TINY, "--dataset", "x/data/store", "--output-dir", "y"], work)
    config = json.loads((work / "y" / "config.json").read_text())
    assert config["params"]["dataset"] == "x/data/store" and (work / "y" / "summary.json").is_file()
    # A sweep file in the current folder, whose relative dataset the points' kernels must find here too.
    (work / "f.yaml").write_text(json.dumps({
        "name": "cwd_sweep", "base": {"games": "MinAtar-Breakout", "dataset": "x/data/store", "model": "minatar-cnn",
                                      "steps": 2, "batch_size": 8, "eval_episodes": 1, "eval_max_steps": 20,
                                      "num_envs": 1, "eval_references": False, "device": "cpu"},
        "factors": {"lr": [0.0001]}, "seeds": [0]}))
    _run(["workbench.sweep", "run", "f.yaml"], work)
    index = json.loads((work / "runs" / "sweeps" / "cwd_sweep" / "sweep.json").read_text())
    assert [p["state"] for p in index["points"]] == ["done"], index
    assert sorted(p.name for p in CHECKOUT.iterdir()) == before  # nothing written into the checkout
    assert not (CHECKOUT / "x").exists() and not (CHECKOUT / "runs" / "sweeps" / "cwd_sweep").exists()

"""Every notebook runs through papermill with tiny parameters, and rejects bad parameters.

The smoke runs share one pretraining run (module-scoped) so the evaluation and explorer
notebooks can load the checkpoint it leaves.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import papermill as pm
import pytest

from workbench.config import EvaluateConfig, PretrainConfig
from workbench.data.record import CollectConfig
from workbench.viz.params import AnalysisParams, ExplorerParams

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "notebooks"
TINY_PRETRAIN = dict(
    model="resnet-tiny", games="Pong,Breakout", record_steps=300, steps=6, batch_size=8,
    eval_episodes=1, eval_max_steps=50, num_envs=1,
)


def run(notebook: str, out_dir: Path, **params) -> Path:
    out = out_dir / f"out_{notebook}"
    pm.execute_notebook(
        str(NB / notebook), str(out), parameters=params, kernel_name="python3",
        cwd=str(out_dir), progress_bar=False, execution_timeout=600,
    )
    return out


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("pretrain")
    run("02_pretrain.ipynb", work, output_dir=str(work / "run"), **TINY_PRETRAIN)
    return work / "run"


@pytest.mark.parametrize(
    "notebook, config",
    [("01_collect_data.ipynb", CollectConfig), ("02_pretrain.ipynb", PretrainConfig),
     ("05_evaluate.ipynb", EvaluateConfig), ("06_analysis.ipynb", AnalysisParams),
     ("07_explore_checkpoint.ipynb", ExplorerParams)],
)
def test_notebook_parameters_match_the_config(notebook, config):
    """Every notebook's parameters cell is exactly its config class: same names, same defaults."""
    params = pm.inspect_notebook(str(NB / notebook))
    assert set(params) == {f.name for f in fields(config)}
    defaults = config()
    for name, spec in params.items():
        assert eval(spec["default"]) == getattr(defaults, name), name  # noqa: S307 - our own literals


def test_pretrain_notebook_leaves_checkpoint_metrics_figures_scores(pretrained):
    assert (pretrained / "checkpoints" / "latest").is_file()
    ckpt = pretrained / "checkpoints" / (pretrained / "checkpoints" / "latest").read_text().strip()
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "state.json").is_file()
    lines = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == TINY_PRETRAIN["steps"]
    assert (pretrained / "figures" / "learning_curve.html").is_file()
    scores = json.loads((pretrained / "eval" / "scores.json").read_text())
    assert set(scores["per_game"]) == {"Pong", "Breakout"}
    assert all(len(v["scores"]) == 1 for v in scores["per_game"].values())
    config = json.loads((pretrained / "config.json").read_text())
    assert config["kind"] == "pretrain" and config["params"]["model"] == "resnet-tiny"
    assert config["resolved"]["algo"] == "scaled_ql"


def test_evaluate_notebook_on_the_pretrained_checkpoint(pretrained, tmp_path):
    out = tmp_path / "scores.json"
    run("05_evaluate.ipynb", tmp_path, checkpoint=str(pretrained), games="Pong", episodes=2,
        num_envs=2, max_steps=30, output=str(out))
    scores = json.loads(out.read_text())
    assert list(scores["per_game"]) == ["Pong"]
    assert len(set(scores["per_game"]["Pong"]["seeds"])) == 2


@pytest.mark.parametrize(
    "notebook, params, message",
    [
        ("02_pretrain.ipynb", {"modle": "resnet101"}, "unknown parameter"),
        ("02_pretrain.ipynb", {"model": "resnet1000"}, "valid models"),
        ("02_pretrain.ipynb", {"algo": "dqn"}, "valid algos"),
        ("02_pretrain.ipynb", {"algo_args": "{alpah: 0.1}"}, "did you mean 'alpha'"),
        ("02_pretrain.ipynb", {"games": "Pongg"}, "Pong"),
        ("05_evaluate.ipynb", {"episodes": 0}, "episodes must be >= 1"),
    ],
)
def test_bad_parameters_stop_the_notebook_at_once(notebook, params, message, tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as err:
        run(notebook, tmp_path, **params)
    assert message in str(err.value)
    # Nothing was recorded or trained: the run stopped in the config cell.
    assert not (tmp_path / "runs").exists()


def test_pretrain_notebook_runs_jowa_both_stages_and_plans(tmp_path):
    run("02_pretrain.ipynb", tmp_path, model="jowa-tiny", games="Pong", record_steps=200, steps=3,
        batch_size=2, eval_episodes=1, eval_max_steps=10, num_envs=1, planning_horizon=1, beam_width=2,
        output_dir=str(tmp_path / "run"))
    run_dir = tmp_path / "run"
    for d in (run_dir / "stage1", run_dir):
        assert (d / "checkpoints" / "latest").is_file()
        assert json.loads((d / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    config = json.loads((run_dir / "config.json").read_text())
    assert config["resolved"]["algo"] == "jowa"
    assert (run_dir / "eval" / "scores.json").is_file()
    assert (run_dir / "data" / "tokens" / "manifest.json").is_file()  # stage 2 trained on the token copy


def test_collect_data_notebook_records_readable_dqn_replay_files(tmp_path):
    from workbench.data import dqn_replay as dr

    run("01_collect_data.ipynb", tmp_path, games="Pong", steps=150, output_dir=str(tmp_path / "rec"), seed=3)
    logs = dr.run_dir(tmp_path / "rec", "Pong", 1)
    meta = dr.load_checkpoint_meta(logs, 0)
    assert int(meta.valid_mask().sum()) > 100
    batch = dr.read_transitions(logs, 0, [10, 20], n_step=3)
    assert batch["state"].shape == (2, 84, 84, 4)

"""Every notebook runs through papermill with tiny parameters, and rejects bad parameters.

Every notebook runs the way JupyterLab runs it: its kernel's working directory is the
``notebooks/`` folder of a project (a temporary copy: ``pyproject.toml`` + ``notebooks/``), and
the paths it is given are *relative* (``runs/tiny``), so they must resolve against the project
root, not ``notebooks/`` (``workbench.paths``). The smoke runs share one pretraining run
(module-scoped) so the evaluation and explorer notebooks can load the checkpoint it leaves.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import MISSING, fields
from pathlib import Path

import papermill as pm
import pytest

from workbench.config import EvaluateConfig, PretrainConfig
from workbench.data.record import CollectConfig
from workbench.finetune import FinetuneConfig
from workbench.online import OnlineConfig
from workbench.viz.params import AnalysisParams, ExplorerParams

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "notebooks"
TINY_PRETRAIN = dict(
    model="resnet-tiny", games="Pong,Breakout", record_steps=300, steps=6, batch_size=8,
    eval_episodes=1, eval_max_steps=50, num_envs=1,
)


def project(root: Path) -> Path:
    """A project folder as a clone has it (root marker + notebooks/); returns the root."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(NB, root / "notebooks", dirs_exist_ok=True)
    return root


def run(notebook: str, root: Path, **params) -> Path:
    """Execute ``notebook`` of the project at ``root`` with the kernel in ``root/notebooks``."""
    if not (root / "notebooks" / notebook).is_file():
        project(root)
    out = root / f"out_{notebook}"
    pm.execute_notebook(
        str(root / "notebooks" / notebook), str(out), parameters=params, kernel_name="python3",
        cwd=str(root / "notebooks"), progress_bar=False, execution_timeout=600,
    )
    return out


@pytest.fixture(autouse=True)
def _no_root_override(monkeypatch):
    monkeypatch.delenv("WORKBENCH_ROOT", raising=False)  # the kernel must find the root itself


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("pretrain")
    run("02_pretrain.ipynb", work, output_dir="runs/tiny", **TINY_PRETRAIN)
    assert not (work / "notebooks" / "runs").exists()  # not under the kernel's directory
    return work / "runs" / "tiny"


# Notebook defaults that differ from their config class's on purpose: a notebook run with its
# defaults writes under runs/ and fine-tunes on a game the default checkpoint did not train on
# (tests/test_notebook_defaults.py); the command lines keep their own defaults.
NOTEBOOK_DEFAULTS: dict[tuple[str, str], object] = {}  # (notebook, parameter) -> a deliberate difference


@pytest.mark.parametrize(
    "notebook, config",
    [("01_collect_data.ipynb", CollectConfig), ("02_pretrain.ipynb", PretrainConfig),
     ("03_finetune.ipynb", FinetuneConfig), ("04_finetune_online.ipynb", OnlineConfig),
     ("05_evaluate.ipynb", EvaluateConfig),
     ("06_analysis.ipynb", AnalysisParams),
     ("07_explore_checkpoint.ipynb", ExplorerParams)],
)
def test_notebook_parameters_match_the_config(notebook, config):
    """Every notebook's parameters cell is exactly its config class: same names, same defaults."""
    params = pm.inspect_notebook(str(NB / notebook))
    assert set(params) == {f.name for f in fields(config)}
    # The declared defaults (FinetuneConfig validates its default checkpoint run on construction).
    defaults = {f.name: f.default_factory() if f.default is MISSING else f.default for f in fields(config)}
    defaults.update({name: v for (nb, name), v in NOTEBOOK_DEFAULTS.items() if nb == notebook})
    for name, spec in params.items():
        assert eval(spec["default"]) == defaults[name], name  # noqa: S307 - our own literals


@pytest.mark.slow
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


@pytest.mark.slow
def test_pretrain_summary_flags_truncated_evaluation(pretrained):
    """A 50-step cap cuts every Pong/Breakout episode of a near-random agent short (a game lasts
    far longer): summary.json, the scores JSON and the scores figure all say so."""
    summary = json.loads((pretrained / "summary.json").read_text())
    scores = json.loads((pretrained / "eval" / "scores.json").read_text())
    lengths = [n for g in scores["per_game"].values() for n in g["lengths"]]
    assert lengths == [50, 50]
    assert summary["truncated_episodes"] == scores["truncated_episodes"] == 2
    assert summary["comparable_to_papers"] is False and scores["comparable_to_papers"] is False
    assert "capped at 50 agent steps" in summary["note"] and "2 of 2 episodes" in summary["note"]
    page = (pretrained / "figures" / "scores.html").read_text()
    assert "not comparable to the papers" in page


@pytest.mark.slow
def test_evaluate_notebook_on_the_pretrained_checkpoint(pretrained):
    root = pretrained.parents[1]
    run("05_evaluate.ipynb", root, checkpoint="runs/tiny", games="Pong", episodes=2,
        num_envs=2, max_steps=30, output="runs/tiny/eval/scores_Pong_cap30.json")
    scores = json.loads((pretrained / "eval" / "scores_Pong_cap30.json").read_text())
    assert list(scores["per_game"]) == ["Pong"]
    assert len(set(scores["per_game"]["Pong"]["seeds"])) == 2
    assert scores["comparable_to_papers"] is False and scores["truncated_episodes"] == 2


@pytest.mark.slow
def test_analysis_and_explorer_notebooks_with_relative_paths(pretrained):
    """06 reads the run (pretraining + notebook 05's evaluations) and 07 plays its checkpoint,
    both given project-relative paths while the kernel sits in notebooks/."""
    root = pretrained.parents[1]
    run("06_analysis.ipynb", root, run_dirs="runs/*", out_dir="figures_out", png=False, reps=100)
    readme = (root / "figures_out" / "README.md").read_text()
    assert "tiny" in readme and "not comparable to the papers" in readme
    assert (root / "figures_out" / "aggregates.html").is_file()
    run("07_explore_checkpoint.ipynb", root, checkpoint="runs/tiny", game="Pong", max_steps=8, video=True,
        out_dir="runs/explore")
    assert (root / "runs" / "explore" / "rollout.mp4").is_file()
    assert not (root / "notebooks" / "runs").exists()


@pytest.mark.slow
def test_finetune_notebook_on_the_pretrained_checkpoint(pretrained):
    """03 fine-tunes the shared pretraining run (Pong, Breakout) on a held-out game, recording
    its data with the paper's 1% split; 05 then evaluates the fine-tuned checkpoint."""
    root = pretrained.parents[1]
    run("03_finetune.ipynb", root, checkpoint="runs/tiny", game="Alien", record_steps=1000, steps=4,
        batch_size=8, eval_episodes=1, eval_max_steps=20, num_envs=1, output_dir="runs/ft-alien")
    ft = root / "runs" / "ft-alien"
    config = json.loads((ft / "config.json").read_text())
    assert config["kind"] == "finetune" and config["resolved"]["games"] == ["Alien", "Pong", "Breakout"]
    assert config["resolved"]["source"]["run"] == str(pretrained)
    assert "heads.weight[Alien]" in config["resolved"]["transfer"]["new"]
    assert (ft / "figures" / "learning_curve.html").is_file()
    run("05_evaluate.ipynb", root, checkpoint="runs/ft-alien", games="", episodes=1, num_envs=1, max_steps=10,
        output="runs/ft-alien/eval/nb05.json")
    assert list(json.loads((ft / "eval" / "nb05.json").read_text())["per_game"]) == ["Alien"]


@pytest.mark.slow
def test_online_notebook_leaves_an_online_run_with_curve_and_logged_replay(tmp_path):
    """Notebook 04 on Breakout mode 12 from scratch: a run folder of kind 'online' with the
    evaluation curve, its figure, and the logged replay in the public layout."""
    run("04_finetune_online.ipynb", tmp_path, game="Breakout", mode=12, frames=1200, eval_every=600,
        eval_episodes=1, eval_max_steps=30, log_replay=True, capacity=120, output_dir="runs/online")
    folder = tmp_path / "runs" / "online"
    config = json.loads((folder / "config.json").read_text())
    assert config["kind"] == "online" and config["resolved"]["mode"] == 12
    curve = json.loads((folder / "curve.json").read_text())
    assert [c["frames"] for c in curve] == [0, 600, 1200]
    assert (folder / "figures" / "learning_curve.html").is_file()
    logs = folder / "data" / "replay" / "Breakout" / "1" / "replay_logs"
    assert (logs / "add_count_ckpt.0.gz").is_file() and (logs / "$store$_observation_ckpt.0.gz").is_file()
    assert not (tmp_path / "notebooks" / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "notebook, params, message",
    [
        ("02_pretrain.ipynb", {"modle": "resnet101"}, "unknown parameter"),
        ("02_pretrain.ipynb", {"model": "resnet1000"}, "valid models"),
        ("02_pretrain.ipynb", {"algo": "dqn"}, "valid algos"),
        ("02_pretrain.ipynb", {"algo_args": "{alpah: 0.1}"}, "did you mean 'alpha'"),
        ("02_pretrain.ipynb", {"games": "Pongg"}, "Pong"),
        ("03_finetune.ipynb", {"method": "finetune"}, "transfer | scratch | bc"),
        ("05_evaluate.ipynb", {"episodes": 0}, "episodes must be >= 1"),
        ("04_finetune_online.ipynb", {"encoder": "frozn"}, "encoder must be one of"),
        ("04_finetune_online.ipynb", {"game": "Breakout", "mode": 13}, "valid modes"),
    ],
)
def test_bad_parameters_stop_the_notebook_at_once(notebook, params, message, tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as err:
        run(notebook, tmp_path, **params)
    assert message in str(err.value)
    # Nothing was recorded or trained: the run stopped in the config cell.
    assert not (tmp_path / "runs").exists() and not (tmp_path / "notebooks" / "runs").exists()


@pytest.mark.slow
def test_paper_preset_on_a_cpu_stops_with_the_estimated_time(tmp_path):
    """10M steps at batch 512 on the CPU: the run stops before recording, naming the hours
    (5.12e9 samples at the measured 68.8 samples/s of resnet-tiny = about 20,672 hours)."""
    with pytest.raises(pm.PapermillExecutionError) as err:
        run("02_pretrain.ipynb", tmp_path, preset="paper", device="cpu", output_dir="runs/paper")
    text = str(err.value)
    assert "5,120,000,000 samples" in text and "about 20,672 hours" in text and "allow_slow_cpu=True" in text
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_pretrain_notebook_runs_jowa_both_stages_and_plans(tmp_path):
    run("02_pretrain.ipynb", tmp_path, model="jowa-tiny", games="Pong", record_steps=200, steps=3,
        batch_size=2, eval_episodes=1, eval_max_steps=10, num_envs=1, planning_horizon=1, beam_width=2,
        output_dir="run")
    run_dir = tmp_path / "run"
    for d in (run_dir / "stage1", run_dir):
        assert (d / "checkpoints" / "latest").is_file()
        assert json.loads((d / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    config = json.loads((run_dir / "config.json").read_text())
    assert config["resolved"]["algo"] == "jowa"
    assert (run_dir / "eval" / "scores.json").is_file()
    assert (run_dir / "data" / "tokens" / "manifest.json").is_file()  # stage 2 trained on the token copy
    # The learning curves draw every loss term of both stages (stage 1: tokenizer and world model).
    page = (run_dir / "figures" / "learning_curve.html").read_text().replace("\\u002f", "/")  # plotly escapes '/'
    for term in ("loss/tokenizer", "tokenizer/l1", "tokenizer/commitment", "loss/world", "world/obs_ce",
                 "loss/action", "loss/td", "loss/cql"):
        assert f'"{term}"' in page, term


@pytest.mark.slow
def test_collect_data_notebook_records_readable_dqn_replay_files(tmp_path):
    from workbench.data import dqn_replay as dr

    run("01_collect_data.ipynb", tmp_path, games="Pong", steps=150, output_dir="rec", seed=3)
    logs = dr.run_dir(tmp_path / "rec", "Pong", 1)
    meta = dr.load_checkpoint_meta(logs, 0)
    assert int(meta.valid_mask().sum()) > 100
    batch = dr.read_transitions(logs, 0, [10, 20], n_step=3)
    assert batch["state"].shape == (2, 84, 84, 4)


@pytest.mark.slow
def test_minatar_runs_through_the_notebooks_with_the_atari_parameters(tmp_path):
    """The game names select the suite: 01, 02, 05, 06 and 07 take MinAtar games with the same
    parameters as Atari ones."""
    from workbench.data import dqn_replay as dr

    run("01_collect_data.ipynb", tmp_path, games="MinAtar-Breakout", steps=300, output_dir="rec", seed=3)
    meta = dr.load_checkpoint_meta(dr.run_dir(tmp_path / "rec", "MinAtar-Breakout", 1), 0)
    assert int(meta.valid_mask().sum()) > 200
    frames = dr.load_checkpoint(dr.run_dir(tmp_path / "rec", "MinAtar-Breakout", 1), 0)["observation"]
    assert frames.shape[1:] == (100, 10)
    games = "MinAtar-Breakout,MinAtar-Freeway"
    run("02_pretrain.ipynb", tmp_path, output_dir="runs/m", **{**TINY_PRETRAIN, "games": games})
    summary = json.loads((tmp_path / "runs" / "m" / "summary.json").read_text())
    assert set(summary["mean_scores"]) == set(summary["verdict"]) == set(games.split(","))
    assert summary["baselines"]["MinAtar-Freeway"]["constant_best"]["action"] in ("NOOP", "UP", "DOWN")
    assert (tmp_path / "runs" / "m" / "diagnostics.jsonl").is_file()
    run("05_evaluate.ipynb", tmp_path, checkpoint="runs/m", games="MinAtar-Freeway", episodes=2, num_envs=2,
        max_steps=30, output="runs/m/eval/scores_freeway.json")
    assert (tmp_path / "runs" / "m" / "eval" / "references" / "scores_freeway.json").is_file()
    run("06_analysis.ipynb", tmp_path, run_dirs="runs/*", out_dir="figures_out", png=False, reps=100)
    # MinAtar has no human scores: the aggregates are normalized by its scripted expert
    assert "expert-normalized" in (tmp_path / "figures_out" / "README.md").read_text().lower()
    assert (tmp_path / "figures_out" / "aggregates.html").is_file()
    run("07_explore_checkpoint.ipynb", tmp_path, checkpoint="runs/m", game="MinAtar-Breakout", max_steps=8,
        video=True, out_dir="runs/explore")
    assert (tmp_path / "runs" / "explore" / "rollout.mp4").is_file()

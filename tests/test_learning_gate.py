"""The learning gate: an agent trained here must beat pressing one button, and a collapsed run
must be called collapsed.

Both runs are seeded end to end (data, sampler, initialization, evaluation) and CPU training is
bit-reproducible, so the gate cannot flake: it fails only when the code stops learning."""

from __future__ import annotations

import json

import pytest

from workbench.config import PretrainConfig
from workbench.diagnostics import collapse_flags
from workbench.pipeline import pretrain
from workbench.study import HistorySpec, record_history

pytestmark = pytest.mark.slow
GAME = "MinAtar-Breakout"


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A short learning history of the scripted MinAtar Breakout policy (epsilon 0.3 -> 0.05)."""
    root = tmp_path_factory.mktemp("gate") / "data"
    doc = record_history(HistorySpec(output_dir=str(root), games=GAME, checkpoints=3, rows=3000, eps_start=0.3,
                                     eps_end=0.05, episode_cap=500, random_episodes=8, seed=0), progress=False)
    return root, doc


def test_behaviour_cloning_beats_the_best_constant_action(history, tmp_path):
    root, doc = history
    # The references measured with the data: one button does not play Breakout.
    assert doc["constant_best"][GAME]["mean"] < 1.0
    config = PretrainConfig.from_params(
        games=GAME, dataset=str(root), split="all", algo="bc", model="minatar-cnn", steps=1500, batch_size=64,
        lr=1e-3, seed=0, eval_episodes=8, eval_max_steps=500, num_envs=8, device="cpu",
        output_dir=str(tmp_path / "bc"),
    )
    summary = pretrain(config, progress=False).summary
    mean = summary["mean_scores"][GAME]
    best = summary["baselines"][GAME]["constant_best"]
    # Same protocol, episodes and seeds for the agent and every constant action.
    assert mean > best["mean"] + 1.0 and mean > 2 * summary["baselines"][GAME]["random"], summary["verdict"]
    assert "NOT better" not in summary["verdict"][GAME]
    diag = [json.loads(line) for line in (tmp_path / "bc" / "diagnostics.jsonl").read_text().splitlines()]
    assert diag[0]["step"] == 0 and diag[-1]["step"] == 1500
    assert collapse_flags(diag) == [] and diag[-1]["diag/greedy_distinct"] >= 2


def test_diagnostics_flag_a_collapsed_run(history, tmp_path):
    root, _ = history
    # A learning rate 100x too high kills the trunk's ReLUs: one action whatever the screen shows.
    config = PretrainConfig.from_params(
        games=GAME, dataset=str(root), split="all", algo="bc", model="resnet-tiny", steps=100, batch_size=32,
        lr=0.1, seed=0, eval_episodes=1, eval_max_steps=50, num_envs=1, device="cpu", eval_references=False,
        output_dir=str(tmp_path / "collapsed"),
    )
    pretrain(config, progress=False)
    diag = [json.loads(line) for line in (tmp_path / "collapsed" / "diagnostics.jsonl").read_text().splitlines()]
    flags = collapse_flags(diag)
    assert flags, diag[-1]
    assert diag[-1]["diag/greedy_modal_share"] >= 0.99

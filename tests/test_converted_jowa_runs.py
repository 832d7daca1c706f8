"""A run converted from JOWA's released checkpoints (``workbench.convert``) is an ordinary run:
notebook 05 evaluates it, notebook 07's explorer records a rollout with it, notebook 03 fine-tunes
it on a held-out game, and notebooks 05/06 show the released per-game scores beside ours.

The "released" files are the fixtures of ``test_convert_jowa`` (the released files' exact key
names, dtypes and shapes, random values): the 40M model at its real size (~40M parameters), so
these tests measure what the real model costs on a CPU.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from shared_paths import DQN_FIXTURES
from test_convert_jowa import SIZE_DIMS, materialize, ref_tokenizer_layout, ref_world_layout, save

from workbench.checkpoint import resolve_checkpoint
from workbench.config import EvaluateConfig
from workbench.convert import convert_jowa
from workbench.finetune import FinetuneConfig, finetune
from workbench.pipeline import evaluate_run
from workbench.reference import released_jowa_means
from workbench.run import Run
from workbench.viz.analysis import build_figures, read_run, released_reference_scores
from workbench.viz.rollout import play_rollout

GAMES = "Assault,Breakout"  # a pretraining game and a held-out one (its task row never saw data)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("released40m")
    tok = save(materialize(ref_tokenizer_layout(), seed=1, cheap=("lpips.",)), root / "tokenizer.pt")
    wm = save(materialize(ref_world_layout(*SIZE_DIMS["40m"]), seed=2), root / "JOWA_40M.pt")
    convert_jowa(tok, wm, root / "run", size="40m", games=GAMES)
    return root / "run"


def _tiny_eval(run, tmp_path, games: str = "Assault") -> dict:
    config = EvaluateConfig(checkpoint=str(run), games=games, episodes=1, num_envs=1, max_steps=4,
                            planning_horizon=0, beam_width="1", references=False, device="cpu",
                            output=str(tmp_path / "scores.json"))
    return evaluate_run(config, progress=False)


def test_released_means_are_the_csv_means():
    means = released_jowa_means("40m")
    assert len(means) == 15 and set(released_jowa_means("150M")) == set(means)
    # JOWA-40M Assault's 16 episodes in eval/JOWA_40M_raw_scores.json (first: 850, 850, 2666, 1227)
    import csv
    from importlib import resources

    rows = csv.DictReader(resources.files("workbench.reference").joinpath("jowa_released_scores.csv")
                          .read_text().splitlines())
    assault = [float(r["raw_score"]) for r in rows if r["model"] == "JOWA-40M" and r["game"] == "Assault"]
    assert len(assault) == 16 and means["Assault"] == pytest.approx(sum(assault) / 16)
    with pytest.raises(ValueError, match="released sizes"):
        released_jowa_means("90m")


@pytest.mark.slow
def test_converted_run_evaluates_and_prints_the_released_scores(converted, tmp_path, capsys):
    out = _tiny_eval(converted, tmp_path)
    assert list(out["per_game"]) == ["Assault"] and len(out["per_game"]["Assault"]["scores"]) == 1
    ref = out["released_reference"]
    assert ref["model"] == "JOWA-40M" and ref["per_game"] == {"Assault": released_jowa_means("40m")["Assault"]}
    assert ref["not_released"] == []
    printed = capsys.readouterr().out
    assert "released JOWA-40M" in printed and f"{ref['per_game']['Assault']:.1f}" in printed
    # A game the release has no scores for (a held-out one) is named, not invented.
    out = _tiny_eval(converted, tmp_path, games="Breakout")
    assert out["released_reference"]["per_game"] == {} and out["released_reference"]["not_released"] == ["Breakout"]


@pytest.mark.slow
def test_converted_run_plays_an_explorer_rollout(converted):
    rollout = play_rollout(converted, "Assault", max_steps=3, progress=False, render_rgb=False,
                           planning_horizon=1, beam_width=2)
    assert len(rollout) == 3 and rollout.meta["algo"] == "jowa" and rollout.meta["model"] == "jowa-40m-ref"
    assert rollout.has_q and rollout.has_planner
    assert rollout.q_probs is not None and rollout.q_probs.shape[-1] == 51


def test_the_explorers_representation_panel_says_why_a_jowa_run_has_none(converted):
    from workbench.viz.results_figures import make_representation_figure

    fig = make_representation_figure(converted)  # notebook 07's cell for any checkpoint source
    assert not fig.data
    text = " ".join(a.text for a in fig.layout.annotations)
    assert "no representation diagnostics" in text and "jowa" in text and "no probe" in text


@pytest.mark.slow
def test_converted_run_finetunes_on_a_held_out_game(converted, tmp_path):
    config = FinetuneConfig.from_params(checkpoint=str(converted), game="Pong", dataset=str(DQN_FIXTURES),
                                        split="n:400:episodes", steps=2, batch_size=2, eval_episodes=1,
                                        eval_max_steps=5, num_envs=1, planning_horizon=0,
                                        output_dir=str(tmp_path / "ft"), device="cpu")
    result = finetune(config, progress=False)
    run = Run(result.run_dir)
    assert run.kind == "finetune" and "Pong" in run.games
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records and "loss/combo" in records[-1]
    src, tuned = (load_file(str(resolve_checkpoint(p) / "model.safetensors")) for p in (converted, result.run_dir))
    for k in ("world.task_obs_emb.weight", "world.task_act_emb.weight"):
        assert tuned[k].shape == (3, 512)  # Pong's new row first, then the converted run's two games
        assert torch.equal(tuned[k][1:], src[k])


@pytest.mark.slow
def test_analysis_draws_the_released_scores_as_a_reference(converted, tmp_path):
    out = _tiny_eval(converted, tmp_path)
    assault = released_jowa_means("40m")["Assault"]
    info = read_run(converted)
    assert released_reference_scores([info], ["Assault"]) == {"released JOWA-40M": {"Assault": assault}}
    assert released_reference_scores([info], ["Assault", "Pong"]) == {}  # not every game: not drawn
    assert released_reference_scores([read_run(tmp_path)], ["Assault"]) == {}  # not a converted run
    # Notebook 06: the run's evaluation (here a 4-step one, relabelled as following the protocol,
    # since a capped evaluation draws no published reference) gets the release as a reference bar.
    doc = json.loads((tmp_path / "scores.json").read_text())
    doc.update(comparable_to_papers=True, max_agent_steps=27000)
    (converted / "eval").mkdir(exist_ok=True)
    (converted / "eval" / "scores.json").write_text(json.dumps(doc))
    try:
        rep = build_figures([converted], tmp_path / "analysis", png=False, reps=50)
    finally:
        (converted / "eval" / "scores.json").unlink()
    bars = {tr.y[0] for tr in rep.figures["aggregates"].data if tr.y is not None and len(tr.y)}
    assert "released JOWA-40M" in bars, bars
    assert "released JOWA-<size>" in rep.descriptions["aggregates"]
    assert len(out["per_game"]["Assault"]["scores"]) == 1

"""Run folders as objects, resume safety, every algorithm setting reachable, presets per stage."""

from __future__ import annotations

import json
import os

import pytest
import torch

from workbench.config import PretrainConfig
from workbench.pipeline import build_algo, main, open_run
from workbench.run import MARKER, ResumeMismatch, Run


def _config(tmp_path, **kw) -> PretrainConfig:
    return PretrainConfig.from_params(output_dir=str(tmp_path / "run"), **kw)


def _fake_checkpoint(run: Run) -> bytes:
    (run.path / "checkpoints").mkdir()
    (run.path / "checkpoints" / "weights").write_bytes(b"precious")
    return b"precious"


def test_resume_into_a_different_model_stops_before_any_weight_is_loaded(tmp_path, monkeypatch):
    """The README's default run, then the headline run into the same folder (the old crash)."""
    import workbench.pipeline as pipeline

    run = open_run(_config(tmp_path))
    _fake_checkpoint(run)
    monkeypatch.setattr(pipeline, "prepare_dataset", lambda *a, **k: pytest.fail("data touched before the check"))
    monkeypatch.setattr(pipeline, "build_algo", lambda *a, **k: pytest.fail("weights built before the check"))
    with pytest.raises(ResumeMismatch) as err:
        pipeline.pretrain(_config(tmp_path, model="resnet101", games="Pong"))
    msg = str(err.value)
    assert "model: 'resnet-tiny' -> 'resnet101'" in msg and "games: 'Pong,Breakout' -> 'Pong'" in msg
    assert "another output_dir" in msg and "resume=False" in msg
    assert (run.path / "checkpoints" / "weights").read_bytes() == b"precious"
    assert Run(run.path).params["model"] == "resnet-tiny"  # config.json untouched


def test_resume_blocks_a_changed_lr_and_algo_setting_and_applies_resumable_fields(tmp_path):
    open_run(_config(tmp_path, lr=1e-4))
    with pytest.raises(ResumeMismatch, match=r"lr: 0.0001 -> 0.0002"):  # the old run silently kept its lr
        open_run(_config(tmp_path, lr=2e-4))
    with pytest.raises(ResumeMismatch, match=r"algo_args.*resolved.settings"):
        open_run(_config(tmp_path, lr=1e-4, algo_args={"alpha": 0.5}))
    run = open_run(_config(tmp_path, lr=1e-4, steps=500, eval_episodes=8))
    assert run.params["steps"] == 500 and run.params["eval_episodes"] == 8
    history = [json.loads(line) for line in (run.path / "history.jsonl").read_text().splitlines()]
    assert history == [{"event": "resume", "changed": {"eval_episodes": [0, 8], "steps": [0, 500]}}]


def test_resume_false_restarts_the_run_and_keeps_foreign_files_safe(tmp_path):
    run = open_run(_config(tmp_path))
    _fake_checkpoint(run)
    (run.path / "metrics.jsonl").write_text('{"step": 5}\n')
    run = open_run(_config(tmp_path, model="resnet18", resume=False))
    assert not (run.path / "checkpoints").exists() and not (run.path / "metrics.jsonl").exists()
    assert run.model == "resnet18"

    foreign = tmp_path / "dqn_replay"
    foreign.mkdir()
    (foreign / "$store$_observation_ckpt.0.gz").write_bytes(b"data")
    with pytest.raises(FileExistsError, match=r"not a workbench run.*\$store\$_observation_ckpt.0.gz"):
        open_run(PretrainConfig(output_dir=str(foreign), resume=False))
    assert (foreign / "$store$_observation_ckpt.0.gz").read_bytes() == b"data" and not (foreign / MARKER).exists()
    with pytest.raises(ValueError, match="not a run folder"):
        PretrainConfig(output_dir=".")


def test_each_model_and_algo_has_its_own_default_run_folder():
    from workbench.paths import project_root

    runs = project_root() / "runs"
    assert PretrainConfig().run_dir == str(runs / "pretrain-resnet-tiny")
    assert PretrainConfig(model="resnet101").run_dir == str(runs / "pretrain-resnet101")
    assert PretrainConfig(model="jowa-tiny").run_dir == str(runs / "pretrain-jowa-tiny")
    assert PretrainConfig(algo="bc").run_dir == str(runs / "pretrain-bc-resnet-tiny")


def test_algo_settings_reach_the_algorithm_from_notebooks_and_the_command_line(tmp_path, capsys):
    # papermill -y "algo_args: {alpha: 0.1, n_step: 1}" hands a dict; -p hands the YAML text.
    for given in ({"alpha": 0.1, "n_step": 1}, "{alpha: 0.1, n_step: 1}"):
        config = PretrainConfig.from_params(algo_args=given)
        algo = build_algo(config)
        assert algo.config.alpha == 0.1 and algo.config.n_step == 1  # type: ignore[attr-defined]
    config = PretrainConfig.from_params(model="jowa-tiny", algo_args={"beta": 0.3, "cql_alpha": 0.0})
    assert build_algo(config).config.beta == 0.3  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"'n_steps' \(did you mean 'n_step'\?\); valid scaled_ql settings: alpha"):
        PretrainConfig.from_params(algo_args={"n_steps": 1})

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["--dry-run", "--algo-args", "{alpha: 0.2, target_update_period: 7}", "--batch-size", "64"]) == 0
    finally:
        os.chdir(cwd)
    assert list(tmp_path.iterdir()) == []  # a dry run touches no file
    out = json.loads(capsys.readouterr().out)
    resolved = out["resolved"]
    assert resolved["settings"]["alpha"] == 0.2 and resolved["settings"]["target_update_period"] == 7
    (stage,) = resolved["stages"]
    assert stage["target_update_period"] == 7 and stage["lr"] == pytest.approx(5e-5 * 2 ** 0.5)  # sqrt(64/32)
    assert resolved["batch_size"] == 64 and resolved["output_dir"].endswith("runs/pretrain-resnet-tiny")


def test_paper_presets_per_stage():
    """JOWA: 250k steps of stage 1 then 1.5M of stage 2 (paper 003, Section 5.1), lr 1e-4 / 5e-5;
    Scaled QL: 10M steps at batch 512, lr 2e-4, target period 2000, 128 game draws per batch."""
    jowa = PretrainConfig(model="jowa-150m", preset="paper")
    s1, s2 = jowa.stages()
    assert (s1.name, s1.steps, s1.lr, s1.subdir) == ("stage1", 250_000, 1e-4, "stage1")
    assert (s2.name, s2.steps, s2.lr, s2.subdir) == ("stage2", 1_500_000, 5e-5, "")
    assert s1.steps + s2.steps == 1_750_000 and s2.target_update_period == 1000
    assert jowa.effective_batch_size == 512 and jowa.effective_eval_max_steps == 27_000
    (sql,) = PretrainConfig(model="resnet101", preset="paper").stages()
    assert (sql.steps, sql.target_update_period) == (10_000_000, 2000) and sql.lr == pytest.approx(2e-4)
    assert PretrainConfig(model="resnet101", preset="paper").resolve()["games_per_batch"] == 128
    assert PretrainConfig(model="resnet101", preset="cpu").stages()[0].target_update_period == 50


@pytest.mark.parametrize("model", ["resnet-tiny", "jowa-tiny"])
def test_initialisation_is_seeded(model):
    a, b, c = (build_algo(PretrainConfig(model=model, seed=s)) for s in (3, 3, 4))
    sa, sb, sc = (x.model.state_dict() for x in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


@pytest.mark.slow
def test_mse_reward_scales_come_from_the_store(dopamine_store):
    """Paper 000's MSE variant standardizes reward scales across games: s_g is the RMS of game g's
    discounted returns, here checked against a direct loop over the store's raw arrays (a return
    stops after a terminal row or where the stored checkpoint block ends)."""
    import numpy as np

    from workbench.algos.base import get_algo
    from workbench.algos.scaled_ql import CQLMSEConfig, ScaledQLConfig

    gamma, games = 0.97, ["Breakout", "Pong"]
    got = get_algo("cql_mse").settings_from_data(CQLMSEConfig(gamma=gamma), dopamine_store, games)
    want = []
    for g in games:
        arr = {k: np.load(dopamine_store / g / f"{k}.npy") for k in ("reward", "terminal", "block", "starts")}
        sq = []
        for p in arr["starts"]:
            ret, k = 0.0, 0
            while True:
                ret += gamma**k * float(arr["reward"][p + k])
                last_row = p + k + 1 == len(arr["block"])
                if arr["terminal"][p + k] or last_row or arr["block"][p + k + 1] != arr["block"][p]:
                    break
                k += 1
            sq.append(ret * ret)
        want.append(max(np.sqrt(np.mean(sq)), 1e-2))
    assert got["reward_scale"] == pytest.approx(want, rel=1e-5)
    assert got["reward_scale"][0] != pytest.approx(got["reward_scale"][1], rel=0.05)  # the games differ
    assert get_algo("scaled_ql").settings_from_data(ScaledQLConfig(), dopamine_store, games) == {}


@pytest.mark.slow
def test_mse_run_records_and_uses_its_reward_scales(tmp_path):
    from workbench.pipeline import pretrain

    config = _config(tmp_path, algo="cql_mse", games="Pong", record_steps=100, steps=2, batch_size=4,
                     eval_episodes=1, num_envs=1, eval_max_steps=5)
    pretrain(config, progress=False)
    run = Run(config.run_dir)
    (scale,) = run.resolved["data_settings"]["reward_scale"]
    algo, _ = run.build_algo(device="cpu")
    assert scale > 0 and algo.reward_scale.tolist() == pytest.approx([scale])  # type: ignore[attr-defined]

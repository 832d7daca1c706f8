"""The registry is the one place an algorithm lives: a new one, defined here in a few dozen lines,
runs through the pipeline, the evaluator, the analysis reader and the explorer without any
library change."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from workbench.algos.base import (
    EvalOptions,
    Explanation,
    FinetuneProtocol,
    FinetuneScale,
    Scale,
    Stage,
    get_algo,
    register,
    stage_iterator,
    unregister,
)

# ----------------------------------------------------------------------- the new algorithm


@dataclass(frozen=True)
class ProbeSettings:
    """Settings of the probe algorithm."""

    hidden: int = 8
    """Width of the probe's hidden layer."""


class ProbeNet(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(4 * 21 * 21, hidden), nn.ReLU(), nn.Linear(hidden, 18))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(nn.functional.avg_pool2d(obs.float() / 255.0, 4))


class Probe:
    """Behaviour cloning with a 2-layer probe on 21x21 frames."""

    target_model = None

    def __init__(self, settings: ProbeSettings) -> None:
        self.model = ProbeNet(settings.hidden)

    def loss(self, batch):
        logits = self.model(batch["obs"]).masked_fill(~batch["valid_mask"], -1e9)
        loss = nn.functional.cross_entropy(logits, batch["action"])
        return loss, {"loss/probe": loss.detach()}

    def update_target(self) -> None: ...

    def weight_parts(self):  # for fine-tuning: the hidden layer and the output layer
        return {"hidden": ("net.1.",), "output": ("net.3.",)}

    def game_rows(self, games):
        return {}  # no per-game tensors

    def param_groups(self):
        return [{"params": list(self.model.parameters())}]

    def to(self, device):
        self.model.to(device)
        return self

    def to_channels_last(self):
        return self

    def policy(self, options: EvalOptions):
        return self.inspectable_policy(options)

    def inspectable_policy(self, options: EvalOptions):
        return ProbePolicy(self.model)


class ProbePolicy:
    def __init__(self, model: ProbeNet) -> None:
        self.model = model

    def reset(self, indices) -> None: ...

    def observe(self, actions, rewards) -> None: ...

    def act_explained(self, obs, game_ids):
        from workbench import games

        with torch.no_grad():
            q = self.model(torch.from_numpy(obs)).numpy()
        n = np.array([games.num_actions(g) for g in ("Pong",)])[np.zeros(len(obs), int)]
        q = np.where(np.arange(18)[None] < n[:, None], q, -np.inf)
        return q.argmax(1), [Explanation(q_values=row) for row in q]

    def act(self, obs, game_ids):
        return self.act_explained(obs, game_ids)[0]


def probe_finetune_scale(preset: str, model: str, method: str) -> FinetuneScale:
    return FinetuneScale((("train", 4),), batch_size=8, lr=1e-3, eval_episodes=1, eval_max_steps=20, record_steps=200,
                         snapshot_every=2, log_every=1, checkpoint_every=2)


class ProbeSpec:
    name = "probe"
    label = "Probe BC"
    description = "a linear-probe behaviour cloner (test algorithm)"
    settings_class = ProbeSettings
    metric_prefixes = ("loss/",)
    suites = ("atari", "minatar")
    curves = ("loss/probe",)
    # Fine-tuning: the hidden layer transfers (and may be frozen), the output layer starts afresh.
    finetune = FinetuneProtocol(name="probe", paper_split="all", held_out_games=("Breakout",),
                                methods=("transfer", "scratch"), pretrained_methods=("transfer",),
                                scale_fn=probe_finetune_scale, transferred=("hidden",), reinitialized=("output",),
                                freezable=("hidden",))

    def model_presets(self):
        return ("probe-net",)

    def default_model(self):
        return "probe-net"

    def scale(self, preset: str, model: str) -> Scale:
        return Scale(steps=4, batch_size=8, eval_max_steps=20, log_every=1, checkpoint_every=2, games_per_batch=1)

    def stages(self, settings: Any, scale: Scale, batch_size: int, lr: float) -> list[Stage]:
        return [Stage("train", "", scale.steps, lr or 1e-3, weight_decay=0.0, target_update_period=0)]

    def settings_from_data(self, settings, store, games):
        return {}

    def build(self, model, games, settings, seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return Probe(settings)

    def enter_stage(self, algo, stage, context) -> None: ...
    def batches(self, algo, stage, context):
        from workbench.data.sampler import TransitionSampler

        return stage_iterator(TransitionSampler(context.store, context.games, context.batch_size, n_step=1,
                                                seed=context.seed, games_per_batch=1))


# ----------------------------------------------------------------------- the proof


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    register(ProbeSpec())
    from workbench.config import PretrainConfig
    from workbench.pipeline import pretrain

    run_dir = tmp_path_factory.mktemp("probe") / "run"
    config = PretrainConfig.from_params(model="probe-net", games="Pong", record_steps=100, output_dir=str(run_dir),
                                        eval_episodes=1, num_envs=1, algo_args="{hidden: 6}")
    result = pretrain(config, progress=False)
    yield run_dir, result
    unregister("probe")


@pytest.mark.slow
def test_new_algorithm_trains_through_the_pipeline(probe_run):
    run_dir, result = probe_run
    assert get_algo("probe").settings_class is ProbeSettings
    config = json.loads((run_dir / "config.json").read_text())
    assert config["kind"] == "pretrain" and config["resolved"]["algo"] == "probe"
    assert config["resolved"]["settings"] == {"hidden": 6}  # algo_args reached the algorithm's settings
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all("loss/probe" in r for r in records)
    assert result.summary["algo"] == "probe" and set(result.scores["per_game"]) == {"Pong"}


@pytest.mark.slow
def test_new_algorithm_evaluates_analyses_and_explores(probe_run):
    from workbench.config import EvaluateConfig
    from workbench.pipeline import evaluate_run
    from workbench.viz.analysis import build_figures, read_run
    from workbench.viz.rollout import play_rollout

    run_dir, _ = probe_run
    report = evaluate_run(EvaluateConfig(checkpoint=str(run_dir), episodes=1, num_envs=1, max_steps=10),
                          progress=False)
    assert report["per_game"]["Pong"]["lengths"] == [10]

    info = read_run(run_dir)
    assert info.algo == "probe" and not [p for p in info.problems if "metrics" in p]
    figures = build_figures([run_dir], run_dir / "analysis", png=False, reps=50)
    curve_rows = {t.yaxis for t in figures.figures["learning_curves"].data}
    assert len(curve_rows) == 1 and "loss/probe" in figures.descriptions["learning_curves"]

    rollout = play_rollout(run_dir, "Pong", max_steps=5, epsilon=0.0, progress=False)
    assert rollout.q_values.shape == (5, 6)  # the probe's explanation: Pong's 6 valid actions
    np.testing.assert_array_equal(rollout.actions, rollout.q_values.argmax(1))


@pytest.mark.slow
def test_new_algorithm_finetunes_through_the_job(probe_run, tmp_path, capsys):
    """``python -m workbench.finetune`` on the probe's checkpoint: its protocol's parts transfer,
    the frozen one stays bit-identical to the checkpoint's, the re-initialized one does not."""
    from safetensors.torch import load_file

    from workbench import checkpoint as ckpt_io
    from workbench.finetune import main

    run_dir, _ = probe_run
    out = tmp_path / "ft"
    assert main(["--checkpoint", str(run_dir), "--game", "Breakout", "--encoder", "frozen", "--output-dir", str(out),
                 "--num-envs", "1", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["algo"] == "probe" and summary["game"] == "Breakout" and summary["steps"] == 4
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["protocol"] == "probe" and resolved["pretrained"] is True and resolved["split"] == "all"
    assert resolved["frozen_parts"] == ["hidden"] and resolved["games"] == ["Breakout", "Pong"]

    def weights(path):
        return load_file(str(ckpt_io.resolve_checkpoint(path) / "model.safetensors"))

    source, tuned = weights(run_dir), weights(out)
    assert set(source) == set(tuned) == {"net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias"}
    for name in ("net.1.weight", "net.1.bias"):  # transferred and frozen
        assert torch.equal(source[name], tuned[name])
    for name in ("net.3.weight", "net.3.bias"):  # re-initialized, then trained
        assert not torch.allclose(source[name], tuned[name])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert set(json.loads((out / "eval" / "scores.json").read_text())["per_game"]) == {"Breakout"}


def test_unknown_algorithm_and_setting_list_the_valid_names():
    from workbench.config import PretrainConfig

    with pytest.raises(ValueError, match=r"unknown algo 'scaled-ql' \(did you mean 'scaled_ql'\?\); valid algos: "):
        PretrainConfig(algo="scaled-ql")
    with pytest.raises(ValueError, match="valid scaled_ql settings: alpha, gamma, n_step"):
        PretrainConfig(algo_args={"n_steps": 1})
    with pytest.raises(ValueError, match="model 'jowa-tiny' is not a preset of algo 'bc'"):
        PretrainConfig(model="jowa-tiny", algo="bc")

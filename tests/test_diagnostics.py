"""Representation-collapse diagnostics against constructed cases with known answers.

Every expected value is either set by construction (a rank-k product, rows of a Linear layer forced
dead, a hand-computed 2x2 matrix) or computed here from the definition with numpy (never the code).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from workbench import losses as L
from workbench.algos.scaled_ql import GreedyPolicy
from workbench.diagnostics import (
    MODAL_SHARE_COLLAPSED,
    SRANK_COLLAPSED,
    VARIATION_DROP_COLLAPSED,
    ProbeDiagnostics,
    action_spread,
    collapse_flags,
    dead_units,
    qnet_probe_forward,
    relative_variation,
    srank,
)
from workbench.models.qnet import build_qnet

# ----------------------------------------------------------------------------- references


def ref_srank(x: np.ndarray, delta: float) -> int:
    """The definition, by a loop over numpy's singular values."""
    sigma = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    total = sigma.sum()
    running = 0.0
    for k, s in enumerate(sigma, start=1):
        running += s
        if running / total >= 1 - delta:
            return k
    raise AssertionError("unreachable for delta > 0")


def with_singular_values(sigma: list[float], n: int, seed: int) -> np.ndarray:
    """A (n, len(sigma)) matrix U diag(sigma) V^T with random orthonormal U, V."""
    rng = np.random.default_rng(seed)
    d = len(sigma)
    u, _ = np.linalg.qr(rng.standard_normal((n, d)))
    v, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return u @ np.diag(sigma) @ v.T


def t(x: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


# ----------------------------------------------------------------------------- srank


@pytest.mark.parametrize("k", [1, 3, 7])
def test_srank_of_a_rank_k_product_is_k(k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((64, k)) @ rng.standard_normal((k, 32))
    assert srank(t(x), delta=1e-3) == k == ref_srank(x, 1e-3)


def test_srank_of_a_well_conditioned_full_rank_matrix_is_about_d():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 32))
    expected = ref_srank(x, 0.01)
    assert srank(t(x)) == expected
    assert expected >= 30
    # Equal singular values: exactly D (31 of 32 hold only 96.9% < 99%).
    assert srank(t(with_singular_values([1.0] * 32, 64, seed=1))) == 32


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("delta", [0.01, 0.1, 0.3])
def test_srank_matches_the_definition_on_decaying_spectra(seed, delta):
    sigma = list(np.geomspace(10.0, 0.01, 24) * np.random.default_rng(seed).uniform(0.5, 1.5, 24))
    x = with_singular_values(sorted(sigma, reverse=True), 40, seed)
    assert srank(t(x), delta) == ref_srank(x, delta)


def test_srank_uses_singular_values_not_eigenvalues_of_the_gram_matrix():
    # sigma = (10, 1 x 10): top-k share of sum(sigma) reaches 0.9 at k = 9; the squares
    # (eigenvalues of X^T X: 100, 1 x 10) reach it at k = 1, their square roots at k = 10.
    x = with_singular_values([10.0] + [1.0] * 10, 30, seed=2)
    assert srank(t(x), delta=0.1) == 9 == ref_srank(x, 0.1)


def test_srank_does_not_center_and_handles_zero():
    row = np.arange(1.0, 9.0)
    assert srank(t(np.tile(row, (16, 1)))) == 1  # identical rows: rank 1 (centering would give 0)
    assert srank(torch.zeros(5, 4)) == 0


def test_srank_threshold_is_inclusive():
    # sigma = (3, 1): the top singular value holds exactly 0.75 = 1 - 0.25.
    assert srank(torch.diag(torch.tensor([3.0, 1.0])), delta=0.25) == 1
    assert srank(torch.diag(torch.tensor([3.0, 1.0])), delta=0.24) == 2


def test_srank_rejects_bad_input():
    with pytest.raises(ValueError):
        srank(torch.ones(4, 3), delta=1.0)
    with pytest.raises(ValueError):
        srank(torch.ones(4))
    with pytest.raises(ValueError):
        srank(torch.tensor([[1.0, float("nan")]]))


# ----------------------------------------------------------------------------- dead units


def test_dead_units_columns_and_channels():
    x = torch.tensor([[0.0, 1.0, -2.0, 0.0], [0.0, 0.0, -1.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    assert dead_units(x) == 2  # columns 0 and 2; column 1 lives on one sample only
    a = torch.ones(3, 4, 2, 2)
    a[:, 0] = 0.0  # dead
    a[:, 1] = 0.0
    a[2, 1, 1, 0] = 0.5  # alive: one sample, one position
    a[:, 2] = -1.0  # dead (<= 0 everywhere)
    assert dead_units(a) == 2  # per channel: flattening C*H*W columns would count 12


def relu_net(dead_rows: list[int], inplace: bool) -> nn.Sequential:
    """Linear(5, 8) whose ``dead_rows`` have weight 0 and bias -1, the others bias +1 (alive)."""
    lin = nn.Linear(5, 8)
    with torch.no_grad():
        lin.weight.normal_(0.0, 0.1)
        lin.bias.fill_(1.0)
        lin.weight[dead_rows] = 0.0
        lin.bias[dead_rows] = -1.0
        # Row 7 copies input 0 (negative except on one sample): alive on exactly one sample.
        lin.weight[7] = 0.0
        lin.weight[7, 0] = 1.0
        lin.bias[7] = 0.0
    return nn.Sequential(lin, nn.ReLU(inplace=inplace))


def probe_inputs() -> Tensor:
    x = -torch.rand(16, 5, generator=torch.Generator().manual_seed(0)) - 0.1
    x[5, 0] = 1.0
    return x


def flat_forward(model: nn.Module, probe: Tensor) -> tuple[Tensor, Tensor]:
    y = model(probe).flatten(1)
    return y, y.argmax(dim=1)


@pytest.mark.parametrize("inplace", [False, True])
def test_probe_counts_known_dead_units_of_a_linear_layer(inplace):
    net = relu_net([1, 4, 6], inplace)
    d = ProbeDiagnostics(net, probe_inputs(), flat_forward)()
    assert d["diag/dead/1"] == 3
    assert d["diag/dead_fraction"] == 3 / 8


def test_probe_counts_dead_channels_of_a_conv_layer():
    conv = nn.Conv2d(2, 5, 3)
    with torch.no_grad():
        conv.weight[[0, 3]] = 0.0
        conv.bias[[0, 3]] = -1.0
        conv.bias[[1, 2, 4]] = 5.0
    net = nn.Sequential(conv, nn.ReLU(inplace=True))
    probe = torch.rand(4, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    d = ProbeDiagnostics(net, probe, flat_forward)()
    assert d["diag/dead/1"] == 2
    assert d["diag/dead_fraction"] == 2 / 5


class WritesAfterReLU(nn.Module):
    """An in-place ReLU whose output is overwritten in place afterwards: only the hook sees it."""

    def __init__(self):
        super().__init__()
        self.inner = relu_net([0, 2], inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x).add_(1.0)


def test_dead_units_are_counted_when_the_relu_runs():
    d = ProbeDiagnostics(WritesAfterReLU(), probe_inputs(), flat_forward)()
    assert d["diag/dead/inner.1"] == 2


class SharedReLU(nn.Module):
    """One ReLU module applied twice, as in the ResNet blocks: two layers, reported separately."""

    def __init__(self):
        super().__init__()
        self.first = relu_net([0], inplace=False)[0]  # 1 dead of 8
        self.second = nn.Linear(8, 6)
        with torch.no_grad():
            self.second.weight[:3] = 0.0
            self.second.bias[:3] = -1.0
            self.second.bias[3:] = 10.0
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.second(self.act(self.first(x))))


def test_a_relu_module_applied_twice_reports_each_application():
    d = ProbeDiagnostics(SharedReLU(), probe_inputs(), flat_forward)()
    assert (d["diag/dead/act#1"], d["diag/dead/act#2"]) == (1, 3)
    assert "diag/dead/act" not in d
    assert d["diag/dead_fraction"] == 4 / (8 + 6)


# ----------------------------------------------------------------------------- variation, spread


def test_relative_variation_known_values():
    assert relative_variation(torch.tensor([[1.0, -2.0, 3.0]] * 5)) == 0.0
    assert relative_variation(torch.zeros(3, 2)) == 0.0
    # Per-feature std (ddof 0) = (1, 0), mean 0.5; RMS = sqrt((1 + 9) / 4). The wrong variants give
    # other numbers: std of all entries 1.22, per-sample std 1.0, ddof 1 0.71, mean |x| 1.0.
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    assert relative_variation(x) == pytest.approx(0.5 / np.sqrt(2.5), rel=1e-12)
    assert relative_variation(1e-3 * x) == pytest.approx(0.5 / np.sqrt(2.5), rel=1e-6)  # float32 input


def test_action_spread_known_vectors():
    assert action_spread(torch.tensor([2, 2, 2, 5, 1, 2, 5, 2])) == dict(modal_action=2, modal_share=5 / 8, distinct=3)
    assert action_spread([3, 1, 1, 3]) == dict(modal_action=1, modal_share=0.5, distinct=2)  # tie: lowest
    assert action_spread(np.full(7, 4)) == dict(modal_action=4, modal_share=1.0, distinct=1)


def test_probe_reports_the_greedy_spread_and_feature_statistics():
    net = relu_net([1, 4, 6], inplace=False)
    probe = probe_inputs()
    d = ProbeDiagnostics(net, probe, flat_forward)()
    with torch.no_grad():
        y = net(probe).numpy().astype(np.float64)
    spread = action_spread(y.argmax(axis=1))
    assert d["diag/greedy_modal_action"] == spread["modal_action"]
    assert d["diag/greedy_modal_share"] == spread["modal_share"]
    assert d["diag/greedy_distinct"] == spread["distinct"]
    assert d["diag/srank"] == ref_srank(y, 0.01)
    assert d["diag/feature_dim"] == 8
    assert d["diag/feature_variation"] == pytest.approx(y.std(axis=0).mean() / np.sqrt((y**2).mean()), rel=1e-6)


# ----------------------------------------------------------------------------- modes and hooks


def test_probe_runs_in_eval_without_grad_and_restores_modes_and_hooks():
    net = nn.Sequential(relu_net([0], inplace=False), nn.Dropout(0.5), nn.Sequential(nn.Linear(8, 4), nn.ReLU()))
    net.train()
    net[2].eval()  # mixed modes must come back exactly, not as net.train(True)
    user_hook = net[0][1].register_forward_hook(lambda *args: None)
    seen = {}

    def forward(model, probe):
        seen["training"] = [m.training for m in model.modules()]
        seen["grad"] = torch.is_grad_enabled()
        return flat_forward(model, probe)

    before = [m.training for m in net.modules()]
    ProbeDiagnostics(net, probe_inputs(), forward)()
    assert not any(seen["training"]) and seen["grad"] is False
    assert [m.training for m in net.modules()] == before
    assert len(net[0][1]._forward_hooks) == 1  # the user's hook stays, ours is gone
    user_hook.remove()
    assert all(len(m._forward_hooks) == 0 for m in net.modules())


def test_probe_cleans_up_when_forward_raises():
    net = relu_net([0], inplace=False).train()

    def forward(model, probe):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ProbeDiagnostics(net, probe_inputs(), forward)()
    assert net.training and all(m.training for m in net.modules())
    assert all(len(m._forward_hooks) == 0 for m in net.modules())


# ----------------------------------------------------------------------------- QNetwork forward


class FixedHeads(nn.Module):
    """A QNetwork-shaped model whose head outputs are given (features = the probe's obs)."""

    def __init__(self, out: Tensor, valid: Tensor, distributional: bool):
        super().__init__()
        self.out, self.valid, self.distributional = out, valid, distributional
        self.dummy = nn.Parameter(torch.zeros(1))

    def features(self, obs: Tensor) -> Tensor:
        return obs.float()

    def heads(self, features: Tensor, game_id: Tensor) -> Tensor:
        return self.out

    def valid_mask(self, game_id: Tensor) -> Tensor:
        return self.valid


def test_qnet_forward_acts_on_expected_value_over_valid_actions():
    support = torch.tensor([-1.0, 0.0, 1.0])
    logits = torch.zeros(2, 18, 3)
    # Sample 0: action 0 expects ~ +0.99; action 1 has the largest logits (sum 19, max 10) but
    # expects ~ -0.46; action 2 would expect ~ +1 but is invalid.
    logits[0, 0] = torch.tensor([0.0, 0.0, 5.0])
    logits[0, 1] = torch.tensor([10.0, 0.0, 9.0])
    logits[0, 2] = torch.tensor([0.0, 0.0, 50.0])
    # Sample 1: every valid action uniform (Q = 0) except action 1 (Q < 0): a tie, lowest wins.
    logits[1, 1] = torch.tensor([3.0, 0.0, 0.0])
    valid = torch.zeros(2, 18, dtype=torch.bool)
    valid[:, :2] = True
    valid[1, 2:4] = True
    probe = {"obs": torch.zeros(2, 4), "game_id": torch.zeros(2, dtype=torch.long)}
    model = FixedHeads(logits, valid, distributional=True)
    _, greedy = qnet_probe_forward(model, probe, support)
    assert greedy.tolist() == [0, 0]
    with pytest.raises(ValueError, match="support"):
        qnet_probe_forward(model, probe)
    # MSE / BC heads: argmax of the values themselves, masked (sample 0: 50 is invalid).
    values = logits.sum(-1, keepdim=True)
    _, greedy = qnet_probe_forward(FixedHeads(values, valid, distributional=False), probe)
    assert greedy.tolist() == [1, 1]


@pytest.mark.parametrize("distributional", [True, False])
def test_qnet_forward_matches_the_greedy_policy_on_a_real_qnetwork(distributional):
    torch.manual_seed(0)
    model = build_qnet("resnet-tiny", [6, 3], distributional=distributional)
    # Spread the head outputs so the greedy action differs across samples.
    with torch.no_grad():
        model.heads.weight.mul_(200.0)
    support = L.make_support(-10.0, 10.0, 51)
    gen = torch.Generator().manual_seed(3)
    obs = torch.randint(0, 256, (12, 4, 84, 84), dtype=torch.uint8, generator=gen)
    game_id = torch.tensor([0, 1] * 6)
    features, greedy = qnet_probe_forward(model, {"obs": obs, "game_id": game_id}, support)
    expected = GreedyPolicy(model, support).act(obs.numpy(), game_id.numpy())
    assert greedy.tolist() == expected.tolist()
    assert len(set(expected.tolist())) > 1
    with torch.no_grad():
        assert torch.equal(features, model.features(obs))

    d = ProbeDiagnostics(model, {"obs": obs, "game_id": game_id}, partial(qnet_probe_forward, support=support))()
    # Each trunk ReLU fired once (features pass through the heads, not a second forward); the
    # ResNet blocks' shared `act` is reported per application.
    assert {"diag/dead/trunk.mlp.3", "diag/dead/trunk.mlp.5", "diag/dead/trunk.mlp.7"} <= d.keys()
    assert "diag/dead/encoder.stages.0.0.act#2" in d
    assert d["diag/feature_dim"] == 64
    assert d["diag/greedy_distinct"] == len(set(expected.tolist()))


# ----------------------------------------------------------------------------- collapse flags


HEALTHY = [
    {"diag/srank": 40, "diag/feature_variation": 0.11, "diag/greedy_modal_share": 0.4, "diag/greedy_modal_action": 2},
    {"diag/srank": 25, "diag/feature_variation": 0.03, "diag/greedy_modal_share": 0.6, "diag/greedy_modal_action": 1},
]


def collapsed(**latest: float) -> list[dict]:
    return [HEALTHY[0], {**HEALTHY[1], **latest}]


def test_collapse_flags_are_silent_on_a_healthy_run():
    assert collapse_flags(HEALTHY) == []
    assert collapse_flags([]) == []
    # Boundaries just on the healthy side.
    assert collapse_flags(collapsed(**{"diag/greedy_modal_share": 0.989})) == []
    assert collapse_flags(collapsed(**{"diag/feature_variation": 0.11 / 9.9})) == []
    assert collapse_flags(collapsed(**{"diag/srank": SRANK_COLLAPSED + 1})) == []
    # srank that was never above the threshold did not "fall".
    assert collapse_flags([{"diag/srank": 2}, {"diag/srank": 1}]) == []


def test_collapse_flags_fire_on_each_sign_alone():
    (f,) = collapse_flags(collapsed(**{"diag/greedy_modal_share": MODAL_SHARE_COLLAPSED}))
    assert "greedy" in f and "action 1" in f
    (f,) = collapse_flags([{"diag/feature_variation": 1.0}, {"diag/feature_variation": 1.0 / VARIATION_DROP_COLLAPSED}])
    assert "variation" in f
    (f,) = collapse_flags(collapsed(**{"diag/feature_variation": 0.0}))
    assert "variation" in f
    (f,) = collapse_flags(collapsed(**{"diag/srank": SRANK_COLLAPSED}))
    assert "srank 40 -> 2" in f


def test_collapse_flags_compare_the_latest_record_with_the_first():
    # A gradual fall: 3.3x per record, 11x since the first record.
    assert len(collapse_flags([{"diag/feature_variation": v} for v in (1.0, 0.3, 0.09)])) == 1
    # A collapse that has recovered by the latest record is not flagged.
    spike = {**HEALTHY[1], "diag/greedy_modal_share": 1.0, "diag/srank": 1, "diag/feature_variation": 1e-4}
    assert collapse_flags([HEALTHY[0], spike, HEALTHY[1]]) == []


def test_a_collapsed_network_is_flagged_end_to_end():
    """A network at init, then the same one with every trunk unit dead: all three signs fire."""
    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(inplace=True), nn.Linear(16, 6))
    torch.manual_seed(0)
    probe = torch.randn(64, 5, generator=torch.Generator().manual_seed(4))

    def forward(model, x):
        h = model[1](model[0](x))
        return torch.cat([h, torch.ones(len(x), 1)], dim=1), model[2](h).argmax(1)

    diag = ProbeDiagnostics(net, probe, forward)
    history = [diag()]
    assert collapse_flags(history) == []
    with torch.no_grad():
        net[0].bias.fill_(-100.0)  # every unit dead: features constant, rank 1
    history.append(diag())
    assert history[-1]["diag/dead/1"] == 16 and history[-1]["diag/dead_fraction"] == 1.0
    assert history[-1]["diag/srank"] == 1
    assert len(collapse_flags(history)) == 3
    assert diag() == history[-1]  # deterministic

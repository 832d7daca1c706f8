"""Offline training with the real algo, loss and trainer converges to value iteration's Q*.

A 4-state chain MDP, played as two "games" with 3 and 2 actions (so per-game heads and action
masks are exercised), observed through frames that encode the state in one pixel. The dataset
holds every (game, state, action) transition once; with CQL alpha 0 and full coverage, the
fixed point of both the C51 and the MSE backups is Q*.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from workbench.algos.scaled_ql import CQLMSEConfig, ScaledQL, ScaledQLConfig
from workbench.models.qnet import QNetwork
from workbench.train import TrainConfig, train

N_STATES, GAMMA = 4, 0.75
ACTIONS = (3, 2)  # game 0: left, right, stay; game 1: left, right


def step(s: int, a: int) -> tuple[int, float, bool]:
    """Deterministic chain: right from the last state ends the episode with +1."""
    if a == 1:
        return (s, 1.0, True) if s == N_STATES - 1 else (s + 1, 0.0, False)
    if a == 0:
        return max(s - 1, 0), -0.5, False
    return s, 0.2, False


def value_iteration(n_actions: int) -> np.ndarray:
    q = np.zeros((N_STATES, n_actions))
    for _ in range(500):
        new = np.zeros_like(q)
        for s in range(N_STATES):
            for a in range(n_actions):
                s2, r, done = step(s, a)
                new[s, a] = r + (0.0 if done else GAMMA * q[s2].max())
        q = new
    return q


def frame(s: int | None) -> np.ndarray:
    f = np.zeros((4, 84, 84), np.uint8)
    if s is not None:
        f[-1, 0, s] = 255
    return f


def dataset() -> dict[str, torch.Tensor]:
    rows = [(g, s, a) for g, n in enumerate(ACTIONS) for s in range(N_STATES) for a in range(n)]
    obs, nxt, act, rew, disc, term, gid, mask = [], [], [], [], [], [], [], []
    for g, s, a in rows:
        s2, r, done = step(s, a)
        obs.append(frame(s))
        nxt.append(frame(None if done else s2))
        act.append(a)
        rew.append(r)
        disc.append(0.0 if done else GAMMA)
        term.append(float(done))
        gid.append(g)
        mask.append(np.arange(18) < ACTIONS[g])

    def t(x, dt):
        return torch.as_tensor(np.array(x), dtype=dt)

    return {
        "obs": t(obs, torch.uint8), "next_obs": t(nxt, torch.uint8), "action": t(act, torch.int64),
        "reward": t(rew, torch.float32), "discount": t(disc, torch.float32),
        "terminal": t(term, torch.float32), "game_id": t(gid, torch.int64), "valid_mask": t(mask, torch.bool),
    }


class PixelStateEncoder(nn.Module):
    """Reads the state pixel row of the newest frame: an exact, learnable-free tabular encoder."""

    out_dim = N_STATES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1, 0, :N_STATES]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["scaled_ql", "cql_mse"])
def test_offline_training_converges_to_value_iteration(tmp_path, algo):
    torch.manual_seed(0)
    distributional = algo == "scaled_ql"
    model = QNetwork(PixelStateEncoder(), 2, ACTIONS, distributional, feature_norm=True,
                     trunk_dim=64, hidden_dim=64, num_hidden=2)
    config = (ScaledQLConfig(alpha=0.0, gamma=GAMMA, n_step=1, vmin=-10, vmax=10) if distributional
              else CQLMSEConfig(alpha=0.0, gamma=GAMMA, n_step=1))
    agent = ScaledQL(model, config)
    data = dataset()

    def batches(start):
        while True:
            yield data

    cfg = TrainConfig(steps=800, lr=3e-3, target_update_period=25, log_every=100,
                      checkpoint_every=10_000, grad_clip=0.0, seed=0)
    train(agent, batches, cfg, tmp_path, progress=False)

    model.eval()
    with torch.no_grad():
        out = model(data["obs"], data["game_id"])
        q = (out.softmax(-1) * agent.support).sum(-1) if distributional else out
    for g, n in enumerate(ACTIONS):
        q_star = value_iteration(n)
        rows = (data["game_id"] == g).nonzero().squeeze(1)
        for i in rows.tolist():
            s = int(data["obs"][i, -1, 0, :N_STATES].argmax())
            a = int(data["action"][i])
            assert abs(float(q[i, a]) - q_star[s, a]) < 0.05, (algo, g, s, a, float(q[i, a]), q_star[s, a])


def cql_fixed_point(n_actions: int, alpha: float) -> np.ndarray:
    """The fixed point of tabular CQL(H) with an MSE TD loss, solved independently of the library.

    Every state holds one sample per action, so the per-state objective is
    sum_a (Q(s,a) - y(s,a))^2 + alpha * (logsumexp Q(s,.) - Q(s,a)); setting its gradient in Q(s,b)
    to zero gives Q(s,b) = y(s,b) - alpha/2 * (n * softmax(Q(s,.))_b - 1), with
    y = r + gamma * max Q(s',.) from the (converged) target network. Solved by damped iteration.
    """
    q = np.zeros((N_STATES, n_actions))
    for _ in range(20_000):
        new = np.empty_like(q)
        for s in range(N_STATES):
            pi = np.exp(q[s] - q[s].max())
            pi /= pi.sum()
            for a in range(n_actions):
                s2, r, done = step(s, a)
                y = r + (0.0 if done else GAMMA * q[s2].max())
                new[s, a] = y - alpha / 2 * (n_actions * pi[a] - 1.0)
        if np.abs(new - q).max() < 1e-12:
            break
        q = 0.5 * q + 0.5 * new
    assert np.abs(new - q).max() < 1e-9  # the solver converged
    return q


def _model(distributional: bool) -> QNetwork:
    torch.manual_seed(0)
    return QNetwork(PixelStateEncoder(), 2, ACTIONS, distributional, feature_norm=True,
                    trunk_dim=64, hidden_dim=64, num_hidden=2)


def _train(agent: ScaledQL, data: dict[str, torch.Tensor], tmp_path, steps: int = 800) -> torch.Tensor:
    def batches(start):
        while True:
            yield data

    cfg = TrainConfig(steps=steps, lr=3e-3, target_update_period=25, log_every=100,
                      checkpoint_every=10_000, grad_clip=0.0, seed=0)
    train(agent, batches, cfg, tmp_path, progress=False)
    agent.model.eval()
    with torch.no_grad():
        out = agent.model(data["obs"], data["game_id"])
        return (out.softmax(-1) * agent.support).sum(-1) if agent.model.distributional else out


def _check(q: torch.Tensor, data: dict[str, torch.Tensor], want, tol: float, label: str) -> None:
    for g, n in enumerate(ACTIONS):
        ref = want(n)
        for i in (data["game_id"] == g).nonzero().squeeze(1).tolist():
            s = int(data["obs"][i, -1, 0, :N_STATES].argmax())
            a = int(data["action"][i])
            assert abs(float(q[i, a]) - ref[s, a]) < tol, (label, g, s, a, float(q[i, a]), ref[s, a])


@pytest.mark.slow
def test_cql_mse_converges_to_the_tabular_cql_fixed_point(tmp_path):
    """alpha > 0: the learned Q is the conservative fixed point, not Q* (which it is clearly apart
    from). Mutations caught: a CQL term with the wrong sign or weight, a logsumexp over invalid
    actions (game 1 has 2 of 18 slots valid), or a TD target that ignores the discount."""
    alpha = 0.5
    data = dataset()
    q = _train(ScaledQL(_model(False), CQLMSEConfig(alpha=alpha, gamma=GAMMA, n_step=1)), data, tmp_path)
    assert max(np.abs(cql_fixed_point(n, alpha) - value_iteration(n)).max() for n in ACTIONS) > 0.2
    _check(q, data, lambda n: cql_fixed_point(n, alpha), 0.05, "cql_mse alpha=0.5")


def nstep_dataset(n: int) -> dict[str, torch.Tensor]:
    """n-step transitions whose continuation after the first action is the optimal policy (greedy
    in value iteration's Q*), so the n-step backup's fixed point is Q*: R = sum_k gamma^k r_k
    (stopping at the terminal), discount gamma^n (0 when the episode ended), next state s_n."""
    data = dataset()
    rows = [(g, s, a) for g, m in enumerate(ACTIONS) for s in range(N_STATES) for a in range(m)]
    optimal = {m: value_iteration(m).argmax(1) for m in ACTIONS}
    rew, disc, nxt = [], [], []
    for g, s, a in rows:
        ret, state, act, done, k = 0.0, s, a, False, 0
        while k < n and not done:
            state, r, done = step(state, act)
            ret += GAMMA**k * r
            act, k = int(optimal[ACTIONS[g]][state]), k + 1
        rew.append(ret)
        disc.append(0.0 if done else GAMMA**n)
        nxt.append(frame(None if done else state))
    data["reward"] = torch.tensor(rew, dtype=torch.float32)
    data["discount"] = torch.tensor(disc, dtype=torch.float32)
    data["next_obs"] = torch.as_tensor(np.array(nxt), dtype=torch.uint8)
    data["terminal"] = (data["discount"] == 0).float()
    return data


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["scaled_ql", "cql_mse"])
def test_three_step_returns_converge_to_value_iteration(tmp_path, algo):
    """n = 3: the loss must bootstrap with the batch's gamma^3 discount (a loss that used gamma, or
    gamma^n on terminal transitions, converges elsewhere)."""
    distributional = algo == "scaled_ql"
    config = (ScaledQLConfig(alpha=0.0, gamma=GAMMA, n_step=3, vmin=-10, vmax=10) if distributional
              else CQLMSEConfig(alpha=0.0, gamma=GAMMA, n_step=3))
    data = nstep_dataset(3)
    q = _train(ScaledQL(_model(distributional), config), data, tmp_path)
    _check(q, data, value_iteration, 0.05, f"{algo} n=3")

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

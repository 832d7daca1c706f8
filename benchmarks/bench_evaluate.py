"""Evaluation throughput with a small torch conv policy in the loop vs env stepping alone.

Prints JSON: agent steps/s of ``evaluate`` (policy inference + epsilon + frame stacking + envs)
and of bare ``AtariVector.step`` with the same game, number of envs and backend, measured side by
side in one process; ``ratio`` = eval / env (target >= 0.6 on CPU).

    python benchmarks/bench_evaluate.py [--game Pong] [--num-envs 8] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import rliable.library  # noqa: F401  (import once, outside both timings)
import torch
from torch import nn

from workbench import games
from workbench.envs import FRAME_SKIP, AtariVector
from workbench.evaluate import evaluate


class SmallConvPolicy:
    """Nature-DQN-shaped conv net (scaled down), greedy over valid actions."""

    def __init__(self, game_list: tuple[str, ...]) -> None:
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(4, 16, 8, stride=4), nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 256), nn.ReLU(), nn.Linear(256, games.MAX_ACTIONS),
        ).eval()  # fmt: skip
        self.mask = torch.from_numpy(games.valid_action_mask(game_list))

    def reset(self, indices: np.ndarray) -> None:
        """Memoryless (the Policy contract of workbench.algos.base)."""

    def observe(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        """Memoryless."""

    @torch.inference_mode()
    def act(self, obs: np.ndarray, game_ids: np.ndarray) -> np.ndarray:
        q = self.net(torch.from_numpy(obs).float().div_(255))
        q = q.masked_fill(~self.mask[torch.from_numpy(game_ids)], float("-inf"))
        return q.argmax(1).numpy()


def env_only_rate(game: str, n: int, steps: int, backend: str = "auto") -> tuple[float, int]:
    """(agent steps/s, steps) of the evaluator's env work alone: construction, seeded resets, n
    episodes capped at ``steps``, uniform random actions, no policy, no stacking, no epsilon."""
    rng = np.random.default_rng(0)
    t0, env_steps = time.perf_counter(), 0
    vec = AtariVector(game, n, "eval", backend=backend, max_episode_frames=steps * FRAME_SKIP)
    vec.reset(np.arange(n) + 1000)
    while True:
        _, _, te, tr, info = vec.step(rng.integers(0, vec.num_actions, n))
        env_steps += int(info["active"].sum())
        if not (~vec._done).any():
            break
    env_time = time.perf_counter() - t0
    vec.close()
    return env_steps / env_time, env_steps


def evaluate_rate(policy, game: str, n: int, steps: int, backend: str = "auto") -> tuple[float, int]:
    """(agent steps/s, steps) of `evaluate` running ``policy`` on n envs of ``game``."""
    policy.act(np.zeros((n, 4, 84, 84), np.uint8), np.zeros(n, np.int64))  # warm-up
    t0 = time.perf_counter()
    res = evaluate(
        policy, [game], episodes_per_game=n, num_envs=n, max_agent_steps=steps, progress=False,
        backend=backend, reps=1,
    )  # fmt: skip
    eval_steps = int(sum(res["per_game"][game]["lengths"]))
    return eval_steps / (time.perf_counter() - t0), eval_steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--game", default="Pong")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--steps", type=int, default=1000, help="agent steps per episode (the cap)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads (shared CPU: 1)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    game = games.canonical_game(a.game)
    n, steps = a.num_envs, a.steps

    env_sps, env_steps = env_only_rate(game, n, steps, a.backend)
    eval_sps, eval_steps = evaluate_rate(SmallConvPolicy((game,)), game, n, steps, a.backend)
    print(json.dumps({
        "game": game, "num_envs": n, "backend": a.backend, "torch_threads": a.threads,
        "env_only_steps_per_s": round(env_sps, 1), "eval_steps_per_s": round(eval_sps, 1),
        "ratio": round(eval_sps / env_sps, 3), "env_steps": env_steps, "eval_steps": eval_steps,
        "note": "both timings include env construction and the seeded resets",
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()

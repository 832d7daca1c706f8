"""Agent steps/s of the online C51 loop vs the environment alone (same game variant, same process).

Prints JSON with three rates and their ratios to the bare environment:

- ``env``: ``AtariProtocolEnv`` under the data protocol (sticky actions 0.25), random actions;
- ``online_warmup``: ``workbench.online.run_online`` before ``min_replay_history`` (random actions,
  replay adds, episode bookkeeping; no network);
- ``online_training``: the loop at full work: greedy acting (epsilon 0.01) through the Q-network
  at batch 1 and one Adam step on 32 3-step transitions every 4 agent steps (Dopamine's schedule).

    python benchmarks/bench_online.py [--game Breakout] [--mode 12] [--steps 2000] [--model resnet-tiny]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from workbench.envs import AtariProtocolEnv
from workbench.online import OnlineConfig, run_online


def env_rate(game: str, mode: int | None, steps: int, seed: int = 0) -> float:
    env = AtariProtocolEnv(game, "data", mode=mode, seed=seed)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    n = env.action_space.n
    t = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(int(rng.integers(n)))
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t)


def online_rate(game: str, mode: int, steps: int, model: str, training: bool, threads: int) -> float:
    """Agent steps/s of run_online's loop over ``steps`` agent steps (``summary['session']``:
    evaluations left out; the per-episode seeded resets that make resume exact, an ALE ROM
    reload of about 0.3 s each, and the final checkpoint stay in)."""
    args = ({"min_replay_history": 100, "epsilon_decay_period": 1} if training
            else {"min_replay_history": 10**9})
    with tempfile.TemporaryDirectory() as tmp:
        cfg = OnlineConfig(game=game, mode=mode, frames=4 * steps, model=model, output_dir=str(Path(tmp) / "run"),
                           eval_every=4 * 10**9, eval_episodes=1, eval_max_steps=5, capacity=max(2000, steps + 10),
                           checkpoint_every=10**9, cpu_threads=threads, agent_args=args)
        return float(run_online(cfg, progress=False).summary["session"]["steps_per_s"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--game", default="Breakout")
    p.add_argument("--mode", type=int, default=12)
    p.add_argument("--steps", type=int, default=2000, help="agent steps per measurement")
    p.add_argument("--model", default="resnet-tiny")
    p.add_argument("--threads", type=int, default=1, help="torch threads (shared CPU: 1)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    mode = None if a.mode < 0 else a.mode
    env = env_rate(a.game, mode, a.steps)
    warm = online_rate(a.game, a.mode, a.steps, a.model, False, a.threads)
    train = online_rate(a.game, a.mode, a.steps, a.model, True, a.threads)
    print(json.dumps({
        "game": a.game, "mode": mode, "model": a.model, "steps": a.steps, "threads": a.threads,
        "env_steps_per_s": round(env, 1), "online_warmup_steps_per_s": round(warm, 1),
        "online_training_steps_per_s": round(train, 1), "warmup_ratio": round(warm / env, 3),
        "training_ratio": round(train / env, 3),
        "note": "one environment, batch-1 acting, an update every 4 steps (Dopamine's loop, no vectorization); "
                "online rates are the loop's own (evaluations left out) and include the per-episode seeded resets",
    }, indent=1))


if __name__ == "__main__":
    main()

"""Scripted MinAtar behaviour policies against random and constant-action play (prints JSON).

For each of the five MinAtar games, plays ``--episodes`` episodes (seeds 0..N-1: ``env.seed(s)``
then ``env.reset()``; MinAtar's default sticky actions 0.1; at most ``--max-steps`` agent steps)
of: the scripted rule of :mod:`workbench.data.minatar_scripts` played greedily (``scripted``) and
epsilon-greedily (``scripted_eps0.05``: a uniform action of the minimal set with probability
epsilon), uniform random over the minimal set (``random``), and every constant action of the
minimal set (``const_<name>``). Reports each policy's mean return with a 95% percentile bootstrap
CI over episodes, the best constant action, and whether the scripted policies' CIs lie above
those of random and the best constant action.

Usage: ``python benchmarks/bench_minatar_scripts.py [--games asterix,breakout] [--episodes 20]
[--max-steps 1000] [--epsilon 0.05] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from minatar import Environment

from workbench.data.minatar_scripts import RULES

ACTION_NAMES = ["n", "l", "u", "r", "d", "f"]
Policy = Callable[[Any, np.random.Generator], int]


def play(game: str, policy: Policy, seed: int, max_steps: int) -> float:
    """Return of one episode of ``policy`` (given the env and an RNG seeded by ``seed``)."""
    env = Environment(game, sticky_action_prob=0.1)
    env.seed(seed)
    env.reset()
    rng = np.random.default_rng(10_000 + seed)
    total = 0.0
    for _ in range(max_steps):
        reward, terminal = env.act(policy(env, rng))
        total += float(reward)
        if terminal:
            break
    return total


def policies(game: str, epsilon: float) -> dict[str, Policy]:
    minimal = Environment(game).minimal_action_set()
    rule = RULES[game]

    def eps_greedy(env: Any, rng: np.random.Generator) -> int:
        return int(rng.choice(minimal)) if rng.random() < epsilon else rule(env)

    out: dict[str, Policy] = {
        "scripted": lambda env, rng: rule(env),
        f"scripted_eps{epsilon:g}": eps_greedy,
        "random": lambda env, rng: int(rng.choice(minimal)),
    }
    for a in minimal:
        out[f"const_{ACTION_NAMES[a]}"] = constant(a)
    return out


def constant(action: int) -> Policy:
    def policy(env: Any, rng: np.random.Generator) -> int:
        return action

    return policy


def bootstrap_ci(x: np.ndarray, n_boot: int = 5000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap CI of the mean of ``x``."""
    means = x[np.random.default_rng(seed).integers(0, len(x), (n_boot, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--games", default=",".join(RULES))
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--epsilon", type=float, default=0.05)
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()

    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    for game in args.games.split(","):
        tg = time.perf_counter()
        per: dict[str, Any] = {}
        for name, policy in policies(game, args.epsilon).items():
            returns = np.array([play(game, policy, s, args.max_steps) for s in range(args.episodes)])
            lo, hi = bootstrap_ci(returns)
            per[name] = {"mean": float(returns.mean()), "ci95": [lo, hi]}
        consts = {k: v for k, v in per.items() if k.startswith("const_")}
        best_const = max(consts, key=lambda k: consts[k]["mean"])
        scripted = [k for k in per if k.startswith("scripted")]
        results[game] = {
            "policies": per,
            "best_constant": best_const,
            "scripted_ci_above": {k: {"random": per[k]["ci95"][0] > per["random"]["ci95"][1],
                                      "best_constant": per[k]["ci95"][0] > per[best_const]["ci95"][1]}
                                  for k in scripted},
            "wall_s": round(time.perf_counter() - tg, 1),
        }
    doc = {"episodes": args.episodes, "max_steps": args.max_steps, "sticky_action_prob": 0.1,
           "epsilon": args.epsilon, "results": results, "wall_s": round(time.perf_counter() - t0, 1)}
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

"""Reference policies measured under the agents' own evaluation protocol: uniform random and the
best constant action.

A learned policy that scores no better than pressing one button has not shown that it looks at the
screen (on Freeway, UP alone scores well). So every score summary of the workbench carries both
lines, measured with the same evaluator, episodes, seeds, step cap, sticky actions and no-op starts
as the agent: :func:`reference_scores`, and :func:`verdict` to say plainly where an agent is not
above them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from workbench import games as G
from workbench.evaluate import evaluate

__all__ = ["ConstantPolicy", "UniformPolicy", "reference_scores", "summary_lines", "verdict"]


class ConstantPolicy:
    """Plays minimal-set action ``action`` in every game (the evaluator's epsilon still applies)."""

    def __init__(self, action: int) -> None:
        self.action = int(action)

    def act(self, obs: np.ndarray, game_ids: np.ndarray) -> np.ndarray:
        return np.full(len(obs), self.action, np.int64)

    def observe(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        pass

    def reset(self, indices: np.ndarray) -> None:
        pass


class UniformPolicy(ConstantPolicy):
    """Uniform random play: a constant policy evaluated with epsilon 1."""

    def __init__(self) -> None:
        super().__init__(0)


def reference_scores(
    games: Sequence[str], *, episodes: int, max_agent_steps: int, seed: int, num_envs: int = 4,
    sticky_actions: float = 0.0, noop_starts: int = 0, epsilon: float = 0.001, mode: int | None = None,
    difficulty: int | None = None, progress: bool = False,
) -> dict[str, Any]:
    """Random and every constant action of each game, under the evaluator's protocol with these settings.

    Returns ``{game: {"random": {"mean", "scores"}, "constant": {action name: {"mean", "scores"}},
    "constant_best": {"action", "index", "mean", "scores"}}}``; the best constant is the action
    with the highest mean (ties: the lowest index). Episode seeds are the evaluator's, so every
    policy meets the same episodes."""
    names = G.resolve_games(games)
    common = dict(episodes_per_game=episodes, num_envs=min(num_envs, episodes), seed=seed,
                  max_agent_steps=max_agent_steps, sticky_actions=sticky_actions, noop_starts=noop_starts,
                  mode=mode, difficulty=difficulty, progress=progress)
    out: dict[str, Any] = {}
    random = evaluate(UniformPolicy(), list(names), epsilon=1.0, **common)  # type: ignore[arg-type]
    for g in names:
        scores = [float(x) for x in random["per_game"][g]["scores"]]
        out[g] = {"random": {"mean": float(np.mean(scores)), "scores": scores}, "constant": {}}
    for a in range(max(G.num_actions(g) for g in names)):
        playable = [g for g in names if a < G.num_actions(g)]
        res = evaluate(ConstantPolicy(a), playable, epsilon=epsilon, **common)  # type: ignore[arg-type]
        for g in playable:
            scores = [float(x) for x in res["per_game"][g]["scores"]]
            out[g]["constant"][G.action_names(g)[a]] = {"index": a, "mean": float(np.mean(scores)), "scores": scores}
    for g in names:
        best_name, best = max(out[g]["constant"].items(), key=lambda kv: (kv[1]["mean"], -kv[1]["index"]))
        out[g]["constant_best"] = {"action": best_name, **best}
    return out


def summary_lines(references: dict[str, Any]) -> dict[str, Any]:
    """The references as a job's summary shows them: per game, random's mean and the best constant
    action's name and mean."""
    return {g: {"random": ref["random"]["mean"],
                "constant_best": {k: ref["constant_best"][k] for k in ("action", "mean")}}
            for g, ref in references.items()}


def verdict(agent_means: dict[str, float], references: dict[str, Any]) -> dict[str, str]:
    """Per game, one plain sentence: is the agent's mean above random and above the best constant action?"""
    out = {}
    for g, mean in agent_means.items():
        ref = references.get(g)
        if ref is None:
            continue
        rnd, best = ref["random"]["mean"], ref["constant_best"]
        below = []
        if mean <= rnd:
            below.append(f"random ({rnd:.2f})")
        if mean <= best["mean"]:
            below.append(f"the best constant action, {best['action']} ({best['mean']:.2f})")
        out[g] = (f"{mean:.2f}: NOT better than " + " or ".join(below) if below
                  else f"{mean:.2f}: above random ({rnd:.2f}) and the best constant action, "
                       f"{best['action']} ({best['mean']:.2f})")
    return out

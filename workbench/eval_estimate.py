"""How long an evaluation (notebook 05, ``workbench.pipeline.evaluate_run``) will take, measured
before it starts.

The evaluator steps every env slot of every game in lock-step and asks the policy once per step
for all of them (``workbench.evaluate``), so its time is the number of those batched decisions
times the time one takes. :func:`estimate_evaluation` loads the checkpoint, plays a short probe
(:data:`PROBE_STEPS` steps of every slot, nothing written) and times the decisions after the
first (the first carries the environments' start-up); the references (random play and every
constant action, ``workbench.baselines.reference_scores``) are timed with a probe of random play.
The estimate is an upper bound: every episode is counted at the step cap, and an episode that
ends earlier takes less.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workbench import games as G
from workbench.baselines import UniformPolicy
from workbench.config import EvaluateConfig
from workbench.evaluate import evaluate
from workbench.paths import resolve_path
from workbench.run import load_algo

__all__ = ["PROBE_STEPS", "EvalEstimate", "estimate_evaluation"]

PROBE_STEPS = 24
"""Steps of the probe (each a decision for every env slot): enough past the first to time."""


class _Timed:
    """A policy that passes every call on and notes when each ``act`` was asked."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[float] = []

    def act(self, obs: np.ndarray, game_ids: np.ndarray) -> np.ndarray:
        self.calls.append(time.perf_counter())
        return np.asarray(self.inner.act(obs, game_ids))

    def observe(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        self.inner.observe(actions, rewards)

    def reset(self, indices: np.ndarray) -> None:
        self.inner.reset(indices)

    def rate(self) -> float | None:
        """Decisions per second between the second call and the last (the first carries start-up);
        None when the probe's episodes ended too soon to time."""
        if len(self.calls) < 3 or self.calls[-1] <= self.calls[1]:
            return None
        return (len(self.calls) - 2) / (self.calls[-1] - self.calls[1])


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class EvalEstimate:
    """The evaluation's size and its measured speed; ``str()`` is what notebook 05 prints."""

    games: tuple[str, ...]
    episodes: int
    slots: int
    """Env slots per game (``min(num_envs, episodes)``)."""
    max_steps: int
    decisions_per_s: float | None
    """Batched decisions (one per step of every slot of every game) per second, measured (None: the
    probe's episodes ended too soon to time)."""
    references: int
    """Reference policies evaluated after the checkpoint (random + each constant action); 0 without."""
    reference_decisions_per_s: float | None

    @property
    def decisions(self) -> int:
        """Batched decisions of the checkpoint's evaluation at most (every episode at the cap)."""
        return math.ceil(self.episodes / self.slots) * self.max_steps

    @property
    def agent_steps(self) -> int:
        return len(self.games) * self.episodes * self.max_steps

    @property
    def seconds(self) -> float | None:
        """At most this long: the checkpoint's evaluation and the references' (None: not timed)."""
        if not self.decisions_per_s:
            return None
        refs = self.references * self.decisions / self.reference_decisions_per_s if self.reference_decisions_per_s \
            else 0.0
        return self.decisions / self.decisions_per_s + refs

    def __str__(self) -> str:
        rows = len(self.games) * self.slots
        text = (f"Evaluation: {len(self.games)} game{'s' if len(self.games) != 1 else ''} ({', '.join(self.games)}) x "
                f"{self.episodes} episodes capped at {self.max_steps:,} agent steps: at most "
                f"{self.agent_steps:,} agent steps, {self.decisions:,} batched decisions of {rows} env slots. ")
        if not self.decisions_per_s or self.seconds is None:
            return text + "The probe's episodes ended too soon to time the decisions."
        text += (f"Measured here: {self.decisions_per_s:.1f} decisions/s ({self.decisions_per_s * rows:,.0f} agent "
                 f"steps/s), so at most about {_duration(self.decisions / self.decisions_per_s)}")
        if self.references and self.reference_decisions_per_s:
            text += (f"; then the references ({self.references} policies: random play and every constant action) at "
                     f"{self.reference_decisions_per_s:.1f} decisions/s, at most about "
                     f"{_duration(self.references * self.decisions / self.reference_decisions_per_s)}")
        return text + (f". In all at most about {_duration(self.seconds)} (episodes that end before the cap take less; "
                       "max_steps and episodes make it shorter).")


def estimate_evaluation(config: EvaluateConfig, *, probe_steps: int = PROBE_STEPS) -> EvalEstimate:
    """Time ``config``'s evaluation before it runs: load the checkpoint, play ``probe_steps`` steps of
    every env slot under the same protocol (nothing is written), and the same with random play for
    the references. Games that the checkpoint has no head for stop here, as they would stop
    ``evaluate_run``."""
    algo, run, _ = load_algo(resolve_path(config.checkpoint), device=config.device)
    trained = run.games
    games = G.resolve_games(config.games) if config.games else tuple(run.resolved.get("eval_games") or trained)
    unknown = [g for g in games if g not in trained]
    if unknown:
        raise ValueError(f"games {unknown} have no head in this checkpoint; it was trained on {list(trained)} "
                         "(fine-tune it on a new game first)")
    slots = min(config.num_envs, config.episodes)
    common: dict[str, Any] = dict(
        episodes_per_game=slots, num_envs=slots, seed=config.seed, max_agent_steps=probe_steps,
        mode=None if config.mode < 0 else config.mode, difficulty=None if config.difficulty < 0 else config.difficulty,
        progress=False, sticky_actions=config.sticky_actions, noop_starts=config.noop_starts, reps=1)
    timed = _Timed(algo.policy(config.eval_options(trained)))
    algo.model.eval()
    with torch.no_grad():
        evaluate(timed, list(games), game_ids=[trained.index(g) for g in games], epsilon=config.epsilon, **common)
    ref_rate = None
    references = 0
    if config.references:
        random_play = _Timed(UniformPolicy())
        evaluate(random_play, list(games), epsilon=1.0, **common)
        ref_rate = random_play.rate()
        references = 1 + max(G.num_actions(g) for g in games)
    return EvalEstimate(games=tuple(games), episodes=config.episodes, slots=slots, max_steps=config.max_steps,
                        decisions_per_s=timed.rate(), references=references, reference_decisions_per_s=ref_rate)

"""Evaluation beyond the papers (opt-in): sticky actions and no-op starts, recorded and flagged;
the paper preset's 16 episodes per game; per-game beam widths (JOWA Table 16)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from workbench.config import EvaluateConfig, PretrainConfig, parse_beam_width
from workbench.evaluate import evaluate


class AlternatingPolicy:
    """Moves RIGHT, LEFT, RIGHT, ... (so a repeated action is visible) and logs what it sees."""

    def __init__(self) -> None:
        self.t = 0
        self.seen: dict[int, list[str]] = {0: [], 1: []}

    def reset(self, indices) -> None: ...

    def observe(self, actions, rewards) -> None: ...

    def act(self, obs, game_ids):
        for s in range(len(obs)):
            self.seen[s].append(hashlib.sha1(obs[s].tobytes()).hexdigest())
        self.t += 1
        return np.full(len(obs), 2 + self.t % 2, np.int64)


def _play(**kw):
    policy = AlternatingPolicy()
    out = evaluate(policy, "Pong", episodes_per_game=2, num_envs=2, epsilon=0.0, max_agent_steps=60,
                   progress=False, backend="sync", seed=5, **kw)
    return out, policy.seen


@pytest.mark.slow
def test_papers_protocol_by_default_and_opt_in_variations_are_recorded():
    base, seen = _play()
    assert seen[0] == seen[1]  # no sticky actions, no no-ops: a fixed policy replays the same episode
    assert base["sticky_actions"] == 0.0 and base["noop_starts"] == 0
    for kw in ({"sticky_actions": 0.25}, {"noop_starts": 30}):
        out, seen = _play(**kw)
        assert seen[0] != seen[1], kw  # the two episodes now differ
        assert out["comparable_to_papers"] is False and "the papers" in out["note"]
        key, value = next(iter(kw.items()))
        assert out[key] == value
    with pytest.raises(ValueError, match="sticky_actions must be in"):
        _play(sticky_actions=1.0)
    with pytest.raises(ValueError, match="noop_starts must be >= 0"):
        _play(noop_starts=-1)


@pytest.mark.slow  # seconds: the fast loop keeps under a minute
def test_noop_starts_play_noops_first():
    """The first k executed actions are NOOPs: with a NOOP policy the episode is unchanged."""

    class Noop(AlternatingPolicy):
        def act(self, obs, game_ids):
            super().act(obs, game_ids)
            return np.zeros(len(obs), np.int64)

    runs = []
    for noops in (0, 30):
        policy = Noop()
        evaluate(policy, "Pong", episodes_per_game=2, num_envs=2, epsilon=0.0, max_agent_steps=40, progress=False,
                 backend="sync", seed=5, noop_starts=noops)
        runs.append(policy.seen)
    assert runs[0] == runs[1]


def test_presets_and_settings_of_evaluation():
    assert PretrainConfig(model="resnet101", preset="paper").effective_eval_episodes == 16  # both papers
    assert PretrainConfig(model="jowa-150m", preset="paper").effective_eval_episodes == 16
    assert PretrainConfig().effective_eval_episodes == 2
    assert PretrainConfig(eval_episodes=5).resolve()["eval_episodes"] == 5
    with pytest.raises(ValueError, match="sticky actions must be a probability"):
        PretrainConfig(eval_sticky_actions=1.5)
    with pytest.raises(ValueError, match="no-op starts must be >= 0"):
        EvaluateConfig(noop_starts=-2)


def test_per_game_beam_widths():
    assert parse_beam_width("3", ("Pong", "Breakout")) == 3
    assert parse_beam_width("Pong:3,Breakout:2", ("Breakout", "Pong")) == (2, 3)  # in the run's game order
    assert parse_beam_width("4, pong:1", ("Pong", "Breakout", "Seaquest")) == (1, 4, 4)
    assert PretrainConfig(model="jowa-tiny", beam_width="Breakout:3").eval_options.beam_width == (2, 3)
    assert EvaluateConfig(beam_width="Pong:5").eval_options(("Pong",)).beam_width == (5,)
    with pytest.raises(ValueError, match="does not have"):
        parse_beam_width("Seaquest:3", ("Pong",))
    with pytest.raises(ValueError, match="is not K or Game:K"):
        parse_beam_width("Pong:x", ("Pong",))
    with pytest.raises(ValueError, match=">= 1"):
        PretrainConfig(beam_width="0")

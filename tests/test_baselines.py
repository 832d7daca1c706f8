"""Random and constant-action references: known answers of MinAtar Freeway and the evaluator's own protocol."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.baselines import ConstantPolicy, UniformPolicy, reference_scores, verdict
from workbench.evaluate import evaluate


@pytest.fixture(scope="module")
def freeway():
    return reference_scores(["MinAtar-Freeway"], episodes=4, max_agent_steps=300, seed=5, num_envs=2)


def test_freeway_scores_only_by_going_up(freeway):
    ref = freeway["MinAtar-Freeway"]
    # The chicken scores only when it crosses: holding NOOP or DOWN (up to the evaluator's
    # 1-in-1000 random action) never crosses in 300 steps; holding UP crosses several times.
    assert set(ref["constant"]) == {"NOOP", "UP", "DOWN"}
    assert ref["constant"]["NOOP"]["mean"] == 0.0 and ref["constant"]["DOWN"]["mean"] == 0.0
    assert ref["constant"]["UP"]["mean"] >= 2.0
    assert ref["constant_best"]["action"] == "UP" and ref["constant_best"]["index"] == 1
    assert len(ref["constant_best"]["scores"]) == 4


def test_references_are_the_evaluator_s_episodes(freeway):
    common = dict(episodes_per_game=4, num_envs=2, seed=5, max_agent_steps=300, progress=False)
    up = evaluate(ConstantPolicy(1), ["MinAtar-Freeway"], epsilon=0.001, **common)
    rnd = evaluate(UniformPolicy(), ["MinAtar-Freeway"], epsilon=1.0, **common)
    assert freeway["MinAtar-Freeway"]["constant"]["UP"]["scores"] == up["per_game"]["MinAtar-Freeway"]["scores"]
    assert freeway["MinAtar-Freeway"]["random"]["scores"] == rnd["per_game"]["MinAtar-Freeway"]["scores"]
    random_scores = rnd["per_game"]["MinAtar-Freeway"]["scores"]
    assert freeway["MinAtar-Freeway"]["random"]["mean"] == pytest.approx(np.mean(random_scores))


def test_verdict_says_plainly_what_the_agent_does_not_beat():
    refs = {"G": {"random": {"mean": 1.0}, "constant_best": {"action": "UP", "mean": 5.0}}}
    assert verdict({"G": 3.0}, refs)["G"].startswith("3.00: NOT better than the best constant action, UP (5.00)")
    assert verdict({"G": 0.5}, refs)["G"] == ("0.50: NOT better than random (1.00) or the best constant action, "
                                             "UP (5.00)")
    assert verdict({"G": 5.0}, refs)["G"].startswith("5.00: NOT better")  # a tie is not a win
    assert "above random (1.00) and the best constant action" in verdict({"G": 6.0}, refs)["G"]


def test_the_behaviour_replayed_at_epsilon_one_is_the_evaluator_s_random_policy():
    """Same episode seeds, same exploration stream and env: at epsilon 1 the scripted rule is never
    consulted, so the replay must equal the evaluator's uniform policy episode for episode."""
    from workbench.study import behaviour_returns

    replay = behaviour_returns("MinAtar-Asterix", 1.0, episodes=3, cap=200, seed=11)
    rnd = evaluate(UniformPolicy(), ["MinAtar-Asterix"], epsilon=1.0, episodes_per_game=3, num_envs=3, seed=11,
                   max_agent_steps=200, progress=False)
    assert replay == rnd["per_game"]["MinAtar-Asterix"]["scores"]
    greedy = behaviour_returns("MinAtar-Asterix", 0.0, episodes=3, cap=200, seed=11)
    assert greedy == behaviour_returns("MinAtar-Asterix", 0.0, episodes=3, cap=200, seed=11)
    assert np.mean(greedy) > np.mean(replay)  # the scripted rule plays better than chance

"""Evaluator: equals a hand-written rollout with the same seeds; seeds, epsilon, cap, batching."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from workbench import envs, games
from workbench.evaluate import episode_seed, evaluate


class BrightnessPolicy:
    """Deterministic: action from the newest frame's pixel sum; counts calls."""

    def __init__(self):
        self.calls, self.shapes, self.resets = 0, [], []

    def act(self, obs, game_ids):
        self.calls += 1
        self.shapes.append((obs.shape, game_ids.tolist()))
        return (obs[:, -1].reshape(len(obs), -1).sum(1) // 7 % 3).astype(np.int64)

    def reset(self, indices):
        self.resets.append(sorted(np.asarray(indices).tolist()))

    def observe(self, actions, rewards):
        pass


def manual_rollout(game, seed, epsilon, max_steps):
    """Brute-force reference: one env, explicit 4-frame list, the episode's own epsilon stream."""
    env = envs.AtariProtocolEnv(game, "eval", max_episode_frames=4 * max_steps)
    frame, _ = env.reset(seed=seed)
    stack = [np.zeros((84, 84), np.uint8)] * 3 + [frame]
    rng = np.random.default_rng(seed)
    total, steps = 0.0, 0
    while True:
        greedy = int(np.asarray(stack[-1], np.int64).sum() // 7 % 3)
        a = int(rng.integers(games.num_actions(game))) if rng.random() < epsilon else greedy
        frame, r, term, trunc, _ = env.step(a)
        total, steps = total + r, steps + 1
        stack = stack[1:] + [frame]
        if term or trunc:
            return total, steps, trunc


@pytest.mark.slow
def test_scores_equal_manual_rollouts_with_same_seeds():
    pol = BrightnessPolicy()
    res = evaluate(
        pol, ["Pong", "Breakout"], game_ids=[3, 5], episodes_per_game=3, num_envs=2, seed=7,
        epsilon=0.3, max_agent_steps=60, progress=False, backend="sync", reps=5,
    )  # fmt: skip
    for g in ("Pong", "Breakout"):
        seeds = res["per_game"][g]["seeds"]
        assert seeds == [episode_seed(7, g, k) for k in range(3)]
        for k, s in enumerate(seeds):
            score, length, trunc = manual_rollout(g, s, 0.3, 60)
            assert res["per_game"][g]["scores"][k] == score
            assert res["per_game"][g]["lengths"][k] == length
            assert res["per_game"][g]["truncated"][k] == trunc
    # one act call per step for all 4 slots of both games, with the run's game ids
    assert {tuple(x[1]) for x in pol.shapes} == {(3, 3, 5, 5)}
    assert {x[0] for x in pol.shapes} == {(4, 4, 84, 84)}
    # reset(indices) for each episode start: 2 slots per game at first, then 1 more episode each
    assert sum(len(r) for r in pol.resets) == 6


def test_distinct_seeds():
    all_seeds = [episode_seed(0, g, k) for g in games.GAME_SETS["jowa_15"] for k in range(16)]
    assert len(set(all_seeds)) == len(all_seeds)
    assert episode_seed(0, "Pong", 0) != episode_seed(1, "Pong", 0)
    assert episode_seed(0, "pong", 3) == episode_seed(0, "Pong", 3)


def test_epsilon_applied_and_cap(monkeypatch):
    taken = []
    real_step = envs.AtariVector.step

    def spy(self, actions):
        taken.append(np.asarray(actions)[~self._done].copy())
        return real_step(self, actions)

    monkeypatch.setattr(envs.AtariVector, "step", spy)

    class Noop:
        def reset(self, indices):
            pass

        def observe(self, actions, rewards):
            pass

        def act(self, obs, game_ids):
            return np.zeros(len(obs), np.int64)

    kw = dict(episodes_per_game=2, num_envs=2, max_agent_steps=50, progress=False, backend="sync")
    res = evaluate(Noop(), "Pong", epsilon=0.0, reps=5, **kw)
    assert np.concatenate(taken).max() == 0  # greedy only
    assert res["per_game"]["Pong"]["lengths"] == [50, 50]  # the cap, in agent steps
    assert res["per_game"]["Pong"]["truncated"] == [True, True]
    taken.clear()
    evaluate(Noop(), "Pong", epsilon=0.5, reps=5, **kw)
    acts = np.concatenate(taken)
    # P(non-greedy) = 0.5 * 5/6 for Pong's 6 actions; 200 draws
    assert 0.25 < (acts != 0).mean() < 0.6 and acts.max() <= 5
    # the protocol default: 27,000 agent steps = 108,000 frames
    assert inspect.signature(evaluate).parameters["max_agent_steps"].default == 27_000
    assert envs.MAX_AGENT_STEPS * envs.FRAME_SKIP == 108_000


def test_output_file_normalization_and_errors(tmp_path):
    class Noop:
        def reset(self, indices):
            pass

        def observe(self, actions, rewards):
            pass

        def act(self, obs, game_ids):
            return np.zeros(len(obs), np.int64)

    out = tmp_path / "scores.json"
    res = evaluate(
        Noop(), "Pong", episodes_per_game=1, num_envs=1, max_agent_steps=30, progress=False,
        out_path=str(out), reps=5,
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["per_game"] == res["per_game"]
    mean = res["per_game"]["Pong"]["mean"]
    assert res["human_normalized"]["Pong"] == pytest.approx((mean + 20.7) / (14.6 + 20.7))
    assert res["aggregates"]["iqm"] == pytest.approx(res["human_normalized"]["Pong"])

    class Bad:
        def reset(self, indices):
            pass

        def observe(self, actions, rewards):
            pass

        def act(self, obs, game_ids):
            return np.full(len(obs), 6, np.int64)

    with pytest.raises(ValueError, match=r"valid minimal-set indices are 0\.\.5"):
        evaluate(Bad(), "Pong", episodes_per_game=1, num_envs=1, progress=False, backend="sync")
    with pytest.raises(ValueError, match="max_agent_steps"):
        evaluate(Noop(), "Pong", max_agent_steps=30_000, progress=False)


class SpyPolicy(BrightnessPolicy):
    """Logs every call in order: what it planned, and what ``observe`` reported."""

    def __init__(self):
        super().__init__()
        self.events: list[tuple] = []

    def act(self, obs, game_ids):
        planned = super().act(obs, game_ids)
        self.events.append(("act", planned.copy()))
        return planned

    def observe(self, actions, rewards):
        self.events.append(("observe", np.asarray(actions).copy(), np.asarray(rewards).copy()))

    def reset(self, indices):
        super().reset(indices)
        self.events.append(("reset", sorted(np.asarray(indices).tolist())))


def test_policy_observes_the_executed_actions_and_raw_rewards(monkeypatch):
    """``observe`` gets, after every step, the actions the envs executed (epsilon-replaced) and
    the raw rewards, before any slot restarts. Mutation caught: the evaluator not calling
    ``observe``, or passing the greedy (planned) actions instead of the executed ones."""
    taken = []
    real_step = envs.AtariVector.step

    def spy_step(self, actions):
        taken.append(np.asarray(actions).copy())
        return real_step(self, actions)

    monkeypatch.setattr(envs.AtariVector, "step", spy_step)
    pol = SpyPolicy()
    steps = 150  # Pong scores its first points within 150 steps; no episode ends before the cap
    res = evaluate(pol, "Pong", episodes_per_game=2, num_envs=2, seed=3, epsilon=0.5, max_agent_steps=steps,
                   progress=False, backend="sync", reps=5)
    kinds = [e[0] for e in pol.events]
    assert kinds[0] == "reset" and kinds[1:] == ["act", "observe"] * steps
    acts = [e for e in pol.events if e[0] == "act"]
    obs = [e for e in pol.events if e[0] == "observe"]
    for (_, executed, _), sent in zip(obs, taken):
        np.testing.assert_array_equal(executed, sent)  # exactly what the env executed
    planned, executed = np.stack([a[1] for a in acts]), np.stack([o[1] for o in obs])
    assert (planned != executed).mean() > 0.2  # epsilon 0.5 changed many (P = 0.5 * 5/6)
    rewards = np.stack([o[2] for o in obs])
    assert (rewards != 0).any() and set(np.unique(rewards)) <= {-1.0, 0.0, 1.0}
    assert rewards.sum(0).tolist() == res["per_game"]["Pong"]["scores"]

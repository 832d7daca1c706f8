"""The scripted MinAtar behaviour policies (workbench.data.minatar_scripts)."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.data.minatar_scripts import LEFT, NOOP, RIGHT, RULES

minatar = pytest.importorskip("minatar")


def _play(game: str, policy, seed: int, steps: int) -> tuple[float, bool]:
    """Return and whether the episode ended, for ``steps`` agent steps of ``policy(env)``."""
    env = minatar.Environment(game)
    env.seed(seed)
    env.reset()
    total = 0.0
    for _ in range(steps):
        reward, terminal = env.act(policy(env))
        total += float(reward)
        if terminal:
            return total, True
    return total, False


@pytest.mark.parametrize("game", sorted(RULES))
def test_rule_returns_a_minimal_action_on_random_play(game):
    env = minatar.Environment(game)
    env.seed(0)
    env.reset()
    minimal = env.minimal_action_set()
    rng = np.random.default_rng(0)
    for _ in range(300):
        action = RULES[game](env)
        assert isinstance(action, int) and action in minimal
        _, terminal = env.act(int(rng.choice(minimal)))  # random play visits varied states
        if terminal:
            env.reset()


@pytest.mark.parametrize(("ball_dir", "expected"), [(3, LEFT), (2, RIGHT)])
def test_breakout_moves_to_where_the_ball_lands(ball_dir, expected):
    # Ball two rows above the paddle (column 4), heading down-left (3) or down-right (2): it reaches
    # row 8 two columns over and lands three over, so the paddle must start moving that way now.
    env = minatar.Environment("breakout")
    g = env.env
    g.pos, g.ball_x, g.ball_y, g.ball_dir, g.strike = 4, 4, 6, ball_dir, False
    g.last_x, g.last_y = (5 if ball_dir == 3 else 3), 5
    assert RULES["breakout"](env) == expected
    g.ball_x, g.ball_y = 4, 8  # directly above the paddle: staying or following both catch it
    assert RULES["breakout"](env) in (NOOP, expected)


def test_breakout_rule_outlives_and_outscores_constant_actions():
    scripted, ended = _play("breakout", RULES["breakout"], seed=0, steps=300)
    assert not ended
    best_constant = max(_play("breakout", lambda env, a=a: a, seed=0, steps=300)[0] for a in (NOOP, LEFT, RIGHT))
    assert scripted > best_constant

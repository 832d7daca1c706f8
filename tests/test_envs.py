"""Environments: protocol semantics checked against ale-py / gymnasium's own implementations."""

from __future__ import annotations

import ale_py
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.wrappers import AtariPreprocessing

from workbench import envs, games
from workbench.envs import AtariProtocolEnv, AtariVector, FrameStacker, make_env

gym.register_envs(ale_py)


def rollout(game, protocol, seed, actions, **kw):
    env = make_env(game, protocol, **kw)
    obs, _ = env.reset(seed=seed)
    frames, rewards = [obs], []
    for a in actions:
        obs, r, term, trunc, _ = env.step(int(a))
        frames.append(obs)
        rewards.append(r)
        if term or trunc:
            break
    return np.stack(frames), np.array(rewards)


def test_make_env_spaces_and_render():
    env = make_env("MsPacman", render_rgb=True)
    obs, info = env.reset(seed=0)
    assert obs.shape == (84, 84) and obs.dtype == np.uint8
    assert env.action_space.n == games.num_actions("MsPacman") == 9
    assert env.render().shape == (210, 160, 3)
    assert make_env("Pong").render() is None


def test_matches_gymnasium_atari_preprocessing():
    """Eval protocol == ale-py AtariEnv(frameskip=1, p=0) + gymnasium's AtariPreprocessing (noop 0)."""
    ref = AtariPreprocessing(
        gym.make("ALE/SpaceInvaders-v5", frameskip=1, repeat_action_probability=0.0),
        noop_max=0, frame_skip=4, screen_size=84, terminal_on_life_loss=False, grayscale_obs=True,
    )  # fmt: skip
    env = make_env("space_invaders", "eval")
    o_ref, _ = ref.reset(seed=0)
    o, _ = env.reset(seed=0)
    np.testing.assert_array_equal(o, o_ref)
    rng = np.random.default_rng(0)
    for _ in range(150):
        a = int(rng.integers(env.action_space.n))
        o_ref, r_ref, te_ref, tr_ref, _ = ref.step(a)
        o, r, te, tr, _ = env.step(a)
        assert (r, te, tr) == (r_ref, te_ref, tr_ref)
        if te:
            break  # the two differ on which buffer a mid-skip game over pools; never used
        np.testing.assert_array_equal(o, o_ref)


@pytest.mark.slow
def test_eval_deterministic_data_sticky():
    acts = np.random.default_rng(0).integers(0, 6, 120)
    e1, _ = rollout("Pong", "eval", 1, acts)
    e1b, _ = rollout("Pong", "eval", 1, acts)
    e2, _ = rollout("Pong", "eval", 2, acts)
    np.testing.assert_array_equal(e1, e1b)  # same seed + actions -> same frames
    # without sticky actions ALE is deterministic: the seed alone changes nothing
    np.testing.assert_array_equal(e1, e2)
    d1, _ = rollout("Pong", "data", 1, acts)
    d1b, _ = rollout("Pong", "data", 1, acts)
    d2, _ = rollout("Pong", "data", 2, acts)
    np.testing.assert_array_equal(d1, d1b)  # sticky RNG is seeded
    assert not np.array_equal(d1, d2)  # different seed -> different sticky repeats
    assert not np.array_equal(d1, e1)  # data differs from eval under the same actions


def test_data_protocol_sticky_probability():
    env = AtariProtocolEnv("Pong", "data")
    assert env._ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
    assert AtariProtocolEnv("Pong", "eval")._ale.getFloat("repeat_action_probability") == 0.0


def test_default_cap_is_108000_frames_27000_steps():
    assert envs.MAX_EPISODE_FRAMES == 108_000 and envs.MAX_AGENT_STEPS == 27_000
    env = AtariProtocolEnv("Pong")
    assert env.max_episode_frames == 108_000
    env.reset(seed=0)
    # fast-forward the frame counter to 2 agent steps before the default cap
    env._frames = 108_000 - 2 * envs.FRAME_SKIP
    assert env.step(0)[3] is False
    _, _, term, trunc, info = env.step(0)
    assert (term, trunc, info["episode_frame_number"]) == (False, True, 108_000)
    with pytest.raises(RuntimeError):
        env.step(0)


@pytest.mark.parametrize("backend", ["sync", "native"])
def test_cap_counts_frames(backend):
    vec = AtariVector("Pong", 2, max_episode_frames=400, backend=backend)
    vec.reset([0, 1])
    for step in range(1, 101):
        _, _, term, trunc, _ = vec.step(np.zeros(2, np.int64))
        if step < 100:
            assert not trunc.any()
    assert trunc.all() and not term.any()  # 400 frames = 100 agent steps, not 400


@pytest.mark.slow
def test_variants_change_the_game_and_invalid_ones_list_choices():
    for game, mode in [("Breakout", 12), ("Hero", 1), ("Freeway", 1)]:
        assert envs.PAPER_VARIANTS[game]["mode"] == mode and mode in envs.available_modes(game)
        acts = [1] * 30
        f0, _ = rollout(game, "eval", 0, acts)
        f1, _ = rollout(game, "eval", 0, acts, mode=mode)
        assert not np.array_equal(f0, f1), game
    with pytest.raises(ValueError, match=r"valid modes are \[0, 4, 8, 12"):
        make_env("Breakout", mode=3)
    with pytest.raises(ValueError, match=r"valid difficulties are \[0, 1\]"):
        make_env("Breakout", difficulty=5)
    with pytest.raises(ValueError, match="valid protocols"):
        make_env("Breakout", "train")
    with pytest.raises(ValueError, match="did you mean"):
        make_env("Breakot")


@pytest.mark.slow
def test_native_vector_env_matches_ours_and_partial_reset():
    """ale-py's AtariVectorEnv gives our frames on non-terminal steps, also after seeded resets."""
    rng = np.random.default_rng(0)
    nat = AtariVector("Breakout", 2, backend="native")
    ours = AtariVector("Breakout", 2, backend="sync")
    np.testing.assert_array_equal(nat.reset([3, 4]), ours.reset([3, 4]))
    resets = 0
    for _ in range(250):
        a = rng.integers(0, 4, 2)
        o1, r1, te1, tr1, _ = nat.step(a)
        o2, r2, te2, tr2, _ = ours.step(a)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(te1, te2)
        live = ~(te1 | tr1)
        np.testing.assert_array_equal(o1[live], o2[live])
        done = np.flatnonzero(te1 | tr1)
        if done.size:
            resets += 1
            seeds = 100 + done
            np.testing.assert_array_equal(nat.reset_envs(done, seeds), ours.reset_envs(done, seeds))
    assert resets >= 1


def test_vector_equals_single_env_rollouts_and_idles_finished_envs():
    vec = AtariVector("Breakout", 3, backend="sync", max_episode_frames=40)
    obs = vec.reset([5, 6, 7])
    single = [rollout("Breakout", "eval", s, [1, 2, 3, 1] * 3) for s in (5, 6, 7)]
    frames = [obs]
    for a in [1, 2, 3, 1] * 3:
        obs, _, _, trunc, info = vec.step(np.full(3, a))
        frames.append(obs)
    frames = np.stack(frames)
    for i in range(3):
        np.testing.assert_array_equal(frames[:11, i], single[i][0][:11])  # cap: 10 steps
        assert (frames[11:, i] == frames[10, i]).all()  # finished env idles
    assert not info["active"].any()
    vec.reset_envs([0], [1])
    with pytest.raises(ValueError, match=r"0\.\.3"):
        vec.step(np.array([4, 0, 0]))


def test_frame_stacker():
    fs = FrameStacker(2)
    f = np.arange(2 * 84 * 84, dtype=np.uint8).reshape(2, 84, 84)
    fs.reset([0, 1], f)
    assert (fs.stacks[:, :3] == 0).all() and (fs.stacks[:, 3] == f).all()
    fs.push(f + 1)
    fs.push(f + 2)
    expect = np.stack([np.zeros((84, 84), np.uint8), f[1], f[1] + 1, f[1] + 2])
    np.testing.assert_array_equal(fs.stacks[1], expect)
    fs.reset([1], f[:1] + 9)
    assert (fs.stacks[1, :3] == 0).all() and (fs.stacks[1, 3] == f[0] + 9).all()
    np.testing.assert_array_equal(fs.stacks[0, 1:], np.stack([f[0], f[0] + 1, f[0] + 2]))
    with pytest.raises(ValueError, match="shape"):
        fs.push(f[:1])

"""MinAtar as a second suite: registry against the package, packed planes, envs, recorder -> store
-> sampler, and the models' unpacking, each checked against the ``minatar`` package itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from minatar import Environment

from workbench import games
from workbench.data.build import build_store
from workbench.data.record import record
from workbench.data.sampler import TransitionSampler
from workbench.data.store import ReplayStore
from workbench.envs import FrameStacker, make_env, make_vector
from workbench.geometry import ATARI, MINATAR, STACK
from workbench.minatar_envs import MinAtarProtocolEnv, pack_state
from workbench.models.qnet import build_qnet


@pytest.mark.parametrize("game", games.MINATAR_GAMES)
def test_action_sets_match_the_package(game):
    env = Environment(games.minatar_env_name(game))
    names = [env.env.action_map[i] for i in env.minimal_action_set()]
    ale_names = {"n": "NOOP", "l": "LEFT", "u": "UP", "r": "RIGHT", "d": "DOWN", "f": "FIRE"}
    assert games.action_names(game) == tuple(ale_names[n] for n in names)
    assert env.state_shape()[:2] == list(MINATAR.plane_shape) and env.state_shape()[2] <= MINATAR.planes


def test_names_select_the_suite():
    assert games.canonical_game("minatar_space_invaders") == "MinAtar-SpaceInvaders"
    assert games.canonical_game("breakout") == "Breakout"  # Atari keeps its names
    assert games.geometry_of("MinAtar-Breakout") is MINATAR and games.geometry_of("Pong") is ATARI
    with pytest.raises(ValueError, match="mix suites"):
        games.resolve_games("Pong,MinAtar-Breakout")
    with pytest.raises(ValueError, match="not an Atari ROM"):
        games.ale_rom_id("MinAtar-Breakout")
    assert games.resolve_games("minatar_5") == games.MINATAR_GAMES


def test_pack_state_puts_channel_c_in_rows_10c():
    rng = np.random.default_rng(0)
    state = rng.random((10, 10, 7)) < 0.3
    frame = pack_state(state)
    assert frame.shape == MINATAR.frame_shape and frame.dtype == np.uint8
    for c in range(7):
        np.testing.assert_array_equal(frame[10 * c : 10 * c + 10] == 255, state[:, :, c])
    assert not frame[70:].any() and set(np.unique(frame)) <= {0, 255}
    # the models' unpacking of a stack is the package's channel layout, frame by frame
    stack = torch.from_numpy(np.stack([frame] * STACK)[None])
    x = MINATAR.unpack(stack)
    assert x.shape == (1, STACK * MINATAR.planes, 10, 10)
    for c in range(7):
        np.testing.assert_array_equal(x[0, 3 * MINATAR.planes + c].numpy() == 255, state[:, :, c])


def _play(env, seed, actions):
    obs, _ = env.reset(seed=seed)
    out, rewards = [obs], []
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        out.append(obs)
        rewards.append(r)
        if term or trunc:
            break
    return out, rewards


def test_env_equals_the_package_step_for_step():
    game, seed = "MinAtar-Asterix", 3
    acts = np.random.default_rng(1).integers(0, games.num_actions(game), 200)
    frames, rewards = _play(MinAtarProtocolEnv(game, "data"), seed, acts)
    ref = Environment("asterix", sticky_action_prob=0.1)
    ref.seed(seed)
    ref.reset()
    minimal = ref.minimal_action_set()
    assert np.array_equal(frames[0], pack_state(ref.state()))
    for t, a in enumerate(acts[: len(rewards)]):
        r, _ = ref.act(minimal[a])
        assert r == rewards[t] and np.array_equal(frames[t + 1], pack_state(ref.state())), t


def test_seeded_envs_repeat_and_vector_equals_single():
    game = "MinAtar-Breakout"
    acts = np.random.default_rng(2).integers(0, 3, 100)
    a, _ = _play(make_env(game, "eval"), 7, acts)
    b, _ = _play(make_env(game, "eval"), 7, acts)
    c, _ = _play(make_env(game, "eval"), 8, acts)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))
    vec = make_vector(game, 2, "eval", max_agent_steps=50)
    obs = vec.reset([7, 8])
    assert np.array_equal(obs[0], a[0]) and np.array_equal(obs[1], c[0])
    steps = 0
    for t in range(60):
        obs, _, term, trunc, info = vec.step(np.array([acts[t], acts[t]]))
        if info["active"][0]:
            steps += 1
            if t + 1 < len(a):
                assert np.array_equal(obs[0], a[t + 1])
        if term[0] or trunc[0]:
            break
    assert steps <= 50  # the cap truncates
    with pytest.raises(ValueError, match="no game modes"):
        make_env(game, mode=1)


def test_recorded_minatar_data_round_trips_through_store_and_sampler(tmp_path):
    game = "MinAtar-Freeway"
    root = record(game, 600, tmp_path / "dqn", seed=4, capacity=400, progress=False)
    assert root.is_dir()
    store_dir = build_store(tmp_path / "dqn", tmp_path / "store", [game], progress=False)
    store = ReplayStore(store_dir)
    gd = store.game(game)
    assert gd.frames.shape[1:] == MINATAR.frame_shape
    sampler = TransitionSampler(store, [game], batch_size=16, seed=0, n_step=1)
    batch = sampler.sample(0)
    assert batch["obs"].shape == (16, STACK, *MINATAR.frame_shape)
    # every sampled stack is four consecutive stored frames ending at its start row
    gid, rows = sampler.draw_rows(0)
    for j, p in enumerate(rows):
        np.testing.assert_array_equal(batch["obs"][j].numpy(), np.asarray(gd.frames[p - 3 : p + 1]))
        np.testing.assert_array_equal(batch["next_obs"][j, -1].numpy(), np.asarray(gd.frames[p + 1]))
    # frames are packed planes: Freeway's chicken (channel 0) is in every real frame
    real = np.asarray(gd.frames)[np.asarray(gd.frames).any(axis=(1, 2))]
    assert (real[:, 0:10] == 255).any(axis=(1, 2)).all()
    sampler.close()


@pytest.mark.parametrize("preset", ["minatar-cnn", "resnet-tiny", "impala-tiny"])
def test_models_build_for_minatar_frames(preset):
    net = build_qnet(preset, ["MinAtar-Breakout", "MinAtar-Seaquest"])
    obs = torch.zeros(2, STACK, *MINATAR.frame_shape, dtype=torch.uint8)
    out = net(obs, torch.tensor([0, 1]))
    assert out.shape == (2, games.MAX_ACTIONS, 51)
    assert net.valid_mask(torch.tensor([0, 1])).sum(1).tolist() == [3, 6]
    stacker = FrameStacker(2, MINATAR.frame_shape)
    assert stacker.stacks.shape == (2, STACK, *MINATAR.frame_shape)


@pytest.mark.parametrize("patch", [1, 2, 5])
def test_mgdt_patches_of_minatar_frames_hold_every_channel_of_their_cells(patch):
    from workbench.models.mgdt import patchify

    rng = np.random.default_rng(patch)
    state = rng.random((10, 10, 10)) < 0.5
    frame = torch.from_numpy(pack_state(state))
    tokens = patchify(frame[None], patch, MINATAR)[0]  # (P, planes * patch * patch)
    n = 10 // patch
    assert tokens.shape == (n * n, MINATAR.planes * patch * patch)
    for k in range(n * n):
        rows, cols = slice((k // n) * patch, (k // n + 1) * patch), slice((k % n) * patch, (k % n + 1) * patch)
        expected = np.moveaxis(state[rows, cols, :], -1, 0).reshape(-1) * 255  # plane by plane, row by row
        np.testing.assert_array_equal(tokens[k].numpy(), expected)


def test_jobs_refuse_a_suite_their_models_cannot_read():
    from workbench.config import PretrainConfig
    from workbench.online import OnlineConfig, OnlineError

    named = "'jowa' reads atari frames.*algorithms for minatar: scaled_ql, cql_mse, bc, mgdt$"
    with pytest.raises(ValueError, match=named):
        PretrainConfig.from_params(algo="jowa", model="jowa-tiny", games="MinAtar-Breakout")
    with pytest.raises(ValueError, match="mix suites"):
        PretrainConfig.from_params(games="Pong,MinAtar-Breakout")
    config = PretrainConfig.from_params(algo="mgdt", model="mgdt-tiny", games="minatar_5")
    assert config.game_list == games.MINATAR_GAMES
    with pytest.raises(OnlineError, match="plays Atari games"):
        OnlineConfig.from_params(game="MinAtar-Freeway")


def test_mgdt_reads_minatar_in_cell_sized_patches_when_asked():
    from workbench.config import PretrainConfig
    from workbench.pipeline import build_algo

    cells = build_algo(PretrainConfig.from_params(algo="mgdt", model="mgdt-tiny", games="MinAtar-Breakout",
                                                  algo_args={"patch": 1})).model.cfg  # type: ignore[attr-defined]
    assert (cells.patches, cells.patch_dim, cells.tokens_per_step) == (100, 10, 103)
    default = build_algo(PretrainConfig.from_params(algo="mgdt", model="mgdt-tiny", games="MinAtar-Breakout"))
    assert (default.model.cfg.patches, default.model.cfg.patch_dim) == (4, 250)  # type: ignore[attr-defined]
    atari = build_algo(PretrainConfig.from_params(algo="mgdt", model="mgdt-tiny", games="Pong"))
    assert (atari.model.cfg.patches, atari.model.cfg.patch_dim) == (36, 196)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="patch must be an int >= 0"):
        PretrainConfig.from_params(algo="mgdt", model="mgdt-tiny", games="Pong", algo_args={"patch": -1})

"""Minari datasets -> DQN-Replay layout -> store: every transition and segment against the written stream.

The datasets are written by Minari's own ``DataCollector`` over real ALE envs from ale-py (Breakout
with raw frames, Pong with Minari's default JPEG frames), into a temporary MINARI_DATASETS_PATH; the
test records what the env returned while collecting (the written stream) and compares the store
built from the conversion with it, row for row. The preprocessing test needs only ale-py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import ale_py
import cv2
import gymnasium as gym
import numpy as np
import pytest

from workbench.data import build as bd
from workbench.data import dqn_replay as dr
from workbench.data import store as st
from workbench.data.sampler import SequenceSampler, TransitionSampler
from workbench.data.sources import Episode, SourceError
from workbench.data.sources import convert as cv
from workbench.data.sources.preprocess import ale_grayscale, dqn_frames
from workbench.envs import AtariProtocolEnv
from workbench.games import minimal_action_set

gym.register_envs(ale_py)

N_ROWS = 128  # rows per checkpoint: several checkpoints, episodes cut across them
GAMMA = 0.99
SPLITS = ["all", "first:2", "last:0.5", "fraction:0.5", "fraction:0.5:episodes", "n:40", "n:30:episodes"]
# (dataset id, env id, steps, max_episode_steps, jpeg_encoding, seed)
DATASETS = [
    ("atari/breakout/random-v0", "ALE/Breakout-v5", 450, 150, False, 3),
    ("atari/pong/random-v0", "ALE/Pong-v5", 230, 100, True, 5),
]
GAME_OF = {"atari/breakout/random-v0": "Breakout", "atari/pong/random-v0": "Pong"}


def _need_minari():
    minari = pytest.importorskip("minari", reason="the minari extra is not installed: pip install -e '.[minari]'")
    pytest.importorskip("h5py", reason="the minari extra is not installed: pip install -e '.[minari]'")
    pytest.importorskip("PIL", reason="the minari extra is not installed: pip install -e '.[minari]'")
    pytest.importorskip("jax", reason="minari's DataCollector needs jax to record: pip install 'minari[create]'")
    return minari


# ----------------------------------------------------------------------------------------------
# Preprocessing (ale-py only)


# Recording datasets with Minari's DataCollector over real ALE envs takes seconds: the slow loop.
pytestmark = pytest.mark.slow


def test_grayscale_and_resize_equal_ale_and_the_workbench_env():
    """ale_grayscale(RGB) == ale.getScreenGrayscale() bit for bit on emulator screens, and
    dqn_frames(RGB) == cv2 INTER_AREA of it == AtariProtocolEnv's observation where no pooling happens."""
    rng = np.random.default_rng(0)
    for env_id in ("ALE/Breakout-v5", "ALE/Pong-v5", "ALE/MsPacman-v5", "ALE/SpaceInvaders-v5"):
        env = gym.make(env_id, obs_type="rgb")
        obs, _ = env.reset(seed=1)
        ale = env.unwrapped.ale
        rgb, gray = [obs], [ale.getScreenGrayscale()]
        for _ in range(60):
            obs, _, te, tr, _ = env.step(int(rng.integers(env.action_space.n)))
            rgb.append(obs)
            gray.append(ale.getScreenGrayscale())
            if te or tr:
                break
        env.close()
        rgb_a, gray_a = np.stack(rgb), np.stack(gray)
        np.testing.assert_array_equal(ale_grayscale(rgb_a), gray_a)
        want = np.stack([cv2.resize(g, (84, 84), interpolation=cv2.INTER_AREA) for g in gray_a])
        np.testing.assert_array_equal(dqn_frames(rgb_a), want)
        np.testing.assert_array_equal(dqn_frames(gray_a), want)  # grayscale input: resize only
        np.testing.assert_array_equal(dqn_frames(gray_a[..., None]), want)
    # At reset the workbench env's pool is the reset screen with zeros: its observation is exactly
    # the preprocessing of that one screen (envs.AtariProtocolEnv._obs).
    for game in ("Breakout", "Pong", "Seaquest"):
        e = AtariProtocolEnv(game, render_rgb=True)
        o, _ = e.reset(seed=3)
        np.testing.assert_array_equal(dqn_frames(e.render()[None])[0], o)
        e.close()
    with pytest.raises(ValueError, match="frame stacks"):
        dqn_frames(np.zeros((2, 4, 84, 84), np.uint8))


# ----------------------------------------------------------------------------------------------
# Recording with Minari's DataCollector


def _record(minari, dataset_id: str, env_id: str, steps: int, max_steps: int, jpeg: bool, seed: int,
            action_choices: list[int] | None = None, **make_kwargs) -> list[dict]:
    """Collect ``steps`` random steps with minari.DataCollector; returns the written stream, per
    episode: obs (T+1 RGB frames), action, reward, terminated, truncated, seed."""
    env = minari.DataCollector(gym.make(env_id, obs_type="rgb", max_episode_steps=max_steps, **make_kwargs),
                               jpeg_encoding=jpeg)
    rng = np.random.default_rng(seed)
    episodes = []
    ep_seed = seed
    obs, _ = env.reset(seed=ep_seed)
    cur = {"obs": [obs], "action": [], "reward": [], "terminated": [], "truncated": [], "seed": ep_seed}
    for t in range(steps):
        a = int(rng.choice(action_choices)) if action_choices else int(rng.integers(env.action_space.n))
        obs, r, te, tr, _ = env.step(a)
        for k, v in (("obs", obs), ("action", a), ("reward", float(r)), ("terminated", te), ("truncated", tr)):
            cur[k].append(v)
        if (te or tr) and t < steps - 1:
            episodes.append(cur)
            ep_seed += 1
            obs, _ = env.reset(seed=ep_seed)
            cur = {"obs": [obs], "action": [], "reward": [], "terminated": [], "truncated": [], "seed": ep_seed}
    if not cur["terminated"][-1]:
        cur["truncated"][-1] = True  # what the collector stores for the cut last episode
    episodes.append(cur)
    env.create_dataset(dataset_id, eval_env=env_id, algorithm_name="uniform random", author="workbench tests",
                       author_email="tests@example.invalid", code_permalink="tests/test_sources_minari.py",
                       description="random play for the converter's tests")
    env.close()
    return [{k: (np.stack(v) if k == "obs" else np.asarray(v)) if k != "seed" else v for k, v in e.items()}
            for e in episodes]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    minari = _need_minari()
    root = tmp_path_factory.mktemp("minari_datasets")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        streams = {ds: _record(minari, ds, env_id, steps, mes, jpeg, seed)
                   for ds, env_id, steps, mes, jpeg, seed in DATASETS}
        # frames as Minari itself reads them back (its loader): the JPEG dataset's stored pixels
        stored = {ds: list(minari.load_dataset(ds).iterate_episodes()) for ds, *_ in DATASETS}
    return {"root": root, "streams": streams, "stored": stored, "minari": minari}


def _dataset_dir(root: Path, ds: str) -> Path:
    return root / ds / "data"


def test_reader_gives_what_minari_gives(recorded):
    src = cv.open_source("minari", recorded["root"])
    assert src.games() == ["Breakout", "Pong"]
    for ds, *_, jpeg, _seed in DATASETS:
        game = GAME_OF[ds]
        mine = list(src.episodes(game))
        theirs = recorded["stored"][ds]
        written = recorded["streams"][ds]
        assert len(mine) == len(theirs) == len(written)
        for e, m, w in zip(mine, theirs, written):
            assert isinstance(e, Episode)
            np.testing.assert_array_equal(e.observation, m.observations[:-1])  # Minari's own decoding, bit for bit
            np.testing.assert_array_equal(e.frames(5, 9), m.observations[5:9])
            for got, want in ((e.action, w["action"]), (e.reward, w["reward"]), (e.terminated, w["terminated"]),
                              (e.truncated, w["truncated"])):
                np.testing.assert_array_equal(got, want)
            assert e.provenance["dataset_id"] == ds and e.provenance["seed"] == w["seed"]
            if not jpeg:  # raw frames: exactly what the env returned
                np.testing.assert_array_equal(e.observation, w["obs"][:-1])
            else:  # JPEG: close to it, not equal
                diff = np.abs(e.observation.astype(int) - w["obs"][:-1]).mean()
                assert 0 < diff < 8
    limits = src.limits()
    assert {"checkpoint_ids", "sticky_actions", "frame_pooling", "lossy_frames"} <= set(limits)
    assert "0.25" in limits["sticky_actions"]


def _expected(recorded, ds: str) -> dict[str, np.ndarray]:
    """The padded DQN-Replay row stream of one dataset, built from the written stream."""
    frames, action, reward, terminal, episode = [], [], [], [], []
    for i, (w, m) in enumerate(zip(recorded["streams"][ds], recorded["stored"][ds])):
        n = len(w["action"])
        frames += [np.zeros((3, 84, 84), np.uint8), dqn_frames(m.observations[:-1])]
        action += [0] * 3 + list(w["action"])
        reward += [0.0] * 3 + list(np.clip(w["reward"], -1, 1))
        terminal += [0] * 3 + [0] * (n - 1) + [1]
        episode += [-1] * 3 + [i] * n
    return {"frames": np.concatenate(frames), "action": np.asarray(action), "reward": np.asarray(reward, np.float32),
            "terminal": np.asarray(terminal, np.uint8), "episode": np.asarray(episode)}


def _nstep(exp: dict, g: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ret, length, term = np.zeros(len(g), np.float32), np.full(len(g), n), np.zeros(len(g), np.uint8)
    for i, p in enumerate(g):
        acc = np.float32(0)
        for k in range(n):
            acc += np.float32(GAMMA**k) * exp["reward"][p + k]
            if exp["terminal"][p + k]:
                length[i], term[i] = k + 1, 1
                break
        ret[i] = acc
    return ret, length, term


@pytest.fixture(scope="module")
def converted(recorded, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "root"
    info = cv.convert(cv.open_source("minari", recorded["root"]), out, rows_per_checkpoint=N_ROWS, progress=False)
    return out, info


def test_layout_side_files_and_source_info(recorded, converted):
    out, info = converted
    assert (out / cv.MARKER).is_file()
    assert json.loads((out / cv.INFO_NAME).read_text())["games"].keys() == {"Breakout", "Pong"}
    for ds, *_ in DATASETS:
        game = GAME_OF[ds]
        exp = _expected(recorded, ds)
        gi = info["games"][game]
        assert gi["complete"] and gi["rows"] == len(exp["action"])
        assert gi["checkpoints"] == -(-len(exp["action"]) // N_ROWS)
        rl = out / game / "1" / "replay_logs"
        assert list(dr.list_checkpoints(rl)) == list(range(gi["checkpoints"]))
        written = recorded["streams"][ds]
        assert [e["provenance"]["episode_id"] for e in gi["episodes"]] == list(range(len(written)))
        assert [e["truncated"] for e in gi["episodes"]] == [bool(w["truncated"][-1]) for w in written]
        raw, trunc, epi = [], [], []
        for c in range(gi["checkpoints"]):
            a = dr.load_checkpoint(rl, c)
            lo = c * N_ROWS
            hi = lo + len(a["action"])
            np.testing.assert_array_equal(a["observation"], exp["frames"][lo:hi])
            np.testing.assert_array_equal(a["action"], exp["action"][lo:hi])
            np.testing.assert_array_equal(a["reward"], exp["reward"][lo:hi])
            np.testing.assert_array_equal(a["terminal"], exp["terminal"][lo:hi])
            with np.load(out / game / "1" / "source" / f"checkpoint_{c}.npz") as z:
                raw.append(z["raw_reward"])
                trunc.append(z["truncated"])
                epi.append(z["episode"])
        real = exp["episode"] >= 0
        np.testing.assert_array_equal(np.concatenate(epi), exp["episode"])
        np.testing.assert_array_equal(np.concatenate(raw)[real], np.concatenate([w["reward"] for w in written]))
        last = np.flatnonzero(exp["terminal"])
        np.testing.assert_array_equal(np.concatenate(trunc)[last], [w["truncated"][-1] for w in written])
        assert np.concatenate(trunc).sum() == sum(bool(w["truncated"][-1]) for w in written)


@pytest.mark.filterwarnings("ignore:store .* holds a split of single transitions")
@pytest.mark.parametrize("split", SPLITS)
def test_every_split_builds_and_every_transition_is_the_written_one(recorded, converted, tmp_path, split):
    out, _ = converted
    games = [GAME_OF[ds] for ds, *_ in DATASETS]
    store = st.ReplayStore(bd.build_store(out, tmp_path / "store", games, runs=[1], split=split, progress=False))
    for ds, *_ in DATASETS:
        game = GAME_OF[ds]
        exp = _expected(recorded, ds)
        gd = store.game(game)
        starts = np.asarray(gd.starts)
        assert len(starts) > 0
        src = store.source_of(game, starts)
        g = np.array([c * N_ROWS + slot for _, c, slot in src])
        # every start is a real row whose stack stays inside its episode (earlier rows: its own or padding)
        assert (exp["episode"][g] >= 0).all()
        for k in range(1, 4):
            before = exp["episode"][g - k]
            assert ((before == -1) | (before == exp["episode"][g])).all()
        if split == "all":  # exactly the real rows that are Dopamine-valid starts inside their checkpoint
            slot = np.arange(len(exp["episode"])) % N_ROWS
            cap = np.minimum(N_ROWS, len(exp["episode"]) - (np.arange(len(exp["episode"])) // N_ROWS) * N_ROWS)
            want = np.flatnonzero((exp["episode"] >= 0) & (slot >= 4) & (slot <= cap - 4))
            np.testing.assert_array_equal(np.sort(g), want)
        t = store.transitions(game, starts, gamma=GAMMA)
        ret, length, term = _nstep(exp, g, store.n_step)
        stack = g[:, None] + np.arange(-3, 1)[None, :]
        np.testing.assert_array_equal(t["state"], exp["frames"][stack])
        np.testing.assert_array_equal(t["action"], exp["action"][g])
        np.testing.assert_array_equal(t["reward"], ret)
        np.testing.assert_array_equal(t["length"], length)
        np.testing.assert_array_equal(t["terminal"], term)
        live = term == 0
        np.testing.assert_array_equal(t["next_state"][live], exp["frames"][(g + length)[live][:, None] +
                                                                           np.arange(-3, 1)[None, :]])
        # the sampler's batches are the same transitions
        sampler = TransitionSampler(store, [game], batch_size=32, n_step=3, gamma=GAMMA, seed=1, prefetch=0,
                                    pin_memory=False)
        for b in range(3):
            _, rows = sampler.draw_rows(b)
            batch = sampler.sample(b)
            pos = np.searchsorted(starts, rows)
            np.testing.assert_array_equal(batch["obs"].numpy(), t["state"][pos])
            np.testing.assert_array_equal(batch["action"].numpy(), t["action"][pos])
            np.testing.assert_array_equal(batch["reward"].numpy(), t["reward"][pos])
            np.testing.assert_array_equal(batch["terminal"].numpy(), t["terminal"][pos])
        sampler.close()
        mask = _check_segments(store, game, exp)
        if split == "all" or split.endswith(":episodes"):
            assert mask[:, -1].any()  # whole segments, not only the short ones


def _check_segments(store: st.ReplayStore, game: str, exp: dict) -> np.ndarray:
    """Every unmasked step of a sequence segment is a consecutive row of one episode of the written stream."""
    L = 8
    sampler = SequenceSampler(store, [game], batch_size=24, seq_len=L, seed=2, prefetch=0, pin_memory=False)
    batch = sampler.sample(0)
    sampler.close()
    obs, act, rew, term, mask = (batch[k].numpy() for k in ("obs", "action", "reward", "terminal", "mask"))
    rows = np.arange(len(exp["episode"]))
    for b in range(len(obs)):
        m = mask[b]
        k = int(m.sum())
        assert k >= 1 and m[:k].all() and not m[k:].any()  # a prefix of steps
        if term[b, :k].any():
            assert int(np.flatnonzero(term[b])[0]) == k - 1  # nothing after a terminal
        # where in the written stream: rows r whose k steps match, all in one episode
        ok = [r for r in rows[: len(rows) - k + 1]
              if exp["episode"][r] >= 0 and (exp["episode"][r : r + k] == exp["episode"][r]).all()
              and np.array_equal(exp["frames"][r : r + k], obs[b, :k])
              and np.array_equal(exp["action"][r : r + k], act[b, :k])
              and np.array_equal(exp["reward"][r : r + k], rew[b, :k])
              and np.array_equal(exp["terminal"][r : r + k], term[b, :k])]
        assert ok, f"segment {b} of {game} is not a piece of one episode of the written stream"
    return mask


# ----------------------------------------------------------------------------------------------
# Resuming, refusals, the command line


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every DQN-Replay file, and the arrays of every side file, under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.suffix == ".gz":
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.suffix == ".npz":
            with np.load(p) as z:
                out[str(p.relative_to(root))] = hashlib.sha256(b"".join(z[k].tobytes() for k in sorted(z))).hexdigest()
    return out


class _Interrupting:
    """A source that dies after yielding ``after`` episodes (a killed conversion)."""

    def __init__(self, inner, after: int) -> None:
        self.inner, self.after, self.kind = inner, after, inner.kind

    def games(self):
        return self.inner.games()

    def limits(self):
        return self.inner.limits()

    def provenance(self):
        return self.inner.provenance()

    def episodes(self, game):
        for i, e in enumerate(self.inner.episodes(game)):
            if i == self.after:
                raise KeyboardInterrupt
            yield e


def test_resume_skips_done_checkpoints_and_rewrites_broken_ones(recorded, converted, tmp_path):
    ref, _ = converted
    src = cv.open_source("minari", recorded["root"])
    out = tmp_path / "root"
    with pytest.raises(KeyboardInterrupt):
        cv.convert(_Interrupting(src, 3), out, ["Breakout"], rows_per_checkpoint=N_ROWS, progress=False)
    done = sorted(p.name for p in (out / "Breakout/1/source").glob("*.npz"))
    assert done and "checkpoint_3.npz" not in done
    assert json.loads((out / cv.INFO_NAME).read_text())["games"]["Breakout"] == {"complete": False}
    info = cv.convert(src, out, ["Breakout"], rows_per_checkpoint=N_ROWS, progress=False)
    assert info["games"]["Breakout"]["skipped"] == len(done)
    # a checkpoint broken after the fact (a file lost, its marker gone) is rewritten, the others skipped
    (out / "Breakout/1/replay_logs" / dr.file_name("reward", 1)).unlink()
    (out / "Breakout/1/source/checkpoint_1.npz").unlink()
    (out / "Breakout/1/replay_logs" / (dr.file_name("action", 1) + ".tmp")).write_bytes(b"partial")
    info = cv.convert(src, out, ["Breakout", "Pong"], rows_per_checkpoint=N_ROWS, progress=False)
    assert info["games"]["Breakout"]["written"] == 1
    assert not list((out / "Breakout/1/replay_logs").glob("*.tmp"))
    assert _tree(out) == _tree(ref)  # the same bytes as a conversion that never stopped
    # another checkpoint size, or another source, into the same folder: refused
    with pytest.raises(SourceError, match="another source or checkpoint size"):
        cv.convert(src, out, ["Breakout"], rows_per_checkpoint=N_ROWS * 2, progress=False)
    other = cv.open_source("minari", _dataset_dir(recorded["root"], DATASETS[0][0]))
    with pytest.raises(SourceError, match="another source"):
        cv.convert(other, out, rows_per_checkpoint=N_ROWS, progress=False)


def test_refuses_a_folder_it_did_not_make(recorded, tmp_path):
    src = cv.open_source("minari", recorded["root"])
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SourceError, match="not empty and was not made by this converter"):
        cv.convert(src, tmp_path, rows_per_checkpoint=N_ROWS, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
    with pytest.raises(SourceError, match="not in the minari source"):
        cv.convert(src, tmp_path / "new", ["Seaquest"], rows_per_checkpoint=N_ROWS, progress=False)
    with pytest.raises(SourceError, match="rows_per_checkpoint"):
        cv.convert(src, tmp_path / "new", rows_per_checkpoint=2, progress=False)


def test_old_minari_files_and_full_action_space(recorded, tmp_path):
    minari = recorded["minari"]
    # Minari < 0.5.4 wrote raw frames and no jpeg_encoding key (the published Atari datasets are 0.5.2)
    old = tmp_path / "old" / "data"
    shutil.copytree(_dataset_dir(recorded["root"], DATASETS[0][0]), old)
    md = json.loads((old / "metadata.json").read_text())
    del md["jpeg_encoding"]
    md["minari_version"] = "0.5.2"
    (old / "metadata.json").write_text(json.dumps(md))
    eps = list(cv.open_source("minari", tmp_path / "old").episodes("Breakout"))
    np.testing.assert_array_equal(eps[0].observation, recorded["streams"][DATASETS[0][0]][0]["obs"][:-1])
    # full_action_space=True: ALE ids are mapped to minimal-set indices
    root = tmp_path / "full"
    minimal = list(minimal_action_set("Breakout"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        w = _record(minari, "atari/breakout/full-v0", "ALE/Breakout-v5", 40, 30, False, 9, full_action_space=True,
                    action_choices=minimal)
    eps = list(cv.open_source("minari", root).episodes("Breakout"))
    got = np.concatenate([e.action for e in eps])
    np.testing.assert_array_equal(got, [minimal.index(a) for e in w for a in e["action"]])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        _record(minari, "atari/breakout/fullbad-v0", "ALE/Breakout-v5", 20, 30, False, 9, full_action_space=True,
                action_choices=[2])  # UP: not in Breakout's minimal set
    with pytest.raises(SourceError, match="not in Breakout's minimal action set"):
        list(cv.open_source("minari", root / "atari/breakout/fullbad-v0").episodes("Breakout"))


def test_command_line(recorded, tmp_path, capsys):
    out = tmp_path / "root"
    rc = cv.main(["convert", "--source", "minari", str(recorded["root"]), "--out", str(out), "--games", "pong",
                  "--rows-per-checkpoint", str(N_ROWS), "--no-progress"])
    assert rc == 0
    info = json.loads((out / cv.INFO_NAME).read_text())["games"]["Pong"]
    assert f"Pong: {info['checkpoints']} checkpoints, {info['rows']} rows" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["Pong"]
    assert cv.main(["info", "--source", "minari", str(recorded["root"])]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["games"] == ["Breakout", "Pong"] and "frame_pooling" in shown["limits"]
    assert cv.main(["convert", "--source", "minari", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cv.main(["convert", "--source", "d4rl", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "unknown source 'd4rl'" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["root"]  # nothing written by the failed calls

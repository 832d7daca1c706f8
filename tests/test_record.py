"""Recorded play round-trips through the DQN-Replay reader with the data's row semantics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workbench.data import build as bd
from workbench.data import dqn_replay as dr
from workbench.data import record as rec
from workbench.data import store as st


class FakeEnv:
    """Episodes of fixed lengths; frame t of episode e is filled with a known value; big rewards."""

    def __init__(self, lengths: list[int], truncate_last: bool = True) -> None:
        self.lengths, self.ep, self.t, self.truncate_last = lengths, -1, 0, truncate_last
        self.log: list[tuple[int, int, int]] = []  # (episode, t, action) of every step

    def _frame(self) -> np.ndarray:
        return np.full((84, 84), 1 + (self.ep * 37 + self.t) % 250, np.uint8)

    def reset(self, seed=None):
        self.ep += 1
        self.t = 0
        return self._frame(), {}

    def step(self, a):
        self.log.append((self.ep, self.t, int(a)))
        self.t += 1
        end = self.t >= self.lengths[self.ep % len(self.lengths)]
        truncated = end and self.truncate_last and self.ep % 2 == 1  # odd episodes hit the time limit
        return self._frame(), 3.0 if self.t % 4 == 0 else -0.5, end and not truncated, truncated, {}

    def close(self):
        pass


def _stream_rows(lengths: list[int], steps: int) -> dict[str, list]:
    """Expected rows by hand: 3 padding rows, then one row per step; terminal on the last."""
    obs, rew, term = [], [], []
    ep, done = 0, 0
    while done < steps:
        obs += [0, 0, 0]
        rew += [0.0] * 3
        term += [0] * 3
        L = lengths[ep % len(lengths)]
        for t in range(L):
            if done == steps:
                break
            obs.append(1 + (ep * 37 + t) % 250)
            rew.append(1.0 if (t + 1) % 4 == 0 else -0.5)
            term.append(int(t == L - 1))
            done += 1
        ep += 1
    return {"obs": obs, "reward": rew, "terminal": term}


def test_record_roundtrip_padding_terminals_and_ring(tmp_path: Path) -> None:
    lengths = [7, 11, 5]
    env = FakeEnv(lengths)
    steps, cap = 60, 24
    out = rec.record("Breakout", steps, tmp_path, seed=3, capacity=cap, env_factory=lambda g, s: env, progress=False)
    assert out == tmp_path / "Breakout/1/replay_logs"
    exp = _stream_rows(lengths, steps)
    total = len(exp["obs"])
    k_full, r = divmod(total, cap)
    assert dr.list_checkpoints(out) == list(range(k_full + (r > 0)))
    for k in range(k_full):
        ck = dr.load_checkpoint(out, k)
        sl = slice(k * cap, (k + 1) * cap)
        np.testing.assert_array_equal(ck["observation"][:, 0, 0], exp["obs"][sl])
        np.testing.assert_array_equal(ck["reward"], np.array(exp["reward"][sl], np.float32))  # clipped
        np.testing.assert_array_equal(ck["terminal"], exp["terminal"][sl])
        assert int(ck["add_count"]) == (k + 1) * cap
        np.testing.assert_array_equal(ck["invalid_range"], dr.dopamine_invalid_range(0, cap))
        pad = ck["observation"][:, 0, 0] == 0
        assert (ck["action"][pad] == 0).all() and (ck["reward"][pad] == 0).all() and (ck["terminal"][pad] == 0).all()
    # final partial dump: the ring as Dopamine saves it (new rows first, stale rows after)
    last = dr.load_checkpoint(out, k_full)
    assert int(last["add_count"]) == total
    np.testing.assert_array_equal(last["observation"][:r, 0, 0], exp["obs"][k_full * cap :])
    np.testing.assert_array_equal(last["observation"][r:, 0, 0], exp["obs"][(k_full - 1) * cap + r : k_full * cap])
    # actions were recorded at the step they were taken at (row t holds o_t, a_t)
    acts = np.concatenate([dr.load_checkpoint(out, k)["action"] for k in range(k_full)])
    real = np.array(exp["obs"][: k_full * cap]) > 0
    np.testing.assert_array_equal(acts[real], [a for _, _, a in env.log][: real.sum()])
    # the reader accepts every valid index, with terminals from both game over and time limit
    meta = dr.load_checkpoint_meta(out, 0)
    idx = np.flatnonzero(meta.valid_mask())
    tr = dr.read_transitions(out, 0, idx)
    assert tr["terminal"].any()
    # stack of the first step of an episode is zero-padded
    o = np.array(exp["obs"][:cap])
    first = [t for t in idx if o[t] > 0 and o[t - 1] == 0][0]  # first step of the second episode
    t0 = dr.read_transitions(out, 0, [first])
    assert (t0["state"][0, :, :, :3] == 0).all() and t0["state"][0, 0, 0, 3] == exp["obs"][first]
    # the store dedupes the stale rows of the partial dump
    s = st.ReplayStore(bd.build_store(tmp_path, tmp_path / "store", ["Breakout"], [1], progress=False))
    blocks = s.game("Breakout").blocks
    assert blocks[-1]["fresh_rows"] == r and blocks[0]["fresh_rows"] == cap


def test_short_recording_is_one_small_checkpoint(tmp_path: Path) -> None:
    out = rec.record("Pong", 10, tmp_path, capacity=1000, env_factory=lambda g, s: FakeEnv([4]), progress=False)
    ck = dr.load_checkpoint(out, 0)
    assert len(ck["terminal"]) == 3 * 3 + 10 and int(ck["add_count"]) == 19


def test_epsilon_greedy_policy_and_errors(tmp_path: Path) -> None:
    class Greedy:
        def __init__(self):
            self.seen = []

        def act(self, obs, game_ids):
            assert obs.shape == (1, 4, 84, 84) and obs.dtype == np.uint8 and game_ids.dtype == np.int64
            self.seen.append(obs.copy())
            return np.array([2], np.int64)

        def reset(self, indices):
            pass

        def observe(self, actions, rewards):
            pass

    pol = Greedy()
    env = FakeEnv([6])
    rec.record(
        "Breakout", 30, tmp_path, policy=pol, epsilon=0.0, capacity=64, env_factory=lambda g, s: env, progress=False
    )
    assert {a for _, _, a in env.log} == {2}
    # the policy saw oldest-first stacks, zero-padded at episode start
    assert (pol.seen[0][0, :3] == 0).all() and pol.seen[1][0, 2, 0, 0] == pol.seen[0][0, 3, 0, 0]
    with pytest.raises(rec.RecordError, match="policy must be 'random'"):
        rec.record("Breakout", 5, tmp_path / "x", policy="greedy", env_factory=lambda g, s: FakeEnv([3]))
    with pytest.raises(rec.RecordError, match="steps must be an int >= 1"):
        rec.record("Breakout", 0, tmp_path / "x")
    with pytest.raises(rec.RecordError, match="already holds checkpoints"):
        rec.record("Breakout", 5, tmp_path, env_factory=lambda g, s: FakeEnv([3]), progress=False)
    with pytest.raises(ValueError, match="unknown game .NotAGame"):
        rec.record("NotAGame", 5, tmp_path / "y")


def test_policy_observes_the_executed_actions_and_raw_rewards(tmp_path: Path) -> None:
    """The policy acts at every step (also the ones epsilon replaces) and ``observe`` gets the
    action the env executed and its raw (unclipped) reward, before ``reset`` at an episode start.
    Mutation caught: the recorder skipping ``observe``, passing the planned action, the clipped
    reward, or not asking the policy on epsilon steps."""

    class Spy:
        def __init__(self):
            self.events: list[tuple] = []

        def act(self, obs, game_ids):
            self.events.append(("act",))
            return np.array([2], np.int64)

        def observe(self, actions, rewards):
            self.events.append(("observe", int(actions[0]), float(rewards[0])))

        def reset(self, indices):
            self.events.append(("reset",))

    pol, env = Spy(), FakeEnv([7, 5])
    rec.record("Breakout", 20, tmp_path, policy=pol, epsilon=0.5, capacity=64, env_factory=lambda g, s: env,
               progress=False)
    kinds = [e[0] for e in pol.events]
    # episodes of 7, 5, 7 steps, then 1 more; reset at each start
    want = ["reset"] + ["act", "observe"] * 7 + ["reset"] + ["act", "observe"] * 5 + ["reset"]
    want += ["act", "observe"] * 7 + ["reset"] + ["act", "observe"]
    assert kinds == want
    observed = [(a, r) for k, *rest in pol.events if k == "observe" for a, r in [rest]]
    executed = [a for _, _, a in env.log]
    assert [a for a, _ in observed] == executed and sum(a != 2 for a in executed) >= 4
    raw = [3.0 if t % 4 == 0 else -0.5 for ep_len in (7, 5, 7, 1) for t in range(1, ep_len + 1)]
    assert [r for _, r in observed] == raw  # 3.0 is stored clipped to 1.0, observed raw


def test_real_env_roundtrip(tmp_path: Path) -> None:
    """A short random recording under the real data protocol reads back through the reader."""
    pytest.importorskip("ale_py")
    out = rec.record("Breakout", 400, tmp_path, seed=0, capacity=200, progress=False)
    ckpts = dr.list_checkpoints(out)
    assert len(ckpts) == 3
    ck = dr.load_checkpoint(out, 0)
    assert (ck["observation"][:3] == 0).all() and ck["observation"][3].any()
    assert set(np.unique(ck["reward"])) <= {-1.0, 0.0, 1.0}
    assert ck["action"].max() < 4
    meta = dr.load_checkpoint_meta(out, 1)
    tr = dr.read_transitions(out, 1, np.flatnonzero(meta.valid_mask())[:50])
    ck_obs = dr.load_checkpoint(out, 1)["observation"][np.flatnonzero(meta.valid_mask())[:50]]
    np.testing.assert_array_equal(tr["state"][:, :, :, 3], ck_obs)
    assert ck_obs.shape == (50, 84, 84)


@pytest.mark.slow
def test_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "workbench.data.record", "--games", "Pong", "--steps", "50",
                        "--output-dir", str(tmp_path), "--capacity", "40", "--seed", "1"],
                       capture_output=True, text=True, env={**__import__("os").environ, "TQDM_DISABLE": "1"})
    assert r.returncode == 0, r.stderr
    assert dr.list_checkpoints(tmp_path / "Pong/1/replay_logs") == [0, 1]
    r = subprocess.run([sys.executable, "-m", "workbench.data.record", "--games", "Pong", "--steps", "5",
                        "--output-dir", str(tmp_path / "z"), "--policy", "greedy"], capture_output=True, text=True)
    assert r.returncode == 2 and "policy must be 'random' or 'package.module:factory'" in r.stderr


def test_collect_notebook_parameters_and_config() -> None:
    import dataclasses
    import json

    nb_path = Path(__file__).resolve().parents[1] / "notebooks/01_collect_data.ipynb"
    nb = json.loads(nb_path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code_cells)
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    names = {line.split(":")[0].strip() for line in "".join(tagged[0]["source"]).splitlines() if ":" in line}
    assert names == {f.name for f in dataclasses.fields(rec.CollectConfig)}  # every setting reachable
    cfg = rec.CollectConfig.from_params(games="pong,Breakout", steps=10, policy="random", output_dir="x", seed=1)
    assert cfg.games == "Pong,Breakout"
    with pytest.raises(ValueError, match="unknown parameter.*'gmes'"):
        rec.CollectConfig.from_params(gmes="Pong")
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        rec.CollectConfig.from_params(steps=-5)
    with pytest.raises(ValueError, match="policy must be 'random'"):
        rec.CollectConfig.from_params(policy="greedy")
    with pytest.raises(ValueError, match="unknown game"):
        rec.CollectConfig.from_params(games="Pong,NotAGame")

"""The DQN-Replay reader against Dopamine's own sampler output (shared fixtures), bit for bit."""

from __future__ import annotations

import gzip
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from shared_paths import DQN_FIXTURES

from workbench.data import dqn_replay as dr

FIXTURES = DQN_FIXTURES
CASES = [(g, c) for g in ("Pong", "Breakout") for c in range(3)]


@pytest.mark.parametrize("game,ckpt", CASES)
def test_read_transitions_matches_dopamine(game: str, ckpt: int) -> None:
    exp = np.load(FIXTURES / f"{game}_ckpt{ckpt}_expected.npz")
    got = dr.read_transitions(FIXTURES / game / "1", ckpt, exp["indices"], n_step=3, gamma=0.99)
    assert set(got) == {"state", "action", "reward", "next_state", "terminal"}
    for key in ("state", "action", "reward", "terminal"):
        assert got[key].dtype == exp[key].dtype, key
        assert got[key].shape == exp[key].shape, key
        np.testing.assert_array_equal(got[key], exp[key], err_msg=key)
    live = exp["terminal"] == 0
    assert got["next_state"].shape == exp["next_state"].shape and got["next_state"].dtype == np.uint8
    np.testing.assert_array_equal(got["next_state"][live], exp["next_state"][live])


def test_valid_mask_counts_and_rule() -> None:
    # Brute-force Dopamine rule on one checkpoint: stack must not cross a terminal; invalid_range.
    meta = dr.load_checkpoint_meta(FIXTURES / "Breakout/1/replay_logs", 0)
    n = meta.capacity
    ref = np.zeros(n, dtype=bool)
    inv = set(meta.invalid_range.tolist())
    for t in range(n):
        ref[t] = t not in inv and not any(meta.terminal[(t - k) % n] for k in (1, 2, 3))
    np.testing.assert_array_equal(meta.valid_mask(), ref)
    # the fixture's indices are all valid, and its invalid_range is Dopamine's around cursor 0
    exp = np.load(FIXTURES / "Breakout_ckpt0_expected.npz")
    assert ref[exp["indices"]].all()
    np.testing.assert_array_equal(meta.invalid_range, dr.dopamine_invalid_range(meta.cursor, n))


def test_not_full_ring_rule() -> None:
    term = np.zeros(20, dtype=np.uint8)
    m = dr.valid_transition_mask(term, add_count=10, invalid_range=dr.dopamine_invalid_range(10, 20))
    assert np.flatnonzero(m).tolist() == [3, 4, 5, 6]  # 3 <= t < cursor - 3


def test_invalid_indices_are_errors() -> None:
    d = FIXTURES / "Pong/1"
    meta = dr.load_checkpoint_meta(d / "replay_logs", 0)
    t = int(np.flatnonzero(meta.terminal)[0])
    for bad in ([0], [1499], [t + 1], [1500], [-1]):
        with pytest.raises(dr.DQNReplayError, match="invalid|out of range"):
            dr.read_transitions(d, 0, np.array(bad))
    with pytest.raises(dr.DQNReplayError, match="integer"):
        dr.read_transitions(d, 0, np.array([10.0]))


def _copy_run(tmp_path: Path, game: str) -> Path:
    dst = tmp_path / game / "1" / "replay_logs"
    shutil.copytree(FIXTURES / game / "1" / "replay_logs", dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def test_missing_truncated_corrupt_files_name_the_file(tmp_path: Path) -> None:
    d = _copy_run(tmp_path, "Pong")
    idx = np.load(FIXTURES / "Pong_ckpt0_expected.npz")["indices"]
    # missing
    (d / "$store$_reward_ckpt.0.gz").unlink()
    with pytest.raises(dr.DQNReplayError, match=r"missing DQN-Replay file: .*\$store\$_reward_ckpt\.0\.gz"):
        dr.read_transitions(d, 0, idx)
    # truncated observation file (half the compressed bytes)
    obs = d / "$store$_observation_ckpt.1.gz"
    data = obs.read_bytes()
    obs.write_bytes(data[: len(data) // 2])
    with pytest.raises(dr.DQNReplayError, match=r"observation_ckpt\.1\.gz.*truncated"):
        dr.read_transitions(d, 1, np.load(FIXTURES / "Pong_ckpt1_expected.npz")["indices"])
    # corrupt terminal file (garbage in the deflate stream)
    term = d / "$store$_terminal_ckpt.2.gz"
    data = bytearray(term.read_bytes())
    data[20:40] = b"\xff" * 20
    term.write_bytes(bytes(data))
    with pytest.raises(dr.DQNReplayError, match=r"terminal_ckpt\.2\.gz"):
        dr.load_checkpoint_meta(d, 2)
    # a payload shorter than its header claims (valid gzip, truncated array)
    act = d / "$store$_action_ckpt.2.gz"
    raw = gzip.decompress(act.read_bytes())
    act.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(dr.DQNReplayError, match=r"action_ckpt\.2\.gz: truncated"):
        dr.load_npy_gz(act)
    # object arrays are refused (allow_pickle=False semantics)
    objf = tmp_path / "obj.gz"
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    objf.write_bytes(gzip.compress(buf.getvalue()))
    with pytest.raises(dr.DQNReplayError, match="object arrays are refused"):
        dr.load_npy_gz(objf)


class _Boom:
    def __reduce__(self):  # would create a file if anyone unpickled it
        return (open, ("/tmp/_workbench_pickle_was_executed", "w"))


def test_with_and_without_episode_end_indices(tmp_path: Path) -> None:
    # Breakout has the files, Pong not (covered above); removing or poisoning them changes nothing.
    d = _copy_run(tmp_path, "Breakout")
    assert (d / "episode_end_indices_ckpt.0.gz").exists()
    exp = np.load(FIXTURES / "Breakout_ckpt0_expected.npz")
    a = dr.read_transitions(d, 0, exp["indices"])
    (d / "episode_end_indices_ckpt.0.gz").unlink()
    b = dr.read_transitions(d, 0, exp["indices"])
    marker = Path("/tmp/_workbench_pickle_was_executed")
    marker.unlink(missing_ok=True)
    (d / "episode_end_indices_ckpt.0.gz").write_bytes(gzip.compress(pickle.dumps(_Boom())))
    c = dr.read_transitions(d, 0, exp["indices"])
    assert not marker.exists()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(a[k], c[k])


def test_names_list_what_exists(tmp_path: Path) -> None:
    assert dr.list_games(FIXTURES) == ["Breakout", "Pong"]
    assert dr.list_runs(FIXTURES, "Pong") == ["1"]
    assert dr.list_checkpoints(dr.run_dir(FIXTURES, "pong", 1)) == [0, 1, 2]
    with pytest.raises(dr.DQNReplayError, match=r"unknown game 'Seaquest'.*\['Breakout', 'Pong'\]"):
        dr.run_dir(FIXTURES, "Seaquest", 1)
    with pytest.raises(dr.DQNReplayError, match=r"unknown run '7'.*\['1'\]"):
        dr.run_dir(FIXTURES, "Pong", 7)
    with pytest.raises(dr.DQNReplayError, match=r"unknown checkpoint 5 .*\[0, 1, 2\]"):
        dr.read_transitions(FIXTURES / "Pong/1", 5, [10])
    with pytest.raises(dr.DQNReplayError, match="does not exist"):
        dr.list_games(tmp_path / "nope")


def test_load_checkpoint_and_writer_roundtrip(tmp_path: Path) -> None:
    src = dr.load_checkpoint(FIXTURES / "Pong/1/replay_logs", 1)
    assert src["observation"].shape == (1500, 84, 84) and int(src["add_count"]) == 1500
    out = tmp_path / "Pong/1/replay_logs"
    dr.write_checkpoint(out, 0, observation=src["observation"], action=src["action"], reward=src["reward"],
                        terminal=src["terminal"], add_count=int(src["add_count"]))
    back = dr.load_checkpoint(out, 0)
    for k in src:
        np.testing.assert_array_equal(back[k], src[k], err_msg=k)
    exp = np.load(FIXTURES / "Pong_ckpt1_expected.npz")
    got = dr.read_transitions(out.parent, 0, exp["indices"])
    np.testing.assert_array_equal(got["state"], exp["state"])
    np.testing.assert_array_equal(got["reward"], exp["reward"])


LOGGED = DQN_FIXTURES.parent / "dqn_replay_logged"


@pytest.mark.parametrize("ckpt", range(5))
def test_logged_layout_reader_horizon(ckpt: int) -> None:
    """Public-data layout (one ring written with update horizon 1, dumped at cursor capacity-1):
    a 3-step reader agrees with Dopamine wherever Dopamine is right, and refuses the starts whose
    window crosses the cursor into the stale slot (where Dopamine is wrong)."""
    d = LOGGED / "Breakout/1"
    exp = np.load(LOGGED / "Breakout_dopamine_n3.npz")
    idx, agrees = exp[f"ckpt{ckpt}_indices"], exp[f"ckpt{ckpt}_agrees"].astype(bool)
    got = dr.read_transitions(d, ckpt, idx[agrees], n_step=3, gamma=0.99)
    for key in ("state", "action", "reward", "terminal"):
        np.testing.assert_array_equal(got[key], exp[f"ckpt{ckpt}_{key}"][agrees], err_msg=key)
    live = exp[f"ckpt{ckpt}_terminal"][agrees] == 0
    np.testing.assert_array_equal(got["next_state"][live], exp[f"ckpt{ckpt}_next_state"][agrees][live])
    meta = dr.load_checkpoint_meta(d / "replay_logs", ckpt)
    assert set(np.flatnonzero(meta.valid_mask(update_horizon=3)).tolist()) == set(idx[agrees].tolist())
    for bad in idx[~agrees]:  # 2 per full checkpoint: slots capacity-4 and capacity-3
        with pytest.raises(dr.DQNReplayError, match="invalid transition indices"):
            dr.read_transitions(d, ckpt, np.array([bad]))
    assert (~agrees).sum() == (2 if meta.is_full else 0)

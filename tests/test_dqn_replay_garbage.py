"""Issue 26 item 2: values are checked on exactly the rows a reader can use.

Dopamine allocates its ring with ``np.empty``; until the ring wraps, the slots at and after the
write cursor were never written and hold whatever memory held (an action of 33,615,906 in one
Dopamine-written file). The fixture in ``shared/fixtures/dqn_replay_logged`` is the public layout:
its checkpoint 0 was dumped at ``add_count = capacity - 1`` (slot ``capacity - 1`` never written) and
its checkpoint 4 is batch_rl's final partial dump (``add_count`` = the cursor: every slot after it
belongs to an earlier lap). Garbage in those slots must not stop the reader, nor reach its output;
garbage in a used row must still be refused, naming the file, the array and the row.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from shared_paths import DQN_FIXTURES

from workbench.data import dqn_replay as dr
from workbench.data.build import build_store
from workbench.data.store import ReplayStore

LOGGED = DQN_FIXTURES.parent / "dqn_replay_logged"
CKPTS = range(5)
GARBAGE = {"action": 33_615_906, "reward": np.nan, "terminal": 7}


def _copy_logged(tmp_path: Path) -> Path:
    dst = tmp_path / "root" / "Breakout" / "1" / "replay_logs"
    shutil.copytree(LOGGED / "Breakout" / "1" / "replay_logs", dst)
    dst.chmod(0o755)  # the fixture's folder is read-only: files are written and deleted here
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def _unwritten(d: Path, ckpt: int) -> np.ndarray:
    """Slots of a checkpoint Dopamine had not written when it saved it (ring not yet wrapped)."""
    add = int(dr.load_npy_gz(d / dr.file_name("add_count", ckpt)))
    cap = len(dr.load_npy_gz(d / dr.file_name("terminal", ckpt)))
    return np.arange(add, cap) if add < cap else np.arange(0)


def _poison(d: Path, ckpt: int, slots: np.ndarray, keys=("observation", "action", "reward", "terminal")) -> None:
    rng = np.random.default_rng(ckpt)
    for key in keys:
        path = d / dr.file_name(key, ckpt)
        a = dr.load_npy_gz(path)
        if key == "observation":
            a[slots] = rng.integers(1, 256, size=a[slots].shape, dtype=np.uint8)
        else:
            a[slots] = GARBAGE[key]
        dr.write_npy_gz(path, a)


def _poison_unwritten(d: Path) -> dict[int, np.ndarray]:
    slots = {c: _unwritten(d, c) for c in CKPTS}
    # the fixture has such slots where the public data has them: the first dump and the final one
    assert slots[0].tolist() == [499] and slots[4].tolist() == list(range(166, 500))
    assert all(len(slots[c]) == 0 for c in (1, 2, 3))
    for c in CKPTS:
        if len(slots[c]):
            _poison(d, c, slots[c])
    return slots


def test_garbage_in_never_written_slots_is_ignored_and_output_equals_the_truth(tmp_path: Path) -> None:
    d = _copy_logged(tmp_path)
    slots = _poison_unwritten(d)
    dop = np.load(LOGGED / "Breakout_dopamine_n3.npz")
    clean = LOGGED / "Breakout" / "1" / "replay_logs"
    for c in CKPTS:
        # the garbage really is in the files
        raw = {k: dr.load_npy_gz(d / dr.file_name(k, c)) for k in GARBAGE}
        if len(slots[c]):
            assert (raw["action"][slots[c]] == 33_615_906).all() and np.isnan(raw["reward"][slots[c]]).all()
        meta = dr.load_checkpoint_meta(d, c)  # before: "action 33615906 at row 499 is outside the minimal action set"
        ref = dr.load_checkpoint_meta(clean, c)
        assert meta.written == ref.written == (meta.add_count if not meta.is_full else meta.capacity)
        np.testing.assert_array_equal(meta.valid_mask(update_horizon=3), ref.valid_mask(update_horizon=3))
        for k in ("action", "reward", "terminal"):
            np.testing.assert_array_equal(getattr(meta, k)[: meta.written], getattr(ref, k)[: ref.written], err_msg=k)
            assert not getattr(meta, k)[meta.written :].any(), k  # never-written slots: zeros, not garbage
        # Dopamine's own sampler output, exactly, wherever Dopamine is right (see the fixture's README)
        idx, agrees = dop[f"ckpt{c}_indices"], dop[f"ckpt{c}_agrees"].astype(bool)
        got = dr.read_transitions(d.parent, c, idx[agrees], n_step=3, gamma=0.99)
        for key in ("state", "action", "reward", "terminal"):
            np.testing.assert_array_equal(got[key], dop[f"ckpt{c}_{key}"][agrees], err_msg=f"ckpt {c} {key}")
        live = dop[f"ckpt{c}_terminal"][agrees] == 0
        np.testing.assert_array_equal(got["next_state"][live], dop[f"ckpt{c}_next_state"][agrees][live])
        whole = dr.load_checkpoint(d, c)
        np.testing.assert_array_equal(whole["observation"][: meta.written],
                                      dr.load_npy_gz(clean / dr.file_name("observation", c))[: meta.written])
        assert not whole["observation"][meta.written :].any()

    # The store (what the samplers read): the same as from the clean files, and the stream's truth.
    got_store = ReplayStore(build_store(d.parent.parent.parent, tmp_path / "s", ["Breakout"], [1], "all",
                                        progress=False))
    ref_store = ReplayStore(build_store(LOGGED, tmp_path / "ref", ["Breakout"], [1], "all", progress=False))
    g, r = got_store.game("Breakout"), ref_store.game("Breakout")
    for name in ("frames", "action", "reward", "terminal", "block", "slot", "starts", "start_seg_end", "episodes"):
        np.testing.assert_array_equal(np.asarray(getattr(g, name)), np.asarray(getattr(r, name)), err_msg=name)
    assert len(g.starts) > 1000
    tr = got_store.transitions("Breakout", np.asarray(g.starts), n_step=3, gamma=0.99)
    stream = np.load(LOGGED / "Breakout_stream.npz")
    f = tr["state"][:, -1, 0, :4].astype(np.int64)
    row = (f[:, 0] | f[:, 1] << 8 | f[:, 2] << 16 | f[:, 3] << 24) - 1  # the stream row each start is
    assert (row >= 0).all()
    np.testing.assert_array_equal(tr["action"], stream["action"][row])
    ret = np.zeros(len(row), np.float32)
    ended = np.zeros(len(row), bool)
    for k in range(3):
        ret += np.where(ended, np.float32(0), np.float32(0.99**k) * stream["reward"][row + k].astype(np.float32))
        ended |= stream["terminal"][row + k].astype(bool)
    np.testing.assert_array_equal(tr["reward"], ret)
    np.testing.assert_array_equal(tr["terminal"].astype(bool), ended)


@pytest.mark.parametrize("key", ["action", "reward", "terminal"])
def test_garbage_in_a_used_row_is_refused_naming_file_array_and_row(tmp_path: Path, key: str) -> None:
    d = _copy_logged(tmp_path)
    _poison_unwritten(d)
    _poison(d, 0, np.array([10]), keys=(key,))  # row 10 of checkpoint 0 is written and read
    value = {"action": "33615906", "reward": "nan", "terminal": "7"}[key]
    pattern = rf"\$store\$_{key}_ckpt\.0\.gz: {key} {value} at row 10 .*\(1 such rows\)"
    with pytest.raises(dr.DQNReplayError, match=pattern):  # the used row, not slot 499 (never written)
        dr.load_checkpoint_meta(d, 0)
    with pytest.raises(dr.DQNReplayError, match=pattern):
        dr.read_transitions(d, 0, [20])
    with pytest.raises(dr.DQNReplayError, match=pattern):
        build_store(d.parent.parent.parent, tmp_path / "s", ["Breakout"], [1], "all", progress=False)
    # a full ring's slots were all written (the cursor's slot holds the oldest row, kept by the store
    # builder as context): garbage there is refused too
    _poison(d, 1, np.array([499]), keys=(key,))
    with pytest.raises(dr.DQNReplayError, match=rf"\$store\$_{key}_ckpt\.1\.gz: {key} {value} at row 499"):
        dr.load_checkpoint_meta(d, 1)
    # repaired, checkpoint 0 loads again (its never-written slot still holds garbage)
    clean = dr.load_npy_gz(LOGGED / "Breakout" / "1" / "replay_logs" / dr.file_name(key, 0))
    bad = dr.load_npy_gz(d / dr.file_name(key, 0))
    bad[10] = clean[10]
    dr.write_npy_gz(d / dr.file_name(key, 0), bad)
    assert dr.load_checkpoint_meta(d, 0).written == 499

"""Issue 17, data: incomplete DQN-Replay checkpoints, impossible values, hostile .npy headers,
empty checkpoints, `record --run` escaping, and the store builder in a foreign folder."""

from __future__ import annotations

import gzip
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from shared_paths import DQN_FIXTURES

from workbench.data import dqn_replay as dr
from workbench.data.build import build_store
from workbench.data.record import RecordError, record
from workbench.data.splits import StoreError


def _copy(tmp_path: Path, game: str = "Pong") -> Path:
    shutil.copytree(DQN_FIXTURES / game, tmp_path / "root" / game)
    return tmp_path / "root" / game / "1" / "replay_logs"


def test_a_checkpoint_missing_its_observation_file_is_an_error_not_dropped(tmp_path):
    d = _copy(tmp_path)
    assert dr.list_checkpoints(d) == [0, 1, 2]
    (d / dr.file_name("observation", 1)).unlink()  # before: listed as [0, 2], and last:1 took checkpoint 2's place
    with pytest.raises(dr.DQNReplayError, match=r"missing DQN-Replay file: .*\$store\$_observation_ckpt\.1\.gz"):
        dr.list_checkpoints(d)
    with pytest.raises(dr.DQNReplayError, match=r"observation_ckpt\.1\.gz"):
        build_store(tmp_path / "root", tmp_path / "store", ["Pong"], [1], "all", progress=False)


def test_an_incomplete_download_and_a_missing_checkpoint_are_errors(tmp_path):
    d = _copy(tmp_path)
    part = d / (dr.file_name("observation", 2) + ".part")
    part.write_bytes(b"\x1f\x8b half")
    with pytest.raises(dr.DQNReplayError, match=r"incomplete downloads.*observation_ckpt\.2\.gz\.part"):
        dr.list_checkpoints(d)
    part.unlink()
    for key in dr.FILE_DTYPES:  # every file of checkpoint 1 gone: a gap, not a shorter run
        (d / dr.file_name(key, 1)).unlink()
    with pytest.raises(dr.DQNReplayError, match=r"lacks checkpoints \[1\] between 0 and 2"):
        dr.list_checkpoints(d)


def _rewrite_array(d: Path, key: str, checkpoint: int, edit) -> None:
    path = d / dr.file_name(key, checkpoint)
    arr = dr.load_npy_gz(path)
    dr.write_npy_gz(path, edit(arr.copy()))


@pytest.mark.parametrize("key,value,pattern", [
    ("reward", 2.0, r"reward_ckpt\.0\.gz: reward 2\.0 at row 10 is not a clipped reward in \[-1, 1\]"),
    ("reward", np.nan, r"reward_ckpt\.0\.gz: reward nan at row 10"),
    ("action", -1, r"action_ckpt\.0\.gz: action -1 at row 10 is outside the minimal action set"),
])
def test_impossible_rewards_and_actions_are_errors_naming_the_file(tmp_path, key, value, pattern):
    d = _copy(tmp_path)

    def edit(a):
        a[10] = value
        return a

    _rewrite_array(d, key, 0, edit)
    with pytest.raises(dr.DQNReplayError, match=pattern):
        dr.load_checkpoint_meta(d, 0)


def test_an_action_outside_the_games_minimal_set_stops_the_store_build(tmp_path):
    d = _copy(tmp_path)  # Pong's minimal set has 6 actions: 0..5

    def edit(a):
        a[10] = 6
        return a

    _rewrite_array(d, "action", 0, edit)
    with pytest.raises(dr.DQNReplayError, match=r"action 6 at row 10 is outside the minimal action set 0\.\.5"):
        build_store(tmp_path / "root", tmp_path / "store", ["Pong"], [1], "all", progress=False)
    assert not (tmp_path / "store" / "manifest.json").exists()


def _gz(path: Path, payload: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(payload)


def test_hostile_npy_headers_are_refused_before_any_allocation(tmp_path):
    long_header = tmp_path / "long.gz"
    # version 2 header with a 4 GB length field: numpy itself refuses headers over 10,000 bytes
    _gz(long_header, b"\x93NUMPY\x02\x00" + (4_000_000_000).to_bytes(4, "little"))
    t0 = time.monotonic()
    with pytest.raises(dr.DQNReplayError, match=r"long\.gz: npy header of 4000000000 bytes is longer than numpy's cap"):
        dr.load_npy_gz(long_header)
    huge = tmp_path / "huge.gz"
    header = dr._npy_header(np.dtype(np.uint8), (10**12, 84, 84))  # 7 PB claimed by a file of a few bytes
    _gz(huge, header + b"\x00" * 100)
    with pytest.raises(dr.DQNReplayError, match=r"huge\.gz: header claims shape \(1000000000000, 84, 84\).*refused"):
        dr.load_npy_gz(huge)
    assert time.monotonic() - t0 < 2  # no allocation, no decompression of the claimed payload


def test_an_empty_checkpoint_is_a_clear_error(tmp_path):
    d = tmp_path / "Pong" / "1" / "replay_logs"
    dr.write_checkpoint(d, 0, observation=np.zeros((0, 84, 84), np.uint8), action=np.zeros(0, np.int32),
                        reward=np.zeros(0, np.float32), terminal=np.zeros(0, np.uint8), add_count=0,
                        invalid_range=np.zeros(0, np.int64))
    with pytest.raises(dr.DQNReplayError, match=r"checkpoint 0 in .* is empty \(0 rows"):
        dr.load_checkpoint_meta(d, 0)  # before: ZeroDivisionError in add_count % capacity


@pytest.mark.parametrize("run", ["../../escape", "/tmp/abs", "..", "a/b"])
def test_record_run_cannot_escape_the_output_folder(tmp_path, run):
    with pytest.raises(RecordError, match="may not lead out of it"):
        record("Pong", 10, tmp_path / "out", run=run, progress=False)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "out").exists()


def test_store_build_refuses_a_non_empty_foreign_folder(tmp_path):
    out = tmp_path / "mine"
    (out / "Pong").mkdir(parents=True)
    (out / "Pong" / "thesis.tex").write_text("months of work")
    with pytest.raises(StoreError, match=r"not empty and is not a store.*Pong"):
        build_store(DQN_FIXTURES, out, ["Pong"], [1], "all", progress=False)
    assert (out / "Pong" / "thesis.tex").read_text() == "months of work"  # before: rmtree(out / "Pong")

"""A built store checks itself (issue 27): every array's sha256 is in the manifest and
``python -m workbench.data.store --verify`` compares them (bit rot in a frame is named); opening a
game range-checks its actions, terminals and rewards, so a damaged store is refused before a batch
is drawn, not trained on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from shared_paths import DQN_FIXTURES

from workbench.data.build import build_store
from workbench.data.sampler import TransitionSampler
from workbench.data.store import ReplayStore, StoreError


@pytest.fixture
def store(tmp_path):
    return build_store(DQN_FIXTURES, tmp_path / "store", ["Pong"], [1], "first:1", progress=False)


def _verify_cli(*paths):
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_ROOT"}
    return subprocess.run([sys.executable, "-m", "workbench.data.store", "--verify", *map(str, paths)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_verify_names_a_frame_with_one_flipped_bit(store):
    ok = _verify_cli(store)
    assert ok.returncode == 0 and "files match" in ok.stdout, ok.stderr
    frames = store / "Pong" / "frames.npy"
    data = bytearray(frames.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit of one pixel, deep inside the array
    frames.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"frames\.npy does not match the sha256 recorded"):
        ReplayStore(store).verify()
    out = _verify_cli(store)
    assert out.returncode == 2 and "frames.npy" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("name,value,what", [("action", 17, "outside the game's 6 actions"),
                                              ("terminal", 7, "not 0 or 1"),
                                              ("reward", np.nan, "not a finite number")])
def test_a_damaged_small_array_is_refused_before_a_batch_is_drawn(store, name, value, what):
    arr = np.load(store / "Pong" / f"{name}.npy", mmap_mode="r+")
    row = len(arr) // 3
    arr[row] = value
    arr.flush()
    del arr
    with pytest.raises(StoreError, match=rf"{name}\.npy: row {row} holds .*{what}"):
        TransitionSampler(store, ["Pong"], batch_size=8, seed=0, prefetch=0, workers=1)


def test_the_manifest_names_the_checkpoints_each_run_gave(store):
    """The split records which checkpoints of each run it used, and what the run lacks."""
    sel = json.loads((store / "manifest.json").read_text())["selections"]
    assert set(sel) == {"Pong/1"}
    assert sel["Pong/1"]["checkpoints"] == [0]  # first:1
    assert sel["Pong/1"]["missing_checkpoints"] == []

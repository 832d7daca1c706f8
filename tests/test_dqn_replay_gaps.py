"""Issue 27: a DQN-Replay run missing checkpoints at either end (or inside) is reported, and a
split names the checkpoints it used.

The runs are real files: the public-layout fixture (``shared/fixtures/dqn_replay_logged``: ring
dumps 0..3 with ``add_count = (k+1) * 500 - 1``, then batch_rl's final partial dump 4) copied into
``tmp_path`` with one checkpoint's files deleted. Splits count over the run's whole range 0..N-1:
one that needs a missing checkpoint (or the run's length, when its end is missing) is an error
naming the run folder, the missing ids and the valid choices; one that does not is honest and
records a warning. Before, the selection was silently counted over whatever files were present.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from shared_paths import DQN_FIXTURES

from workbench.data import dqn_replay as dr
from workbench.data import splits as sp
from workbench.data.build import build_store

LOGGED = DQN_FIXTURES.parent / "dqn_replay_logged"
PUBLIC_CAPACITY = 1_000_000  # the public data's ring


def _run_without(tmp_path: Path, *gone: int) -> Path:
    """The logged fixture's run in ``tmp_path/root``, every file of checkpoints ``gone`` deleted."""
    d = tmp_path / "root" / "Breakout" / "1" / "replay_logs"
    shutil.copytree(LOGGED / "Breakout" / "1" / "replay_logs", d)
    d.chmod(0o755)  # the fixture's folder is read-only: files are written and deleted here
    for p in d.iterdir():
        p.chmod(0o644)
    for c in gone:
        for key in dr.FILE_DTYPES:
            (d / dr.file_name(key, c)).unlink()
    return d


def _choose(split: str | sp.Split, d: Path) -> sp.CheckpointSelection:
    return sp.parse_split(split).choose(dr.list_checkpoints(d))


def _manifest_checkpoints(store: Path) -> list[int]:
    m = json.loads((store / "manifest.json").read_text())
    return [b["checkpoint"] for b in m["games_info"]["Breakout"]["blocks"]]


# ---------------------------------------------------------------------------------------------- the end


def test_a_missing_final_checkpoint_is_reported(tmp_path: Path) -> None:
    d = _run_without(tmp_path, 4)  # the final partial dump (a few public runs lack it)
    # before: "expert" silently took checkpoint 3 (the last 20% of the 4 present)
    with pytest.raises(dr.DQNReplayError, match=re.escape(str(d)) + r".*missing: \[4\].*first:K with K <= 4"):
        build_store(d.parent.parent.parent, tmp_path / "s", ["Breakout"], [1], "expert", progress=False)
    assert not (tmp_path / "s" / "manifest.json").exists()
    run = dr.list_checkpoints(d)
    assert run == [0, 1, 2, 3] and run.missing == (4,) and not run.end_known
    for split in ("expert", "last:0.4", sp.Split("last", k=1), "all", "near_optimal", "fraction:0.3", "sub_optimal"):
        with pytest.raises(dr.DQNReplayError) as e:
            _choose(split, d)
        msg = str(e.value)
        assert str(d) in msg and "missing: [4]" in msg, msg
        assert "valid choices: first:K with K <= 4" in msg, msg


def test_a_split_that_does_not_need_the_missing_end_records_a_warning_and_its_ids(tmp_path: Path) -> None:
    d = _run_without(tmp_path, 4)
    with pytest.warns(UserWarning, match=r"lacks checkpoints \[4\] \(and any after them\)"):
        out = build_store(d.parent.parent.parent, tmp_path / "s", ["Breakout"], [1], "first:2", progress=False)
    assert _manifest_checkpoints(out) == [0, 1]
    with pytest.warns(dr.IncompleteRunWarning, match=r"lacks checkpoints \[4\] \(and any after them\)"):
        sel = _choose("first:2", d)
    assert sel == [0, 1] and sel.checkpoints == [0, 1]
    prov = sel.provenance()
    assert prov["checkpoints"] == [0, 1] and prov["missing_checkpoints"] == [4]
    assert prov["replay_logs"] == str(d) and prov["expected_is_lower_bound"] and prov["run_checkpoints"] == [0, 1, 2, 3]
    assert len(prov["warnings"]) == 1 and "first:2" in prov["warnings"][0]
    with pytest.raises(dr.DQNReplayError, match=r"needs checkpoints \[4\], which are missing"):
        _choose("first:5", d)


def test_a_public_size_run_missing_its_end_names_every_checkpoint_up_to_50(tmp_path: Path) -> None:
    """Only the last checkpoint's terminal header and add_count decide where a run ends; the public
    data's 1,000,000-row ring holds checkpoints 0..50."""
    d = tmp_path / "Pong" / "1" / "replay_logs"
    d.mkdir(parents=True)
    small = {"observation": np.zeros((1, 84, 84), np.uint8), "action": np.zeros(1, np.int32),
             "reward": np.zeros(1, np.float32), "terminal": np.zeros(1, np.uint8), "invalid_range": np.zeros(1)}
    for c in range(30):
        for key, a in small.items():
            dr.write_npy_gz(d / dr.file_name(key, c), a.astype(dr.FILE_DTYPES[key]))
        dr.write_npy_gz(d / dr.file_name("add_count", c), np.array((c + 1) * PUBLIC_CAPACITY - 1, np.int64))
    dr.write_npy_gz(d / dr.file_name("terminal", 29), np.zeros(PUBLIC_CAPACITY, np.uint8))
    with pytest.raises(dr.DQNReplayError, match=r"missing: \[30\.\.50\].*a public DQN-Replay run holds 0\.\.50"):
        _choose("expert", d)  # before: checkpoints 24..29, the last 20% of the 30 present
    run = dr.list_checkpoints(d)
    assert run.expected == 51 and run.missing == tuple(range(30, 51)) and not run.end_known
    with pytest.warns(dr.IncompleteRunWarning):
        assert _choose("first:10", d) == list(range(10))


# ---------------------------------------------------------------------------------------------- the start


def test_a_missing_first_checkpoint_is_reported(tmp_path: Path) -> None:
    d = _run_without(tmp_path, 0)
    # before: first:2 silently took checkpoints 1 and 2
    with pytest.raises(dr.DQNReplayError, match=re.escape(str(d)) + r".*needs checkpoints \[0\]"):
        build_store(d.parent.parent.parent, tmp_path / "s0", ["Breakout"], [1], "first:2", progress=False)
    run = dr.list_checkpoints(d)
    assert run == [1, 2, 3, 4] and run.missing == (0,) and run.end_known and run.expected == 5
    for split in ("first:1", "sub_optimal", "all", "n:300", sp.Split("last", k=5)):
        with pytest.raises(dr.DQNReplayError) as e:
            _choose(split, d)
        msg = str(e.value)
        assert str(d) in msg and "missing: [0]" in msg, msg
        assert "valid choices: last:F with round(F * 5) <= 4" in msg, msg


def test_last_fractions_count_over_the_whole_run_when_the_first_is_missing(tmp_path: Path) -> None:
    d = _run_without(tmp_path, 0)
    # before: last:0.7 of the 4 present took round(2.8) = 3 checkpoints [2, 3, 4]; of the run's 5 it is 4
    with pytest.warns(UserWarning, match=r"lacks checkpoints \[0\], which this split does not need"):
        sel = _choose("last:0.7", d)
    assert sel == [1, 2, 3, 4] and sel.provenance()["missing_checkpoints"] == [0]
    with pytest.warns(dr.IncompleteRunWarning):
        assert _choose("expert", d) == [4]
    with pytest.warns(dr.IncompleteRunWarning):
        out = build_store(d.parent.parent.parent, tmp_path / "s", ["Breakout"], [1], "last:0.4", progress=False)
    assert _manifest_checkpoints(out) == [3, 4]


# ---------------------------------------------------------------------------------------------- inside


def test_a_gap_inside_names_the_run_the_ids_and_the_choices(tmp_path: Path) -> None:
    d = _run_without(tmp_path, 2)
    shutil.copytree(LOGGED / "Breakout" / "1", d.parent.parent / "2")  # an intact run beside it
    with pytest.raises(dr.DQNReplayError) as e:
        dr.list_checkpoints(d)
    msg = str(e.value)
    assert msg.startswith(str(d)) and "lacks checkpoints [2] between 0 and 4" in msg, msg
    assert "valid choices: another run of Breakout: ['2']; or download the missing checkpoints' files" in msg, msg
    with pytest.raises(dr.DQNReplayError, match=r"lacks checkpoints \[2\] between 0 and 4"):
        build_store(d.parent.parent.parent, tmp_path / "s", ["Breakout"], [1], "expert", progress=False)
    # the run's coverage without the refusal: a split decides what it needs
    run = dr.run_checkpoints(d)
    assert run == [0, 1, 3, 4] and run.missing == (2,) and run.end_known
    with pytest.warns(dr.IncompleteRunWarning):
        assert sp.parse_split("first:2").choose(run) == [0, 1]
    with pytest.raises(dr.DQNReplayError, match=r"needs checkpoints \[2\]"):
        sp.parse_split("last:0.6").choose(run)


def test_a_complete_run_names_the_checkpoints_it_used() -> None:
    d = LOGGED / "Breakout" / "1" / "replay_logs"
    # a bare list of ids must be a whole run: anything else would be counted wrong (before: [4])
    with pytest.raises(sp.StoreError, match=r"0\.\.N-1.*list_checkpoints"):
        sp.parse_split("expert").choose([1, 2, 3, 4])
    run = dr.list_checkpoints(d)
    assert run == [0, 1, 2, 3, 4] and run.missing == () and run.end_known
    sel = _choose("expert", d)
    assert sel == [4] and sel.warnings == []
    assert sel.provenance() == {
        "split": "expert", "checkpoints": [4], "replay_logs": str(d), "run_checkpoints": [0, 1, 2, 3, 4],
        "expected_checkpoints": 5, "expected_is_lower_bound": False, "missing_checkpoints": [], "warnings": [],
    }

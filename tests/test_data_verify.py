"""``python -m workbench.data.verify``: checking a local DQN-Replay copy (issue 28.2).

Each test damages a synthetic copy in the real on-disk format the way a download goes wrong (a
file cut short, a checkpoint never fetched, a one-based renumbering, a file changed after the copy
was recorded) and checks the report names it and the exit code is 2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from shared_paths import DQN_FIXTURES

from workbench.data import dqn_replay as dr
from workbench.data import verify as vf

GAMES, CKPTS, ROWS = ["Breakout", "Pong"], 3, 500
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("verify_src")
    for i, g in enumerate(GAMES):
        dr.write_synthetic_run(r / g / "1" / "replay_logs", CKPTS, ROWS, seed=i, mean_episode=60, salt=i)
    return r


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    shutil.copytree(pristine, tmp_path / "copy")
    return tmp_path / "copy"


def _logs(root: Path, game: str = "Pong") -> Path:
    return root / game / "1" / "replay_logs"


def _run(root: Path, *args: str, capsys) -> tuple[int, str]:
    rc = vf.main([str(root), *args])
    return rc, capsys.readouterr().out


def _problems(out: str) -> list[str]:
    return [ln[len("problem: "):] for ln in out.splitlines() if ln.startswith("problem: ")]


def test_complete_copy_passes(root: Path, capsys) -> None:
    rc, out = _run(root, capsys=capsys)
    assert rc == 0, out
    assert "Pong/1: checkpoints [0..2] of 0..2 complete; 18 files checked: ok" in out
    assert "Breakout/1: checkpoints [0..2] of 0..2 complete; 18 files checked: ok" in out
    assert out.strip().endswith("verify: ok") and not _problems(out)
    rep = vf.verify_root(root, ["pong"])  # names as the reader matches them
    assert rep.ok and [(r.game, r.checkpoints, r.missing, r.renumbered) for r in rep.runs] == [("Pong", [0, 1, 2], [],
                                                                                                  False)]


def test_dopamine_written_files_pass(capsys) -> None:
    """The cheap length check holds for files Dopamine itself wrote (not only for ours)."""
    rep = vf.verify_root(DQN_FIXTURES)
    assert rep.ok, rep.problems
    assert {r.game: r.files for r in rep.runs} == {"Breakout": 18, "Pong": 18}


@pytest.mark.parametrize("key,keep", [("observation", 0.5), ("reward", -3), ("add_count", -1)])
def test_truncated_file_is_named(root: Path, capsys, key: str, keep: float) -> None:
    p = _logs(root) / dr.file_name(key, 1)
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)] if keep > 0 else data[: int(keep)])
    rc, out = _run(root, capsys=capsys)
    assert rc == 2
    (problem,) = _problems(out)
    assert problem.startswith(f"Pong/1: {p}: ") and ("truncated" in problem or "corrupt" in problem), problem
    assert "Breakout/1: checkpoints [0..2] of 0..2 complete; 18 files checked: ok" in out
    assert "Pong/1: checkpoints [0, 2] of 0..2 complete; 18 files checked: 1 problem" in out
    assert out.strip().endswith("verify: 1 problem")


def test_missing_checkpoint_and_incomplete_ones_are_named(root: Path, capsys) -> None:
    for key in dr.FILE_DTYPES:  # Breakout: checkpoint 1 never fetched
        (_logs(root, "Breakout") / dr.file_name(key, 1)).unlink()
    (_logs(root) / dr.file_name("invalid_range", 2)).unlink()  # Pong: checkpoint 2 lacks a file
    partial = _logs(root) / (dr.file_name("observation", 0) + ".gstmp")  # an interrupted gsutil copy
    partial.write_bytes(b"\x1f\x8b")
    rc, out = _run(root, capsys=capsys)
    assert rc == 2
    problems = _problems(out)
    assert "Breakout/1: missing checkpoints [1] of 0..2; splits that need them refuse this run" in problems
    assert any(p.startswith("Pong/1: checkpoint 2 is incomplete: missing ['invalid_range_ckpt.2.gz']")
               for p in problems), problems
    assert any(str(partial) in p and "partial download" in p for p in problems), problems
    assert len(problems) == 3, problems


def test_missing_final_dump_of_a_logged_run(tmp_path: Path, capsys) -> None:
    """A batch_rl run whose last file is a ring dump lacks its final dump: named, with the reader's reason."""
    src = DQN_FIXTURES.parent / "dqn_replay_logged" / "Breakout" / "1" / "replay_logs"
    d = tmp_path / "r" / "Breakout" / "1" / "replay_logs"
    shutil.copytree(src, d)
    last = max(dr.list_checkpoints(d))
    for key in dr.FILE_DTYPES:
        (d / dr.file_name(key, last)).unlink(missing_ok=True)
    rc, out = _run(tmp_path / "r", capsys=capsys)
    assert rc == 2
    (problem,) = _problems(out)
    assert problem.startswith(f"Breakout/1: missing checkpoints [{last}] (and any after them)"), problem
    assert "ring dump" in problem


def test_renumbered_copy_is_reported_as_renumbered(root: Path, capsys) -> None:
    d = _logs(root)
    for c in reversed(range(CKPTS)):  # a one-based copy: 0..2 -> 1..3
        for key in dr.FILE_DTYPES:
            (d / dr.file_name(key, c)).rename(d / dr.file_name(key, c + 1))
    rc, out = _run(root, capsys=capsys)
    assert rc == 2
    (problem,) = _problems(out)
    assert problem.startswith("Pong/1: checkpoints are numbered 1..3: a renumbered copy"), problem
    assert "rename each checkpoint i to i-1" in problem and "missing" not in problem
    (pong,) = [r for r in vf.verify_root(root).runs if r.game == "Pong"]
    assert pong.renumbered and pong.checkpoints == [1, 2, 3]


def test_a_run_lacking_checkpoint_0_is_not_called_renumbered(root: Path, capsys) -> None:
    """Checkpoint 1 of this run is its second dump (its ring wrapped): 0 is missing, not renamed."""
    for key in dr.FILE_DTYPES:
        (_logs(root) / dr.file_name(key, 0)).unlink()
    rc, out = _run(root, capsys=capsys)
    assert rc == 2
    assert _problems(out) == ["Pong/1: missing checkpoints [0] of 0..2; splits that need them refuse this run"]


def test_manifest_names_changed_and_truncated_files(root: Path, capsys) -> None:
    rc, out = _run(root, "--write-manifest", capsys=capsys)
    assert rc == 0, out
    mpath = root / vf.MANIFEST_NAME
    manifest = json.loads(mpath.read_text())
    assert len(manifest["files"]) == len(GAMES) * CKPTS * len(dr.FILE_DTYPES)
    rec = manifest["files"]["Pong/1/replay_logs/$store$_observation_ckpt.1.gz"]
    obs = _logs(root) / dr.file_name("observation", 1)
    assert rec["size"] == obs.stat().st_size and len(rec["sha256"]) == 64
    rc, out = _run(root, capsys=capsys)
    assert rc == 0 and "unchanged" in out, out

    # a changed byte inside the compressed payload: header and trailer intact, so only the
    # manifest (or --full) sees it
    data = bytearray(obs.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obs.write_bytes(bytes(data))
    rc, out = _run(root, capsys=capsys)
    assert rc == 2
    assert _problems(out) == [f"{obs}: changed: its sha256 differs from the one {vf.MANIFEST_NAME} records"]
    rc, out = _run(root, "--sizes-only", capsys=capsys)
    assert rc == 0, out  # same size: the size comparison cannot see it
    rc, out = _run(root, "--full", "--sizes-only", capsys=capsys)
    assert rc == 2 and any(p.startswith(f"Pong/1: {obs}: ") for p in _problems(out)), out

    # a truncated file: named twice (its length, and the manifest's size); the manifest is not rewritten
    rew = _logs(root, "Breakout") / dr.file_name("reward", 2)
    size = rew.stat().st_size
    rew.write_bytes(rew.read_bytes()[:-5])
    before = mpath.read_bytes()
    rc, out = _run(root, "--write-manifest", capsys=capsys)
    assert rc == 2
    problems = _problems(out)
    assert f"{rew}: changed: {size - 5} bytes, {vf.MANIFEST_NAME} records {size} (truncated)" in problems
    assert any(p.startswith(f"Breakout/1: {rew}: truncated") for p in problems), problems
    assert len(problems) == 3, problems
    assert "not written: fix the problems first" in out
    assert mpath.read_bytes() == before

    # a deleted file that the manifest lists
    (_logs(root, "Breakout") / dr.file_name("action", 0)).unlink()
    problems = _problems(_run(root, "--games", "Breakout", capsys=capsys)[1])
    assert any(p.endswith("listed in workbench-sha256.json (" + str(
        manifest["files"]["Breakout/1/replay_logs/$store$_action_ckpt.0.gz"]["size"]) + " bytes) but missing")
        for p in problems), problems


def test_command_line_exit_codes(root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "workbench.data.verify", *args], capture_output=True, text=True,
                              cwd=REPO, env=env, timeout=120)

    r = cli(str(root), "--games", "Pong,Breakout", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["ok"] and [run["checkpoints"] for run in rep["runs"]] == [[0, 1, 2], [0, 1, 2]]
    (_logs(root) / dr.file_name("terminal", 2)).write_bytes(b"")
    r = cli(str(root))
    assert r.returncode == 2 and "problem: Pong/1: " in r.stdout and "terminal_ckpt.2.gz" in r.stdout
    r = cli(str(tmp_path / "nowhere"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    r = cli(str(root), "--games", "Asterix")
    assert r.returncode == 2 and "unknown game 'Asterix'" in r.stderr

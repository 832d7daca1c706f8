"""Distributed store builds (issue 28.4): ``python -m workbench.data.build ... --executor slurm|local``.

One submitit job per game (here submitit's local executor, the Slurm code path as tests/test_sweep.py
runs it), then a merge by the submitting process that writes the manifest. The store must be the
same, byte for byte, as ``build_store(..., workers=1)`` (only the manifest's ``created`` differs); a
failed job is reported by its game and a rerun resumes without rebuilding finished games;
``--dry-run`` lists the jobs and writes nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from store_files import store_files

from workbench.data import build as bd
from workbench.data import dqn_replay as dr

GAMES, CKPTS, ROWS = ["Pong", "Breakout"], 2, 1000


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("dist_root")
    for i, g in enumerate(GAMES):
        dr.write_synthetic_run(r / g / "1" / "replay_logs", CKPTS, ROWS, seed=20 + i, mean_episode=60, salt=i)
    return r


def _manifest_bytes(store: Path) -> bytes:
    """The manifest's bytes with its ``created`` stamp blanked (the stamp only)."""
    m = json.loads((store / "manifest.json").read_text())
    assert m["created"]
    text = (store / "manifest.json").read_text()
    return text.replace(json.dumps(m["created"]), '"-"', 1).encode()


def _cli(root: Path, out: Path, split: str, *extra: str) -> list[str]:
    return [str(root), "--games", ",".join(GAMES), "--runs", "1", "--split", split, "--seed", "3", "--out", str(out),
            "--no-progress", "--executor", "local", "--timeout-min", "10", *extra]


def _same_store(a_dir: Path, b_dir: Path) -> None:
    a, b = store_files(a_dir), store_files(b_dir)
    assert sorted(a) == sorted(b)
    assert {f"{g}/frames.npy" for g in GAMES} <= set(a)
    different = [k for k in a if a[k] != b[k]]
    assert not different, f"files differ between the distributed and the single-process build: {different}"
    assert _manifest_bytes(a_dir) == _manifest_bytes(b_dir)


@pytest.mark.slow  # submitit's local jobs are subprocesses
@pytest.mark.parametrize("split", ["all", "n:200:episodes"])
def test_local_executor_builds_the_same_store_byte_for_byte(root: Path, tmp_path: Path, capsys, split: str) -> None:
    one = bd.build_store(root, tmp_path / "one", GAMES, [1], split, seed=3, progress=False, workers=1)
    log = tmp_path / "build.jsonl"
    assert bd.main(_cli(root, tmp_path / "dist", split, "--log", str(log))) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["store"] == str(tmp_path / "dist") and set(printed["games"]) == set(GAMES)
    _same_store(one, tmp_path / "dist")
    assert not (tmp_path / "dist" / ".build").exists()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    submitted = [e for e in events if e["event"] == "jobs_submitted"]
    assert len(submitted) == 1 and submitted[0]["games"] == GAMES and len(submitted[0]["job_ids"]) == 2
    assert [e["event"] for e in events].count("build_done") == 1  # the manifest: written once, by the merge
    # A complete store is returned as is: nothing is submitted again.
    assert bd.main(_cli(root, tmp_path / "dist", split, "--log", str(log))) == 0
    assert [json.loads(line)["event"] for line in log.read_text().splitlines()].count("jobs_submitted") == 1


def _copy_with_breakout_cut(root: Path, tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A copy of the root whose Breakout checkpoint 1 observation file is cut short (its header
    readable, so the plan is the same; its data not): (copy, that file, its good bytes)."""
    src = tmp_path / "src"
    shutil.copytree(root, src)
    obs = src / "Breakout" / "1" / "replay_logs" / dr.file_name("observation", 1)
    good = obs.read_bytes()
    obs.write_bytes(good[: len(good) // 2])
    return src, obs, good


@pytest.mark.slow
def test_a_failed_job_names_its_game_and_a_rerun_resumes(root: Path, tmp_path: Path, capsys) -> None:
    src, obs, good = _copy_with_breakout_cut(root, tmp_path)
    out, log = tmp_path / "dist", tmp_path / "build.jsonl"

    assert bd.main(_cli(src, out, "all", "--log", str(log))) == 2
    err = capsys.readouterr().err
    assert "game Breakout" in err and "1 of 2 build job(s) failed" in err and "game Pong" not in err, err
    assert "DQNReplayError" in err and "truncated or corrupt gzip" in err, err  # the job's own error
    assert not (out / "manifest.json").exists()
    assert (out / ".build" / "games" / "Pong.json").is_file()
    assert not (out / ".build" / "games" / "Breakout.json").exists()
    assert (out / ".build" / "done" / "Breakout__1__0.json").is_file()  # its first checkpoint is kept
    pong = {p: p.stat().st_mtime_ns for p in (out / "Pong").iterdir()}

    # the dry run of the rerun lists only the unfinished game, and writes nothing
    assert bd.main(_cli(src, out, "all", "--dry-run")) == 0
    dry = json.loads(capsys.readouterr().out)
    assert [j["game"] for j in dry["jobs"]] == ["Breakout"] and dry["jobs"][0]["checkpoints_done"] == 1

    obs.write_bytes(good)
    assert bd.main(_cli(src, out, "all", "--log", str(log))) == 0
    events = [json.loads(line) for line in log.read_text().splitlines()]
    submitted = [e["games"] for e in events if e["event"] == "jobs_submitted"]
    assert submitted == [GAMES, ["Breakout"]]  # Pong, finished, is not rebuilt
    assert pong == {p: p.stat().st_mtime_ns for p in (out / "Pong").iterdir() if p.name in {q.name for q in pong}}
    one = bd.build_store(src, tmp_path / "one", GAMES, [1], "all", seed=3, progress=False)
    _same_store(one, out)


def test_dry_run_with_executor_prints_the_jobs_and_writes_nothing(root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "store"
    assert bd.main(_cli(root, out, "n:200:episodes", "--dry-run", "--slurm-partition", "cpu")) == 0
    res = json.loads(capsys.readouterr().out)
    assert [j["game"] for j in res["jobs"]] == GAMES
    assert all(j["checkpoints"] == CKPTS and j["checkpoints_done"] == 0 and j["rows"] > 0 for j in res["jobs"])
    assert res["executor"]["cluster"] == "local" and res["executor"]["partition"] == "cpu"
    assert res["executor"]["timeout_min"] == 10 and not res["complete"]
    assert not out.exists()


def test_bad_distributed_arguments_are_refused(root: Path, tmp_path: Path, capsys) -> None:
    args = _cli(root, tmp_path / "s", "all")
    assert bd.main(args[: args.index("--out")] + args[args.index("--out") + 2:]) == 2
    assert "--out STORE is required with --executor" in capsys.readouterr().err
    assert bd.main(_cli(root, tmp_path / "s", "all", "--workers", "2")) == 2
    assert "--workers" in capsys.readouterr().err
    assert bd.main(_cli(root, tmp_path / "s", "all", "--slurm-arg", "account")) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def _hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding ``path``'s flock (an earlier submission's job still running)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    code = ("import fcntl, os, sys, time\n"
            f"fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.pwrite(fd, b'{\"pid\": %d, \"job\": \"4242\"}' % os.getpid(), 0)\n"
            "print('held', flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_a_rerun_while_an_earlier_job_still_runs_leaves_that_game_alone(root: Path, tmp_path: Path, capsys) -> None:
    src, obs, good = _copy_with_breakout_cut(root, tmp_path)
    out = tmp_path / "dist"
    assert bd.main(_cli(src, out, "all")) == 2  # Pong done, Breakout failed: a folder to resume
    capsys.readouterr()
    obs.write_bytes(good)
    # The submitting process was killed and rerun while Breakout's job of that submission still runs.
    holder = _hold_lock(out / ".build" / "locks" / "Breakout.lock")
    try:
        before = {p.name: p.stat().st_mtime_ns for p in (out / "Breakout").iterdir()}
        assert bd.main(_cli(src, out, "all")) == 2
        err = capsys.readouterr().err
        assert "game Breakout" in err and "being built by another process" in err and str(holder.pid) in err, err
        assert {p.name: p.stat().st_mtime_ns for p in (out / "Breakout").iterdir()} == before  # not touched
        assert not (out / "manifest.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # A second submitter is refused before it submits anything.
    holder = _hold_lock(out / ".build" / "locks" / "submit.lock")
    try:
        assert bd.main(_cli(src, out, "all")) == 2
        assert "its job submission" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert bd.main(_cli(src, out, "all")) == 0  # the holder is gone: the rerun finishes
    _same_store(bd.build_store(src, tmp_path / "one", GAMES, [1], "all", seed=3, progress=False), out)

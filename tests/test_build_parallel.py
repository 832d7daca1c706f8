"""Parallel store builds (issue 28.1) and the builder's command line (issue 28.2).

A store built with ``workers=2`` must be the same, byte for byte, as one built with ``workers=1``
(only the manifest's ``created`` stamp differs), for a split that keeps everything and for a
subsampled one; progress and the JSON-lines log stay in the parent; a worker's error stops the
build without a manifest; a build interrupted with one worker count resumes with another.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from store_files import store_files

from workbench.data import build as bd
from workbench.data import dqn_replay as dr
from workbench.data import store as st
from workbench.data.splits import StoreError

GAMES, CKPTS, ROWS = ["Pong", "Breakout"], 3, 1000
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("par_root")
    for i, g in enumerate(GAMES):
        dr.write_synthetic_run(r / g / "1" / "replay_logs", CKPTS, ROWS, seed=10 + i, mean_episode=60, salt=i)
    return r


def _manifest(store: Path) -> dict:
    m = json.loads((store / "manifest.json").read_text())
    assert m.pop("created")
    return m


class _Bar:
    """Stands in for the progress bar: records the rows the parent's bar was told about."""

    instances: list[_Bar] = []

    def __init__(self, total: int = 0, **_: object) -> None:
        self.total, self.n = total, 0
        _Bar.instances.append(self)

    def update(self, n: int) -> None:
        self.n += int(n)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("split", ["all", "n:300:episodes"])
def test_two_workers_build_the_same_store_byte_for_byte(root: Path, tmp_path: Path, monkeypatch, split: str) -> None:
    one = bd.build_store(root, tmp_path / "one", GAMES, [1], split, seed=3, progress=False, workers=1)
    _Bar.instances.clear()
    monkeypatch.setattr(bd, "progress_bar", _Bar)
    log = tmp_path / "build.jsonl"
    two = bd.build_store(root, tmp_path / "two", GAMES, [1], split, seed=3, log=log, workers=2)

    a, b = store_files(one), store_files(two)
    assert sorted(a) == sorted(b)
    assert {k for k in a if k.endswith(".npy")} >= {f"{g}/{n}.npy" for g in GAMES for n in st.STORE_ARRAYS}
    different = [k for k in a if a[k] != b[k]]
    assert not different, f"files differ between workers=1 and workers=2: {different}"
    assert _manifest(one) == _manifest(two)
    assert not (two / ".build").exists()
    rows = sum(st.ReplayStore(two).rows(g) for g in GAMES)
    assert rows > 0
    if split == "all":
        assert rows == len(GAMES) * CKPTS * ROWS  # full rings of new rows: every row is kept
    else:
        assert all(len(st.ReplayStore(two).game(g).starts) == 300 for g in GAMES)
    assert st.ReplayStore(two).verify() == len(GAMES) * len(st.STORE_ARRAYS)  # every digest matches

    # progress: the parent's bar saw every row; the log: one line per checkpoint, written by the parent
    (bar,) = _Bar.instances
    assert bar.total == rows and bar.n == rows
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in events][0] == "build_start" and events[-1]["event"] == "build_done"
    assert {"event": "build_workers", "workers": 2}.items() <= next(e for e in events
                                                                   if e["event"] == "build_workers").items()
    done = [e for e in events if e["event"] == "checkpoint_done"]
    assert sorted((e["game"], e["checkpoint"]) for e in done) == sorted((g, c) for g in GAMES for c in range(CKPTS))
    assert sum(e["rows"] for e in done) == rows
    assert all(e["worker"] != os.getpid() for e in done)  # converted in worker processes
    assert all(e["worker_peak_rss_kb"] > 0 for e in done)  # each worker's own peak memory


@pytest.mark.parametrize("kill_at", [3, 5])  # 5: every block of Pong done, only its finishing is left
def test_interrupted_build_resumes_with_another_worker_count(root: Path, tmp_path: Path, monkeypatch,
                                                             kill_at: int) -> None:
    split = "fraction:0.5"
    clean = bd.build_store(root, tmp_path / "clean", GAMES, [1], split, seed=1, progress=False)
    real_copy, calls = bd._copy_frames, {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KeyboardInterrupt("simulated kill")
        return real_copy(*a, **k)

    monkeypatch.setattr(bd, "_copy_frames", failing)
    out = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        bd.build_store(root, out, GAMES, [1], split, seed=1, progress=False)
    assert len(list((out / ".build" / "done").glob("*.json"))) == kill_at - 1
    monkeypatch.setattr(bd, "_copy_frames", real_copy)
    log = tmp_path / "resume.jsonl"
    bd.build_store(root, out, GAMES, [1], split, seed=1, progress=False, workers=2, log=log)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events[0]["event"] == "build_resume"
    assert len([e for e in events if e["event"] == "checkpoint_done"]) == len(GAMES) * CKPTS - (kill_at - 1)
    assert store_files(out) == store_files(clean)
    assert _manifest(out) == _manifest(clean)


def test_worker_error_stops_the_build_and_names_the_file(root: Path, tmp_path: Path) -> None:
    src = tmp_path / "root"
    for g in GAMES:
        (src / g / "1").mkdir(parents=True)
        (src / g / "1" / "replay_logs").symlink_to(root / g / "1" / "replay_logs", target_is_directory=True)
    # a copy of Breakout whose checkpoint 1 observation file is damaged past its header: planning
    # (which reads only the header) passes, the worker converting it fails
    bad = src / "Breakout" / "1" / "replay_logs"
    bad.unlink()
    bad.mkdir()
    for p in (root / "Breakout" / "1" / "replay_logs").iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    obs = bad / dr.file_name("observation", 1)
    data = bytearray(obs.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)
    obs.write_bytes(bytes(data))
    out = tmp_path / "s"
    with pytest.raises(dr.DQNReplayError, match=r"Breakout/1/replay_logs/\$store\$_observation_ckpt\.1\.gz: "):
        bd.build_store(src, out, GAMES, [1], "all", progress=False, workers=2)
    assert not (out / "manifest.json").exists()
    assert (out / ".build" / "plan.json").exists()


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.slow
def test_killed_parallel_build_leaves_no_workers_and_resumes(tmp_path: Path) -> None:
    """SIGKILL of the building process mid-build: its workers exit too (none is left running or
    idle), there is no manifest, and a rerun completes the same store a clean build makes."""
    src = tmp_path / "root"
    for i, g in enumerate(GAMES):
        dr.write_synthetic_run(src / g / "1" / "replay_logs", 3, 10_000, seed=i, salt=i)
    out = tmp_path / "s"
    code = f"import workbench.data.build as bd; bd.build_store({str(src)!r}, {str(out)!r}, {GAMES!r}, [1], 'all', " \
           "progress=False, workers=2)"
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".build/done/*.json")) and p.poll() is None:
        time.sleep(0.02)
    workers = [c for c in _children(p.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text(errors="replace")]
    p.kill()
    p.wait()
    assert not (out / "manifest.json").exists(), "the build finished before the kill: make the data larger"
    assert len(workers) == 2
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not [w for w in workers if _alive(w)], "workers outlived their killed build"
    bd.build_store(src, out, GAMES, [1], "all", progress=False, workers=2)
    clean = bd.build_store(src, tmp_path / "clean", GAMES, [1], "all", progress=False)
    assert store_files(out) == store_files(clean)
    assert _manifest(out) == _manifest(clean)


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_bad_worker_count_is_refused(root: Path, tmp_path: Path, workers) -> None:
    with pytest.raises(StoreError, match="workers must be an int >= 1"):
        bd.build_store(root, tmp_path / "s", GAMES, [1], "all", progress=False, workers=workers)
    assert not (tmp_path / "s").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "workbench.data.build", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


def test_cli_dry_run_prints_the_plan_and_writes_nothing(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    r = _cli(str(root), "--games", "Pong,Breakout", "--runs", "1", "--split", "first:2", "--out", str(out),
             "--dry-run")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert not out.exists()
    assert plan["games"] == GAMES and plan["runs"] == ["1"]
    for g in GAMES:
        assert plan["per_game"][g]["runs"]["1"]["checkpoints"] == [0, 1]
    # the plan's numbers are those of the store the same arguments build
    s = st.ReplayStore(bd.build_store(root, tmp_path / "real", GAMES, [1], "first:2", progress=False))
    assert plan["rows"] == sum(s.rows(g) for g in GAMES)
    assert plan["starts"] == sum(len(s.game(g).starts) for g in GAMES)
    assert plan["frames_bytes"] == plan["rows"] * 84 * 84
    frames_on_disk = sum((tmp_path / "real" / g / "frames.npy").stat().st_size for g in GAMES)
    store_on_disk = sum(p.stat().st_size for p in (tmp_path / "real").rglob("*") if p.is_file())
    assert plan["frames_bytes"] <= frames_on_disk <= store_on_disk <= plan["disk_bytes"]
    # the time estimate: measured on a sample of one chosen observation file, over every row the build reads
    t = plan["time"]
    assert t["rows_read"] == len(GAMES) * 2 * ROWS  # first:2 reads two whole checkpoints per game
    assert t["sample"]["rows"] == ROWS and t["sample"]["file"].endswith(dr.file_name("observation", 0))
    assert t["read_rows_per_s"] > 0
    assert t["core_hours"] == pytest.approx(t["rows_read"] / t["read_rows_per_s"] / 3600, rel=0.01, abs=1e-3)


@pytest.mark.slow
def test_cli_builds_with_workers_and_errors_are_one_line(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    r = _cli(str(root), "--games", "Pong", "--runs", "1", "--split", "n:200", "--out", str(out), "--workers", "2",
             "--seed", "4")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["games"]["Pong"]["starts"] == 200
    ref = bd.build_store(root, tmp_path / "ref", ["Pong"], [1], "n:200", seed=4, progress=False)
    assert store_files(out) == store_files(ref)
    assert st.ReplayStore(out).verify() == len(st.STORE_ARRAYS)

    for args, pattern in [
        (["--games", "Asterix", "--out", str(tmp_path / "x")], r"unknown game 'Asterix'.*Breakout"),
        (["--games", "Pong", "--split", "bogus", "--out", str(tmp_path / "x")], r"invalid split 'bogus'"),
        (["--games", "Pong", "--runs", "7", "--out", str(tmp_path / "x")], r"unknown run '7'"),
        (["--games", "Pong"], r"--out STORE is required"),
    ]:
        r = _cli(str(root), *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert re.search(pattern, lines[0]), lines[0]
        assert not (tmp_path / "x").exists()
    r = _cli(str(tmp_path / "nowhere"), "--games", "Pong", "--dry-run")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr


def test_blocks_tile_their_game_rows() -> None:
    """The check that guards concurrent writers: overlapping or gapped blocks are refused."""
    def blk(start: int, rows: int) -> bd._Block:
        return bd._Block("Pong", "1", 0, 10, 10, 10, True, row_start=start, rows=rows)

    bd._check_disjoint({"Pong": [blk(0, 5), blk(5, 3), blk(8, 0)]})
    with pytest.raises(AssertionError, match="starts at row 4, expected 5"):
        bd._check_disjoint({"Pong": [blk(0, 5), blk(4, 3)]})

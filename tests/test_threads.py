"""The thread policy follows the CPUs a process may use: affinity mask, cgroup quota, Slurm."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from workbench import threads


def test_cgroup_quota_rounds_up_and_max_means_none(tmp_path):
    v2 = tmp_path / "cpu.max"
    v2.write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit(v2, tmp_path / "no", tmp_path / "no") == 2
    v2.write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(v2, tmp_path / "no", tmp_path / "no") is None
    quota, period = tmp_path / "q", tmp_path / "p"  # cgroup v1: -1 = no quota
    quota.write_text("50000")
    period.write_text("100000")
    assert threads.cgroup_cpu_limit(tmp_path / "absent", quota, period) == 1
    quota.write_text("-1")
    assert threads.cgroup_cpu_limit(tmp_path / "absent", quota, period) is None


def test_environment_rule_keeps_what_the_user_set(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: (3, "slurm"))
    env: dict[str, str] = {}
    threads.apply_environment(env)
    assert env["OMP_NUM_THREADS"] == "3"
    threads.apply_environment(child := dict(env))  # a child process inherits the policy's value, not a user's
    assert child == env
    env = {"OMP_NUM_THREADS": "7", "OMP_WAIT_POLICY": "ACTIVE"}
    threads.apply_environment(env)
    assert env == {"OMP_NUM_THREADS": "7", "OMP_WAIT_POLICY": "ACTIVE"}
    env = {"WORKBENCH_THREADS": "1"}
    threads.apply_environment(env)
    assert env["OMP_NUM_THREADS"] == "1"
    env = {"WORKBENCH_THREAD_POLICY": "none"}
    threads.apply_environment(env)
    assert env == {"WORKBENCH_THREAD_POLICY": "none"}


def test_slurm_allocation_limits_the_cpus(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert threads.usable_cpus()[0] == 1


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is not installed")
def test_a_run_under_a_one_cpu_affinity_mask_records_one_thread(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    out = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-m", "workbench.pipeline", "--games", "Pong", "--record-steps", "100",
         "--steps", "1", "--eval-episodes", "1", "--eval-max-steps", "5", "--num-envs", "1", "--output-dir", "run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]["threads"]
    assert recorded["cpus"] == 1 and recorded["limited_by"] == "affinity"
    assert recorded["torch_threads"] == 1

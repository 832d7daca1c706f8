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


class _Machine:
    """A scripted 2-CPU machine: /proc/stat jiffies (idle, total), this process's CPU seconds, a clock."""

    def __init__(self) -> None:
        self.t, self.idle, self.total, self.own = 0.0, 0.0, 0.0, 0.0
        self.set_to: list[int] = []

    def run(self, seconds: float, busy_cpus: float, own_cpus: float) -> None:
        """``seconds`` pass with ``busy_cpus`` of the 2 busy in all, ``own_cpus`` of them this process."""
        self.t += seconds
        self.total += 2 * 100 * seconds  # 100 jiffies a second per CPU
        self.idle += (2 - busy_cpus) * 100 * seconds
        self.own += own_cpus * seconds


def _rebalancer(m: _Machine) -> threads.ThreadRebalancer:
    return threads.ThreadRebalancer(10.0, cpus={0, 1}, cpu_times=lambda cpus: (m.idle, m.total),
                                    own_seconds=lambda: m.own, clock=lambda: m.t, set_threads=m.set_to.append,
                                    enabled=True)


def test_rebalancer_leaves_a_late_neighbour_its_cpu_and_takes_it_back_after(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: (2, "affinity"))
    m = _Machine()
    r = _rebalancer(m)
    m.run(5, busy_cpus=2.0, own_cpus=2.0)
    assert r.tick() is None  # the period has not passed
    m.run(5, busy_cpus=2.0, own_cpus=2.0)  # alone: both CPUs are this job's
    assert r.tick() == 2
    m.run(10, busy_cpus=2.0, own_cpus=1.0)  # a neighbour started: half the machine is its
    assert r.tick() == 1
    m.run(10, busy_cpus=1.0, own_cpus=1.0)  # still there? no: the other CPU sat idle
    assert r.tick() == 2
    m.run(10, busy_cpus=2.0, own_cpus=2.0)  # unchanged: no call
    assert r.tick() is None
    assert m.set_to == [2, 1, 2]


def test_rebalancer_is_off_when_the_user_chose_the_threads(monkeypatch):
    monkeypatch.setenv("WORKBENCH_THREADS", "2")
    r = threads.ThreadRebalancer(0.0, cpu_times=lambda cpus: (0.0, 0.0), own_seconds=lambda: 0.0,
                                 clock=lambda: 1.0, set_threads=lambda n: pytest.fail("threads changed"))
    assert not r.enabled and r.tick() is None


@pytest.mark.parametrize("busy, want", [(0.0, 2), (0.9, 1), (1.6, 1)])
def test_evaluation_inference_uses_the_cpus_left_free_and_restores_the_count(monkeypatch, busy, want):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("WORKBENCH_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cpus", lambda: (2, "affinity"))
    monkeypatch.setattr(threads, "busy_cpus", lambda interval=0.25: busy)
    before = torch.get_num_threads()
    with threads.inference_threads():
        assert torch.get_num_threads() == want
    assert torch.get_num_threads() == before

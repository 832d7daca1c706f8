"""How many threads the workbench's CPU work uses: the CPUs this process may actually run on.

The rule, applied once when ``workbench`` is imported (before torch starts its OpenMP runtime):

- **CPUs** = the smallest of the affinity mask (``taskset``, cpusets), the cgroup CPU quota
  (containers: ``cpu.max`` rounded up) and Slurm's ``SLURM_CPUS_PER_TASK``;
- **torch threads** (``OMP_NUM_THREADS``) = those CPUs, unless the user set ``OMP_NUM_THREADS``
  or ``WORKBENCH_THREADS``;
- **OpenMP wait policy** ``PASSIVE``: idle OpenMP workers sleep instead of spinning, so a job
  beside other work (a shared workstation, a second job) does not burn its cores waiting;
  a user's ``OMP_WAIT_POLICY`` is kept;
- **inference in the evaluator** (batches of one row per environment) runs on one torch thread
  (:func:`inference_threads`): so small a batch gains little from a second thread when the
  machine is idle and loses most of its speed to thread hand-offs when it is not.

``WORKBENCH_THREAD_POLICY=none`` leaves torch's and OpenMP's own defaults. Jobs record what was
in effect in their run's ``config.json`` (``resolved.threads``, from :func:`in_effect`).
Measurements: ``benchmarks/bench_contention.py`` (README, Performance).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["apply_environment", "cgroup_cpu_limit", "in_effect", "inference_threads", "usable_cpus"]

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
"""cgroup v2: ``"<quota> <period>"`` in microseconds, or ``"max <period>"`` (no limit)."""
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def cgroup_cpu_limit(cpu_max: Path = CGROUP_CPU_MAX, v1_quota: Path = CGROUP_V1_QUOTA,
                     v1_period: Path = CGROUP_V1_PERIOD) -> int | None:
    """CPUs the cgroup quota allows (rounded up), or None without a quota."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        q, p = int(v1_quota.read_text()), int(v1_period.read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(q / p)) if q > 0 and p > 0 else None


def usable_cpus() -> tuple[int, str]:
    """(CPUs this process may use, what limits it: 'affinity', 'cgroup' or 'slurm')."""
    limits = [(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
               "affinity")]
    quota = cgroup_cpu_limit()
    if quota is not None:
        limits.append((quota, "cgroup"))
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        limits.append((int(slurm), "slurm"))
    return min(limits)


def apply_environment(env: dict[str, str] | None = None) -> None:
    """Set the OpenMP variables of the policy in ``env`` (default ``os.environ``) where the user
    has not: effective only before torch is imported (``workbench/__init__`` calls it)."""
    env = os.environ if env is None else env  # type: ignore[assignment]
    assert env is not None
    if env.get("WORKBENCH_THREAD_POLICY", "auto") == "none":
        return
    threads = env.get("WORKBENCH_THREADS", "")
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = threads if threads.isdigit() and int(threads) > 0 else str(usable_cpus()[0])
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def in_effect() -> dict[str, Any]:
    """The thread settings this process runs with (recorded in each run's config)."""
    import torch  # noqa: PLC0415  (workbench/__init__ imports this module: no torch at package import)

    cpus, limit = usable_cpus()
    return {"cpus": cpus, "limited_by": limit, "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(OpenMP default)"),
            "policy": os.environ.get("WORKBENCH_THREAD_POLICY", "auto")}


INFERENCE_THREADS = 1


@contextmanager
def inference_threads() -> Iterator[None]:
    """Torch runs on ``INFERENCE_THREADS`` threads inside the block (the policy is off with
    ``WORKBENCH_THREAD_POLICY=none``); the previous count is restored after."""
    import torch  # noqa: PLC0415  (workbench/__init__ imports this module: no torch at package import)

    before = torch.get_num_threads()
    if os.environ.get("WORKBENCH_THREAD_POLICY", "auto") != "none":
        torch.set_num_threads(min(before, INFERENCE_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(before)

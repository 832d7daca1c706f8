"""How many threads the workbench's CPU work uses: the CPUs this process may actually run on.

The rule, applied once when ``workbench`` is imported (before torch starts its OpenMP runtime):

- **CPUs** = the smallest of the affinity mask (``taskset``, cpusets), the cgroup CPU quota
  (containers: ``cpu.max`` rounded up) and Slurm's ``SLURM_CPUS_PER_TASK``;
- **torch threads** (``OMP_NUM_THREADS``) = those CPUs, unless the user set ``OMP_NUM_THREADS``
  or ``WORKBENCH_THREADS``;
- the OpenMP wait policy stays OpenMP's own: ``OMP_WAIT_POLICY=PASSIVE`` made training beside a
  busy neighbour several times slower in ``benchmarks/bench_contention.py`` (README, Performance);
- **at a job's start** (:func:`apply_job_threads`, from ``jobs.locked``): the CPUs other
  processes keep busy right then (``/proc/stat`` over a quarter second) are left to them, so a
  job started beside a busy neighbour trains on the CPUs that are free instead of fighting for
  the busy ones (at least one thread; ``WORKBENCH_THREADS`` or ``OMP_NUM_THREADS`` set by the
  user is kept as it is);
- **while a job runs** (:class:`ThreadRebalancer`, ticked by the training loops): every
  ``period`` seconds the CPU time other processes took on this process's CPUs (``/proc/stat``
  busy time less this process's own CPU time) is measured again and torch's threads follow: a
  neighbour that starts mid-run gets its CPUs, and a finished one gives them back;
- **inference in the evaluator** (batches of one row per environment) runs on the CPUs other work
  leaves free when the evaluation starts (:func:`inference_threads`): a second thread helps a
  little on an idle machine, and fighting a busy neighbour for its CPU costs most of the speed.

``WORKBENCH_THREAD_POLICY=none`` leaves torch's and OpenMP's own defaults. Jobs record what was
in effect in their run's ``config.json`` (``resolved.threads``, from :func:`in_effect`).
Measurements: ``benchmarks/bench_contention.py`` (README, Performance).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["ThreadRebalancer", "apply_environment", "apply_job_threads", "busy_cpus", "cgroup_cpu_limit", "in_effect",
           "inference_threads", "usable_cpus"]

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
    if not _user_set_threads(env):
        threads = env.get("WORKBENCH_THREADS", "")
        env["OMP_NUM_THREADS"] = threads if threads.isdigit() and int(threads) > 0 else str(usable_cpus()[0])
        env[_POLICY_MARK] = env["OMP_NUM_THREADS"]  # so a child process tells the policy's value from a user's


_POLICY_MARK = "WORKBENCH_POLICY_OMP_NUM_THREADS"


def _user_set_threads(env: dict[str, str] | os._Environ[str]) -> bool:
    """The user chose the thread count (``OMP_NUM_THREADS`` not set by this policy)."""
    return "OMP_NUM_THREADS" in env and env.get(_POLICY_MARK) != env["OMP_NUM_THREADS"]


def _policy_chooses() -> bool:
    """The policy may set torch's thread count: not turned off (``WORKBENCH_THREAD_POLICY=none``)
    and no count chosen by the user (``WORKBENCH_THREADS``, their own ``OMP_NUM_THREADS``)."""
    return (os.environ.get("WORKBENCH_THREAD_POLICY", "auto") != "none"
            and not os.environ.get("WORKBENCH_THREADS") and not _user_set_threads(os.environ))


def in_effect() -> dict[str, Any]:
    """The thread settings this process runs with (recorded in each run's config)."""
    import torch  # noqa: PLC0415  (workbench/__init__ imports this module: no torch at package import)

    cpus, limit = usable_cpus()
    return {"cpus": cpus, "limited_by": limit, "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(OpenMP default)"),
            "policy": os.environ.get("WORKBENCH_THREAD_POLICY", "auto")}


@contextmanager
def inference_threads() -> Iterator[None]:
    """Torch runs inside the block on the CPUs other work leaves free right now (``/proc/stat``
    over a quarter second, at least 1): the evaluator's batches of one row per environment use
    both CPUs of an idle machine and leave a busy neighbour its CPU. The policy is off with
    ``WORKBENCH_THREAD_POLICY=none`` or a user's thread count; the previous count is restored."""
    import torch  # noqa: PLC0415  (workbench/__init__ imports this module: no torch at package import)

    before = torch.get_num_threads()
    if _policy_chooses():
        torch.set_num_threads(max(1, round(usable_cpus()[0] - busy_cpus())))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cpu_times(cpus: set[int]) -> tuple[float, float]:
    """(idle, total) jiffies of the given CPUs, from /proc/stat."""
    idle = total = 0.0
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                numbers = [float(v) for v in values[:8]]
                idle += numbers[3] + numbers[4]  # idle + iowait
                total += sum(numbers)
    return idle, total


def busy_cpus(interval: float = 0.25) -> float:
    """How many of this process's CPUs other work keeps busy (0 where /proc/stat is unreadable)."""
    cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    try:
        idle0, total0 = _cpu_times(cpus)
        time.sleep(interval)
        idle1, total1 = _cpu_times(cpus)
    except (OSError, ValueError):
        return 0.0
    if total1 <= total0:
        return 0.0
    return len(cpus) * (1.0 - (idle1 - idle0) / (total1 - total0))


def apply_job_threads() -> int:
    """Torch threads for a job starting now: its usable CPUs less those other work keeps busy
    (rounded), at least 1; the user's ``WORKBENCH_THREADS`` / ``OMP_NUM_THREADS`` win."""
    import torch  # noqa: PLC0415  (workbench/__init__ imports this module: no torch at package import)

    if not _policy_chooses():
        return torch.get_num_threads()
    free = max(1, round(usable_cpus()[0] - busy_cpus()))
    torch.set_num_threads(free)  # each job chooses anew (a notebook runs several)
    return free


def _own_cpu_seconds() -> float:
    """CPU seconds this process (all its threads) has used."""
    t = os.times()
    return t.user + t.system


class ThreadRebalancer:
    """Keeps a running job's torch threads at the CPUs other work leaves free.

    :meth:`tick` is cheap (a clock read) and may be called every step; every ``period`` seconds
    it measures, over the time since the last measurement, the busy time of this process's CPUs
    (``/proc/stat``) less this process's own CPU time: what the neighbours took. Threads become
    ``round(cpus - neighbours)``, at least 1. Off under ``WORKBENCH_THREAD_POLICY=none`` or when
    the user chose the count (``WORKBENCH_THREADS``, ``OMP_NUM_THREADS``). ``cpu_times``,
    ``own_seconds``, ``clock`` and ``set_threads`` are injectable for tests."""

    def __init__(self, period: float = 10.0, *, cpus: set[int] | None = None, cpu_times: Any = None,
                 own_seconds: Any = None, clock: Any = None, set_threads: Any = None,
                 enabled: bool | None = None) -> None:
        self.enabled = _policy_chooses() if enabled is None else enabled
        self.period = float(period)
        if cpus is None:
            cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
        self.cpus = cpus
        self.limit = min(len(cpus), usable_cpus()[0])
        self._cpu_times = cpu_times or _cpu_times
        self._own = own_seconds or _own_cpu_seconds
        self._clock = clock or time.monotonic
        self._set = set_threads or _set_torch_threads
        self.threads: int | None = None  # the last count this rebalancer chose
        self._last = self._sample() if self.enabled else None

    def _sample(self) -> tuple[float, tuple[float, float], float] | None:
        try:
            return self._clock(), self._cpu_times(self.cpus), self._own()
        except (OSError, ValueError):
            return None

    def tick(self) -> int | None:
        """Re-measure when ``period`` has passed; returns the new thread count when it changed."""
        if not self.enabled or self._last is None or self._clock() - self._last[0] < self.period:
            return None
        now = self._sample()
        if now is None:
            return None
        (t0, (idle0, total0), own0), (t1, (idle1, total1), own1) = self._last, now
        self._last = now
        if total1 <= total0 or t1 <= t0:
            return None
        busy = len(self.cpus) * (1.0 - (idle1 - idle0) / (total1 - total0))  # CPUs busy, on average
        neighbours = max(0.0, busy - (own1 - own0) / (t1 - t0))
        want = max(1, min(self.limit, round(self.limit - neighbours)))
        if want == self.threads:
            return None
        self.threads = want
        self._set(want)
        return want


def _set_torch_threads(n: int) -> None:
    import torch  # noqa: PLC0415  (workbench/__init__ imports this module: no torch at package import)

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)

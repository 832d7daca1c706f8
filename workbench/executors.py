"""Where work runs: the executor settings a sweep file's ``executor:`` mapping (and the
distributed store build's flags) give, and the submitit executor they make. One home, shared by
the sweep job (:mod:`workbench.sweep`) and the store builder (:mod:`workbench.data.build`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import submitit

__all__ = ["EXECUTORS", "ExecutorSpec", "make_executor"]

EXECUTORS = ("local", "slurm")


@dataclass(frozen=True)
class ExecutorSpec:
    """Where a sweep's points run (the sweep file's ``executor:`` mapping)."""

    kind: str = "local"
    """'local' (subprocesses on this machine) or 'slurm' (submitit)."""
    parallel: int = 1
    """local: points run at the same time."""
    cluster: str = "slurm"
    """slurm: submitit's cluster, 'slurm', or 'local' (submitit's local executor, for tests)."""
    array: bool = True
    """slurm: one job array for all points (True) or one job per point."""
    timeout_min: int = 60
    """slurm: wall-clock limit of each job, in minutes."""
    gpus_per_node: int = 0
    """slurm: GPUs of each job."""
    cpus_per_task: int = 2
    """slurm: CPU cores of each job."""
    mem_gb: int = 16
    """slurm: memory of each job, in GB."""
    partition: str = ""
    """slurm: the partition ('' = the cluster's default)."""
    array_parallelism: int = 64
    """slurm: jobs of an array running at the same time."""
    slurm_args: dict[str, Any] = field(default_factory=dict)
    """slurm: further submitit slurm_* parameters, e.g. {account: myproject, qos: high} (without the prefix)."""

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ValueError(f"unknown executor kind {self.kind!r}; valid kinds: {', '.join(EXECUTORS)}")
        if self.cluster not in ("slurm", "local"):
            raise ValueError(f"unknown submitit cluster {self.cluster!r}; valid: 'slurm', 'local' (for tests)")
        for name in ("parallel", "timeout_min", "cpus_per_task", "mem_gb", "array_parallelism"):
            if getattr(self, name) < 1:
                raise ValueError(f"executor {name} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0:
            raise ValueError(f"executor gpus_per_node must be >= 0, got {self.gpus_per_node}")


def make_executor(ex: ExecutorSpec, folder: str | os.PathLike[str], name: str) -> submitit.AutoExecutor:
    """The submitit executor of ``ex`` (Slurm, or submitit's local executor when ``ex.cluster`` is
    'local'), its jobs' logs under ``folder`` (may hold submitit's ``%j``), jobs named ``name``.
    Shared by the sweep and the distributed store build (``python -m workbench.data.build --executor``)."""
    executor = submitit.AutoExecutor(folder=str(folder), cluster=ex.cluster)
    params: dict[str, Any] = {"name": name, "timeout_min": ex.timeout_min,
                              "cpus_per_task": ex.cpus_per_task, "mem_gb": ex.mem_gb, "tasks_per_node": 1,
                              "nodes": 1, "slurm_array_parallelism": ex.array_parallelism}
    if ex.gpus_per_node:
        params["gpus_per_node"] = ex.gpus_per_node
    if ex.partition:
        params["slurm_partition"] = ex.partition
    params.update({f"slurm_{k}": v for k, v in ex.slurm_args.items()})
    executor.update_parameters(**params)
    return executor

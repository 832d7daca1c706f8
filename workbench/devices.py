"""Which torch device a ``device=`` parameter means on this machine (one rule for every job), and
how much memory the machine has left for a job's buffers."""

from __future__ import annotations

import os
import re

import torch
import torch.distributed as dist

__all__ = ["available_memory", "resolve_device"]


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get without swapping: the kernel's MemAvailable,
    capped by the cgroup's limit minus its usage (a container or a Slurm job); None if unknown."""
    free: int | None = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except OSError:
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max" and free is not None:
            free = min(free, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return free


def resolve_device(name: str = "auto") -> torch.device:
    """'auto', 'cpu', 'cuda' or 'cuda:N' as a torch device; anything else, or an accelerator this
    machine lacks, is an error listing the devices that are valid here."""
    if name == "auto":
        if dist.is_available() and dist.is_initialized() and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    valid = ["auto", "cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(count)] if count else [])
    m = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", name)
    if not m or (m.group(1) == "cpu" and m.group(2) is not None):
        raise ValueError(f"unknown device {name!r}; valid here: {', '.join(valid)}")
    if m.group(1) == "cuda" and (not count or int(m.group(2) or 0) >= count):
        raise ValueError(f"device {name!r} is not available on this machine; valid here: {', '.join(valid)}")
    return torch.device(name)

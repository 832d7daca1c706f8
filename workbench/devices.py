"""Which torch device a ``device=`` parameter means on this machine (one rule for every job)."""

from __future__ import annotations

import os
import re

import torch
import torch.distributed as dist

__all__ = ["resolve_device"]


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

"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

Layout of one run directory::

    run_dir/
      config.json              the run's full configuration (written once at start)
      metrics.jsonl            one JSON object per logged step
      checkpoints/
        latest                 text file naming the newest complete checkpoint
        step_00000100/
          model.safetensors    trainable weights (+ "target." prefixed target weights)
          optimizer.safetensors optimizer tensors, keyed "state.<param index>.<name>"
          state.json           step, optimizer scalars and hyperparameters, RNG states, extra

A checkpoint directory is built under a temporary name and renamed into place, and ``latest``
is replaced atomically after it, so an interrupted write never leaves a half checkpoint behind
``latest``. Nothing here ever unpickles: a ``.pt``/``.pkl`` file handed to ``load_*`` is
refused with a clear message.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from workbench.fileio import atomic_write_json, atomic_write_text

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone to own memory on CPU.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def model_state(model: torch.nn.Module, target: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Weights of ``model`` and, prefixed ``target.``, of ``target``."""
    state = dict(model.state_dict())
    if target is not None:
        state.update({f"target.{k}": v for k, v in target.state_dict().items()})
    return _contiguous(state)


def split_model_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Inverse of :func:`model_state`: (model weights, target weights)."""
    model = {k: v for k, v in state.items() if not k.startswith("target.")}
    target = {k[len("target."):]: v for k, v in state.items() if k.startswith("target.")}
    return model, target


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state into safetensors-able tensors and JSON-able rest."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return _contiguous(tensors), {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, st in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every RNG a training step touches: torch (CPU and CUDA), numpy's legacy global, Python's."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    py = random.getstate()
    # legacy=True (the default) gives MT19937's tuple; numpy's stubs type the default call as a dict.
    np_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    meta: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def restore_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    *,
    target: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and point ``latest`` at it; keep the newest ``keep``."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:08d}.", dir=ckpt_root))
    try:
        save_file(model_state(model, target), str(tmp / "model.safetensors"))
        state: dict[str, Any] = {"step": int(step), "extra": extra or {}}
        if optimizer is not None:
            opt_tensors, opt_meta = optimizer_state(optimizer)
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            state["optimizer"] = opt_meta
        rng_tensors, rng_meta = rng_state()
        save_file(_contiguous(rng_tensors), str(tmp / "rng.safetensors"))
        state["rng"] = rng_meta
        atomic_write_json(tmp / "state.json", state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(ckpt_root / "latest", final.name + "\n")
    complete = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in complete[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Accept a run dir, its ``checkpoints`` dir or one checkpoint dir; return the checkpoint dir."""
    path = Path(path)
    if path.is_file() and path.suffix in PICKLE_SUFFIXES:
        raise ValueError(
            f"{path} looks like a pickled checkpoint ({path.suffix}); the workbench never unpickles "
            "files. Convert it to model.safetensors + config.json first."
        )
    if (path / "model.safetensors").is_file():
        return path
    for root in (path / "checkpoints", path):
        latest = root / "latest"
        if latest.is_file():
            ckpt = root / latest.read_text().strip()
            if (ckpt / "model.safetensors").is_file():
                return ckpt
    raise FileNotFoundError(
        f"no workbench checkpoint at {path}: expected a run directory (with checkpoints/latest), "
        "a checkpoints directory, or a directory holding model.safetensors"
    )


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none."""
    try:
        return resolve_checkpoint(Path(run_dir) / "checkpoints")
    except FileNotFoundError:
        return None


def load_checkpoint(
    ckpt_dir: str | os.PathLike,
    model: torch.nn.Module,
    *,
    target: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = False,
) -> dict:
    """Load weights (and optionally optimizer and RNG state) in place; return ``state.json``."""
    ckpt = resolve_checkpoint(ckpt_dir)
    weights, target_weights = split_model_state(load_file(str(ckpt / "model.safetensors")))
    model.load_state_dict(weights)
    if target is not None:
        if not target_weights:
            raise ValueError(f"{ckpt} holds no target-network weights")
        target.load_state_dict(target_weights)
    state = json.loads((ckpt / "state.json").read_text())
    if optimizer is not None:
        if "optimizer" not in state:
            raise ValueError(f"{ckpt} holds no optimizer state")
        load_optimizer_state(optimizer, load_file(str(ckpt / "optimizer.safetensors")), state["optimizer"])
    if restore_rng:
        restore_rng_state(load_file(str(ckpt / "rng.safetensors")), state["rng"])
    return state

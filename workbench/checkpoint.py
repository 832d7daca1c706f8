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
          rng.safetensors      RNG states of torch (CPU, CUDA)
          state.json           step, optimizer scalars and hyperparameters, RNG states, extra,
                               the sha256 of every other file of the checkpoint, the digest of
                               the run's identity (``run_identity``: algorithm, model, games,
                               settings from config.json) and its own digest (``state_sha256``)

A checkpoint directory is built under a temporary name (``.step_*``) and renamed into place,
and ``latest`` is replaced atomically after it, so an interrupted write never leaves a half
checkpoint behind ``latest``; temporary folders left by a kill are removed by the next save.
Loading verifies every file against its recorded sha256, ``state.json`` against its own digest
(an optimizer lr edited by hand is refused, not used on resume) and every tensor against the model
(names, shapes, dtypes, finiteness), naming the file and tensor at fault; rebuilding a run's
algorithm also checks that ``config.json`` still names the algorithm, model, games and settings
the weights were trained with (:func:`check_run_identity`). Pruning deletes only
checkpoints this code wrote (their ``state.json`` says so). Saving (and so pruning) refuses a
``checkpoints/`` folder, a ``latest`` or a step folder that is a symbolic link
(:func:`refuse_linked_checkpoints`): it would write into, or prune, another run. Nothing here ever
unpickles: a ``.pt``/``.pkl`` file handed to ``load_*`` is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from workbench.fileio import (
    atomic_write_json,
    atomic_write_text,
    disk_full,
    is_disk_full,
    read_json,
    refuse_symlink,
    sha256_file,
)

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
WRITER = "workbench"
STEP_DIR = re.compile(r"step_(\d{8,})")  # a complete checkpoint folder
TMP_DIR = re.compile(r"\.step_\d{8,}\.[A-Za-z0-9_]+")  # one save_checkpoint is building (or a kill left)


#: what in a run's ``config.json`` ("resolved") decides what its weights mean
IDENTITY_KEYS = ("algo", "model", "games", "settings", "data_settings")


class CheckpointError(ValueError):
    """A checkpoint that is not what its writer left: the message names the file (and tensor)."""


def _digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def run_identity(resolved: dict[str, Any]) -> str:
    """Digest of what a run's weights mean: its algorithm, model, games (the heads' order) and
    settings, as its ``config.json`` resolves them."""
    return _digest({k: resolved.get(k) for k in IDENTITY_KEYS})


def _run_config(run_dir: Path) -> Path | None:
    """The ``config.json`` of the run a checkpoint folder belongs to (the nearest one upwards)."""
    for folder in [run_dir, *list(run_dir.parents)[:2]]:
        if (folder / "config.json").is_file():
            return folder / "config.json"
    return None


def check_run_identity(ckpt: Path, state: dict[str, Any], resolved: dict[str, Any], config_path: Path) -> None:
    """Refuse to load a checkpoint of a run whose ``config.json`` no longer says what its
    weights were trained as (games swapped, model or settings edited by hand)."""
    recorded = state.get("run_identity")
    if recorded is not None and recorded != run_identity(resolved):
        raise CheckpointError(
            f"{config_path} no longer describes the weights of {ckpt}: its algorithm, model, games or settings were "
            f"changed after the checkpoint was written (now: algo={resolved.get('algo')!r}, model="
            f"{resolved.get('model')!r}, games={resolved.get('games')!r}). Restore config.json; loading would give a "
            "game the head of another"
        )


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


def clean_partial(ckpt_root: str | os.PathLike) -> list[Path]:
    """Remove temporary ``.step_*`` folders a killed save left in a ``checkpoints`` folder."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    removed = [p for p in root.iterdir() if TMP_DIR.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    for p in removed:
        shutil.rmtree(p)
    return removed


def refuse_linked_checkpoints(run_dir: str | os.PathLike) -> None:
    """Refuse ``run_dir/checkpoints`` when it, its ``latest`` or one of its step folders (complete
    or temporary) is a symbolic link: resuming, saving and pruning never follow one into another
    run. The error names the link."""
    root = Path(run_dir) / "checkpoints"
    refuse_symlink(root, "checkpoints folder")
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        if path.name == "latest" or STEP_DIR.fullmatch(path.name) or TMP_DIR.fullmatch(path.name):
            refuse_symlink(path, "checkpoint")


def is_own_checkpoint(path: Path) -> bool:
    """True for a ``step_*`` folder this module wrote (its ``state.json`` names the writer and step)."""
    m = STEP_DIR.fullmatch(path.name)
    if not m or path.is_symlink() or not path.is_dir():
        return False
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("writer") == WRITER and state.get("step") == int(m.group(1))


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
    """Write checkpoint ``step`` atomically and point ``latest`` at it; keep the newest ``keep``
    of the checkpoints this module wrote (anything else in ``checkpoints/`` is left alone)."""
    refuse_linked_checkpoints(run_dir)  # never save into, or prune, another run's checkpoints
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    clean_partial(ckpt_root)
    final = ckpt_root / f"step_{step:08d}"
    if final.exists() and not is_own_checkpoint(final):
        raise FileExistsError(f"{final} exists and was not written by the workbench: refusing to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:08d}.", dir=ckpt_root))
    weights = model_state(model, target)
    needed = sum(t.numel() * t.element_size() for t in weights.values())
    try:
        save_file(weights, str(tmp / "model.safetensors"))
        state: dict[str, Any] = {"writer": WRITER, "step": int(step), "extra": extra or {}}
        if optimizer is not None:
            opt_tensors, opt_meta = optimizer_state(optimizer)
            needed += sum(t.numel() * t.element_size() for t in opt_tensors.values())
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            state["optimizer"] = opt_meta
        rng_tensors, rng_meta = rng_state()
        save_file(_contiguous(rng_tensors), str(tmp / "rng.safetensors"))
        state["rng"] = rng_meta
        state["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        config = _run_config(Path(run_dir))
        if config is not None:
            state["run_identity"] = run_identity(read_json(config).get("resolved") or {})
        state["state_sha256"] = _digest(state)  # of everything above: a hand edit is detected
        atomic_write_json(tmp / "state.json", state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        # safetensors reports a full disk as its own error type, with the OS message inside
        if is_disk_full(exc) or (isinstance(exc, SafetensorError) and "os error 28" in str(exc)):
            raise disk_full(ckpt_root, needed + (1 << 20), f"checkpoint step {step}") from None
        raise
    atomic_write_text(ckpt_root / "latest", final.name + "\n")
    complete = sorted(p for p in ckpt_root.glob("step_*") if is_own_checkpoint(p))
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
            name = latest.read_text().strip()
            ckpt = root / name
            # `latest` names one step_* folder of its own checkpoints folder, never a path elsewhere.
            if not STEP_DIR.fullmatch(name) or ckpt.resolve().parent != root.resolve():
                raise CheckpointError(
                    f"{latest} points to {name!r}, which is not a checkpoint folder inside {root} (expected "
                    "step_NNNNNNNN); refusing to follow it"
                )
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


def read_state(ckpt: Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint, validated (a hand-edited or foreign one is an error)."""
    path = ckpt / "state.json"
    state = read_json(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(state).__name__}")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: 'step' must be an integer >= 0, got {step!r}")
    m = STEP_DIR.fullmatch(ckpt.name)
    if m and int(m.group(1)) != step:
        raise CheckpointError(f"{path}: 'step' is {step} but the folder is {ckpt.name}")
    files = state.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files:
        raise CheckpointError(
            f"{path} lists no sha256 checksums ('files'): it was not written by this workbench (or was edited); "
            "the checkpoint cannot be verified"
        )
    recorded = state.get("state_sha256")  # absent in checkpoints of older workbench versions
    if recorded is not None and recorded != _digest({k: v for k, v in state.items() if k != "state_sha256"}):
        raise CheckpointError(
            f"{path} was changed after it was written (its content no longer matches its recorded state_sha256): "
            "an edited step, optimizer setting (lr ...) or RNG state would be used silently on resume. Restore it, "
            "or start the run afresh"
        )
    return state


def verify_files(ckpt: Path, state: dict[str, Any]) -> None:
    """Every file listed in ``state.json`` exists and has its recorded sha256."""
    for name, digest in state["files"].items():
        path = ckpt / name
        if Path(name).name != name:
            raise CheckpointError(f"{ckpt / 'state.json'} lists {name!r}, which is not a file of the checkpoint")
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (listed in {ckpt / 'state.json'})")
        if sha256_file(path) != digest:
            raise CheckpointError(
                f"{path} does not match the sha256 recorded when it was written: the file is corrupt, truncated "
                "or was replaced"
            )


def verify_checkpoint(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """Resolve a checkpoint and check every file against the sha256 its ``state.json`` records
    (a truncated, modified or replaced file is a :class:`CheckpointError` naming it), without
    loading a tensor; returns ``state.json``. ``state["files"]["model.safetensors"]`` is then the
    content hash of the weights (what a fine-tune records as its source)."""
    ckpt = resolve_checkpoint(ckpt_dir)
    state = read_state(ckpt)
    verify_files(ckpt, state)
    return state


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None


def check_tensors(path: Path, tensors: dict[str, torch.Tensor], module: torch.nn.Module, what: str) -> None:
    """``tensors`` fit ``module`` exactly (names, shapes, dtypes) and are finite."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{path} does not fit the {what}: missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected tensors {extra[:8]}{' ...' if len(extra) > 8 else ''} (a different model or algorithm?)"
        )
    for key, value in tensors.items():
        want = expected[key]
        if value.shape != want.shape or value.dtype != want.dtype:
            raise CheckpointError(
                f"{path}: tensor {key!r} is {value.dtype} {tuple(value.shape)} but the {what} needs "
                f"{want.dtype} {tuple(want.shape)}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: tensor {key!r} holds NaN or Inf values; refusing non-finite weights")


def load_checkpoint(
    ckpt_dir: str | os.PathLike,
    model: torch.nn.Module,
    *,
    target: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = False,
) -> dict:
    """Verify a checkpoint and load weights (and optionally optimizer and RNG state) in place;
    return ``state.json``. Nothing is loaded into ``model`` unless every check passes."""
    ckpt = resolve_checkpoint(ckpt_dir)
    state = read_state(ckpt)
    verify_files(ckpt, state)
    config = _run_config(ckpt.parent.parent)  # run/checkpoints/step_*
    if config is not None:
        check_run_identity(ckpt, state, read_json(config).get("resolved") or {}, config)
    weights, target_weights = split_model_state(_load_tensors(ckpt / "model.safetensors"))
    check_tensors(ckpt / "model.safetensors", weights, model, "model")
    if target is not None:
        if not target_weights:
            raise CheckpointError(f"{ckpt / 'model.safetensors'} holds no target-network weights")
        check_tensors(ckpt / "model.safetensors", target_weights, target, "target network")
    opt_tensors = None
    if optimizer is not None:
        if "optimizer" not in state or "optimizer.safetensors" not in state["files"]:
            raise CheckpointError(f"{ckpt} holds no optimizer state")
        opt_tensors = _load_tensors(ckpt / "optimizer.safetensors")
    model.load_state_dict(weights)
    if target is not None:
        target.load_state_dict(target_weights)
    if optimizer is not None and opt_tensors is not None:
        try:
            load_optimizer_state(optimizer, opt_tensors, state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{ckpt / 'optimizer.safetensors'} does not fit the optimizer ({exc})") from None
    if restore_rng:
        restore_rng_state(_load_tensors(ckpt / "rng.safetensors"), state["rng"])
    return state


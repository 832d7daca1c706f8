"""The one training loop, shared by every method.

An *algo* (``workbench.algos.*``) says how a batch becomes a loss; this loop owns everything
else: device placement, bf16 autocast, channels_last, optional ``torch.compile``, the optimizer
(AdamW; with weight decay 0 it is exactly Adam), gradient clipping, the target-network period
counted in gradient steps, JSONL metrics, atomic checkpoints, bit-identical resume, NaN/Inf
guards, and multi-process training through ``torchrun`` + DistributedDataParallel.

The loop never reads the device inside a step (on a GPU a read is a host-device synchronization
that drains the launch queue). The NaN/Inf guard keeps its flag on the device (`FiniteGuard`):
the fused AdamW kernels skip their update while the flag is set (``found_inf``, the mechanism
``torch.amp.GradScaler`` uses), and the flag is sticky, so once a step is non-finite no later
step changes the weights or the optimizer state either. The flag is read where the loop reads
the device anyway or must know: before a metrics line, a target update, a checkpoint, at the
end, and at least every ``MAX_UNCHECKED_STEPS`` steps; a set flag raises `NonFiniteLossError`
naming the first bad step, with the weights and optimizer state as they were before it. A
metrics line reads all its values in one transfer.

The algo is anything that meets ``workbench.algos.base.Algo``: ``model`` (trained),
``target_model`` (checkpointed, never trained, or None), ``loss(batch) -> (loss, metrics)``,
``update_target()`` (every ``target_update_period`` gradient steps), ``param_groups()``
(optimizer groups: dicts with ``params`` and overrides), ``to(device)`` and ``to_channels_last()``.

DDP wraps a small module whose ``forward`` *is* ``algo.loss``. Every parameter that
contributes to the loss gets its gradient averaged by DDP's hooks, however the algo reaches it
(sub-modules, heads, helper methods), which is what the public JOWA code got wrong by calling
its loss through ``model.module``.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.overrides import TorchFunctionMode

from workbench import checkpoint as ckpt_io
from workbench import tblog, threads
from workbench.algos.base import Algo, Diagnosable, Stage
from workbench.devices import resolve_device
from workbench.diagnostics import ProbeDiagnostics, collapse_flags
from workbench.fileio import append_text, refuse_symlink
from workbench.progress import progress_bar
from workbench.progress import write as progress_write
from workbench.run import ResumeMismatch


class NonFiniteLossError(RuntimeError):
    """Raised when a loss or gradient becomes NaN/Inf; the last good checkpoint is kept.
    ``step`` is the first non-finite step (its update, and every later one, never ran)."""

    def __init__(self, message: str, step: int | None = None) -> None:
        super().__init__(message)
        self.step = step


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings of one run (method hyperparameters live in the algo's config)."""

    steps: int
    """Total number of gradient steps (including those done before a resume)."""
    lr: float
    """Learning rate for parameter groups that do not set their own."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (0 makes the optimizer exactly Adam)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam moment coefficients."""
    eps: float = 1e-8
    """Adam epsilon (Dopamine's C51 uses 0.01/32; the papers do not state theirs)."""
    grad_clip: float = 1.0
    """Max global gradient L2 norm (0 disables clipping). Both papers clip at 1.0."""
    target_update_period: int = 2000
    """Copy the online network into the target every this many gradient steps (0: no target)."""
    log_every: int = 10
    """Write a metrics line every this many steps."""
    checkpoint_every: int = 1000
    """Write a checkpoint every this many steps (and always at the end)."""
    keep_checkpoints: int = 2
    """How many complete checkpoints to keep on disk."""
    device: str = "auto"
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'."""
    precision: str = "auto"
    """'auto' (bf16 autocast on CUDA, fp32 on CPU), 'bf16' or 'fp32'."""
    compile: bool = False
    """Wrap the loss computation in torch.compile."""
    channels_last: bool | None = None
    """Use channels_last memory format for conv models (None: on CUDA only)."""
    seed: int = 0
    """Seed for torch/numpy/python RNGs (the sampler has its own seed)."""
    diagnostics_every: int = 0
    """Representation diagnostics (``workbench.diagnostics``: srank, dead units, feature variation,
    greedy-action spread) on a fixed probe batch at step 0 and every this many steps, into
    ``diagnostics.jsonl``; 0 = off. Algos without ``probe_forward`` are not probed."""

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        for name in ("weight_decay", "eps", "grad_clip"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be one of 'auto', 'bf16', 'fp32', got {self.precision!r}")
        for name in ("log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.diagnostics_every < 0:
            raise ValueError(f"diagnostics_every must be >= 0 (0: off), got {self.diagnostics_every}")
        if self.target_update_period < 0:
            raise ValueError(
                f"target_update_period must be >= 0 (0: no target network), got {self.target_update_period}"
            )


# TrainConfig fields a resumed run may change; any other difference would silently mix two runs
# (the optimizer state restored from the checkpoint carries the old lr, betas, eps and decay).
RESUMABLE_TRAIN_FIELDS = ("steps", "log_every", "checkpoint_every", "keep_checkpoints", "device", "precision",
                          "compile", "channels_last", "diagnostics_every")
#: Samples in the diagnostics' probe, and the batch index it is drawn from: far past any run's
#: steps, so it is the same batch at every resume and no training step consumes it.
PROBE_SAMPLES = 256
PROBE_BATCH_INDEX = 1 << 40


def default_diagnostics_every(log_every: int) -> int:
    """The jobs' diagnostics period: every 5th metrics line, so the probe costs a few percent of
    the steps between two probes."""
    return 5 * log_every


def check_resume_config(state: dict[str, Any], cfg: TrainConfig, ckpt: Path) -> None:
    """Stop a resume whose optimization settings differ from the checkpoint's, before loading."""

    old = (state.get("extra") or {}).get("train")
    if not isinstance(old, dict):
        return  # written by another caller of save_checkpoint: nothing recorded to compare
    new = json.loads(json.dumps(asdict(cfg)))  # tuples as lists, as in state.json
    diff = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new
            if k not in RESUMABLE_TRAIN_FIELDS and k in old and old[k] != new[k]]
    if diff:
        raise ResumeMismatch(
            f"{ckpt} was trained with different settings; resuming would silently keep the old ones in the "
            f"optimizer. Differing fields: {'; '.join(diff)}. Either train into another folder, or start afresh "
            "(resume=False)."
        )


class _LossModule(nn.Module):
    """``forward(batch) = algo.loss(batch)``, so DDP sees (and averages) every used parameter."""

    def __init__(self, algo: Algo):
        super().__init__()
        self.model = algo.model
        self._algo = [algo]  # a list keeps the algo (and its target net) out of the module tree

    def forward(self, batch: dict[str, torch.Tensor]):
        return self._algo[0].loss(batch)


def init_distributed() -> tuple[int, int]:
    """Initialise torch.distributed from torchrun's environment; (rank, world_size).

    Without torchrun (no ``WORLD_SIZE`` in the environment) this is a no-op returning (0, 1).
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def truncate_metrics(path: Path, start: int) -> None:
    """Drop metric lines of steps after ``start`` (redone after a resume); keep error records.
    A symbolic link is refused (naming it), never read or rewritten."""
    refuse_symlink(path, "metrics file")
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if "error" in record or record.get("step", 0) <= start:
            keep.append(line)
    if len(keep) != len(lines):
        ckpt_io.atomic_write_text(path, "".join(line + "\n" for line in keep))


#: Devices whose AdamW has fused kernels (and so the ``found_inf`` skip `FiniteGuard` relies on).
FUSED_DEVICE_TYPES = ("cuda", "cpu")
#: The guard's flag is read at least this often (steps), however rarely the loop logs.
MAX_UNCHECKED_STEPS = 100


def build_optimizer(algo: Algo, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the algo's trainable groups; fused kernels where the device has them (on CPU
    too: about 4x faster than the per-tensor loop, and it can skip a step on a device flag)."""
    groups = algo.param_groups()
    groups = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in groups]
    groups = [g for g in groups if g["params"]]
    kwargs: dict[str, Any] = dict(lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if device.type in FUSED_DEVICE_TYPES:
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)


def use_fused_kernels(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Keep a resumed optimizer fused: ``load_state_dict`` takes the saved groups' settings,
    and checkpoints written before CPU training was fused say ``fused=None``."""
    if device.type in FUSED_DEVICE_TYPES:
        for group in optimizer.param_groups:
            group["fused"], group["foreach"] = True, None


def _diagnose(metrics: dict[str, Any], loss: torch.Tensor, grad_norm: torch.Tensor, step: int) -> str:
    bad = [k for k, v in metrics.items() if torch.is_tensor(v) and not torch.isfinite(v).all()]
    return (
        f"non-finite values at step {step}: loss={loss.item()!r}, grad_norm={grad_norm.item()!r}, "
        f"non-finite terms: {bad or 'none (the gradient overflowed)'}. The last good checkpoint "
        "was kept; lower the learning rate or check the data (rewards, terminals) before resuming."
    )


class FiniteGuard:
    """Keeps non-finite steps out of the optimizer without reading the device every step.

    ``step(optimizer, step, loss, grad_norm, metrics)`` replaces ``optimizer.step()``: it sets a
    sticky device flag when the loss or the gradient norm is NaN/Inf (all ranks agree through
    an all-reduce on the device) and runs the optimizer with ``found_inf`` set to that flag, so
    the fused kernels leave weights, moments and step counts untouched from the first bad step
    on. ``check()`` reads the flag (one transfer) and raises `NonFiniteLossError` naming the
    first bad step; call it before anything leaves the loop (metrics, target copy, checkpoint).
    An optimizer that is not fused cannot skip on a device flag: then every step is checked
    before it runs (one read per step, the behaviour before this guard).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        self.gated = all(g.get("fused") for g in optimizer.param_groups)
        self._stuck = torch.zeros((), device=device)  # 1.0 once any step was non-finite
        # (step, this step's bad flag, loss, grad norm, metrics) of the steps not yet checked
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]] = []

    @property
    def unchecked(self) -> int:
        """Steps run since the last ``check``."""
        return len(self._pending)

    def step(self, optimizer: torch.optim.Optimizer, step: int, loss: torch.Tensor, grad_norm: torch.Tensor,
             metrics: dict[str, Any]) -> None:
        loss, grad_norm = loss.detach(), grad_norm.detach()
        bad = (~(torch.isfinite(loss).all() & torch.isfinite(grad_norm))).float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # one rank's NaN stops every rank
        self._pending.append((step, bad, loss, grad_norm, metrics))
        if not self.gated:
            self.check()
            optimizer.step()
            return
        self._stuck = torch.maximum(self._stuck, bad)
        optimizer.found_inf = self._stuck  # type: ignore[attr-defined]  # read by the fused AdamW
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf  # type: ignore[attr-defined]

    def check(self) -> None:
        """Raise `NonFiniteLossError` if any step since the last check was non-finite."""
        if not self._pending:
            return
        flags = torch.stack([p[1] for p in self._pending]).tolist()  # the one read
        pending, self._pending = self._pending, []
        for (step, _, loss, grad_norm, metrics), bad in zip(pending, flags):
            if bad > 0:
                raise NonFiniteLossError(_diagnose(metrics, loss, grad_norm, step), step)


class HostReads(TorchFunctionMode):
    """Counts, while active on this thread, the tensor calls that read device data on the host
    (on an accelerator each one waits for the device to finish all queued work): scalar
    conversions (``item``, ``float``, ``bool``, ...), ``tolist``/``numpy``, copies of a device
    tensor to the CPU, and data-dependent shapes (``nonzero``, boolean indexing, ...). On the
    CPU it counts the same calls, so a CPU run shows how often a GPU run would synchronize.
    ``count``: all of them; ``by_call``: per call name."""

    SCALAR_READS = frozenset({"__float__", "__int__", "__bool__", "__index__", "item", "tolist", "numpy"})
    SHAPE_READS = frozenset({"nonzero", "masked_select", "unique", "unique_consecutive", "argwhere"})

    def __init__(self) -> None:
        super().__init__()
        self.by_call: dict[str, int] = {}

    @property
    def count(self) -> int:
        return sum(self.by_call.values())

    def _is_read(self, name: str, args: tuple, kwargs: dict) -> bool:
        if name in self.SCALAR_READS or name in self.SHAPE_READS:
            return True
        first = args[0] if args else None
        if name in ("cpu", "to") and torch.is_tensor(first) and first.device.type != "cpu":
            target = [a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (str, torch.device))]
            return name == "cpu" or any(torch.device(t).type == "cpu" for t in target)
        if name == "__getitem__" and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            return any(torch.is_tensor(i) and i.dtype == torch.bool for i in index)
        return False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if self._is_read(name, args, kwargs):
            self.by_call[name] = self.by_call.get(name, 0) + 1
        return func(*args, **kwargs)


def _probe_batch(batches: Callable[[int], Iterator[dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """``PROBE_SAMPLES`` samples of the batches from :data:`PROBE_BATCH_INDEX` on (a fixed draw)."""
    it = batches(PROBE_BATCH_INDEX)
    parts: list[dict[str, torch.Tensor]] = []
    try:
        while sum(len(p["game_id"]) for p in parts) < PROBE_SAMPLES:
            parts.append({k: v.clone() for k, v in next(it).items() if torch.is_tensor(v)})
    finally:
        close = getattr(it, "close", None)  # a generator's prefetch threads stop with it
        if close is not None:
            close()
    return {k: torch.cat([p[k] for p in parts])[:PROBE_SAMPLES] for k in parts[0]}


class _Diagnostics:
    """The trainer's representation probe: ``diagnostics.jsonl`` lines and collapse warnings."""

    def __init__(self, algo: Diagnosable, probe: dict[str, torch.Tensor], path: Path, start: int,
                 events: tblog.EventLog | None = None) -> None:
        self.path = path
        self.events = events or tblog.EventLog(None)
        self.measure = ProbeDiagnostics(algo.model, probe, lambda _model, batch: algo.probe_forward(batch))  # type: ignore[attr-defined]
        truncate_metrics(path, start)
        self.history = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        self.warned: set[str] = set()

    def __call__(self, step: int) -> None:
        record = {"step": step, **self.measure()}
        self.history.append(record)
        append_text(self.path, json.dumps(record) + "\n", "metrics file")
        self.events.scalars(record, prefix="diagnostics/")
        for warning in collapse_flags(self.history):
            if warning not in self.warned:  # say each once, in the log and on the terminal
                self.warned.add(warning)
                progress_write(f"diagnostics at step {step}: {warning}")


def metric_values(loss: torch.Tensor, grad_norm: torch.Tensor, metrics: dict[str, Any]) -> dict[str, float]:
    """``loss``, ``grad_norm`` and every metric as floats, read from the device in one transfer
    (float64 on the way, so each value is exactly what ``float(tensor)`` gives)."""
    names = ["loss", "grad_norm", *metrics]
    values = [loss, grad_norm, *metrics.values()]
    tensors = [(i, v) for i, v in enumerate(values) if torch.is_tensor(v)]
    out: list[float] = [float(v) if not torch.is_tensor(v) else 0.0 for v in values]
    if tensors:
        read = torch.stack([v.detach().reshape(()).to(torch.float64) for _, v in tensors]).tolist()
        for (i, _), x in zip(tensors, read):
            out[i] = x
    return dict(zip(names, out))


def train(
    algo: Algo,
    batches: Callable[[int], Iterator[dict[str, torch.Tensor]]],
    cfg: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = True,
    progress: bool = True,
    find_unused_parameters: bool = False,
) -> dict[str, Any]:
    """Train ``algo`` for ``cfg.steps`` gradient steps, resuming from ``run_dir`` if possible.

    ``batches(start_step)`` returns an iterator of batches beginning with the batch that step
    ``start_step`` consumes; samplers derive each batch from (seed, rank, step) so a resumed run
    sees exactly the batches an uninterrupted one would. The run's ``config.json`` is the
    caller's (``workbench.run.Run``). A ``checkpoints/`` (or a checkpoint in it), ``metrics.jsonl``
    or ``diagnostics.jsonl`` that is a symbolic link is refused before anything is loaded, written
    or pruned (``workbench.fileio.SymlinkError`` naming it). Returns a summary dict.
    """
    run_dir = Path(run_dir)
    rank, world = _rank_world()
    # Symbolic links inside the run folder are refused before anything is loaded, written or pruned.
    ckpt_io.refuse_linked_checkpoints(run_dir)
    for name in ("metrics.jsonl", "diagnostics.jsonl"):
        refuse_symlink(run_dir / name, "metrics file")
    refuse_symlink(run_dir / tblog.FOLDER, "TensorBoard folder")
    device = resolve_device(cfg.device)
    amp = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"

    seed_everything(cfg.seed + rank)
    target = algo.target_model
    algo.to(device)  # moves the target and the algo's own constants (C51 support, scales) as well
    if channels_last:
        algo.to_channels_last()  # online and target nets, and inputs inside the model
    optimizer = build_optimizer(algo, cfg, device)

    start = 0
    if rank == 0:
        ckpt_io.clean_partial(run_dir / "checkpoints")  # temporary folders of a killed save
    if resume and (last := ckpt_io.latest_checkpoint(run_dir)) is not None:
        check_resume_config(ckpt_io.read_state(last), cfg, last)
        state = ckpt_io.load_checkpoint(last, algo.model, target=target, optimizer=optimizer, restore_rng=True)
        use_fused_kernels(optimizer, device)
        start = state["step"]
        if world > 1:
            # RNG streams are per rank; only rank 0's was saved, so re-derive the others.
            seed_everything(cfg.seed + rank + 1_000_003 * start)

    metrics_path = run_dir / "metrics.jsonl"
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(metrics_path, start)

    loss_module: nn.Module = _LossModule(algo)
    if world > 1:
        # DDP broadcasts rank 0's trained weights; the target net must follow rank 0 too.
        if target is not None:
            for tensor in target.state_dict().values():
                dist.broadcast(tensor, src=0)
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
        )
    step_fn = torch.compile(loss_module) if cfg.compile else loss_module
    params = [p for g in optimizer.param_groups for p in g["params"]]

    bar = progress_bar(total=cfg.steps, initial=start, desc="train", unit="step", disable=not progress or rank != 0)
    # TensorBoard view of metrics.jsonl (rank 0); steps after `start` an interrupted session logged are dropped
    events = tblog.open_log(run_dir, enabled=rank == 0, purge_from=start + 1)
    if start == 0 and events.enabled:  # the configuration, once per run
        events.config({"train": asdict(cfg), "run": tblog.run_config(run_dir)})
    it = batches(start)
    t_last, n_last = time.perf_counter(), 0
    step = start
    last_metrics: dict[str, float] = {}
    guard = FiniteGuard(optimizer, device)

    def check_finite() -> None:
        try:
            guard.check()
        except NonFiniteLossError as exc:
            if rank == 0:
                append_text(metrics_path, json.dumps({"step": exc.step, "error": str(exc)}) + "\n", "metrics file")
            bar.close()
            events.close()
            raise

    diagnose = None
    if cfg.diagnostics_every and rank == 0 and isinstance(algo, Diagnosable):
        diagnose = _Diagnostics(algo, _to_device(_probe_batch(batches), device), run_dir / "diagnostics.jsonl",
                                start, events)
        if start == 0:
            diagnose(0)  # the reference: a collapse is measured against the initialization

    # on a CPU, torch's threads follow the CPUs other processes leave free (workbench.threads)
    rebalance = threads.ThreadRebalancer() if device.type == "cpu" else None
    algo.model.train()
    while step < cfg.steps:
        if rebalance is not None:
            rebalance.tick()
        batch = _to_device(next(it), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, metrics = step_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        guard.step(optimizer, step + 1, loss, grad_norm, metrics)  # skipped on the device if non-finite
        step += 1
        n_last += len(batch["game_id"]) * world
        log_now = step % cfg.log_every == 0 or step == cfg.steps
        target_now = bool(cfg.target_update_period) and step % cfg.target_update_period == 0
        checkpoint_now = step % cfg.checkpoint_every == 0 or step == cfg.steps
        # every rank checks at the same steps, so all of them stop together
        if log_now or target_now or checkpoint_now or guard.unchecked >= MAX_UNCHECKED_STEPS:
            check_finite()  # nothing of a non-finite step reaches a metrics line, the target or a checkpoint
        if target_now:
            algo.update_target()
        bar.update(1)

        if log_now:
            now = time.perf_counter()
            record: dict[str, Any] = {"step": step, **metric_values(loss, grad_norm, metrics)}
            record["samples_per_s"] = n_last / max(now - t_last, 1e-9)
            record["lr"] = optimizer.param_groups[0]["lr"]
            t_last, n_last = now, 0
            last_metrics = record
            if rank == 0:
                append_text(metrics_path, json.dumps(record) + "\n", "metrics file")
                events.scalars(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
        if diagnose is not None and (step % cfg.diagnostics_every == 0 or step == cfg.steps):
            diagnose(step)
        if checkpoint_now and rank == 0:
            ckpt_io.save_checkpoint(
                run_dir, step, algo.model, target=target, optimizer=optimizer,
                extra={"train": asdict(cfg)}, keep=cfg.keep_checkpoints,
            )
    bar.close()
    events.close()
    if world > 1:
        dist.barrier()
    return {"steps": step, "resumed_from": start, "last_metrics": last_metrics, "run_dir": str(run_dir)}



# ------------------------------------------------------------------------------- stages


def train_stages(
    algo: Algo,
    stages: Sequence[Stage],
    run_dir: Path,
    *,
    enter_stage: Callable[[Stage], None],
    batches: Callable[[Stage], Callable[[int], Iterator[dict[str, torch.Tensor]]]],
    log_every: int,
    checkpoint_every: int,
    device: str,
    seed: int,
    compile: bool = False,
    snapshot_every: int = 0,
    on_snapshot: Callable[[Stage, Path, int], None] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train every stage in order (each into ``run_dir / stage.subdir``, resumable): the one
    stage loop of pretraining and fine-tuning. ``enter_stage(stage)`` prepares the algo (freeze,
    refresh targets, pre-tokenize) and ``batches(stage)`` gives its batches.

    With ``snapshot_every`` > 0, each stage trains in chunks of that many steps and
    ``on_snapshot(stage, stage_dir, step)`` runs after each chunk (``step`` counts over all
    stages), e.g. to evaluate and keep the best snapshot. Returns the last ``train`` summary.
    """
    summary: dict[str, Any] = {}
    offset = 0
    for stage in stages:
        enter_stage(stage)
        stage_dir = run_dir / stage.subdir
        if stage.subdir:
            refuse_symlink(stage_dir, f"stage {stage.name!r} folder")
        every = snapshot_every or stage.steps
        for bound in sorted({*range(every, stage.steps, every), stage.steps}):
            config = TrainConfig(
                steps=bound, lr=stage.lr, weight_decay=stage.weight_decay,
                target_update_period=stage.target_update_period, grad_clip=1.0,  # both papers clip at 1.0
                log_every=log_every, checkpoint_every=checkpoint_every, device=device, compile=compile, seed=seed,
                diagnostics_every=default_diagnostics_every(log_every),
            )
            summary = train(algo, batches(stage), config, stage_dir, progress=progress,
                            find_unused_parameters=stage.find_unused_parameters)
            if on_snapshot is not None:
                on_snapshot(stage, stage_dir, offset + bound)
        offset += stage.steps
    return summary

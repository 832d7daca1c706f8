"""GPU readiness: one run that proves the GPU paths right and measures how close they run to the
hardware; prints a table last and writes JSON.

    python benchmarks/gpu_check.py --smoke [--out gpu_check.json]     # CPU, tiny sizes, < 1 min
    python benchmarks/gpu_check.py [--budget-s 330] [--out PATH]      # a GPU, the papers' sizes
        [--jowa-tokenizer tokenizer.pt --jowa-world-model JOWA_150M.pt | --jowa-run RUN]

On the device machine (one H200, 16 cores; see the device tool's README) its Python has torch
but not the environment stack: first ``python benchmarks/prepare_device_wheels.py`` here (it
fills ``.whl/``), then one ``run`` with ``carry=[".whl"]`` and the command it prints::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; \\
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json 2>&1 | tee $OUT/gpu_check.log

with ``timeout_s`` about 420: the check keeps to ``--budget-s`` (default 330 s; sections that no
longer fit are recorded as skipped), which leaves a rerun inside the 15 device minutes.

Sections (each in the JSON; a section that fails records its error and the rest still run):

- ``peak``: the measured matrix peak (an n^3 bf16 product on CUDA, fp32 on CPU; median of
  timed products on random data): the denominator of every MFU here, not a datasheet number.
- ``correctness``: (a) ``bf16_vs_fp32``: Scaled QL (ResNet-101, C51 + CQL) and JOWA-150M
  (stage 2) losses and gradients under bf16 autocast against fp32 (TF32 off) on the same batch,
  dropout off, as ||x - ref|| / ||ref||: the loss within `BF16_TOL` (the device README's method:
  bf16 operands land between 1e-3 and 1e-2), the gradients within a bound calibrated on the model
  (`bf16_vs_fp32`: rounding only the weights to bf16 already moves the Q-net's gradient by
  several percent); (b) ``kv_cache``: the world model's cached incremental
  forward against the full forward (a prefix, then single tokens), fp32 (tolerance `FP32_TOL`)
  and bf16 (`BF16_TOL`); (c) ``ddp``: one DistributedDataParallel step (nccl on CUDA, gloo on
  CPU; world size 1) of the trainer's loss module against the plain step: loss, gradients and
  the weight update, each relative, tolerance `DDP_TOL`.
- ``fixes``: the trainer before and after its step stopped reading the device (the old loop:
  per-tensor AdamW on CPU, a host read of the finite flag every step and one read per metric on
  log steps; the new: `workbench.train`'s fused AdamW, `FiniteGuard` and `metric_values`),
  timed in alternating repetitions of one run, with host reads per step counted by
  `workbench.train.HostReads` (on CUDA also the synchronizations torch's sync debug mode sees);
  the trainer's own loop (`train.train`) counted the same way; and, on CUDA, a 512-transition
  batch's host-to-device copy from pageable memory against pinned + ``non_blocking``.
- ``train_speed``: samples/s and step time (median) of the trainer's step at batch 512
  (`bench_train.trainer_step`) for ResNet-18/50/101 (C51 + CQL, 40 games) and JOWA-40M/150M
  (stage 2, 8-step segments), eager and ``torch.compile``d (``--compile-models``; on ``--smoke``
  the ``aot_eager`` backend, which traces like inductor without its C++ build); FLOPs per step
  from ``torch.utils.flop_counter``; MFU = FLOPs / step time / peak; the top operators of one
  step (torch.profiler) for the targets' models.
- ``sampler``: a store built on the machine (`bench_sampler.make_bench_store`, synthetic frames),
  ResNet-101 steps fed by `TransitionSampler` (pinned, background workers) against the same
  steps on a batch already on the device: the share of step time lost to the sampler.
- ``planner``: `bench_planner.bench_planner` (JOWA-150M, 16 envs, H=2, K=3; bf16 autocast on
  CUDA as the planner policy runs it): decisions/s batched over all envs against one env at a
  time and against the public planner's way, and against stepping the 16 envs alone.
- ``evaluator``: `bench_evaluate.evaluate_rate` with ResNet-101's greedy policy against
  `bench_evaluate.env_only_rate` (the same envs alone).
- ``released_jowa`` (optional: only where JOWA files are given): a released JOWA checkpoint,
  converted here (``workbench.convert``) from ``--jowa-tokenizer`` and ``--jowa-world-model``
  (``JOWA_TOKENIZER``, ``JOWA_WORLD_MODEL``; ``--jowa-size``/``JOWA_SIZE`` optional), or a run
  already converted (``--jowa-run``/``JOWA_RUN``), evaluated on a few of its pretraining games
  under the paper's protocol (eval environments, epsilon 0.001, beam search H = 2 with the
  paper's K per game, `planner.paper_beam_width`; bf16 autocast on CUDA as the planner policy
  runs it) within ``released_s`` seconds: a probe (`eval_estimate.estimate_evaluation`) times the
  batched decisions, and the episodes are capped at the steps that fit (27,000 when they all fit;
  below that the JSON says the scores are partial returns, not comparable to the paper's). Per
  game: our mean score beside the release's own (`workbench.reference.released_reference`, what
  notebook 05 prints). Without files the section records ``skipped: no files``; it runs after
  ``evaluator``, so in a full check it needs a larger ``--budget-s`` (or ``--sections
  released_jowa`` alone), else it is recorded as skipped for the budget like any section.

Targets (reported against, not assumed): MFU >= 40% for JOWA-150M and >= 25% for ResNet-101
training at batch 512, sampler wait < 5% of step time, batched planning >= 10x the decisions/s
of one environment at a time. ``--smoke`` runs every section at tiny sizes; its numbers say
only that the code runs and the checks hold there.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # workbench, where not installed

import bench_evaluate  # noqa: E402
import bench_planner  # noqa: E402
import bench_sampler  # noqa: E402
import bench_train  # noqa: E402

from workbench import games as G  # noqa: E402
from workbench import train as trainer  # noqa: E402
from workbench.algos.jowa import JOWA  # noqa: E402
from workbench.algos.scaled_ql import ScaledQL, ScaledQLConfig  # noqa: E402
from workbench.config import EvaluateConfig  # noqa: E402
from workbench.convert import convert_jowa  # noqa: E402
from workbench.data.sampler import TransitionSampler  # noqa: E402
from workbench.envs import MAX_AGENT_STEPS  # noqa: E402
from workbench.eval_estimate import estimate_evaluation  # noqa: E402
from workbench.evaluate import evaluate  # noqa: E402
from workbench.fileio import atomic_write_json  # noqa: E402
from workbench.games import GAME_SETS  # noqa: E402
from workbench.models.world_action import WorldActionModel, world_action_config  # noqa: E402
from workbench.planner import paper_beam_width  # noqa: E402
from workbench.reference import released_reference  # noqa: E402
from workbench.run import load_algo  # noqa: E402

BF16_TOL = 1e-2
"""bf16 against fp32, relative (the device README's method: bf16 operands land in 1e-3..1e-2)."""
FP32_TOL = 1e-4
"""fp32 against fp32 computed another way (order of sums only), relative."""
GRAD_BASELINE_FACTOR = 4.0
"""bf16 autocast gradients may differ from fp32 by this many times what rounding only the weights
to bf16 does (see `bf16_vs_fp32`)."""
DDP_TOL = 1e-4
"""DDP at world size 1 against the plain step, relative (the same arithmetic; atomics may reorder)."""
TARGETS = {"mfu_jowa": 0.40, "mfu_resnet": 0.25, "sampler_wait": 0.05, "planner_vs_one_env": 10.0}

SIZES: dict[str, dict[str, Any]] = {
    "real": dict(
        qnet_models=["resnet18", "resnet50", "resnet101"], jowa_models=["jowa-40m", "jowa-150m"],
        target_qnet="resnet101", target_jowa="jowa-150m", ddp_qnet="resnet18", ddp_jowa="jowa-40m",
        batch=512, check_batch=64, timed_steps=5, compile_models=["resnet101", "jowa-150m"],
        compile_backend="inductor", matmul_n=8192, matmul_reps=10, store_games=4, store_rows=50_000,
        sampler_workers=[4, 12], sampler_steps=15, planner_envs=16, planner_repeats=3, planner_single=2,
        eval_envs=16, eval_steps=250, fixes_model="resnet18", fixes_batch=512, fixes_steps=10, fixes_reps=3,
        trainer_steps=20, released_games=["Assault", "BeamRider", "Carnival", "SpaceInvaders"], released_episodes=4,
        released_probe_steps=8, released_s=75,
    ),
    "smoke": dict(
        qnet_models=["resnet-tiny"], jowa_models=["jowa-tiny"], target_qnet="resnet-tiny", target_jowa="jowa-tiny",
        ddp_qnet="resnet-tiny", ddp_jowa="jowa-tiny", batch=8, check_batch=4, timed_steps=2,
        compile_models=["resnet-tiny"], compile_backend="aot_eager", matmul_n=256, matmul_reps=3, store_games=2,
        store_rows=3000, sampler_workers=[2], sampler_steps=3, planner_envs=2, planner_repeats=1, planner_single=1,
        eval_envs=2, eval_steps=15, fixes_model="resnet-tiny", fixes_batch=8, fixes_steps=4, fixes_reps=1,
        trainer_steps=4, released_games=["Assault"], released_episodes=1, released_probe_steps=3, released_s=15,
    ),
}
QNET_GAMES = GAME_SETS["scaled_ql_40"]
JOWA_GAMES = ("Pong", "Breakout")
EVAL_GAME = "Pong"


# ----------------------------------------------------------------------------- helpers

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel_err(x: torch.Tensor | list[torch.Tensor], ref: torch.Tensor | list[torch.Tensor]) -> float:
    """||x - ref|| / ||ref|| over one tensor or a list of tensors taken together (float64)."""
    xs = x if isinstance(x, list) else [x]
    refs = ref if isinstance(ref, list) else [ref]
    num = sum(float((a.double() - b.double()).pow(2).sum()) for a, b in zip(xs, refs))
    den = sum(float(b.double().pow(2).sum()) for b in refs)
    return math.sqrt(num) / max(math.sqrt(den), 1e-300)


def finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def no_dropout(model: nn.Module) -> None:
    """Dropout off (its masks depend on dtype-specific kernels): both precisions see one function."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if hasattr(m, "attn_dropout"):
            m.attn_dropout = 0.0


@contextlib.contextmanager
def exact_fp32():
    """fp32 references without TF32 (cuDNN uses TF32 for fp32 convolutions by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def qnet_algo(model: str, seed: int = 0) -> ScaledQL:
    return ScaledQL.build(model, QNET_GAMES, ScaledQLConfig(), seed=seed)


def jowa_algo(model: str, seed: int = 0) -> JOWA:
    return JOWA.build(model, JOWA_GAMES, stage=2, seed=seed)


def qnet_batch(batch: int, device: torch.device) -> dict:
    return bench_train.synthetic_batch(batch, QNET_GAMES, device)


def jowa_batch(batch: int, device: torch.device, seq_len: int) -> dict:
    return bench_planner.jowa_stage2_batch(batch, device, seq_len)


def algo_and_batch(model: str, batch: int, device: torch.device, seed: int = 0) -> tuple[Any, dict]:
    if model.startswith("jowa"):
        algo = jowa_algo(model, seed)
        return algo, jowa_batch(batch, device, algo.seq_len)
    return qnet_algo(model, seed), qnet_batch(batch, device)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def counting_syncs(device: torch.device):
    """HostReads on this thread, plus on CUDA the synchronizations torch's sync debug mode warns of."""
    seen: list[int] = [0]
    with trainer.HostReads() as reads, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            yield reads, seen
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
            seen[0] = sum("synchroniz" in str(w.message) for w in caught)


# ----------------------------------------------------------------------------- sections

def measure_peak(device: torch.device, n: int, reps: int) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "median_s": t, "flops_per_s": 2 * n**3 / t,
            "tflops": 2 * n**3 / t / 1e12}


def _loss_and_grads(algo: Any, batch: dict, device: torch.device, amp: bool) -> tuple[torch.Tensor, list]:
    params = [p for g in algo.param_groups() for p in g["params"] if p.requires_grad]
    for p in params:
        p.grad = None
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        loss, _ = algo.loss(batch)
    loss.backward()
    grads = [p.grad.detach().double().clone() if p.grad is not None else torch.zeros_like(p, dtype=torch.float64)
             for p in params]
    return loss.detach().double(), grads


def bf16_vs_fp32(model: str, batch_size: int, device: torch.device) -> dict:
    """Loss and gradients under bf16 autocast against fp32 (TF32 off) on one batch.

    The loss is held to `BF16_TOL`. The gradients are held to a bound calibrated on the model
    itself: these losses are ill-conditioned in their gradients (C51's p - target sums to zero
    over the atoms, so the head's backward cancels), and merely rounding the weights to bf16 in
    an fp32 run moves the Q-net's gradient by several percent. Autocast rounds weights,
    activations and output gradients (about three such roundings a layer), so the bound is
    ``max(BF16_TOL, GRAD_BASELINE_FACTOR x that weights-only error)``; a cast that loses more
    (a softmax or a reduction carried out in bf16) exceeds it.
    """
    algo, batch = algo_and_batch(model, batch_size, device)
    algo.to(device)
    if device.type == "cuda":
        algo.to_channels_last()
    algo.model.train()
    no_dropout(algo.model)
    params = [p for g in algo.param_groups() for p in g["params"] if p.requires_grad]
    with exact_fp32():
        loss32, grads32 = _loss_and_grads(algo, batch, device, amp=False)
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p in params:
                p.copy_(p.to(torch.bfloat16).to(p.dtype))
        _, grads_rounded = _loss_and_grads(algo, batch, device, amp=False)
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)
    loss16, grads16 = _loss_and_grads(algo, batch, device, amp=True)
    per_tensor = [rel_err(a, b) for a, b in zip(grads16, grads32) if float(b.norm()) > 0]
    baseline = rel_err(grads_rounded, grads32)
    grad_tol = max(BF16_TOL, GRAD_BASELINE_FACTOR * baseline)
    dot = sum(float((a * b).sum()) for a, b in zip(grads16, grads32))
    norms = math.sqrt(sum(float(a.pow(2).sum()) for a in grads16) * sum(float(b.pow(2).sum()) for b in grads32))
    out = {
        "model": model, "batch": batch_size, "loss_fp32": float(loss32), "loss_bf16": float(loss16),
        "loss_rel_err": rel_err(loss16, loss32), "loss_tolerance": BF16_TOL,
        "grad_rel_err": rel_err(grads16, grads32), "grad_cosine": dot / max(norms, 1e-300),
        "grad_rel_err_weights_rounded_fp32": baseline, "grad_tolerance": grad_tol,
        "grad_rel_err_worst_tensor": max(per_tensor), "grad_rel_err_median_tensor": statistics.median(per_tensor),
        "all_finite": bool(torch.isfinite(loss16)) and all(bool(torch.isfinite(g).all()) for g in grads16),
    }
    out["passed"] = out["all_finite"] and out["loss_rel_err"] <= BF16_TOL and out["grad_rel_err"] <= grad_tol
    del algo
    release(device)
    return out


@torch.no_grad()
def kv_cache_check(preset: str, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = WorldActionModel(world_action_config(preset, num_games=2)).to(device).eval()
    B, L = 4, model.cfg.max_steps
    tokens = torch.randint(0, model.cfg.vocab_size, (B, L, 36), device=device)
    actions = torch.randint(0, 4, (B, L), device=device)
    game = torch.arange(B, device=device) % 2
    seq = model.interleave(tokens, actions)
    T = seq.shape[1]
    is_action = model.action_pattern[:T]
    out: dict[str, Any] = {"model": preset, "tokens": T}
    for name, amp, tol in (("fp32", False, FP32_TOL), ("bf16", True, BF16_TOL)):
        ctx = exact_fp32() if not amp else contextlib.nullcontext()
        with ctx, torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            full = model.forward_tokens(seq, is_action, game).float()
            cache = model.gpt.new_cache(B, T, device=device)
            prefix = 2 * 37 + 36  # two steps and a frame: the planner's shape of a context
            parts = [model.forward_tokens(seq[:, :prefix], is_action[:prefix], game, cache=cache)]
            for t in range(prefix, T):  # then one token at a time, as the search decodes
                parts.append(model.forward_tokens(seq[:, t:t + 1], is_action[t:t + 1], game, cache=cache))
            incremental = torch.cat(parts, 1).float()
        err = rel_err(incremental, full)
        out[name] = {"rel_err": err, "tolerance": tol, "passed": err <= tol}
    out["passed"] = out["fp32"]["passed"] and out["bf16"]["passed"]
    return out


def ddp_check(model: str, batch_size: int, device: torch.device, find_unused: bool) -> dict:
    backend = "nccl" if device.type == "cuda" else "gloo"
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        results = {}
        amp = device.type == "cuda"
        for wrap in ("plain", "ddp"):
            algo, batch = algo_and_batch(model, batch_size, device)
            algo.to(device)
            if device.type == "cuda":
                algo.to_channels_last()
            algo.model.train()
            no_dropout(algo.model)
            module: nn.Module = trainer._LossModule(algo)
            if wrap == "ddp":
                module = nn.parallel.DistributedDataParallel(
                    module, device_ids=[device.index or 0] if device.type == "cuda" else None,
                    find_unused_parameters=find_unused)
            optimizer = trainer.build_optimizer(algo, trainer.TrainConfig(steps=1, lr=1e-4), device)
            params = [p for g in optimizer.param_groups for p in g["params"]]
            before = [p.detach().clone() for p in params]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss, _ = module(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            results[wrap] = (loss.detach(), grads, before, [p.detach().clone() for p in params])
            del algo, module, optimizer
        (l0, g0, b0, w0), (l1, g1, _, w1) = results["plain"], results["ddp"]
        update = [a - b for a, b in zip(w0, b0)]
        out = {
            "model": model, "backend": backend, "world_size": 1, "find_unused_parameters": find_unused,
            "loss_rel_err": rel_err(l1, l0), "grad_rel_err": rel_err(g1, g0),
            "update_rel_err": rel_err([a - b for a, b in zip(w1, b0)], update),
            "bitwise_equal_weights": all(torch.equal(a, b) for a, b in zip(w0, w1)), "tolerance": DDP_TOL,
        }
        out["passed"] = max(out["loss_rel_err"], out["grad_rel_err"], out["update_rel_err"]) <= DDP_TOL
        return out
    finally:
        if own_group:
            dist.destroy_process_group()
        release(device)


def _legacy_step(algo: Any, device: torch.device, log_every: int, fused: bool = False) -> Callable[[dict], None]:
    """The trainer's step as it was before: per-tensor AdamW off CUDA (``fused``: the fused one
    instead), the finite flag read on the host every step, and one read per value on log steps
    (kept here only as the 'before')."""
    amp = device.type == "cuda"
    groups = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in algo.param_groups()]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=2e-4,
                                  **({"fused": True} if fused or device.type == "cuda" else {}))
    module = trainer._LossModule(algo)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    count = [0]

    def step(batch: dict) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, metrics = module(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        ok = torch.isfinite(loss.detach()).all() & torch.isfinite(grad_norm)
        if not bool(ok.float().reshape(1).item() > 0):
            raise trainer.NonFiniteLossError("non-finite", count[0] + 1)
        optimizer.step()
        count[0] += 1
        if count[0] % log_every == 0:
            {"loss": float(loss.detach()), "grad_norm": float(grad_norm),
             **{k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in metrics.items()}}

    return step


def _new_step(algo: Any, device: torch.device, log_every: int) -> Callable[[dict], None]:
    """The trainer's step now: its AdamW (fused), FiniteGuard, and one read per log line."""
    amp = device.type == "cuda"
    optimizer = trainer.build_optimizer(algo, trainer.TrainConfig(steps=1, lr=2e-4), device)
    guard = trainer.FiniteGuard(optimizer, device)
    module = trainer._LossModule(algo)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    count = [0]

    def step(batch: dict) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, metrics = module(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        count[0] += 1
        guard.step(optimizer, count[0], loss, grad_norm, metrics)
        if count[0] % log_every == 0:
            guard.check()
            trainer.metric_values(loss, grad_norm, metrics)

    return step


def fixes(sz: dict, device: torch.device) -> dict:
    model, B, n, reps = sz["fixes_model"], sz["fixes_batch"], sz["fixes_steps"], sz["fixes_reps"]
    log_every = max(1, n // 2)
    variants = {
        "before": _legacy_step,  # per-tensor AdamW on CPU, a host read every step
        "fused_optimizer_only": lambda a, d, k: _legacy_step(a, d, k, fused=True),  # the old read, new AdamW
        "after": _new_step,  # fused AdamW, device-side guard, one read per log line
    }
    steps = {}
    batch = None
    for name, make in variants.items():
        algo, batch = algo_and_batch(model, B, device)
        algo.to(device)
        if device.type == "cuda":
            algo.to_channels_last()
        algo.model.train()
        steps[name] = make(algo, device, log_every)
        steps[name](batch)  # warm-up
    assert batch is not None
    times: dict[str, list[float]] = {k: [] for k in steps}
    for rep in range(reps):
        # alternating, and reversed every other repetition (ABC CBA ...): neither load drifts
        # nor a variant's position in the round favour one variant
        for name in (list(steps) if rep % 2 == 0 else list(reversed(steps))):
            step = steps[name]
            sync(device)
            t0 = time.perf_counter()
            for _ in range(n):
                step(batch)
            sync(device)
            times[name].append((time.perf_counter() - t0) / n)
    out: dict[str, Any] = {"model": model, "batch": B, "steps_per_rep": n, "reps": reps, "log_every": log_every}
    for name, step in steps.items():
        with counting_syncs(device) as (reads, syncs):
            for _ in range(n):
                step(batch)
            sync(device)
        out[name] = {"step_ms": 1e3 * statistics.median(times[name]), "host_reads_per_step": reads.count / n,
                     "step_ms_per_rep": [1e3 * t for t in times[name]],
                     "host_reads": dict(reads.by_call)}
        if device.type == "cuda":
            out[name]["cuda_syncs_per_step"] = syncs[0] / n
    out["ratio_step_time_before_over_after"] = out["before"]["step_ms"] / out["after"]["step_ms"]
    out["ratio_step_time_fused_only_over_after"] = out["fused_optimizer_only"]["step_ms"] / out["after"]["step_ms"]
    out["host_reads_per_step_before_after"] = [out["before"]["host_reads_per_step"],
                                               out["after"]["host_reads_per_step"]]
    out["optimizer_step_ms"] = optimizer_step_ms(model, device)
    out["trainer_loop"] = trainer_loop_reads(sz, device)
    out["h2d_copy"] = h2d_copy(device)
    release(device)
    return out


def optimizer_step_ms(model: str, device: torch.device, reps: int = 7) -> dict:
    """AdamW's step alone over the model's trainable groups (random gradients), per
    implementation: the per-tensor loop (CPU's default before), foreach, fused (the trainer's)."""
    algo = jowa_algo(model) if model.startswith("jowa") else qnet_algo(model)
    algo.to(device)
    groups = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in algo.param_groups()]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        for p in g["params"]:
            p.grad = torch.randn_like(p)
    out = {}
    for name, kw in (("per_tensor", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW([dict(g) for g in groups], lr=1e-4, **kw)
        opt.step()
        times = []
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            opt.step()
            sync(device)
            times.append(time.perf_counter() - t0)
        out[name] = 1e3 * statistics.median(times)
    out["per_tensor_over_fused"] = out["per_tensor"] / out["fused"]
    del algo
    release(device)
    return out


def trainer_loop_reads(sz: dict, device: torch.device) -> dict:
    """Host reads of `train.train` itself over N steps that log once (every read it makes)."""
    n = sz["trainer_steps"]
    algo, batch = algo_and_batch(sz["fixes_model"], sz["fixes_batch"], device)

    def batches(start: int):
        while True:
            yield batch

    cfg = trainer.TrainConfig(steps=n, lr=2e-4, log_every=n, checkpoint_every=10 * n, target_update_period=0,
                              device=str(device))
    with tempfile.TemporaryDirectory() as tmp, counting_syncs(device) as (reads, syncs):
        trainer.train(algo, batches, cfg, tmp, progress=False)
    # the run ends with a checkpoint, whose device-to-host copies ('to', 'cpu') are not per step
    per_step = sum(v for k, v in reads.by_call.items() if k not in ("to", "cpu"))
    out = {"steps": n, "host_reads": dict(reads.by_call), "host_reads_per_step": per_step / n,
           "host_reads_per_step_excludes": "the final checkpoint's copies to the CPU ('to', 'cpu')"}
    if device.type == "cuda":
        out["cuda_syncs_per_step_incl_final_checkpoint"] = syncs[0] / n
    return out


def h2d_copy(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"skipped": "no accelerator: pinned memory and non_blocking copies need CUDA"}
    host = {k: v.cpu() for k, v in qnet_batch(512, torch.device("cpu")).items()}
    pinned = {k: v.pin_memory() for k, v in host.items()}
    nbytes = sum(v.numel() * v.element_size() for v in host.values())
    out: dict[str, Any] = {"bytes": nbytes}
    for name, src, nb in (("pageable_blocking", host, False), ("pinned_non_blocking", pinned, True)):
        for _ in range(3):
            trainer._to_device(src, device) if nb else {k: v.to(device) for k, v in src.items()}
        times, host_times = [], []
        for _ in range(10):
            sync(device)
            t0 = time.perf_counter()
            trainer._to_device(src, device) if nb else {k: v.to(device) for k, v in src.items()}
            host_times.append(time.perf_counter() - t0)  # how long the host is held
            sync(device)
            times.append(time.perf_counter() - t0)
        out[name] = {"copy_ms": 1e3 * statistics.median(times), "host_blocked_ms": 1e3 * statistics.median(host_times),
                     "gb_per_s": nbytes / statistics.median(times) / 1e9}
    out["host_blocked_ratio"] = out["pageable_blocking"]["host_blocked_ms"] / max(
        out["pinned_non_blocking"]["host_blocked_ms"], 1e-6)
    return out


def count_flops(step: Callable[[dict], Any], batch: dict) -> int:
    with FlopCounterMode(display=False) as counter:
        step(batch)
    return int(counter.get_total_flops())


def top_ops(step: Callable[[dict], Any], batch: dict, device: torch.device, top: int = 8) -> dict:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step(batch)
        sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    total = sum(getattr(e, attr) for e in events)
    events.sort(key=lambda e: -getattr(e, attr))
    return {"time": attr, "total_ms": total / 1e3,
            "top_shares": [[e.key, round(getattr(e, attr) / total, 3)] for e in events[:top]]}


def train_speed(sz: dict, device: torch.device, peak: float, remaining: Callable[[], float]) -> dict:
    """Eager steps of every model: FLOPs, samples/s, MFU; the profile of the targets' models."""
    out: dict[str, Any] = {"batch": sz["batch"], "peak_flops_per_s": peak, "models": {}}
    for model in sz["qnet_models"] + sz["jowa_models"]:
        if remaining() < 10:
            out["models"][model] = {"skipped": "time budget"}
            continue
        row: dict[str, Any] = {}
        algo, batch = algo_and_batch(model, sz["batch"], device)
        algo.model.train()
        step = bench_train.trainer_step(algo, device)
        row["flops_per_step"] = count_flops(step, batch)
        first, per = bench_train.time_step(step, batch, sz["timed_steps"], device)
        row["eager"] = {"first_step_s": first, "step_s": per, "samples_per_s": sz["batch"] / per,
                        "mfu": row["flops_per_step"] / per / peak}
        row["best_mfu"] = row["eager"]["mfu"]
        if model in (sz["target_qnet"], sz["target_jowa"]):
            row["profile_eager"] = top_ops(step, batch, device)
        del step, algo
        release(device)
        out["models"][model] = row
    return out


def compiled_speed(sz: dict, device: torch.device, speed: dict, remaining: Callable[[], float]) -> dict:
    """``torch.compile``d steps of ``compile_models``, into ``speed``'s rows (run last: compiling
    is the slowest part of the check, so the budget drops it before anything else)."""
    peak = speed["peak_flops_per_s"]
    for model in sz["compile_models"]:
        row = speed["models"].get(model)
        if not row or "eager" not in row:
            continue
        if remaining() < (60 if device.type == "cuda" else 10):
            row["compiled"] = {"skipped": f"time budget ({remaining():.0f} s left)"}
            continue
        torch._dynamo.reset()
        algo, batch = algo_and_batch(model, sz["batch"], device)
        algo.model.train()
        step = bench_train.trainer_step(algo, device, compiled=True, backend=sz["compile_backend"])
        first, per = bench_train.time_step(step, batch, sz["timed_steps"], device)
        row["compiled"] = {"backend": sz["compile_backend"], "first_step_s": first, "step_s": per,
                           "samples_per_s": sz["batch"] / per, "mfu": row["flops_per_step"] / per / peak,
                           "speedup_over_eager": row["eager"]["step_s"] / per}
        row["best_mfu"] = max(row["best_mfu"], row["compiled"]["mfu"])
        del step, algo
        release(device)
    return speed


def sampler_wait(sz: dict, device: torch.device) -> dict:
    B, n = sz["batch"], sz["sampler_steps"]
    games = bench_sampler.GAMES[: sz["store_games"]]
    out: dict[str, Any] = {"consumer": sz["target_qnet"], "batch": B, "steps": n, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = bench_sampler.make_bench_store(Path(tmp) / "store", games, sz["store_rows"])
        out["store"] = {"games": len(games), "rows_per_game": sz["store_rows"], "build_s": time.perf_counter() - t0}
        algo, resident = algo_and_batch(sz["target_qnet"], B, device)
        algo.model.train()
        step = bench_train.trainer_step(algo, device)
        for _ in range(2):
            step(resident)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            step(resident)
        sync(device)
        t_resident = (time.perf_counter() - t0) / n
        out["resident_step_s"] = t_resident
        out["workers"] = {}
        for w in sz["sampler_workers"]:
            sampler = TransitionSampler(store, batch_size=B, seed=0, workers=w, prefetch=max(4, w))
            it = iter(sampler)
            t0 = time.perf_counter()
            for _ in range(n):
                next(it)
            alone = (time.perf_counter() - t0) / n  # the sampler by itself (prefetch queue drained first)
            waited = 0.0
            step(trainer._to_device(next(it), device))
            sync(device)
            t0 = time.perf_counter()
            for _ in range(n):
                tw = time.perf_counter()
                host_batch = next(it)
                waited += time.perf_counter() - tw
                step(trainer._to_device(host_batch, device))
            sync(device)
            t_fed = (time.perf_counter() - t0) / n
            sampler.close()
            out["workers"][str(w)] = {
                "pinned": sampler.pin_memory, "batch_pinned": all(v.is_pinned() for v in host_batch.values()),
                "sampler_alone_batches_per_s": 1 / alone, "fed_step_s": t_fed,
                "wait_fraction": max(0.0, (t_fed - t_resident) / t_fed),
                "host_blocked_in_next_fraction": waited / (t_fed * n),
            }
        out["best_wait_fraction"] = min(v["wait_fraction"] for v in out["workers"].values())
        del step, algo
    release(device)
    return out


def planner_speed(sz: dict, device: torch.device) -> dict:
    args = argparse.Namespace(envs=sz["planner_envs"], horizon=2, beam=3, context=5, repeats=sz["planner_repeats"],
                              single_envs=sz["planner_single"], skip_previous=True, profile=False)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with amp:
        res = bench_planner.bench_planner(sz["target_jowa"], args, device)
    env_sps, _ = bench_evaluate.env_only_rate(EVAL_GAME, sz["planner_envs"], sz["eval_steps"])
    rate = res["decisions_per_s"]
    out = {
        "model": sz["target_jowa"], "envs": sz["planner_envs"], "horizon": 2, "beam_width": 3,
        "autocast_bf16": device.type == "cuda", "decisions_per_s": rate,
        "batched_vs_one_env_at_a_time": rate["planner"] / rate["planner_1env"],
        "batched_vs_public_way": res["ratios"]["planner_vs_reference"],
        "env_alone_steps_per_s": env_sps, "planner_decisions_vs_env_steps": rate["planner"] / env_sps,
        "same_actions_as_planner": res["same_actions_as_planner"],
    }
    release(device)
    return out


def evaluator_speed(sz: dict, device: torch.device) -> dict:
    algo = ScaledQL.build(sz["target_qnet"], (EVAL_GAME,), ScaledQLConfig())
    algo.to(device)
    if device.type == "cuda":
        algo.to_channels_last()
    n, steps = sz["eval_envs"], sz["eval_steps"]
    env_sps, env_steps = bench_evaluate.env_only_rate(EVAL_GAME, n, steps)
    eval_sps, eval_steps = bench_evaluate.evaluate_rate(algo.policy(), EVAL_GAME, n, steps)
    release(device)
    return {"model": sz["target_qnet"], "game": EVAL_GAME, "envs": n, "max_steps": steps,
            "env_alone_steps_per_s": env_sps, "eval_steps_per_s": eval_sps, "eval_vs_env": eval_sps / env_sps,
            "env_steps": env_steps, "eval_steps": eval_steps}


JOWA_ENV = {"run": "JOWA_RUN", "tokenizer": "JOWA_TOKENIZER", "world_model": "JOWA_WORLD_MODEL", "size": "JOWA_SIZE"}
"""Environment variables that name the released JOWA files where the options do not."""
NO_FILES = "no files"


def released_files(options: dict[str, str]) -> dict[str, Any] | str:
    """The JOWA files for ``released_jowa``: ``options`` (run, tokenizer, world_model, size; '' =
    unset) over `JOWA_ENV`'s variables. {"run": Path} or {"tokenizer": Path, "world_model": Path,
    "size": str | None}; where there are none, the reason, starting with `NO_FILES`."""
    value = {k: options.get(k) or os.environ.get(var, "") for k, var in JOWA_ENV.items()}
    if value["run"]:
        run = Path(value["run"]).expanduser().resolve()
        return {"run": run} if run.exists() else f"{NO_FILES}: the run {run} does not exist"
    if value["tokenizer"] or value["world_model"]:
        paths = {k: Path(value[k]).expanduser().resolve() for k in ("tokenizer", "world_model") if value[k]}
        absent = [f"{k} {p}" for k, p in paths.items() if not p.is_file()]
        absent += [f"{k} not given" for k in ("tokenizer", "world_model") if k not in paths]
        if absent:
            return f"{NO_FILES}: {'; '.join(absent)}"
        return {**paths, "size": value["size"] or None}
    return (f"{NO_FILES} (--jowa-tokenizer and --jowa-world-model, or --jowa-run; env "
            f"{', '.join(JOWA_ENV.values())})")


def released_jowa(sz: dict, device: torch.device, files: dict[str, Any], allowance_s: float) -> dict:
    """A released JOWA checkpoint (converted here, or a converted run) evaluated on
    ``released_games`` under the paper's protocol within ``allowance_s`` seconds, its per-game
    means beside the release's own (see the module docstring)."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "run" in files:
            run_dir = Path(files["run"])
            out["source"] = {"run": str(run_dir)}
        else:
            run_dir = Path(tmp) / "run"
            convert_jowa(files["tokenizer"], files["world_model"], run_dir, size=files["size"])
            out["source"] = {"tokenizer": str(files["tokenizer"]), "world_model": str(files["world_model"])}
            out["convert_s"] = time.perf_counter() - t0
        algo, run, _ = load_algo(run_dir, device=str(device))
        resolved, model = run.resolved, run.model  # read now: a converted run lives in the temporary folder
        games = [g for g in sz["released_games"] if g in run.games]
        if not games:
            raise ValueError(f"the run holds none of the games {sz['released_games']} (its games: {list(run.games)})")
        beams = {g: paper_beam_width(G.num_actions(g)) for g in run.games}
        episodes = int(sz["released_episodes"])
        config = EvaluateConfig(
            checkpoint=str(run_dir), games=",".join(games), episodes=episodes, num_envs=episodes,
            max_steps=MAX_AGENT_STEPS, epsilon=0.001, planning_horizon=2,
            beam_width=",".join(f"{g}:{k}" for g, k in beams.items()), references=False, device=str(device))
        estimate = estimate_evaluation(config, probe_steps=int(sz["released_probe_steps"]))
        rate = estimate.decisions_per_s
        left = allowance_s - (time.perf_counter() - t0)
        # every slot of every game steps in lock-step: one batched decision per agent step
        fits = int(0.8 * left * rate) if rate else int(sz["released_probe_steps"])
        cap = max(1, min(MAX_AGENT_STEPS, fits))
        t_eval = time.perf_counter()
        algo.model.eval()
        with torch.no_grad():
            scores = evaluate(
                algo.policy(config.eval_options(run.games)), games, game_ids=[run.games.index(g) for g in games],
                episodes_per_game=episodes, num_envs=episodes, seed=config.seed, epsilon=config.epsilon,
                max_agent_steps=cap, progress=False)
        eval_s = time.perf_counter() - t_eval
    means = {g: scores["per_game"][g]["mean"] for g in games}
    released = released_reference(resolved, means, scores["comparable_to_papers"])
    if released is not None:
        print("\n".join(released["lines"]), flush=True)
    theirs = released["per_game"] if released else {}
    out.update({
        "model": model, "released_model": released["model"] if released else None,
        "released_source": released["source"] if released else None, "games": games,
        "episodes_per_game": episodes, "horizon": 2, "beam_width": {g: beams[g] for g in games},
        "epsilon": config.epsilon, "autocast_bf16": device.type == "cuda",
        "probe_decisions_per_s": rate, "max_agent_steps": cap, "protocol_max_agent_steps": MAX_AGENT_STEPS,
        "eval_s": eval_s, "eval_decisions_per_s": cap / eval_s if eval_s > 0 else None,
        "per_game": {g: {"ours_mean": means[g], "released_mean": theirs.get(g),
                         "scores": scores["per_game"][g]["scores"], "lengths": scores["per_game"][g]["lengths"],
                         "truncated": scores["per_game"][g]["truncated"]} for g in games},
        "truncated_episodes": scores["truncated_episodes"], "comparable_to_papers": scores["comparable_to_papers"],
        "note": scores["note"], "lines": released["lines"] if released else [],
    })
    release(device)
    return out


# ----------------------------------------------------------------------------- driver

SECTIONS = ("peak", "correctness", "fixes", "train_speed", "sampler", "planner", "evaluator", "released_jowa")


def run_check(sz: dict, device: torch.device, sections: tuple[str, ...], budget_s: float,
              jowa_files: dict[str, Any] | str = NO_FILES) -> dict:
    """Run ``sections`` within ``budget_s``; ``jowa_files``: `released_files`' answer."""
    start = time.perf_counter()

    def remaining() -> float:
        return budget_s - (time.perf_counter() - start)

    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(), "sizes": sz, "budget_s": budget_s,
        "tolerances": {"bf16": BF16_TOL, "fp32": FP32_TOL, "ddp": DDP_TOL,
                                     "grad_baseline_factor": GRAD_BASELINE_FACTOR}, "targets": TARGETS,
    }
    peak = None

    def run(name: str, fn: Callable[[], Any], needs_s: float = 5.0) -> Any:
        if name not in sections:
            return None
        if remaining() < needs_s:
            result[name] = {"skipped": f"time budget ({remaining():.0f} s left, needs ~{needs_s:.0f})"}
            return None
        t0 = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            value = fn()
        except Exception as exc:  # one broken section must not cost the others' answers
            value = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}
        if isinstance(value, dict):
            value["elapsed_s"] = time.perf_counter() - t0
        result[name] = value
        return value

    peak_res = run("peak", lambda: measure_peak(device, sz["matmul_n"], sz["matmul_reps"]), 2)
    if peak_res is None or "flops_per_s" not in peak_res:
        peak_res = measure_peak(device, sz["matmul_n"], sz["matmul_reps"])
    peak = peak_res["flops_per_s"]
    run("correctness", lambda: {
        "bf16_vs_fp32": [bf16_vs_fp32(sz["target_qnet"], sz["check_batch"], device),
                         bf16_vs_fp32(sz["target_jowa"], sz["check_batch"], device)],
        "kv_cache": kv_cache_check(sz["target_jowa"], device),
        "ddp": [ddp_check(sz["ddp_qnet"], sz["check_batch"], device, find_unused=False),
                ddp_check(sz["ddp_jowa"], sz["check_batch"], device, find_unused=True)],
    }, 10)
    run("fixes", lambda: fixes(sz, device), 10)
    speed = run("train_speed", lambda: train_speed(sz, device, peak, lambda: remaining() - 60), 20)
    run("sampler", lambda: sampler_wait(sz, device), 15)
    run("planner", lambda: planner_speed(sz, device), 15)
    run("evaluator", lambda: evaluator_speed(sz, device), 10)
    if "released_jowa" in sections and isinstance(jowa_files, str):
        result["released_jowa"] = {"skipped": jowa_files}
    elif isinstance(jowa_files, dict):
        run("released_jowa", lambda: released_jowa(sz, device, jowa_files, min(sz["released_s"], remaining())),
            max(5.0, sz["released_s"] / 3))
    if isinstance(speed, dict) and "models" in speed:
        t0 = time.perf_counter()
        print("[gpu_check] train_speed (compiled) ...", flush=True)
        try:
            compiled_speed(sz, device, speed, remaining)
        except Exception as exc:
            speed["compiled_error"] = f"{type(exc).__name__}: {exc}"
            speed["compiled_traceback"] = traceback.format_exc(limit=6)
        speed["compiled_elapsed_s"] = time.perf_counter() - t0
    result["elapsed_s"] = time.perf_counter() - start
    result["verdicts"] = verdicts(result, sz)
    return result


def verdicts(r: dict, sz: dict) -> list[dict]:
    """The table's rows: what was measured, against which tolerance or target, and the outcome."""
    rows: list[dict] = []

    def add(section: str, what: str, value: Any, bound: str, ok: bool | None) -> None:
        rows.append({"section": section, "what": what, "value": value, "bound": bound,
                     "verdict": "-" if ok is None else ("ok" if ok else "MISS")})

    def fmt(x: float, pct: bool = False) -> str:
        return f"{100 * x:.1f}%" if pct else f"{x:.3g}"

    for name in SECTIONS:
        sec = r.get(name)
        if isinstance(sec, dict) and ("error" in sec or "skipped" in sec):
            add(name, "section", sec.get("error") or sec.get("skipped"), "", False if "error" in sec else None)
        if isinstance(sec, dict) and "compiled_error" in sec:
            add(name, "compiled", sec["compiled_error"], "", False)
    if "peak" in r and "tflops" in r.get("peak", {}):
        add("peak", f"{r['peak']['dtype']} matmul n={r['peak']['n']}", f"{r['peak']['tflops']:.1f} TFLOP/s", "", None)
    c = r.get("correctness", {})
    for chk in c.get("bf16_vs_fp32", []):
        add("correctness", f"bf16 vs fp32 loss {chk['model']}", fmt(chk["loss_rel_err"]), f"<= {BF16_TOL:g}",
            chk["loss_rel_err"] <= BF16_TOL)
        add("correctness", f"bf16 vs fp32 grads {chk['model']}", fmt(chk["grad_rel_err"]),
            f"<= {chk['grad_tolerance']:.3g}", chk["grad_rel_err"] <= chk["grad_tolerance"] and chk["all_finite"])
    if "kv_cache" in c:
        for prec in ("fp32", "bf16"):
            k = c["kv_cache"][prec]
            add("correctness", f"kv cache vs full {prec} {c['kv_cache']['model']}", fmt(k["rel_err"]),
                f"<= {k['tolerance']:g}", k["passed"])
    for chk in c.get("ddp", []):
        worst = max(chk["loss_rel_err"], chk["grad_rel_err"], chk["update_rel_err"])
        add("correctness", f"ddp({chk['backend']}) vs plain {chk['model']}", fmt(worst), f"<= {DDP_TOL:g}",
            chk["passed"])
    f = r.get("fixes", {})
    if "before" in f:
        add("fixes", f"host reads/step before -> after ({f['model']})",
            f"{f['before']['host_reads_per_step']:.2f} -> {f['after']['host_reads_per_step']:.2f}", "", None)
        add("fixes", f"step ms before -> after ({f['model']})",
            f"{f['before']['step_ms']:.1f} -> {f['after']['step_ms']:.1f} "
            f"(x{f['ratio_step_time_before_over_after']:.2f})", "", None)
        add("fixes", "train() host reads/step", f"{f['trainer_loop']['host_reads_per_step']:.2f}", "", None)
        o = f.get("optimizer_step_ms", {})
        if "fused" in o:
            add("fixes", "AdamW step ms per-tensor -> fused", f"{o['per_tensor']:.2f} -> {o['fused']:.2f}", "", None)
        h = f.get("h2d_copy", {})
        if "pinned_non_blocking" in h:
            add("fixes", "h2d host-blocked ms pageable -> pinned",
                f"{h['pageable_blocking']['host_blocked_ms']:.2f} -> {h['pinned_non_blocking']['host_blocked_ms']:.2f}",
                "", None)
    for model, row in r.get("train_speed", {}).get("models", {}).items():
        if "eager" not in row:
            add("train_speed", model, row.get("skipped"), "", None)
            continue
        comp = row.get("compiled", {})
        speeds = f"{row['eager']['samples_per_s']:.0f}/s eager"
        if "samples_per_s" in comp:
            speeds += f", {comp['samples_per_s']:.0f}/s compiled"
        target = TARGETS["mfu_jowa"] if model == sz["target_jowa"] else (
            TARGETS["mfu_resnet"] if model == sz["target_qnet"] else None)
        add("train_speed", f"{model} b={r['train_speed']['batch']}: {speeds}; MFU", fmt(row["best_mfu"], True),
            f">= {fmt(target, True)}" if target else "", None if target is None else row["best_mfu"] >= target)
    s = r.get("sampler", {})
    if "best_wait_fraction" in s:
        add("sampler", f"wait share of step ({s['consumer']}, workers {list(s['workers'])})",
            fmt(s["best_wait_fraction"], True), f"< {fmt(TARGETS['sampler_wait'], True)}",
            s["best_wait_fraction"] < TARGETS["sampler_wait"])
    p = r.get("planner", {})
    if "decisions_per_s" in p:
        add("planner", f"{p['model']} {p['envs']} envs H=2 K=3 decisions/s", f"{p['decisions_per_s']['planner']:.1f}",
            "", None)
        add("planner", "batched vs one env at a time", f"x{p['batched_vs_one_env_at_a_time']:.1f}",
            f">= x{TARGETS['planner_vs_one_env']:g}",
            p["batched_vs_one_env_at_a_time"] >= TARGETS["planner_vs_one_env"])
        add("planner", "decisions/s over env-alone steps/s", f"{p['planner_decisions_vs_env_steps']:.3f}", "", None)
    e = r.get("evaluator", {})
    if "eval_steps_per_s" in e:
        add("evaluator", f"{e['model']} {e['envs']} envs steps/s (env alone)",
            f"{e['eval_steps_per_s']:.0f} ({e['env_alone_steps_per_s']:.0f}), x{e['eval_vs_env']:.2f}", "", None)
    j = r.get("released_jowa", {})
    for game, row in (j.get("per_game") or {}).items():
        theirs = row["released_mean"]
        add("released_jowa", f"{j['model']} {game} mean of {j['episodes_per_game']} (cap {j['max_agent_steps']:,} "
            f"steps, H=2 K={j['beam_width'][game]})",
            f"{row['ours_mean']:.1f}" + ("" if theirs is None else f" (released {theirs:.1f})"),
            "" if j["comparable_to_papers"] else "capped: not comparable", None)
    return rows


def print_table(rows: list[dict]) -> None:
    widths = [max(len(str(row[k])) for row in rows + [dict(section="section", what="what", value="value",
                                                            bound="bound", verdict="verdict")])
              for k in ("section", "what", "value", "bound", "verdict")]
    head = ("section", "what", "value", "bound", "verdict")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for row in rows:
        print("  ".join(str(row[k]).ljust(w) for k, w in zip(head, widths)))


def _clean(x: Any) -> Any:
    """JSON-safe: non-finite floats become None (and are reported as such)."""
    if isinstance(x, float):
        return finite(x)
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (what the test runs)")
    p.add_argument("--device", default=None, help="default: cuda if available (cpu with --smoke)")
    p.add_argument("--out", default=None, help="JSON path (default: $OUT/gpu_check.json, else ./gpu_check.json)")
    p.add_argument("--budget-s", type=float, default=None, help="seconds the check may take (real: 330, smoke: 120)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--jowa-run", default="", help="released_jowa: a converted JOWA run (env JOWA_RUN)")
    p.add_argument("--jowa-tokenizer", default="",
                   help="released_jowa: the release's tokenizer.pt (env JOWA_TOKENIZER)")
    p.add_argument("--jowa-world-model", default="",
                   help="released_jowa: JOWA_40M.pt, JOWA_70M.pt or JOWA_150M.pt (env JOWA_WORLD_MODEL)")
    p.add_argument("--jowa-size", default="", help="released_jowa: 40m, 70m or 150m (default: read from the file)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override a size, e.g. fixes_batch=32 (JSON values; lists as [..])")
    args = p.parse_args()
    sz = copy.deepcopy(SIZES["smoke" if args.smoke else "real"])
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in sz:
            raise SystemExit(f"--set {key}: unknown size; valid: {', '.join(sz)}")
        try:
            sz[key] = json.loads(value)
        except json.JSONDecodeError:
            sz[key] = value
    device = torch.device(args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; run with --smoke on a CPU")
    if device.type == "cpu" and not args.smoke:
        print("[gpu_check] no GPU: real sizes on a CPU take very long; use --smoke", flush=True)
    budget = args.budget_s if args.budget_s is not None else (120.0 if args.smoke else 330.0)
    out = Path(args.out or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else "gpu_check.json"))
    files = released_files({"run": args.jowa_run, "tokenizer": args.jowa_tokenizer,
                            "world_model": args.jowa_world_model, "size": args.jowa_size})
    result = _clean(run_check(sz, device, tuple(args.sections), budget, files))
    result["smoke"] = args.smoke
    atomic_write_json(out, result)
    for model, row in (result.get("train_speed") or {}).get("models", {}).items():
        prof = row.get("profile_eager") if isinstance(row, dict) else None
        if prof:  # where a target is missed, these are the costs to attack first
            tops = ", ".join(f"{name} {100 * share:.0f}%" for name, share in prof["top_shares"])
            print(f"[gpu_check] {model} one eager step, top ops by {prof['time']}: {tops}")
    print(f"[gpu_check] {result['elapsed_s']:.0f} s; JSON: {out}")
    print_table(result["verdicts"])


if __name__ == "__main__":
    main()

"""Training step time and samples/s of Scaled QL presets (C51 + CQL, 40 games), printed as JSON.

One step = the trainer's work per batch (`trainer_step`: the trainer's loss module, optimizer and
NaN/Inf guard): online forward on obs, target forward on next_obs, C51 + CQL loss, backward,
gradient clipping, AdamW step; the median of the timed steps is reported. Batches are synthetic uint8 tensors in
memory (the sampler has its own benchmark). Eager and ``torch.compile`` are measured side by
side in the same process.

    python benchmarks/bench_train.py --models resnet18 resnet50 resnet101 --batches 32 512
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch

from workbench.algos.scaled_ql import ScaledQL, ScaledQLConfig
from workbench.games import GAME_SETS, num_actions
from workbench.train import FiniteGuard, TrainConfig, _LossModule, build_optimizer


def synthetic_batch(batch: int, games: tuple[str, ...], device: torch.device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    gid = torch.randint(len(games), (batch,), generator=g)
    n = torch.tensor([num_actions(x) for x in games])[gid]
    return {
        "obs": torch.randint(0, 256, (batch, 4, 84, 84), dtype=torch.uint8, generator=g).to(device),
        "next_obs": torch.randint(0, 256, (batch, 4, 84, 84), dtype=torch.uint8, generator=g).to(device),
        "action": (torch.rand(batch, generator=g) * n).long().to(device),
        "reward": torch.randn(batch, generator=g).clamp(-1, 1).to(device),
        "discount": torch.full((batch,), 0.99**3).to(device),
        "terminal": torch.zeros(batch).to(device),
        "game_id": gid.to(device),
        "valid_mask": (torch.arange(18)[None] < n[:, None]).to(device),
    }


def trainer_step(algo, device: torch.device, compiled: bool = False, backend: str = "inductor",
                 amp: bool | None = None) -> Callable[[dict], torch.Tensor]:
    """``step(batch) -> loss``: what `workbench.train.train` does per batch (bf16 autocast on
    CUDA, the loss through the trainer's loss module, optionally ``torch.compile``d, backward,
    clipping at 1.0, the trainer's AdamW and its device-side NaN/Inf guard), for timing."""
    amp = device.type == "cuda" if amp is None else amp
    algo.to(device)
    if device.type == "cuda":
        algo.to_channels_last()
    optimizer = build_optimizer(algo, TrainConfig(steps=1, lr=2e-4), device)
    guard = FiniteGuard(optimizer, device)
    module = _LossModule(algo)
    loss_fn = torch.compile(module, backend=backend) if compiled else module
    params = [p for g in optimizer.param_groups for p in g["params"]]
    count = [0]

    def step(batch: dict) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, metrics = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        count[0] += 1
        guard.step(optimizer, count[0], loss, grad_norm, metrics)
        if guard.unchecked >= 100:
            guard.check()
        return loss

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(step: Callable[[dict], object], batch: dict, steps: int, device: torch.device) -> tuple[float, float]:
    """(first step's seconds, compilation included; median seconds of ``steps`` timed steps)."""
    _sync(device)
    t0 = time.perf_counter()
    step(batch)  # warm-up (and compilation)
    _sync(device)
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(batch)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def time_steps(model_name: str, batch: int, compiled: bool, steps: int, device: torch.device) -> dict:
    games = GAME_SETS["scaled_ql_40"]
    torch.manual_seed(0)
    algo = ScaledQL.build(model_name, games, ScaledQLConfig())
    step = trainer_step(algo, device, compiled)
    first, per_step = time_step(step, synthetic_batch(batch, games, device), steps, device)
    return {
        "model": model_name, "batch": batch, "compile": compiled, "device": str(device),
        "first_step_s": round(first, 3), "step_s": round(per_step, 4),
        "samples_per_s": round(batch / per_step, 1), "timed_steps": steps,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "resnet101"])
    p.add_argument("--batches", nargs="+", type=int, default=[32, 512])
    p.add_argument("--steps", type=int, default=3, help="timed steps per setting (after one warm-up)")
    p.add_argument("--compile", choices=["both", "on", "off"], default="both")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.compile]
    results = []
    for model_name in args.models:
        for batch in args.batches:
            for compiled in modes:
                results.append(time_steps(model_name, batch, compiled, args.steps, device))
                print(json.dumps(results[-1]), flush=True)
    print(json.dumps({
        "benchmark": "train_step", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()

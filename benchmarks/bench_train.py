"""Training step time and samples/s of Scaled QL presets (C51 + CQL, 40 games), printed as JSON.

One step = the trainer's work per batch: online forward on obs, target forward on next_obs,
C51 + CQL loss, backward, gradient clipping, AdamW step. Batches are synthetic uint8 tensors in
memory (the sampler has its own benchmark). Eager and ``torch.compile`` are measured side by
side in the same process.

    python benchmarks/bench_train.py --models resnet18 resnet50 resnet101 --batches 32 512
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from workbench.algos.scaled_ql import ScaledQL, ScaledQLConfig
from workbench.games import GAME_SETS, num_actions


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


def time_steps(model_name: str, batch: int, compiled: bool, steps: int, device: torch.device) -> dict:
    games = GAME_SETS["scaled_ql_40"]
    torch.manual_seed(0)
    algo = ScaledQL.build(model_name, games, ScaledQLConfig()).to(device)
    amp = device.type == "cuda"
    if amp:
        algo.to_channels_last()
    opt = torch.optim.AdamW(algo.model.parameters(), lr=2e-4, weight_decay=0.0, fused=device.type == "cuda")
    loss_fn = torch.compile(algo.loss) if compiled else algo.loss
    data = synthetic_batch(batch, games, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = loss_fn(data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(algo.model.parameters(), 1.0)
        opt.step()

    t0 = time.perf_counter()
    step()  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - t0) / steps
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

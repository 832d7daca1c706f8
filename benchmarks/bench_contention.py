"""Record, train and evaluate on a shared machine: idle and beside a neighbour process, with the
workbench's thread policy (``workbench.threads``) and without it (torch's and OpenMP's defaults).

Each workload runs in a fresh process (the policy acts before torch starts), first idle, then
while this benchmark runs a neighbour: a fixed torch workload (2-thread 512x512 matrix products in
a loop). Prints JSON: seconds per workload and condition, speed with a neighbour as a fraction of
idle speed, and the policy's idle speed relative to the defaults'.

    python benchmarks/bench_contention.py [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = ("record", "train", "evaluate")
VARIANTS = {"defaults": {"WORKBENCH_THREAD_POLICY": "none"}, "policy": {}}
NEIGHBOUR = """
import torch
torch.set_num_threads(2)
a = torch.randn(512, 512)
while True:
    a = (a @ a).tanh()
"""


def run_workload(name: str, data: Path) -> float:
    """Seconds of one workload's work (imports and set-up excluded)."""
    from workbench import threads  # noqa: PLC0415
    from workbench.algos.base import stage_iterator  # noqa: PLC0415  (a child imports after its env is set)
    from workbench.algos.scaled_ql import ScaledQL, ScaledQLConfig  # noqa: PLC0415
    from workbench.data.record import record_many  # noqa: PLC0415
    from workbench.data.sampler import TransitionSampler  # noqa: PLC0415
    from workbench.evaluate import evaluate  # noqa: PLC0415
    from workbench.train import TrainConfig, train  # noqa: PLC0415

    if name == "record":  # the main job's recording: random play, 6,000 agent steps of Pong
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            record_many(["Pong"], 6000, out, seed=0, progress=False)
            return time.perf_counter() - t
    algo = ScaledQL.build("resnet-tiny", ["Pong"], ScaledQLConfig(target_update_period=50), seed=0)
    if name == "train":  # 150 steps at batch 32 of the main job's model, threads chosen as a job does
        threads.apply_job_threads()
        sampler = TransitionSampler(data / "store", ("Pong",), 32, n_step=3, seed=0, stratified=True,
                                    games_per_batch=8)
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            config = TrainConfig(steps=150, lr=5e-5, log_every=50, checkpoint_every=1000, device="cpu", seed=0,
                                 diagnostics_every=0)
            train(algo, stage_iterator(sampler), config, out, progress=False)
            return time.perf_counter() - t
    # evaluate: the setting, Pong + Breakout, 2 episodes each, 4 envs, cap 1,000
    algo = ScaledQL.build("resnet-tiny", ["Pong", "Breakout"], ScaledQLConfig(), seed=0)
    algo.model.eval()
    t = time.perf_counter()
    evaluate(algo.policy(), ["Pong", "Breakout"], episodes_per_game=2, num_envs=4, max_agent_steps=1000, seed=0,
             progress=False)
    return time.perf_counter() - t


def measure(name: str, data: Path, variant: str) -> dict[str, float]:
    env = {**os.environ, **VARIANTS[variant]}
    for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "WORKBENCH_THREADS"):
        env.pop(key, None)  # each variant's own rule decides
    cmd = [sys.executable, __file__, "--workload", name, "--data", str(data)]
    t0, c0 = time.perf_counter(), os.times()
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    c1 = os.times()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"seconds": result["seconds"], "process_wall": time.perf_counter() - t0,
            "process_cpu": (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system),
            "torch_threads": result["torch_threads"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", choices=WORKLOADS)
    p.add_argument("--data")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of " + ", ".join(WORKLOADS))
    args = p.parse_args()
    if args.workload:  # a child: one measurement
        import torch  # noqa: PLC0415  (a child imports the workbench first, then torch)

        seconds = run_workload(args.workload, Path(args.data))
        print(json.dumps({"seconds": seconds, "torch_threads": torch.get_num_threads()}))
        return

    from workbench.data.build import build_store  # noqa: PLC0415
    from workbench.data.record import record_many  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        record_many(["Pong"], 3000, data / "replay", seed=0, progress=False)
        build_store(data / "replay", data / "store", ["Pong"], [1], "all", progress=False)
        rows: dict[str, dict[str, dict[str, list[dict[str, float]]]]] = {}
        for condition in ("idle", "neighbour"):
            neighbour = None
            if condition == "neighbour":
                neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], env={**os.environ,
                                             "OMP_NUM_THREADS": "2"})
                time.sleep(2.0)
            try:
                for _ in range(args.repeats):
                    for name in args.workloads.split(","):
                        for variant in VARIANTS:
                            row = measure(name, data, variant)
                            print(json.dumps({"workload": name, "variant": variant, "condition": condition, **row}),
                                  file=sys.stderr, flush=True)  # progress, and what a killed run measured
                            rows.setdefault(name, {}).setdefault(variant, {}).setdefault(condition, []).append(row)
            finally:
                if neighbour is not None:
                    neighbour.kill()
                    neighbour.wait()
    summary: dict[str, dict[str, float]] = {}
    for name, variants in rows.items():
        best = {v: {c: min(r["seconds"] for r in runs) for c, runs in conds.items()} for v, conds in variants.items()}
        summary[name] = {
            **{f"{v}_{c}_s": round(best[v][c], 2) for v in best for c in best[v]},
            **{f"{v}_neighbour_speed_vs_idle": round(best[v]["idle"] / best[v]["neighbour"], 3) for v in best},
            "policy_idle_speed_vs_defaults": round(best["defaults"]["idle"] / best["policy"]["idle"], 3),
        }
    print(json.dumps({"cpus": len(os.sched_getaffinity(0)), "repeats": args.repeats, "summary": summary,
                      "runs": rows}, indent=1))


if __name__ == "__main__":
    main()

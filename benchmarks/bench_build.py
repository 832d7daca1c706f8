"""Store build throughput with 1 and 2 worker processes, and what it means for the papers' data.

Writes one synthetic plan in the real DQN-Replay format (default 2 games x 4 checkpoints x 20,000
rows; frames encode their row id, so they compress far better than real frames and decompress
faster), then builds the same store with ``workers=1`` and ``workers=2``, each build in a fresh
child process. Prints JSON: per worker count the wall time, rows/s in all and per process, the
peak RSS of the converting processes (``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` of the
build process's workers, and each worker's own ``VmHWM`` from the build log), whether the two
stores are byte-identical, the speedup, and the hours the Scaled QL near-optimal set (40 games x
5 runs x 50 checkpoints x 1M rows) would take at 64 workers if each kept the measured per-process
rate, plus the finishing of the largest game (the sha256 of its 1.76 TB of frames, one process
per game) -- an extrapolation: it assumes disk bandwidth and cores scale to 64 processes.

    python benchmarks/bench_build.py [--games 2] [--checkpoints 4] [--rows 20000] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workbench.data import build as bd
from workbench.data import dqn_replay as dr

GAME_NAMES = ("Pong", "Breakout", "Seaquest", "Qbert", "SpaceInvaders", "Asterix", "BeamRider", "Enduro")
SCALED_QL = {"games": 40, "runs": 5, "checkpoints": 50, "rows_per_checkpoint": 1_000_000, "workers": 64}


def _vm_hwm_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def child(root: str, out: str, games: list[str], workers: int, log: str) -> None:
    """One build in this (fresh) process; prints its measurements as JSON."""
    t0 = time.perf_counter()
    bd.build_store(root, out, games, [1], "all", progress=False, log=log, workers=workers)
    seconds = time.perf_counter() - t0
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux: the largest worker
    print(json.dumps({"seconds": seconds, "self_peak_rss_kb": _vm_hwm_kb(), "children_maxrss_kb": children}))


def _digest(store: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(store.rglob("*.npy")):
        h.update(str(p.relative_to(store)).encode())
        with open(p, "rb") as f:
            while b := f.read(1 << 22):
                h.update(b)
    return h.hexdigest()


def run(games: int, checkpoints: int, rows: int, worker_counts: list[int]) -> dict:
    names = list(GAME_NAMES[:games])
    out: dict = {"plan": {"games": names, "runs": 1, "checkpoints": checkpoints, "rows_per_checkpoint": rows,
                          "rows": games * checkpoints * rows, "split": "all"},
                 "cpus": os.cpu_count(), "start_method": bd.MP_START, "builds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "dqn"
        t0 = time.perf_counter()
        for i, g in enumerate(names):
            dr.write_synthetic_run(root / g / "1" / "replay_logs", checkpoints, rows, seed=i, num_actions=4, salt=i)
        out["write_synthetic_s"] = round(time.perf_counter() - t0, 1)
        digests = {}
        for w in worker_counts:
            store, log = Path(tmp) / f"store{w}", Path(tmp) / f"log{w}.jsonl"
            code = [sys.executable, __file__, "--child", str(root), str(store), ",".join(names), str(w), str(log)]
            res = json.loads(subprocess.run(code, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            done = [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "checkpoint_done"]
            worker_hwm = [e["worker_peak_rss_kb"] for e in done if e.get("worker_peak_rss_kb")]
            total = out["plan"]["rows"]
            rate = total / res["seconds"]
            b = {
                "seconds": round(res["seconds"], 2), "rows_per_s": round(rate),
                "rows_per_s_per_process": round(rate / w),
                "build_process_peak_rss_mb": round(res["self_peak_rss_kb"] / 1024, 1),
            }
            if w > 1:
                b["worker_peak_rss_mb_getrusage_children"] = round(res["children_maxrss_kb"] / 1024, 1)
                b["worker_peak_rss_mb_vmhwm_max"] = round(max(worker_hwm) / 1024, 1) if worker_hwm else None
            out["builds"][str(w)] = b
            digests[w] = _digest(store)
            shutil.rmtree(store)  # free the disk before the next build
    out["stores_identical"] = len(set(digests.values())) == 1
    first, last = str(worker_counts[0]), str(worker_counts[-1])
    out["speedup"] = round(out["builds"][first]["seconds"] / out["builds"][last]["seconds"], 2)
    target_rows = SCALED_QL["games"] * SCALED_QL["runs"] * SCALED_QL["checkpoints"] * SCALED_QL["rows_per_checkpoint"]
    per_process = out["builds"][last]["rows_per_s_per_process"]
    hash_rate = _sha256_bytes_per_s()
    game_bytes = target_rows // SCALED_QL["games"] * 84 * 84
    convert_h = target_rows / (per_process * SCALED_QL["workers"]) / 3600
    finish_h = game_bytes / hash_rate / 3600  # a game's digests: one process reads the whole game
    out["projection"] = {
        **SCALED_QL, "rows": target_rows, "per_process_rows_per_s_from": f"workers={last}",
        "convert_hours": round(convert_h, 1),
        "convert_hours_from_workers_1_rate": round(
            target_rows / (out["builds"][first]["rows_per_s_per_process"] * SCALED_QL["workers"]) / 3600, 1),
        "sha256_gb_per_s_one_core": round(hash_rate / 1e9, 2),
        "finish_hours_per_game": round(finish_h, 1),
        "hours": round(convert_h + finish_h, 1),
        "store_tb": round(target_rows * (84 * 84 + 32) / 1e12, 1),
        "write_gb_per_s_needed": round(per_process * SCALED_QL["workers"] * (84 * 84 + 32) / 1e9, 1),
        "note": "linear extrapolation from this machine's per-process rate: assumes the disk sustains "
                "write_gb_per_s_needed and 64 cores; games finish in parallel (40 <= 64 workers), so the "
                "last game's finishing adds finish_hours_per_game; synthetic frames decompress faster than real ones",
    }
    return out


def _sha256_bytes_per_s(n: int = 256 << 20) -> float:
    buf = bytes(n)
    t0 = time.perf_counter()
    hashlib.sha256(buf).digest()
    return n / (time.perf_counter() - t0)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, root, store, games, workers, log = sys.argv
        child(root, store, games.split(","), int(workers), log)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", type=int, default=2)
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    a = parser.parse_args()
    print(json.dumps(run(a.games, a.checkpoints, a.rows, a.workers), indent=2))


if __name__ == "__main__":
    main()

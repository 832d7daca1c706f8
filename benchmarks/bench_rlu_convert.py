"""RL Unplugged -> DQN-Replay layout: conversion throughput, and what it means for a 50M-step run.

Plays ``--steps`` random-policy steps of Pong on the workbench's Atari protocol env (real 84x84
pooled grayscale frames, so the PNGs compress as real data does), writes them as RL Unplugged's
own files (gzip TFRecord ``tf.train.Example`` episodes, frames through ``tf.io.encode_png``:
needs ``pip install -e ".[rlu]"``), then times, each in this process: reading the records alone
(the index pass), the conversion (``python -m workbench.data.sources convert``: decode the PNGs,
write the six DQN-Replay ``.gz`` files per checkpoint), and the store build of the result
(``build_store``, split ``all``, one worker). Prints JSON: steps/s of each phase, bytes per step
of the RL Unplugged files and of the converted ``.gz`` files, and the single-process hours and
disk those rates give for one 50M-step run (an extrapolation: random play's frames are not a
trained agent's).

    python benchmarks/bench_rlu_convert.py [--steps 20000] [--checkpoints 4]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from workbench.data import build as bd
from workbench.data.sources import convert as cv
from workbench.data.sources import tfrecord as tfr
from workbench.envs import AtariProtocolEnv

RUN_STEPS = 50_000_000


def _play(steps: int, seed: int) -> list[dict]:
    env = AtariProtocolEnv("Pong", "data", seed=seed)
    rng = np.random.default_rng(seed)
    episodes, obs = [], env.reset(seed=seed)[0]
    cur: dict[str, list] = {"frames": [], "action": [], "reward": []}
    for _ in range(steps):
        a = int(rng.integers(env.action_space.n))
        nxt, r, term, trunc, _ = env.step(a)
        cur["frames"].append(np.asarray(obs)[-1] if np.ndim(obs) == 3 else np.asarray(obs))
        cur["action"].append(a)
        cur["reward"].append(float(r))
        obs = nxt
        if term or trunc:
            episodes.append({**cur, "game_over": bool(term)})
            cur = {"frames": [], "action": [], "reward": []}
            obs = env.reset()[0]
    if cur["action"]:
        episodes.append({**cur, "game_over": False})
    return episodes


def _write(tf, root: Path, episodes: list[dict], checkpoints: int) -> None:
    (root / "Pong").mkdir(parents=True)
    per = -(-len(episodes) // checkpoints)
    for c in range(checkpoints):
        mine = episodes[c * per:(c + 1) * per]
        with tf.io.TFRecordWriter(str(root / "Pong" / f"run_1-{c:05d}-of-{checkpoints:05d}"), options="GZIP") as w:
            for eid, ep in enumerate(mine):
                T = len(ep["action"])
                disc = [1.0] * T
                if ep["game_over"]:
                    disc[-1] = 0.0
                f = {
                    "checkpoint_idx": tf.train.Feature(int64_list=tf.train.Int64List(value=[c])),
                    "episode_idx": tf.train.Feature(int64_list=tf.train.Int64List(value=[eid])),
                    "episode_return": tf.train.Feature(float_list=tf.train.FloatList(value=[sum(ep["reward"])])),
                    "observations": tf.train.Feature(bytes_list=tf.train.BytesList(
                        value=[tf.io.encode_png(fr[:, :, None]).numpy() for fr in ep["frames"]])),
                    "actions": tf.train.Feature(int64_list=tf.train.Int64List(value=ep["action"])),
                    "unclipped_rewards": tf.train.Feature(float_list=tf.train.FloatList(value=ep["reward"])),
                    "discounts": tf.train.Feature(float_list=tf.train.FloatList(value=disc)),
                }
                w.write(tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString())


def _bytes(root: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in root.rglob(pattern) if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--checkpoints", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    tf = importlib.import_module("tensorflow")  # the writer only (the rlu extra); the reader needs none of it

    episodes = _play(a.steps, a.seed)
    steps = sum(len(e["action"]) for e in episodes)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rlu, conv, store = root / "rlu", root / "converted", root / "store"
        _write(tf, rlu, episodes, a.checkpoints)
        t0 = time.perf_counter()
        n = sum(1 for p in sorted((rlu / "Pong").iterdir()) for _ in tfr.records(p))
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cv.convert(cv.open_source("rlu", rlu), conv, progress=False)
        convert_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        bd.build_store(conv, store, ["Pong"], [1], "all", progress=False)
        build_s = time.perf_counter() - t0
        rlu_b, gz_b = _bytes(rlu, "run_*"), _bytes(conv, "*.gz")
    per_step = {"rlu_files": round(rlu_b / steps, 1), "converted_gz": round(gz_b / steps, 1)}
    rates = {"read_records": round(steps / read_s), "convert": round(steps / convert_s),
             "build_store": round(steps / build_s)}
    print(json.dumps({
        "game": "Pong", "policy": "uniform random, sticky actions 0.25", "steps": steps, "episodes": n,
        "checkpoints": a.checkpoints, "crc_checked": tfr.crc_checked(), "cpus": os.cpu_count(),
        "seconds": {"read_records": round(read_s, 2), "convert": round(convert_s, 2), "build_store": round(build_s, 2)},
        "steps_per_s_one_process": rates, "bytes_per_step": per_step,
        "one_50M_step_run": {
            "rlu_files_gb": round(per_step["rlu_files"] * RUN_STEPS / 1e9, 1),
            "converted_gz_gb": round(per_step["converted_gz"] * RUN_STEPS / 1e9, 1),
            "convert_hours_one_process": round(RUN_STEPS / rates["convert"] / 3600, 2),
            "build_hours_one_process_split_all": round(RUN_STEPS / rates["build_store"] / 3600, 2),
            "note": "extrapolated linearly from this sample; random play's frames are not a trained agent's",
        },
    }, indent=2))


if __name__ == "__main__":
    main()

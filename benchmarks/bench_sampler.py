"""Sampler throughput benchmark (prints JSON).

Measures, in one process on one store of >= 5 games x 1M rows (synthetic frames, built once into
a cache directory):

* ``sampler``: :class:`TransitionSampler` assembling batches of 512 (stratified 128 x 4, stacked
  4 frames, 3-step returns, next stacks, masks) -- synchronously (``sample(i)``) and through the
  background prefetch iterator;
* ``(a) raw_gather``: the same number of bytes (8 frames per transition: state + next state)
  gathered with one numpy fancy index per game (``frames[idx]``) on the same memmaps, rows drawn
  the same way -- the floor for any sampler built on these files;
* ``(b) per_sample_reader``: a reader that, for every sample, opens the game's uncompressed
  ``frames.npy`` source file (``np.load(mmap_mode="r")``, i.e. open + header parse + mmap), plus
  the reward/terminal files, and reads that sample's 4-frame stack, 3-step window and next stack --
  what readers that reopen an HDF5/npy file per sample do.

Each method uses its own fresh rows (disjoint batch indices) so none profits from pages another
just touched. ``--build-rss`` additionally writes a synthetic 1M-row checkpoint in the real
DQN-Replay format and converts it with ``build_store`` in a child process, reporting the child's
peak RSS (``VmHWM`` from ``/proc/self/status``, read by the child at the end of the build).

Usage: ``python benchmarks/bench_sampler.py [--cache DIR] [--games 5] [--rows 1000000]
[--batches 30] [--build-rss] [--cleanup]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from workbench.data import dqn_replay as dr
from workbench.data import store as st

GAMES = ["Pong", "Breakout", "Seaquest", "Qbert", "Asterix", "Alien", "Boxing", "Freeway"]


def make_bench_store(path: Path, games: list[str], rows: int, seed: int = 0) -> st.ReplayStore:
    """A format-1 store of synthetic rows written directly (no gzip round trip), Dopamine starts."""
    if (path / "manifest.json").exists():
        s = st.ReplayStore(path)
        if list(s.games) == games and all(s.rows(g) == rows for g in games):
            return s
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    info = {}
    for gi, g in enumerate(games):
        d = path / g
        d.mkdir()
        rng = np.random.default_rng([seed, gi])
        ep = dr.synthetic_episode_rows(rng, rows, num_actions=4, mean_episode=800)
        frames = np.lib.format.open_memmap(d / "frames.npy", mode="w+", dtype=np.uint8, shape=(rows, 84, 84))
        for a in range(0, rows, 8192):
            b = min(a + 8192, rows)
            frames[a:b] = dr.synthetic_frames(np.arange(a, b), ep["real"][a:b], salt=gi)
            frames.flush()
        del frames
        np.save(d / "action.npy", ep["action"].astype(np.uint8))
        np.save(d / "reward.npy", ep["reward"])
        np.save(d / "terminal.npy", ep["terminal"])
        np.save(d / "block.npy", np.zeros(rows, np.int32))
        np.save(d / "slot.npy", np.arange(rows, dtype=np.int32))
        valid = dr.valid_transition_mask(ep["terminal"], rows, dr.dopamine_invalid_range(0, rows))
        starts = np.flatnonzero(valid).astype(np.int64)
        np.save(d / "starts.npy", starts)
        np.save(d / "start_seg_end.npy", np.full(len(starts), rows, np.int64))
        np.save(d / "episodes.npy", np.zeros((0, 3), np.int64))
        info[g] = {"rows": rows, "starts": len(starts), "episodes": 0, "num_actions": 4, "num_actions_source": "bench",
                   "blocks": [{"run": "1", "checkpoint": 0, "row_start": 0, "rows": rows, "starts": len(starts),
                               "capacity": rows, "add_count": rows, "fresh_rows": rows, "source_files_sha256": {}}]}
    manifest = {"format_version": st.FORMAT_VERSION, "games": games, "runs": ["1"], "seed": seed, "n_step": 3,
                "stack_size": 4, "context_after": 7, "split": {"name": "bench"}, "games_info": info, "source_root": "synthetic"}
    st.atomic_write_json(path / "manifest.json", manifest)
    return st.ReplayStore(path)


def per_sample_reader(store_path: Path, game: str, row: int, n_step: int = 3, gamma: float = 0.99) -> tuple:
    """(b): open the game's source files for this one sample and read it."""
    d = store_path / game
    frames = np.load(d / "frames.npy", mmap_mode="r")
    rew = np.load(d / "reward.npy", mmap_mode="r")
    term = np.load(d / "terminal.npy", mmap_mode="r")
    r, t = np.array(rew[row : row + n_step]), np.array(term[row : row + n_step])
    ret, length, is_term = dr.nstep_targets(r[None], t[None], gamma)
    state = np.array(frames[row - 3 : row + 1])
    nxt = np.array(frames[row + int(length[0]) - 3 : row + int(length[0]) + 1])
    return state, nxt, ret[0], is_term[0]


def build_rss(tmp: Path, rows: int = 1_000_000) -> dict:
    """Write a real-format synthetic checkpoint of ``rows`` rows; convert it in a child; peak RSS."""
    root = tmp / "dqn"
    t0 = time.perf_counter()
    dr.write_synthetic_run(root / "Pong/1/replay_logs", 1, rows, seed=0, num_actions=6)
    t_write = time.perf_counter() - t0
    code = (
        "import resource, time, json, sys\n"
        "from workbench.data import store as st\n"
        "t = time.perf_counter()\n"
        f"st.build_store({str(root)!r}, {str(tmp / 'store')!r}, ['Pong'], [1], 'near_optimal', progress=False)\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'maxrss_kb': int(hwm)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    # VmHWM (this process image's peak RSS): ru_maxrss would include the parent's peak, which
    # Linux carries across fork + exec
    base = subprocess.run([sys.executable, "-c", "import workbench.data.store, tqdm.auto; print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"],
                          capture_output=True, text=True, check=True)
    obs_gz = root / "Pong/1/replay_logs" / dr.file_name("observation", 0)
    return {
        "rows": rows, "uncompressed_observation_mb": rows * 84 * 84 / 2**20, "compressed_observation_mb": obs_gz.stat().st_size / 2**20,
        "write_synthetic_s": round(t_write, 1), "build_s": round(res["seconds"], 1),
        "build_rows_per_s": round(rows / res["seconds"]), "peak_rss_mb": round(res["maxrss_kb"] / 1024, 1),
        "import_only_rss_mb": round(int(base.stdout.strip()) / 1024, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/workbench/bench_store"))
    p.add_argument("--games", type=int, default=5)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--per-sample", type=int, default=2048, help="samples timed for (b)")
    p.add_argument("--build-rss", action="store_true")
    p.add_argument("--rss-rows", type=int, default=1_000_000, help="rows of the checkpoint converted for --build-rss")
    p.add_argument("--cleanup", action="store_true", help="delete the cached store afterwards")
    a = p.parse_args()
    from workbench.data.sampler import TransitionSampler

    games = GAMES[: a.games]
    t0 = time.perf_counter()
    s = make_bench_store(Path(a.cache), games, a.rows)
    t_store = time.perf_counter() - t0
    B, K = a.batch_size, a.batches
    ts = TransitionSampler(s, batch_size=B, n_step=3, gamma=0.99, seed=0, pin_memory=False)
    frames = {g: s.game(g).frames.view(np.ndarray) for g in ts.games}
    offs = np.arange(-3, 1)

    def raw_gather(i: int) -> None:
        gid, rows = ts.draw_rows(i)
        for g in np.unique(gid):
            r = rows[gid == g]
            idx = np.concatenate([r[:, None] + offs, (r + 3)[:, None] + offs], axis=1).ravel()
            frames[ts.games[g]][idx]  # one fancy index: the same 8 frames per transition

    res: dict = {"store": {"games": len(games), "rows_per_game": a.rows, "path": a.cache, "prepare_s": round(t_store, 1)},
                 "batch_size": B, "stratified": "128 x 4", "n_step": 3, "cpu_count": os.cpu_count()}
    ts.sample(10_000)  # warm code paths (not data)
    # alternate (a) and the sampler over disjoint batch indices so neither reuses the other's pages
    t_s = t_a = 0.0
    for rep in range(2):
        base = 1000 * rep
        t = time.perf_counter()
        for i in range(K):
            raw_gather(base + 100_000 + i)
        t_a += time.perf_counter() - t
        t = time.perf_counter()
        for i in range(K):
            ts.sample(base + i)
        t_s += time.perf_counter() - t
    n = 2 * K * B
    res["sampler_sync_transitions_per_s"] = round(n / t_s)
    res["a_raw_fancy_index_transitions_per_s"] = round(n / t_a)
    # prefetching iterator (2 worker threads, 3 batches ahead), fresh indices
    ts.load_state_dict({"batch_index": 50_000, "seed": 0})
    it = iter(ts)
    next(it)
    t = time.perf_counter()
    for _ in range(2 * K):
        next(it)
    res["sampler_prefetch_transitions_per_s"] = round(2 * K * B / (time.perf_counter() - t))
    ts.close()
    # (b) per-sample reader, fresh rows
    gid, rows = ts.draw_rows(200_000)
    samples = [(ts.games[g], r) for g, r in zip(gid, rows)]
    while len(samples) < a.per_sample:
        g2, r2 = ts.draw_rows(200_000 + len(samples))
        samples += [(ts.games[g], r) for g, r in zip(g2, r2)]
    samples = samples[: a.per_sample]
    t = time.perf_counter()
    for g, r in samples:
        per_sample_reader(Path(a.cache), g, int(r))
    res["b_per_sample_reader_transitions_per_s"] = round(len(samples) / (time.perf_counter() - t))
    best = max(res["sampler_sync_transitions_per_s"], res["sampler_prefetch_transitions_per_s"])
    res["sampler_vs_a"] = round(best / res["a_raw_fancy_index_transitions_per_s"], 3)
    res["sampler_vs_b"] = round(best / res["b_per_sample_reader_transitions_per_s"], 1)
    res["targets_met"] = {"ge_50pct_of_a": res["sampler_vs_a"] >= 0.5, "ge_10x_b": res["sampler_vs_b"] >= 10}
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if a.build_rss:
        with tempfile.TemporaryDirectory(dir=os.path.dirname(a.cache)) as tmp:
            res["build_1m_checkpoint"] = build_rss(Path(tmp), a.rss_rows)
    if a.cleanup:
        shutil.rmtree(a.cache, ignore_errors=True)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

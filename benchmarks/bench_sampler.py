"""Sampler throughput benchmark (prints JSON).

Measures, in one process on one store of >= 5 games x 1M rows (synthetic frames, built once into
a cache directory):

* ``sampler``: :class:`TransitionSampler` assembling batches of 512 (stratified 128 x 4, stacked
  4 frames, 3-step returns, next stacks, masks) -- synchronously (``sample(i)``) and through the
  background prefetch iterator; with read-ahead hints (the default) and, as ``*_no_hints``, with
  ``io_hints=False`` (the behaviour before hints existed);
* ``(a) raw_gather``: the same number of bytes (8 frames per transition: state + next state)
  gathered with one numpy fancy index per game (``frames[idx]``) on the same memmaps, rows drawn
  the same way -- what gathering costs without any help for the disk;
* ``(b) per_sample_reader``: a reader that, for every sample, opens the game's uncompressed
  ``frames.npy`` source file (``np.load(mmap_mode="r")``, i.e. open + header parse + mmap), plus
  the reward/terminal files, and reads that sample's 4-frame stack, 3-step window and next stack --
  what readers that reopen an HDF5/npy file per sample do; ``b_lean``: the same with one
  positioned read of exactly the sample's rows and readahead off (one disk request per sample,
  the floor for such readers whatever the device's ``read_ahead_kb``);
* ``(b2) per_sample_source_reader``: for every sample, opens the *DQN-Replay checkpoint* files as
  DQN-Replay ships them (gzipped npy; a synthetic 1M-row checkpoint written once next to the cache)
  and decompresses the observation file up to the sample's last frame. Very slow: only
  ``--source-samples`` samples are timed.

Each method uses its own fresh rows (disjoint batch indices) so none profits from pages another
just touched. Page cache (``--page-cache``): ``cold`` drops it before every measurement (root
only; the JSON says whether it worked), ``warm`` reads the store once first; ``auto`` picks cold
when the store's frames exceed half of RAM (the regime of real DQN-Replay stores), else warm.
``--build-rss`` additionally writes a synthetic 1M-row checkpoint in the real
DQN-Replay format and converts it with ``build_store`` in a child process, reporting the child's
peak RSS (``VmHWM`` from ``/proc/self/status``, read by the child at the end of the build).

Usage: ``python benchmarks/bench_sampler.py [--cache DIR] [--games 5] [--rows 1000000]
[--batches 30] [--reps 2] [--page-cache auto] [--source-samples 3] [--build-rss] [--cleanup]``
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
from workbench.data.sampler import TransitionSampler
from workbench.fileio import atomic_write_json

GAMES = ["Pong", "Breakout", "Seaquest", "Qbert", "Asterix", "Alien", "Boxing", "Freeway"]


def make_bench_store(path: Path, games: list[str], rows: int, seed: int = 0) -> st.ReplayStore:
    """A store of synthetic rows written directly (no gzip round trip), Dopamine starts."""
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
                "stack_size": 4, "context_after": 7, "split": {"name": "bench"}, "games_info": info,
                "source_root": "synthetic"}
    atomic_write_json(path / "manifest.json", manifest)
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


def per_sample_pread_reader(store_path: Path, game: str, row: int, n_step: int = 3, gamma: float = 0.99) -> tuple:
    """(b, lean): like (b), but the frames come from one positioned read of exactly the sample's
    rows ``p-3 .. p+length`` on a descriptor opened for this sample with readahead off
    (``POSIX_FADV_RANDOM``) -- one disk request per sample, the least a per-sample reader can do,
    whatever the device's readahead setting (which makes (b)'s mmap fault read far more)."""
    d = store_path / game
    rew = np.load(d / "reward.npy", mmap_mode="r")
    term = np.load(d / "terminal.npy", mmap_mode="r")
    r, t = np.array(rew[row : row + n_step]), np.array(term[row : row + n_step])
    ret, length, is_term = dr.nstep_targets(r[None], t[None], gamma)
    fd = os.open(d / "frames.npy", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        with os.fdopen(os.dup(fd), "rb") as f:
            version = np.lib.format.read_magic(f)  # header parse, as np.load does
            (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(f)
            base = f.tell()
        n = 4 + int(length[0])
        buf = os.pread(fd, n * 84 * 84, base + (row - 3) * 84 * 84)
    finally:
        os.close(fd)
    frames = np.frombuffer(buf, np.uint8).reshape(n, 84, 84)
    return frames[:4], frames[-4:], ret[0], is_term[0]


def build_rss(tmp: Path, rows: int = 1_000_000) -> dict:
    """Write a real-format synthetic checkpoint of ``rows`` rows; convert it in a child; peak RSS."""
    root = tmp / "dqn"
    t0 = time.perf_counter()
    dr.write_synthetic_run(root / "Pong/1/replay_logs", 1, rows, seed=0, num_actions=6)
    t_write = time.perf_counter() - t0
    code = (
        "import resource, time, json, sys\n"
        "from workbench.data import build as bd\n"
        "t = time.perf_counter()\n"
        f"bd.build_store({str(root)!r}, {str(tmp / 'store')!r}, ['Pong'], [1], 'near_optimal', progress=False)\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'maxrss_kb': int(hwm)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    # VmHWM (this process image's peak RSS): ru_maxrss would include the parent's peak, which
    # Linux carries across fork + exec
    peak_of_imports = ("import workbench.data.build, tqdm.auto; "
                       "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
    base = subprocess.run([sys.executable, "-c", peak_of_imports], capture_output=True, text=True, check=True)
    obs_gz = root / "Pong/1/replay_logs" / dr.file_name("observation", 0)
    return {
        "rows": rows, "uncompressed_observation_mb": rows * 84 * 84 / 2**20,
        "compressed_observation_mb": obs_gz.stat().st_size / 2**20,
        "write_synthetic_s": round(t_write, 1), "build_s": round(res["seconds"], 1),
        "build_rows_per_s": round(rows / res["seconds"]), "peak_rss_mb": round(res["maxrss_kb"] / 1024, 1),
        "import_only_rss_mb": round(int(base.stdout.strip()) / 1024, 1),
    }


def _store_bytes(path: Path, games: list[str]) -> int:
    return sum((path / g / "frames.npy").stat().st_size for g in games)


def _mem_kb(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def drop_page_cache() -> bool:
    """Drop the kernel's clean page cache (needs root and a writable /proc/sys/vm/drop_caches)."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def warm_page_cache(path: Path, games: list[str]) -> None:
    """Read every frames file once so the store sits in the page cache (when it fits)."""
    buf = bytearray(1 << 24)
    for g in games:
        with open(path / g / "frames.npy", "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def _read_ahead_kb(path: Path) -> int | None:
    """The block device's read_ahead_kb under ``path`` (what a fresh, unadvised mmap reads around a fault)."""
    try:
        dev = os.stat(path).st_dev
        sysdir = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
        for q in (sysdir / "queue", sysdir.resolve().parent / "queue"):
            if (q / "read_ahead_kb").exists():
                return int((q / "read_ahead_kb").read_text())
    except OSError:
        pass
    return None


def per_sample_source_reader(
    replay_logs: Path, checkpoint: int, index: int, n_step: int = 3, gamma: float = 0.99
) -> tuple:
    """(b2): open the DQN-Replay checkpoint's own files (gzipped npy, as DQN-Replay ships them) for
    one sample: load the small arrays, then decompress the observation file from its start until the
    sample's last frame (a gzip stream cannot seek; stops early, so on average half the file)."""
    meta = dr.load_checkpoint_meta(replay_logs, checkpoint)
    n = meta.capacity
    win = (index + np.arange(n_step)) % n
    ret, length, is_term = dr.nstep_targets(meta.reward[win][None], meta.terminal[win][None], gamma)
    offs = np.arange(-3, 1)
    rows = np.concatenate([(index + offs) % n, (index + int(length[0]) + offs) % n])
    need, last = set(rows.tolist()), int(rows.max())
    got: dict[int, np.ndarray] = {}
    with dr.stream_observations(replay_logs, checkpoint) as s:
        for start, arr in s.chunks():
            for r in need:
                if start <= r < start + len(arr):
                    got[r] = arr[r - start].copy()
            if start + len(arr) > last:
                break
    frames = np.stack([got[int(r)] for r in rows])
    return frames[:4], frames[4:], ret[0], is_term[0]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/workbench/bench_store"))
    p.add_argument("--games", type=int, default=5)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batches", type=int, default=30, help="batches per method and repetition")
    p.add_argument("--reps", type=int, default=2, help="repetitions, methods interleaved within each")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--per-sample", type=int, default=2048, help="samples timed for (b)")
    p.add_argument("--source-samples", type=int, default=3,
                   help="samples timed for (b2) (0: skip; each decompresses ~half a checkpoint)")
    p.add_argument("--page-cache", choices=["auto", "cold", "warm", "asis"], default="auto",
                   help="cold: drop the page cache before every measurement; warm: read the store once first; "
                        "auto: cold when the store's frames exceed half of RAM, else warm")
    p.add_argument("--build-rss", action="store_true")
    p.add_argument("--rss-rows", type=int, default=1_000_000, help="rows of the checkpoint converted for --build-rss")
    p.add_argument("--cleanup", action="store_true",
                   help="delete the cached store (and (b2)'s source checkpoint) afterwards")
    a = p.parse_args()
    games = GAMES[: a.games]
    cache = Path(a.cache)
    t0 = time.perf_counter()
    s = make_bench_store(cache, games, a.rows)
    t_store = time.perf_counter() - t0
    B, K = a.batch_size, a.batches
    mode = a.page_cache
    store_bytes = _store_bytes(cache, games)
    if mode == "auto":
        mode = "cold" if store_bytes > _mem_kb("MemTotal") * 1024 // 2 else "warm"
    new = TransitionSampler(s, batch_size=B, n_step=3, gamma=0.99, seed=0, pin_memory=False)
    old = TransitionSampler(s, batch_size=B, n_step=3, gamma=0.99, seed=0, pin_memory=False, io_hints=False)
    frames = {g: s.game(g).frames.view(np.ndarray) for g in new.games}
    offs = np.arange(-3, 1)

    def raw_gather(i: int) -> None:
        gid, rows = new.draw_rows(i)
        for g in np.unique(gid):
            r = rows[gid == g]
            idx = np.concatenate([r[:, None] + offs, (r + 3)[:, None] + offs], axis=1).ravel()
            frames[new.games[g]][idx]  # one fancy index: the same 8 frames per transition

    res: dict = {"store": {"games": len(games), "rows_per_game": a.rows, "frames_gb": round(store_bytes / 1e9, 1),
                           "ram_gb": round(_mem_kb("MemTotal") / 1e6, 1), "path": a.cache,
                           "prepare_s": round(t_store, 1)},
                 "batch_size": B, "stratified": "128 x 4", "n_step": 3, "cpu_count": os.cpu_count(),
                 "torch_threads": __import__("torch").get_num_threads(), "page_cache": mode,
                 "read_ahead_kb": _read_ahead_kb(cache / games[0] / "frames.npy")}
    for ts in (new, old):
        ts.sample(10_000_000)  # warm code paths (not data)
    if new._hints is None:
        raise SystemExit("read-ahead hints are unavailable here (no posix_fadvise or store not memory-mapped)")
    if mode == "warm":
        warm_page_cache(cache, games)
        res["store_fits_in_page_cache"] = store_bytes < _mem_kb("MemAvailable") * 1024

    dropped: list[bool] = []

    def prepare() -> None:
        if mode == "cold":
            dropped.append(drop_page_cache())

    def sync(ts):
        def run(base: int) -> float:
            t = time.perf_counter()
            for i in range(K):
                ts.sample(base + i)
            return time.perf_counter() - t
        return run

    def prefetch(ts):
        def run(base: int) -> float:
            ts.load_state_dict({"batch_index": base, "seed": 0})
            it = iter(ts)
            t = time.perf_counter()
            for _ in range(K):
                next(it)
            dt = time.perf_counter() - t
            it.close()  # waits for the batches still in flight: not timed
            return dt
        return run

    def raw(base: int) -> float:
        t = time.perf_counter()
        for i in range(K):
            raw_gather(base + i)
        return time.perf_counter() - t

    # every method and repetition gets its own batch indices: nobody reuses another's pages
    methods = {"sampler_sync": sync(new), "sampler_sync_no_hints": sync(old), "a_raw_fancy_index": raw,
               "sampler_prefetch": prefetch(new), "sampler_prefetch_no_hints": prefetch(old)}
    spent = {m: 0.0 for m in methods}
    names = list(methods)
    for rep in range(a.reps):
        for m in names[rep % len(names):] + names[: rep % len(names)]:  # rotate the order: no method always goes first
            prepare()
            spent[m] += methods[m](100_000 * (names.index(m) + 1) + 1000 * rep)
    for m in methods:
        res[f"{m}_transitions_per_s"] = round(a.reps * K * B / spent[m])
    res["a_raw_fancy_index_transitions_per_s"] = res.pop("a_raw_fancy_index_transitions_per_s")
    # (b) per-sample reader, fresh rows
    gid, rows = new.draw_rows(900_000)
    samples = [(new.games[g], r) for g, r in zip(gid, rows)]
    while len(samples) < a.per_sample:
        g2, r2 = new.draw_rows(900_000 + len(samples))
        samples += [(new.games[g], r) for g, r in zip(g2, r2)]
    samples = samples[: a.per_sample]
    prepare()
    t = time.perf_counter()
    for g, r in samples:
        per_sample_reader(cache, g, int(r))
    res["b_per_sample_reader_transitions_per_s"] = round(len(samples) / (time.perf_counter() - t))
    gid, rows = new.draw_rows(950_000)
    lean = [(new.games[g], r) for g, r in zip(gid, rows)]
    while len(lean) < a.per_sample:
        g2, r2 = new.draw_rows(950_000 + len(lean))
        lean += [(new.games[g], r) for g, r in zip(g2, r2)]
    lean = lean[: a.per_sample]
    for g, r in lean[:8]:  # correctness: the same bytes as the sampler's assembly
        x, y = per_sample_pread_reader(cache, g, int(r)), s.transitions(g, np.array([r]), 3, 0.99)
        assert np.array_equal(x[0], y["state"][0]) and (y["terminal"][0] or np.array_equal(x[1], y["next_state"][0]))
    prepare()
    t = time.perf_counter()
    for g, r in lean:
        per_sample_pread_reader(cache, g, int(r))
    res["b_lean_per_sample_pread_transitions_per_s"] = round(len(lean) / (time.perf_counter() - t))
    # (b2) per-sample reader on the source DQN-Replay checkpoint (gzipped npy): a handful of samples
    if a.source_samples > 0:
        src = Path(str(cache) + "_dqn_replay") / "Pong/1/replay_logs"
        if not (src / dr.file_name("observation", 0)).exists():
            shutil.rmtree(src, ignore_errors=True)
            dr.write_synthetic_run(src, 1, a.rows, seed=0, num_actions=6)
        meta = dr.load_checkpoint_meta(src, 0)
        idx = np.flatnonzero(meta.valid_mask())
        pick = np.random.default_rng(1).choice(idx, a.source_samples, replace=False)
        prepare()
        t = time.perf_counter()
        for i in pick:
            per_sample_source_reader(src, 0, int(i))
        dt = time.perf_counter() - t
        res["b2_source_checkpoint_reader_transitions_per_s"] = round(len(pick) / dt, 3)
        observation_file = src / dr.file_name("observation", 0)
        res["b2_detail"] = {"samples": len(pick), "seconds": round(dt, 1), "rows_in_checkpoint": a.rows,
                            "compressed_observation_mb": round(observation_file.stat().st_size / 2**20, 1),
                            "note": "synthetic frames compress far better than Atari screens: "
                                    "real files decompress slower"}
    if mode == "cold":
        res["page_cache_dropped_before_each"] = all(dropped)
    h = new._hints
    res["hints"] = {"ranges_issued": h.ranges_issued, "paused_at_end": h.paused, "pauses": h.pauses,
                    "resumes": h.resumes}
    best_new = max(res["sampler_sync_transitions_per_s"], res["sampler_prefetch_transitions_per_s"])
    best_old = max(res["sampler_sync_no_hints_transitions_per_s"], res["sampler_prefetch_no_hints_transitions_per_s"])
    res["hints_speedup"] = round(best_new / best_old, 2)
    res["sampler_vs_a"] = round(best_new / res["a_raw_fancy_index_transitions_per_s"], 3)
    res["sampler_vs_b"] = round(best_new / res["b_per_sample_reader_transitions_per_s"], 1)
    res["sampler_vs_b_lean"] = round(best_new / res["b_lean_per_sample_pread_transitions_per_s"], 1)
    if "b2_source_checkpoint_reader_transitions_per_s" in res:
        res["sampler_vs_b2"] = round(best_new / res["b2_source_checkpoint_reader_transitions_per_s"])
    res["targets_met"] = {"ge_50pct_of_a": res["sampler_vs_a"] >= 0.5, "ge_10x_b": res["sampler_vs_b"] >= 10}
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    new.close()
    old.close()
    if a.build_rss:
        with tempfile.TemporaryDirectory(dir=os.path.dirname(a.cache)) as tmp:
            res["build_1m_checkpoint"] = build_rss(Path(tmp), a.rss_rows)
    if a.cleanup:
        shutil.rmtree(a.cache, ignore_errors=True)
        shutil.rmtree(str(cache) + "_dqn_replay", ignore_errors=True)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

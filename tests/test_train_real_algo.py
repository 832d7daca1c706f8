"""The trainer with the real Scaled QL algo and sampler: bit-identical resume, and DDP.

DDP: 2 gloo processes vs 1 process. Each rank draws its own half of the global batch from the real
TransitionSampler (rank-seeded); the single-process run trains on the concatenation of both halves.
Averaged gradients make the two runs agree (up to float summation order), and both ranks end with
identical weights.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from shared_paths import DQN_FIXTURES

from workbench.algos.scaled_ql import ScaledQL, ScaledQLConfig
from workbench.data.sampler import TransitionSampler
from workbench.train import TrainConfig, train

FIXTURES = DQN_FIXTURES
GAMES = ("Breakout", "Pong")
STEPS, HALF = 4, 4


def make_algo() -> ScaledQL:
    torch.manual_seed(0)
    return ScaledQL.build("resnet-tiny", GAMES, ScaledQLConfig(target_update_period=2))


def cfg() -> TrainConfig:
    return TrainConfig(steps=STEPS, lr=1e-3, target_update_period=2, log_every=1, checkpoint_every=100, seed=0)


def sampler(store: str, rank: int) -> TransitionSampler:
    return TransitionSampler(store, GAMES, 2 * HALF, games_per_batch=4, seed=11, rank=rank, world_size=2, prefetch=0)


def _worker(rank: int, port: int, store: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    algo = make_algo()
    s = sampler(store, rank)
    train(algo, lambda start: (s.sample(i) for i in range(start, STEPS)), cfg(), os.path.join(out, "run"),
          progress=False)
    weights = {k: v.contiguous() for k, v in algo.model.state_dict().items()}
    save_file(weights, os.path.join(out, f"rank{rank}.safetensors"))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_matches_single_process_at_the_same_global_batch(tmp_path, dopamine_store):
    store = str(dopamine_store)
    mp.spawn(_worker, args=(_free_port(), store, str(tmp_path)), nprocs=2, join=True)
    r0 = load_file(str(tmp_path / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "rank1.safetensors"))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks disagree on {k}"

    s0, s1 = sampler(store, 0), sampler(store, 1)
    assert not torch.equal(s0.sample(0)["obs"], s1.sample(0)["obs"]), "ranks must draw different data"

    def global_batches(start):
        for i in range(start, STEPS):
            a, b = s0.sample(i), s1.sample(i)
            yield {k: torch.cat([a[k], b[k]]) for k in a}

    single = make_algo()
    train(single, global_batches, cfg(), tmp_path / "single", progress=False)
    moved = 0
    initial = make_algo().model.state_dict()
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(r0[k], v, rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
        moved += int(not torch.equal(v, initial[k]))
    assert moved > 0, "training changed nothing: the comparison would be vacuous"


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, dopamine_store):
    store = str(dopamine_store)

    def run(run_dir, steps):
        algo = make_algo()
        s = TransitionSampler(store, GAMES, 8, games_per_batch=2, seed=3, prefetch=2)  # background prefetch on

        def batches(start):
            s.load_state_dict({"batch_index": start, "seed": s.seed, "rank": 0})
            return iter(s)

        config = TrainConfig(steps=steps, lr=1e-3, target_update_period=3, log_every=1, checkpoint_every=3, seed=4)
        train(algo, batches, config, run_dir, progress=False)
        s.close()
        return algo

    full = run(tmp_path / "full", 8)
    run(tmp_path / "split", 4)
    resumed = run(tmp_path / "split", 8)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    for (k, a), b in zip(full.target_model.state_dict().items(), resumed.target_model.state_dict().values()):
        assert torch.equal(a, b), k
    def log(d):
        return [json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()]

    assert log(tmp_path / "full") == log(tmp_path / "split")

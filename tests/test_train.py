"""The training loop: bit-identical resume, NaN guard, atomic checkpoints, real DDP averaging."""

from __future__ import annotations

import copy
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from workbench import checkpoint as ckpt_io
from workbench.train import NonFiniteLossError, TrainConfig, train


class ToyAlgo:
    """Regression with a target net, dropout and a game_id column: enough to exercise the loop."""

    def __init__(self, seed: int = 0, dropout: float = 0.2):
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1))
        self.target_model = copy.deepcopy(self.model).requires_grad_(False)
        self.scale = 1.0

    def loss(self, batch):
        pred = self.model(batch["x"]).squeeze(-1)
        with torch.no_grad():
            boot = self.target_model(batch["x"]).squeeze(-1)
        loss = ((pred - self.scale * batch["y"] - 0.1 * boot) ** 2).mean()
        return loss, {"pred_mean": pred.mean()}

    def update_target(self):
        self.target_model.load_state_dict(self.model.state_dict())

    def param_groups(self):
        return [{"params": list(self.model.parameters())}]

    def to(self, device):
        self.model.to(device)
        self.target_model.to(device)
        return self

    def to_channels_last(self):
        return self


def toy_batches(seed: int, batch: int, rank: int = 0, world: int = 1):
    """Batch for step s is a pure function of (seed, s): rows [rank*B/world, (rank+1)*B/world)."""

    def make(start: int):
        step = start
        while True:
            g = torch.Generator().manual_seed(seed * 100_003 + step)
            x = torch.randn(batch, 6, generator=g)
            y = x.sum(-1) + 0.1 * torch.randn(batch, generator=g)
            lo, hi = rank * batch // world, (rank + 1) * batch // world
            yield {"x": x[lo:hi], "y": y[lo:hi], "game_id": torch.zeros(hi - lo, dtype=torch.long)}
            step += 1

    return make


def cfg(steps: int, **kw) -> TrainConfig:
    base = dict(steps=steps, lr=1e-2, target_update_period=3, log_every=1, checkpoint_every=5, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_is_bit_identical(tmp_path):
    full = ToyAlgo()
    train(full, toy_batches(1, 8), cfg(20), tmp_path / "full", progress=False)

    half = ToyAlgo()
    train(half, toy_batches(1, 8), cfg(10), tmp_path / "split", progress=False)
    resumed = ToyAlgo(seed=99)  # different init: everything must come from the checkpoint
    summary = train(resumed, toy_batches(1, 8), cfg(20), tmp_path / "split", progress=False)
    assert summary["resumed_from"] == 10
    for (k, a), b in zip(weights(full.model).items(), weights(resumed.model).values()):
        assert torch.equal(a, b), k
    for a, b in zip(weights(full.target_model).values(), weights(resumed.target_model).values()):
        assert torch.equal(a, b)
    full_log = [json.loads(line) for line in open(tmp_path / "full" / "metrics.jsonl")]
    split_log = [json.loads(line) for line in open(tmp_path / "split" / "metrics.jsonl")]
    assert [r["loss"] for r in full_log] == [r["loss"] for r in split_log]


def test_target_period_counts_gradient_steps(tmp_path):
    algo = ToyAlgo(dropout=0.0)
    calls = []
    original = algo.update_target
    algo.update_target = lambda: (calls.append(1), original())
    train(algo, toy_batches(0, 4), cfg(10, target_update_period=4), tmp_path, progress=False)
    assert len(calls) == 2  # after gradient steps 4 and 8


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    algo = ToyAlgo()
    train(algo, toy_batches(0, 8), cfg(5), tmp_path, progress=False)
    good = ckpt_io.resolve_checkpoint(tmp_path)
    good_bytes = (good / "model.safetensors").read_bytes()

    algo.scale = float("nan")
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        train(algo, toy_batches(0, 8), cfg(10), tmp_path, progress=False)
    assert ckpt_io.resolve_checkpoint(tmp_path) == good
    assert (good / "model.safetensors").read_bytes() == good_bytes
    last = json.loads(open(tmp_path / "metrics.jsonl").read().splitlines()[-1])
    assert "error" in last and last["step"] == 6


def test_checkpoint_refuses_pickles(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x80\x04not really")
    with pytest.raises(ValueError, match="never unpickles"):
        ckpt_io.resolve_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="no workbench checkpoint"):
        ckpt_io.resolve_checkpoint(tmp_path)


def test_interrupted_checkpoint_write_leaves_previous(tmp_path, monkeypatch):
    algo = ToyAlgo()
    train(algo, toy_batches(0, 8), cfg(5), tmp_path, progress=False)
    before = ckpt_io.resolve_checkpoint(tmp_path)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_io, "atomic_write_json", boom)
    with pytest.raises(KeyboardInterrupt):
        ckpt_io.save_checkpoint(tmp_path, 99, algo.model)
    assert ckpt_io.resolve_checkpoint(tmp_path) == before
    assert not list((tmp_path / "checkpoints").glob(".step_*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    algo = ToyAlgo(seed=rank * 7 + 1, dropout=0.0)  # different inits: DDP must broadcast rank 0's
    seen = []
    source = toy_batches(5, 8, rank, world)

    def batches(start):
        for b in source(start):
            seen.append(b["x"].clone())
            yield b

    train(algo, batches, cfg(6, seed=0, checkpoint_every=100), os.path.join(out_dir, "run"), progress=False)
    save_file({**weights(algo.model), "first_x": seen[0]}, os.path.join(out_dir, f"rank{rank}.safetensors"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_average_gradients(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = load_file(str(tmp_path / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "rank1.safetensors"))
    assert not torch.equal(r0.pop("first_x"), r1.pop("first_x")), "ranks must sample different data"
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k

    single = ToyAlgo(seed=1, dropout=0.0)  # rank 0's init, full global batch of 8
    train(single, toy_batches(5, 8), cfg(6, seed=0, checkpoint_every=100), tmp_path / "single", progress=False)
    for k, v in weights(single.model).items():
        torch.testing.assert_close(r0[k], v, rtol=1e-5, atol=1e-6)


def test_resume_between_checkpoints_keeps_one_metrics_line_per_step(tmp_path):
    algo = ToyAlgo()
    train(algo, toy_batches(1, 8), cfg(7), tmp_path, progress=False)  # checkpoints at 5 and 7
    # Simulate a kill after step 7's metrics but before its checkpoint: drop the step-7 checkpoint.
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "step_00000007")
    (tmp_path / "checkpoints" / "latest").write_text("step_00000005\n")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "lo')  # a line cut short by the kill
    train(ToyAlgo(), toy_batches(1, 8), cfg(10), tmp_path, progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))


class ProbedToyAlgo(ToyAlgo):
    """ToyAlgo with a representation probe: hidden ReLU features and a 2-way 'greedy action'."""

    def probe_forward(self, probe):
        h = self.model[2](self.model[1](self.model[0](probe["x"])))  # dropout too: in train mode it would draw
        return h, (self.model[3](h).squeeze(-1) > 0).long()


def test_diagnostics_do_not_change_training_and_resume_with_the_same_probe(tmp_path):
    plain = ToyAlgo()
    train(plain, toy_batches(1, 8), cfg(20), tmp_path / "plain", progress=False)
    probed = ProbedToyAlgo()
    train(probed, toy_batches(1, 8), cfg(20, diagnostics_every=4), tmp_path / "probed", progress=False)
    # The probe runs in eval mode without gradients: dropout's random stream and the weights are untouched.
    for (k, a), b in zip(weights(plain.model).items(), weights(probed.model).values()):
        assert torch.equal(a, b), k
    assert not (tmp_path / "plain" / "diagnostics.jsonl").exists()
    full = [json.loads(line) for line in open(tmp_path / "probed" / "diagnostics.jsonl")]
    assert [r["step"] for r in full] == [0, 4, 8, 12, 16, 20]
    assert full[0]["diag/feature_dim"] == 16 and 1 <= full[0]["diag/srank"] <= 16
    assert "diag/dead/1" in full[0] and 0.0 <= full[0]["diag/greedy_modal_share"] <= 1.0
    # Killed at step 10 and resumed: the same probe batch, one line per step, the same numbers.
    half = ProbedToyAlgo()
    train(half, toy_batches(1, 8), cfg(10, diagnostics_every=4), tmp_path / "split", progress=False)
    train(ProbedToyAlgo(seed=5), toy_batches(1, 8), cfg(20, diagnostics_every=4), tmp_path / "split",
          progress=False)
    split = [json.loads(line) for line in open(tmp_path / "split" / "diagnostics.jsonl")]
    assert [r["step"] for r in split] == [0, 4, 8, 10, 12, 16, 20]  # 10: the end of the first run
    assert [r for r in split if r["step"] != 10] == full

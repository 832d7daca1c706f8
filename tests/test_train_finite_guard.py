"""The trainer's NaN/Inf guard without a per-step host read: an injected non-finite step never
reaches the weights, the optimizer state, a metrics line or a checkpoint, and the loop reads the
device only where it logs, copies the target or checkpoints."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from workbench import checkpoint as ckpt_io
from workbench.train import FiniteGuard, HostReads, NonFiniteLossError, TrainConfig, metric_values, train


class Regression:
    """Linear regression with a target net; ``sqrt_kink`` adds sqrt(p - p) = 0 to the loss,
    whose gradient is +inf while the loss stays finite (the overflowed-gradient case)."""

    def __init__(self, sqrt_kink_at: int | None = None, nan_constant_at: int | None = None) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
        self.target_model = copy.deepcopy(self.model).requires_grad_(False)
        self.sqrt_kink_at = sqrt_kink_at
        self.nan_constant_at = nan_constant_at

    def loss(self, batch):
        pred = self.model(batch["x"]).squeeze(-1)
        loss = ((pred - batch["y"]) ** 2).mean()
        if self.sqrt_kink_at is not None and int(batch["step"][0]) == self.sqrt_kink_at:
            w = self.model[0].bias[0]
            loss = loss + torch.sqrt(w - w.detach())  # value 0, gradient inf
        if self.nan_constant_at is not None and int(batch["step"][0]) == self.nan_constant_at:
            loss = loss + torch.tensor(float("nan"))  # a NaN loss whose gradients stay finite
        return loss, {"pred_mean": pred.mean(), "y_mean": batch["y"].mean()}

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


def batches(nan_at: int | None = None, drawn: list | None = None):
    """Step s's batch is a pure function of s; step ``nan_at``'s targets are NaN."""

    def make(start: int):
        step = start
        while True:
            step += 1
            g = torch.Generator().manual_seed(step)
            x = torch.randn(8, 6, generator=g)
            y = x.sum(-1) if step != nan_at else torch.full((8,), float("nan"))
            if drawn is not None:
                drawn.append(step)
            yield {"x": x, "y": y, "step": torch.full((8,), step), "game_id": torch.zeros(8, dtype=torch.long)}

    return make


def config(steps: int, **kw) -> TrainConfig:
    base = dict(steps=steps, lr=1e-2, target_update_period=0, log_every=10, checkpoint_every=5, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def reference_weights(tmp_path, steps: int) -> dict[str, torch.Tensor]:
    algo = Regression()
    train(algo, batches(), config(steps), tmp_path / f"reference_{steps}", progress=False)
    return {k: v.clone() for k, v in algo.model.state_dict().items()}


@pytest.mark.parametrize("fault", ["nan_loss", "inf_gradient"])
def test_a_non_finite_step_and_every_later_one_leave_weights_and_checkpoints_untouched(tmp_path, fault):
    drawn: list[int] = []
    algo = Regression(sqrt_kink_at=7 if fault == "inf_gradient" else None)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="non-finite values at step 7") as info:
        train(algo, batches(nan_at=7 if fault == "nan_loss" else None, drawn=drawn), config(10), run, progress=False)
    assert info.value.step == 7
    # steps 8-10 were finite and ran (the guard is read at step 10, the next log/checkpoint) ...
    assert drawn == list(range(1, 11))
    # ... yet the weights are exactly those after step 6: no later update reached them
    for k, v in reference_weights(tmp_path, 6).items():
        assert torch.equal(algo.model.state_dict()[k], v), k
    # the step-10 checkpoint was never written; step 5's is intact and loads
    assert ckpt_io.resolve_checkpoint(run).name == "step_00000005"
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000005"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 7, "error": lines[0]["error"]}]  # no metrics line with a NaN in it
    if fault == "inf_gradient":
        assert "the gradient overflowed" in lines[0]["error"]


def test_resuming_after_the_error_from_the_kept_checkpoint_is_the_uninterrupted_run(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError):
        train(Regression(), batches(nan_at=7), config(10), run, progress=False)
    resumed = Regression()
    summary = train(resumed, batches(), config(10), run, progress=False)  # the data fixed
    assert summary["resumed_from"] == 5
    for k, v in reference_weights(tmp_path, 10).items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


def test_a_bad_step_leaves_every_optimizer_tensor_and_later_steps_stay_skipped():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(50))
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    guard = FiniteGuard(opt, torch.device("cpu"))
    assert guard.gated
    for step in (1, 2):
        p.grad = torch.randn(50)
        guard.step(opt, step, p.sum(), p.grad.norm(), {})
    guard.check()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    weights = p.detach().clone()
    p.grad = torch.full((50,), float("inf"))
    guard.step(opt, 3, p.sum(), p.grad.norm(), {})
    p.grad = torch.randn(50)  # a finite step after the bad one: still skipped
    guard.step(opt, 4, p.sum(), p.grad.norm(), {})
    assert torch.equal(p.detach(), weights)
    assert {k: torch.equal(v, opt.state[p][k]) for k, v in before.items()} == {"step": True, "exp_avg": True,
                                                                                 "exp_avg_sq": True}
    with pytest.raises(NonFiniteLossError) as info:
        guard.check()
    assert info.value.step == 3


def test_an_unfused_optimizer_is_checked_before_every_step():
    p = nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([p], lr=0.1, foreach=False)
    guard = FiniteGuard(opt, torch.device("cpu"))
    assert not guard.gated
    p.grad = torch.full((4,), float("nan"))
    with pytest.raises(NonFiniteLossError):
        guard.step(opt, 1, p.sum(), p.grad.norm(), {})
    assert torch.equal(p.detach(), torch.ones(4)) and not opt.state


def test_the_loop_reads_the_device_only_at_log_target_and_checkpoint_steps(tmp_path):
    # 30 steps, a metrics line every 10, target copies every 15, checkpoints every 30: reads at
    # steps 10, 15, 20, 30 (each: the guard's flags; at log steps one more for the record)
    with HostReads() as reads:
        train(Regression(), batches(), config(30, log_every=10, target_update_period=15, checkpoint_every=30),
              tmp_path, progress=False)
    assert reads.by_call == {"tolist": 4 + 3}


def test_metric_values_are_what_float_gives_each_tensor():
    values = {"a": torch.tensor(1 / 3), "b": torch.tensor(0.1, dtype=torch.bfloat16), "c": torch.tensor(7),
              "d": 2.5, "e": torch.tensor(True)}
    loss, grad_norm = torch.tensor(3.14159), torch.tensor(2.0**-30)
    got = metric_values(loss, grad_norm, values)
    assert got == {"loss": float(loss), "grad_norm": float(grad_norm), **{k: float(v) for k, v in values.items()}}
    assert all(type(v) is float for v in got.values())


def test_host_reads_counts_scalar_reads_masks_and_nothing_else():
    x = torch.randn(6)
    with HostReads() as reads:
        y = (x * 2).sum()
        float(y), bool(y > 0), x[x > 0], x.tolist(), x[1:3], x.to("cpu"), torch.nonzero(x)
    assert reads.by_call == {"__float__": 1, "__bool__": 1, "__getitem__": 1, "tolist": 1, "nonzero": 1}


def _ddp_nan_worker(rank: int, port: int, out_dir: str) -> None:
    import os

    from safetensors.torch import save_file

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    # only rank 1's loss is NaN at step 3, and its gradients stay finite (so DDP's averaging
    # cannot tell rank 0): both ranks must still stop at step 3 with step 2's weights
    algo = Regression(nan_constant_at=3 if rank == 1 else None)
    source = batches()
    error = -1
    try:
        train(algo, source, config(8, log_every=4, checkpoint_every=100), os.path.join(out_dir, f"run{rank}"),
              progress=False)
    except NonFiniteLossError as exc:
        error = exc.step
    state = {k: v.contiguous() for k, v in algo.model.state_dict().items()}
    save_file({**state, "error_step": torch.tensor(error)}, os.path.join(out_dir, f"rank{rank}.safetensors"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_one_ranks_nan_stops_every_rank_at_that_step_with_the_weights_before_it(tmp_path):
    import socket

    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_nan_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert int(r0.pop("error_step")) == int(r1.pop("error_step")) == 3
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # two DDP steps of the same batches on both ranks are two single-process steps
    for k, v in reference_weights(tmp_path, 2).items():
        torch.testing.assert_close(r0[k], v, rtol=1e-6, atol=1e-7)


def test_a_checkpoint_of_an_unfused_optimizer_resumes_fused_and_gated(tmp_path):
    from dataclasses import asdict

    # a checkpoint as the trainer wrote it before CPU training was fused: per-tensor AdamW state
    algo = Regression()
    cfg = config(10, log_every=10, checkpoint_every=100)
    opt = torch.optim.AdamW(algo.param_groups(), lr=cfg.lr, foreach=False)
    for b in batches()(0):
        if int(b["step"][0]) > 5:
            break
        loss, _ = algo.loss(b)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(algo.model.parameters(), cfg.grad_clip)
        opt.step()
    ckpt_io.save_checkpoint(tmp_path, 5, algo.model, target=algo.target_model, optimizer=opt,
                            extra={"train": asdict(cfg)})
    assert opt.param_groups[0]["fused"] is None
    resumed = Regression()
    with HostReads() as reads:
        summary = train(resumed, batches(), cfg, tmp_path, progress=False)
    assert summary["resumed_from"] == 5
    # steps 6-10 read the device once for the guard and once for the log line; unfused, the guard
    # would read every step and the per-tensor AdamW each parameter's step count ('item')
    assert reads.by_call["tolist"] == 2 and "item" not in reads.by_call
    state = ckpt_io.read_state(ckpt_io.resolve_checkpoint(tmp_path))
    assert all(g["fused"] for g in state["optimizer"]["param_groups"])

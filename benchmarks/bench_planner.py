"""JOWA planner and training throughput; prints one JSON object.

    python benchmarks/bench_planner.py [--presets jowa-tiny,jowa-40m] [--envs 16] [--horizon 2]
        [--beam 3] [--context 3] [--threads 2] [--device cpu]

Planner: decisions per second (environments decided per second) of the batched beam search
(`planner.beam_search`: all environments, beams and children in one forward call per token
group, caches gathered by index) next to the same search run one environment and one child at a
time with a copied cache per child (`planner.beam_search_sequential`, the public
implementation's way), measured in the same run on the same inputs. Weights are random; the
termination head is set to never predict termination so both searches do the full work (a random
head terminating paths would let the sequential search skip work the batched one does).

Training: tokens per second of one stage-2 step (forward, backward, AdamW step) on a small batch
of pre-tokenized segments (B x 8 steps x 37 tokens).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from workbench.algos.jowa import JOWA, JOWAConfig
from workbench.models.world_action import WorldActionModel, world_action_config
from workbench.planner import beam_search, beam_search_sequential


def _planner_inputs(model: WorldActionModel, n: int, context: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vocab, games = model.cfg.vocab_size, model.cfg.num_games
    obs = torch.randint(0, vocab, (n, 36), generator=g)
    game = torch.arange(n) % games
    n_act = torch.tensor([18, 6, 9, 4])[game % 4]
    vm = torch.arange(18)[None] < n_act[:, None]
    ct = torch.randint(0, vocab, (n, context, 36), generator=g)
    ca = torch.randint(0, 4, (n, context), generator=g)
    cv = torch.ones(n, context, dtype=torch.bool)
    return [t.to(device) for t in (obs, game, vm, ct, ca, cv)]


def _timed(fn, repeats: int, device: torch.device) -> tuple[float, object]:
    out = fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats, out


@torch.no_grad()
def bench_planner(preset: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = WorldActionModel(world_action_config(preset, num_games=4)).to(device).eval()
    model.term_head[-1].bias.copy_(torch.tensor([20.0, -20.0]))
    obs, game, vm, ct, ca, cv = _planner_inputs(model, args.envs, args.context, device)
    H, K = args.horizon, args.beam
    t_batched, res = _timed(lambda: beam_search(model, obs, game, vm, H, K, 0.99, ct, ca, cv).actions, args.repeats, device)
    out = {
        "preset": preset, "envs": args.envs, "horizon": H, "beam_width": K, "context_steps": args.context,
        "batched_decisions_per_s": args.envs / t_batched, "batched_s_per_call": t_batched,
    }
    if not args.skip_sequential:
        t0 = time.perf_counter()
        seq = beam_search_sequential(model, obs, game, vm, H, K, 0.99, ct, ca, cv)
        t_seq = time.perf_counter() - t0
        out.update({
            "sequential_decisions_per_s": args.envs / t_seq, "sequential_s_per_call": t_seq,
            "speedup": t_seq / t_batched, "same_actions": seq.tolist() == res.cpu().tolist(),
        })
    return out


def bench_training(preset: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    algo = JOWA.build(preset, ["Pong", "Breakout"], JOWAConfig(stage=2)).to(device)
    B, L = args.train_batch, 8
    g = torch.Generator().manual_seed(0)
    batch = {
        "tokens": torch.randint(0, 2048, (B, L, 36), generator=g).to(torch.uint16),
        "action": torch.randint(0, 4, (B, L), generator=g), "reward": torch.zeros(B, L),
        "terminal": torch.zeros(B, L), "mask": torch.ones(B, L, dtype=torch.bool),
        "game_id": torch.arange(B) % 2, "valid_mask": torch.arange(18)[None].expand(B, 18) < 4,
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    opt = torch.optim.AdamW(algo.param_groups())
    amp = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = algo.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(algo.model.parameters(), 1.0)
        opt.step()

    algo.model.train()
    t, _ = _timed(step, args.train_repeats, device)
    tokens = B * L * 37
    return {"preset": preset, "batch": B, "tokens_per_step": tokens, "s_per_step": t, "tokens_per_s": tokens / t}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="jowa-tiny,jowa-40m")
    p.add_argument("--envs", type=int, default=16)
    p.add_argument("--horizon", type=int, default=2)
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--context", type=int, default=3, help="previous steps of context per environment")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-sequential", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    presets = [s for s in args.presets.split(",") if s]
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "planner": [bench_planner(name, args, device) for name in presets],
        "training_stage2": [bench_training(name, args, device) for name in presets],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""JOWA planner speed against a faithful reference baseline; prints one JSON object.

    OMP_NUM_THREADS=1 python benchmarks/bench_planner.py [--presets jowa-40m] [--envs 16]
        [--horizon 2] [--beam 3] [--context 5] [--repeats 4] [--single-envs 4] [--threads 1]
        [--profile] [--skip-previous] [--training] [--device cpu]

What is timed, in alternating repetitions of one run (medians reported):

- ``planner``: `planner.beam_search` on all ``--envs`` environments in one call (shared context
  prefix per environment, every beam and child of every environment in one forward call per
  token group);
- ``planner_1env``: the same function called with one environment at a time;
- ``previous_planner``: ``beam_search(..., shared_prefix=False)``, the planner before the shared
  prefix (a full copy of the context per beam and child), for before/after figures;
- ``reference`` and ``reference_no_decode``: `reference_search` below, the public JOWA
  planner's way of searching, written here from its published description: one environment
  per call; the children of all beams of a depth expanded in one batched forward; the KV cache
  copied for every child; every imagined frame decoded to pixels by the tokenizer (as shipped;
  the ``_no_decode`` variant skips only that); predicted termination ignored. It scores
  children exactly as the planner does, so both choose the same actions (``same_actions``).

The reference decides one environment per call, so its decisions/s do not depend on how many
environments there are; it and ``planner_1env`` run on ``--single-envs`` environments per
repetition, a different slice each time (all environments are covered after envs/single-envs
repetitions). Ratios are decisions/s over decisions/s, from the same run.

Weights are random; the termination head is set to never predict termination, so every search
does the full work (the reference ignores termination anyway). The context is ``--context``
full previous steps (5 = the most that fit with H = 2: 5 x 37 + 36 = 221 tokens).

``--profile``: each phase's share of the planner's time (`planner.SearchProfile`: prefix,
action token, observation tokens, Q readout, bookkeeping), for all environments at once, one
environment at a time, and the previous planner.

``--training``: also tokens per second of one stage-2 training step (forward, backward, AdamW)
on a small batch of pre-tokenized segments (B x 8 steps x 37 tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from bench_train import time_step, trainer_step
from torch.profiler import ProfilerActivity, profile

from workbench.algos.jowa import JOWA, JOWAConfig
from workbench.models.gpt import KVCache
from workbench.models.tokenizer import TOKENS_PER_FRAME, Tokenizer
from workbench.models.world_action import TOKENS_PER_STEP, WorldActionModel, world_action_config
from workbench.planner import SearchProfile, beam_search

_REWARD_VALUES = torch.tensor([-1.0, 0.0, 1.0])
_N_ACTIONS = (18, 6, 9, 4)  # valid actions of the benchmark's four games (env i plays game i % 4)


def _planner_inputs(model: WorldActionModel, n: int, context: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vocab, games = model.cfg.vocab_size, model.cfg.num_games
    obs = torch.randint(0, vocab, (n, 36), generator=g)
    game = torch.arange(n) % games
    n_act = torch.tensor(_N_ACTIONS)[game % len(_N_ACTIONS)]
    vm = torch.arange(18)[None] < n_act[:, None]
    ct = torch.randint(0, vocab, (n, context, 36), generator=g)
    ca = torch.randint(0, 4, (n, context), generator=g)
    cv = torch.ones(n, context, dtype=torch.bool)
    return [t.to(device) for t in (obs, game, vm, ct, ca, cv)]


# ----------------------------------------------------------------------------- reference baseline

@torch.no_grad()
def reference_search(
    model: WorldActionModel, tokenizer: Tokenizer, obs: torch.Tensor, game: torch.Tensor, vm: torch.Tensor,
    horizon: int, beam: int, gamma: float, ctx_tokens: torch.Tensor, ctx_actions: torch.Tensor,
    decode: bool = True,
) -> int:
    """One environment's action, searched the public JOWA planner's way (see the module docstring).

    ``obs`` (36,) current frame's tokens, ``game`` () int, ``vm`` (18,) valid actions,
    ``ctx_tokens`` (C, 36) and ``ctx_actions`` (C,) the previous steps (all real). Each depth
    expands every beam by its top-``beam`` actions by Q, copies the beam's cache for every child,
    runs the action token and the 36 greedily decoded observation tokens of all children in one
    batch, decodes every child's imagined frame to pixels (``decode``), scores a child
    ``sum_t gamma^t r_t + gamma^(d+1) max_a Q``, keeps the best ``beam`` children and finally
    returns the first action of the best leaf. Termination is not predicted or used.
    """
    dev = obs.device
    g, vm = game.reshape(1).long(), vm.reshape(1, -1).bool()
    C = ctx_tokens.shape[0]
    seq = torch.cat([model.interleave(ctx_tokens[None], ctx_actions[None]), obs[None].long()], 1)
    is_action = torch.cat([model.action_pattern[: C * TOKENS_PER_STEP],
                           torch.zeros(TOKENS_PER_FRAME, dtype=torch.bool, device=dev)])
    cache = model.gpt.new_cache(1, seq.shape[1] + horizon * TOKENS_PER_STEP, device=dev)
    h = model.forward_tokens(seq, is_action, g, cache=cache)[:, -1]
    q = model.q_values(model.q_head(h), vm)  # (beams, 18)
    G = torch.zeros(1, device=dev)
    first = torch.zeros(1, dtype=torch.long, device=dev)
    act_flag = torch.ones(1, dtype=torch.bool, device=dev)
    obs_flag = torch.zeros(1, dtype=torch.bool, device=dev)
    for depth in range(horizon):
        B = q.shape[0]
        actions = q.topk(beam, dim=-1).indices.flatten()  # (B * beam,) beam-major
        children: KVCache = cache.index_select(torch.arange(B, device=dev).repeat_interleave(beam))  # a copy each
        g_rows, vm_rows = g.expand(B * beam), vm.expand(B * beam, -1)
        h = model.forward_tokens(actions[:, None], act_flag, g_rows, cache=children)[:, -1]
        reward = (torch.softmax(model.reward_head(h).float(), -1) * _REWARD_VALUES.to(dev)).sum(-1)
        frame = []
        for _ in range(TOKENS_PER_FRAME):
            token = model.obs_head(h).argmax(-1)
            frame.append(token)
            h = model.forward_tokens(token[:, None], obs_flag, g_rows, cache=children)[:, -1]
        q_next = model.q_values(model.q_head(h), vm_rows)
        if decode:
            tokenizer.decode(torch.stack(frame, -1))  # the imagined frames as pixels (unused by the search)
        G_c = G.repeat_interleave(beam) + gamma ** depth * reward
        score = G_c + gamma ** (depth + 1) * q_next.max(-1).values
        first_c = actions if depth == 0 else first.repeat_interleave(beam)
        if depth == horizon - 1:
            return int(first_c[score.argmax()])
        keep = score.topk(min(beam, score.numel())).indices
        cache, q, G, first = children.index_select(keep), q_next[keep], G_c[keep], first_c[keep]
    raise ValueError(f"horizon must be >= 1 for the reference search, got {horizon}")


# ----------------------------------------------------------------------------- planner benchmark

def _clock(fn, device: torch.device):
    """(wall seconds, CPU seconds of this process, fn's result)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0, out


@torch.no_grad()
def bench_planner(preset: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = WorldActionModel(world_action_config(preset, num_games=len(_N_ACTIONS))).to(device).eval()
    model.term_head[-1].bias.copy_(torch.tensor([20.0, -20.0]))  # never terminal: full searches
    tokenizer = Tokenizer(model.cfg.tokenizer).to(device).eval()
    N, H, K, gamma = args.envs, args.horizon, args.beam, 0.99
    obs, game, vm, ct, ca, cv = _planner_inputs(model, N, args.context, device)
    one = lambda i: (obs[i:i + 1], game[i:i + 1], vm[i:i + 1], H, K, gamma, ct[i:i + 1], ca[i:i + 1], cv[i:i + 1])  # noqa: E731

    def planner():
        return beam_search(model, obs, game, vm, H, K, gamma, ct, ca, cv).actions.tolist()

    def previous_planner():
        return beam_search(model, obs, game, vm, H, K, gamma, ct, ca, cv, shared_prefix=False).actions.tolist()

    def per_env(envs, decide):
        return lambda: [decide(i) for i in envs]

    def planner_1env(i):
        return int(beam_search(model, *one(i)).actions[0])

    def reference(i, decode):
        return reference_search(model, tokenizer, obs[i], game[i], vm[i], H, K, gamma, ct[i], ca[i], decode)

    S = min(args.single_envs, N)
    names = ["planner", "planner_1env", "reference_no_decode", "reference"]
    if not args.skip_previous:
        names.insert(1, "previous_planner")
    seconds = {n: [] for n in names}
    cpu_seconds = {n: [] for n in names}
    decided = {n: [] for n in names}
    batched = planner()  # warm-up, and the actions every other searcher is checked against
    same = {n: 0 for n in names if n != "planner"}
    checked = {n: 0 for n in same}
    with torch.inference_mode():
        for rep in range(args.repeats):
            envs = [(rep * S + j) % N for j in range(S)]
            runs = {
                "planner": planner, "previous_planner": previous_planner,
                "planner_1env": per_env(envs, planner_1env),
                "reference_no_decode": per_env(envs, lambda i: reference(i, False)),
                "reference": per_env(envs, lambda i: reference(i, True)),
            }
            for name in names:
                dt, cpu, acts = _clock(runs[name], device)
                seconds[name].append(dt)
                cpu_seconds[name].append(cpu)
                decided[name].append(len(acts))
                if name != "planner":
                    want = batched if len(acts) == N else [batched[i] for i in envs]
                    same[name] += sum(int(a == b) for a, b in zip(acts, want))
                    checked[name] += len(acts)
    rate = {n: statistics.median(d / s for d, s in zip(decided[n], seconds[n])) for n in names}
    cpu_rate = {n: statistics.median(d / s for d, s in zip(decided[n], cpu_seconds[n])) for n in names}
    out = {
        "preset": preset, "envs": N, "horizon": H, "beam_width": K, "context_steps": args.context,
        "context_tokens": args.context * TOKENS_PER_STEP + TOKENS_PER_FRAME, "repeats": args.repeats,
        "single_envs_per_repeat": S, "decisions_per_s": rate, "ratios": _ratios(rate),
        # On a shared machine wall time includes waiting for a core; CPU time does not.
        "decisions_per_cpu_s": cpu_rate, "ratios_cpu_time": _ratios(cpu_rate),
        "same_actions_as_planner": {n: f"{same[n]}/{checked[n]}" for n in same},
        "seconds_per_repeat": seconds, "cpu_seconds_per_repeat": cpu_seconds,
    }
    if args.profile:
        out["profile"] = _profile(model, (obs, game, vm, H, K, gamma, ct, ca, cv), one, N, S, device)
    return out


def _ratios(rate: dict[str, float]) -> dict[str, float]:
    out = {
        "planner_vs_reference": rate["planner"] / rate["reference"],
        "planner_vs_reference_no_decode": rate["planner"] / rate["reference_no_decode"],
        "planner_1env_vs_reference_no_decode": rate["planner_1env"] / rate["reference_no_decode"],
        "reference_no_decode_vs_reference": rate["reference_no_decode"] / rate["reference"],
    }
    if "previous_planner" in rate:
        out["planner_vs_previous_planner"] = rate["planner"] / rate["previous_planner"]
        out["previous_planner_vs_reference_no_decode"] = rate["previous_planner"] / rate["reference_no_decode"]
    return out


@torch.no_grad()
def _profile(model, inputs, one, N: int, S: int, device: torch.device) -> dict:
    """Each phase's share of the search time (planner.SearchProfile)."""
    runs = {
        f"planner_{N}env": lambda p: beam_search(model, *inputs, profile=p),
        "planner_1env": lambda p: [beam_search(model, *one(i), profile=p) for i in range(S)],
        f"previous_planner_{N}env": lambda p: beam_search(model, *inputs, shared_prefix=False, profile=p),
    }
    out = {}
    with torch.inference_mode():
        for name, run in runs.items():
            p = SearchProfile()
            run(p)
            out[name] = {"seconds": round(p.total, 3), **{k: round(v, 3) for k, v in p.shares().items()}}
            if device.type == "cpu":
                out[name]["top_ops_self_cpu_share"] = _op_shares(lambda run=run: run(SearchProfile()))
    return out


def _op_shares(fn, top: int = 8) -> dict[str, float]:
    """Share of self CPU time of the busiest torch ops (torch.profiler; its own per-op overhead
    inflates the many small ops a little). aten::addmm is the linear layers; aten::bmm the
    attention products; aten::_scaled_dot_product_flash_attention_for_cpu the context pass."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return {e.key: round(e.self_cpu_time_total / total, 3) for e in events[:top]}


# ----------------------------------------------------------------------------- training step

def jowa_stage2_batch(batch: int, device: torch.device, seq_len: int = 8, seed: int = 0) -> dict:
    """A pre-tokenized stage-2 sequence batch (B x seq_len steps x 37 tokens) of two games."""
    B, L = batch, seq_len
    g = torch.Generator().manual_seed(seed)
    out = {
        "tokens": torch.randint(0, 2048, (B, L, 36), generator=g).to(torch.uint16),
        "action": torch.randint(0, 4, (B, L), generator=g), "reward": torch.randint(-1, 2, (B, L), generator=g).float(),
        "terminal": torch.zeros(B, L), "mask": torch.ones(B, L, dtype=torch.bool),
        "game_id": torch.arange(B) % 2, "valid_mask": torch.arange(18)[None].expand(B, 18) < 4,
    }
    return {k: v.to(device) for k, v in out.items()}


def bench_training(preset: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    algo = JOWA.build(preset, ["Pong", "Breakout"], JOWAConfig(), stage=2)
    B, L = args.train_batch, 8
    batch = jowa_stage2_batch(B, device, L)
    algo.model.train()
    _, t = time_step(trainer_step(algo, device), batch, args.train_repeats, device)
    tokens = B * L * 37
    return {"preset": preset, "batch": B, "tokens_per_step": tokens, "s_per_step": t, "tokens_per_s": tokens / t}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="jowa-40m", help="comma-separated world-model presets")
    p.add_argument("--envs", type=int, default=16)
    p.add_argument("--horizon", type=int, default=2)
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--context", type=int, default=5, help="previous steps of context per environment")
    p.add_argument("--repeats", type=int, default=4, help="alternating repetitions (medians are reported)")
    p.add_argument("--single-envs", type=int, default=4,
                   help="environments per repetition for the one-environment-per-call searches")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--profile", action="store_true", help="also report each search phase's share of the time")
    p.add_argument("--skip-previous", action="store_true", help="do not time the planner without the shared prefix")
    p.add_argument("--training", action="store_true", help="also time a stage-2 training step")
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-repeats", type=int, default=3)
    args = p.parse_args()
    if args.horizon < 1:
        raise SystemExit(f"--horizon must be >= 1 (the reference baseline searches), got {args.horizon}")
    if not 2 <= args.beam <= min(_N_ACTIONS):
        raise SystemExit(f"--beam must be in [2, {min(_N_ACTIONS)}] (the fewest valid actions of the "
                         f"benchmark's games), got {args.beam}")
    if args.envs < 1 or args.single_envs < 1 or args.repeats < 1:
        raise SystemExit("--envs, --single-envs and --repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    presets = [s for s in args.presets.split(",") if s]
    load_before = os.getloadavg()
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "planner": [bench_planner(name, args, device) for name in presets],
    }
    if args.training:
        result["training_stage2"] = [bench_training(name, args, device) for name in presets]
    result["load_average_1min"] = {"before": load_before[0], "after": os.getloadavg()[0]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

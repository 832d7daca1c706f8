"""Decisions per second of a converted released JOWA model's planner on this machine; prints JSON.

    python benchmarks/bench_released_jowa.py [--tokenizer tokenizer.pt --world-model JOWA_40M.pt]
        [--size 40m] [--envs 4] [--horizon 2] [--beam 2] [--decisions 12] [--warmup 6] [--device cpu]

Converts the files with ``workbench.convert.convert_jowa`` into a temporary run folder, loads
it like any run (``workbench.run.load_algo``) and times its planner policy (``algo.policy``,
beam search with H = ``--horizon``, K = ``--beam``) deciding for ``--envs`` environments in one
batch (env i plays the run's game i), on real frames of those games (ALE, evaluation protocol).
Only ``policy.act`` is timed, after ``--warmup`` decisions that fill the context (5 steps for
H = 2), so every timed search has the full context; decisions/s counts one decision per
environment.

Without ``--tokenizer``/``--world-model`` the files are random ones with the released files'
exact keys and shapes (``tests/test_convert_jowa.py``'s generator): the speed of a model does not
depend on its values, except that a search stops early where the model predicts a termination;
``--full-search`` (default on for random files) sets the termination head to never predict one,
so every search does the full work, as the real model does on almost every step.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench import envs, games
from workbench.algos.base import EvalOptions
from workbench.convert import SIZES, convert_jowa
from workbench.run import load_algo

TESTS = Path(__file__).resolve().parents[1] / "tests"


def random_release(folder: Path, size: str) -> tuple[Path, Path]:
    """Random tokenizer.pt and JOWA_<size>.pt with the released layouts (the tests' generator)."""
    sys.path.insert(0, str(TESTS))
    gen: Any = importlib.import_module("test_convert_jowa")
    tok = gen.save(gen.materialize(gen.ref_tokenizer_layout(), seed=1, cheap=("lpips.",)), folder / "tokenizer.pt")
    wm = gen.save(gen.materialize(gen.ref_world_layout(*gen.SIZE_DIMS[size]), seed=2), folder / SIZES[size].release)
    return tok, wm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", default="")
    parser.add_argument("--world-model", default="")
    parser.add_argument("--size", default="40m", choices=sorted(SIZES))
    parser.add_argument("--envs", type=int, default=4)
    parser.add_argument("--horizon", type=int, default=2)
    parser.add_argument("--beam", type=int, default=2)
    parser.add_argument("--decisions", type=int, default=12, help="timed decisions per environment")
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full-search", choices=("auto", "yes", "no"), default="auto")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        random_files = not (args.tokenizer and args.world_model)
        tok, wm = random_release(root, args.size) if random_files else (Path(args.tokenizer), Path(args.world_model))
        t0 = time.perf_counter()
        run_games = games.resolve_games("jowa_15")[: max(args.envs, 1)]
        convert_jowa(tok, wm, root / "run", size=args.size, games=run_games)
        convert_s = time.perf_counter() - t0
        algo, run, _ = load_algo(root / "run", device=args.device)
        model_name = run.model
        full = args.full_search == "yes" or (args.full_search == "auto" and random_files)
        if full:
            with torch.no_grad():
                algo.model.world.term_head[-1].bias.copy_(torch.tensor([20.0, -20.0]))
        policy = algo.policy(EvalOptions(planning_horizon=args.horizon, beam_width=args.beam))
        play = [run_games[i % len(run_games)] for i in range(args.envs)]
        game_ids = np.array([run_games.index(g) for g in play])
        env_list = [envs.make_env(g, protocol="eval", seed=i) for i, g in enumerate(play)]
        obs = np.stack([e.reset(seed=i)[0] for i, e in enumerate(env_list)])[:, None]
        policy.reset(np.arange(args.envs))
        rng = np.random.default_rng(0)
        times = []
        for step in range(args.warmup + args.decisions):
            t = time.perf_counter()
            actions = policy.act(obs, game_ids)
            took = time.perf_counter() - t
            print(f"act {step}: {took:.2f} s{'' if step >= args.warmup else ' (warm-up)'}", file=sys.stderr, flush=True)
            if step >= args.warmup:
                times.append(took)
            # random executed actions keep the episodes moving whatever the random model plans
            executed = np.array([rng.integers(games.num_actions(g)) for g in play])
            frames, rewards = [], []
            for i, e in enumerate(env_list):
                o, r, term, trunc, _ = e.step(int(executed[i]))
                if term or trunc:
                    o, _ = e.reset(seed=100 + step)
                frames.append(o)
                rewards.append(float(r))
            policy.observe(executed, np.array(rewards))
            obs = np.stack(frames)[:, None]
        assert actions.shape == (args.envs,)
        for e in env_list:
            e.close()
    total = sum(times)
    print(json.dumps({
        "model": f"JOWA-{args.size.upper()} converted ({model_name})", "weights": "random (released layout)"
        if random_files else "released files", "full_search": full, "device": args.device,
        "horizon": args.horizon, "beam_width": args.beam, "envs": args.envs, "games": play,
        "context_steps": policy.context_steps, "timed_decisions": args.decisions * args.envs,
        "decisions_per_s": round(args.decisions * args.envs / total, 3),
        "seconds_per_batched_act": round(total / args.decisions, 3),
        "seconds_per_batched_act_each": [round(x, 3) for x in times],
        "convert_s": round(convert_s, 1), "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(), "torch": torch.__version__,
    }, indent=1))


if __name__ == "__main__":
    main()

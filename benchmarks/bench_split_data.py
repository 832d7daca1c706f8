"""How many distinct real transitions each method's batches feed its loss on a split.

Builds a store from synthetic DQN-Replay files whose frames encode their source row (2 checkpoints
of 1,500 rows of Pong-shaped play, episodes of ~70 steps), draws batches through each algorithm's
own ``batches`` hook and reads the rows back from the pixels: for Q-learning/BC the newest frame of
each state, for sequence methods every step the batch's mask marks real. Prints JSON rows
``{method, split, in_split, fed, ratio}``.

    python benchmarks/bench_split_data.py [--splits n:240 n:240:episodes] [--batches 400]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from workbench.algos.base import StageContext, get_algo
from workbench.data import build as bd
from workbench.data import dqn_replay as dr
from workbench.data import store as st

GAME, ROWS, CKPTS = "Pong", 1500, 2
METHODS = ("scaled_ql", "bc", "mgdt", "jowa")


def fed_rows(method: str, store: Path, batches: int, run_dir: Path) -> tuple[set[int], float | None]:
    """(source rows fed to the loss, mean real steps per segment: None for transition batches)."""
    spec = get_algo(method)
    settings = spec.settings_class()
    algo = spec.build(spec.default_model(), [GAME], settings, 0)
    stage = spec.stages(settings, spec.scale("cpu", spec.default_model()), 32, 0.0)[0].name
    context = StageContext(store=store, games=(GAME,), batch_size=32, games_per_batch=8, seed=0, rank=0,
                           world_size=1, run_dir=run_dir, device=torch.device("cpu"), progress=False)
    fed: set[int] = set()
    real_steps: list[float] = []
    for batch in itertools.islice(spec.batches(algo, stage, context)(0), batches):
        if "mask" in batch:
            fed |= set(dr.frame_row_id(batch["obs"].numpy()[batch["mask"].numpy()]).tolist())
            real_steps.append(float(batch["mask"].sum(1).float().mean()))
        else:
            fed |= set(dr.frame_row_id(batch["obs"].numpy()[:, -1]).tolist())
    return fed, (round(float(np.mean(real_steps)), 2) if real_steps else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", nargs="+", default=["n:240", "n:240:episodes", "fraction:0.1:episodes"])
    parser.add_argument("--batches", type=int, default=400)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        dr.write_synthetic_run(root / GAME / "1" / "replay_logs", CKPTS, ROWS, seed=5, num_actions=6, mean_episode=70)
        for i, split in enumerate(args.splits):
            try:
                store = bd.build_store(root, Path(tmp) / f"store{i}", [GAME], [1], split, seed=2, progress=False)
            except ValueError as exc:
                print(json.dumps({"split": split, "error": str(exc)}))
                continue
            s = st.ReplayStore(store)
            in_split = {c * ROWS + slot for _, c, slot in s.source_of(GAME, np.asarray(s.game(GAME).starts))}
            for method in METHODS:
                fed, steps = fed_rows(method, store, args.batches, Path(tmp) / f"run{i}{method}")
                row = {"method": method, "split": split, "in_split": len(in_split), "fed": len(fed),
                       "fed_outside_split": len(fed - in_split), "ratio": round(len(fed) / len(in_split), 2),
                       "mean_real_steps_per_segment": steps}
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

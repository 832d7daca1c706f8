"""One run, end to end: data -> algo -> train -> evaluate -> figures.

What the notebooks call. Each step is one function a reader can follow:

    store = prepare_dataset(config, run_dir)      # record (if no dataset) and build the store
    algo = build_algo(config, games)               # Scaled QL / CQL-MSE / BC, or JOWA
    train(algo, batches, TrainConfig, run_dir)     # the one training loop (per JOWA stage)
    evaluate(algo_policy(algo, ...), games, ...)   # the one evaluator
    figures                                        # learning curve, scores

Run directory layout::

    run_dir/config.json  metrics.jsonl  checkpoints/  eval/scores.json  figures/
    run_dir/data/replay/ (recorded DQN-Replay files)  run_dir/data/store/ (memory-mapped store)
    run_dir/stage1/      (JOWA: the tokenizer + world-model stage, its own checkpoints/metrics)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench import checkpoint as ckpt_io
from workbench.config import EvaluateConfig, PretrainConfig, parse_runs
from workbench.train import TrainConfig, init_distributed, resolve_device, train


@dataclass
class PretrainResult:
    """What a pretraining run leaves behind (paths) and shows (figures, summary)."""

    run_dir: Path
    checkpoint: Path
    scores: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------- data


def prepare_dataset(config: PretrainConfig, run_dir: Path, *, progress: bool = True) -> Path:
    """Return the path of a built store for the run, recording and building as needed.

    An existing complete store (its manifest present) is reused, so a resumed run does not
    record again. Recording is deterministic in the seed; a partial recording left by an
    interrupted run is discarded and recorded again.
    """
    from workbench.data.record import record_many
    from workbench.data.store import ReplayStore, build_store, parse_split

    games = config.game_list
    dataset = Path(config.dataset) if config.dataset else None
    if dataset is not None and not dataset.exists():
        raise FileNotFoundError(f"dataset {dataset} does not exist: give a built store, a DQN-Replay root, or ''")
    if dataset is not None and (dataset / "manifest.json").is_file():
        store = ReplayStore(dataset)
        missing = [g for g in games if g not in store.games]
        if missing:
            raise ValueError(f"store {dataset} lacks games {missing}; it holds {list(store.games)}")
        return dataset

    store_dir = run_dir / "data" / "store"
    if dataset is None:
        replay_root = run_dir / "data" / "replay"
        if (store_dir / "manifest.json").is_file():
            return store_dir
        if replay_root.exists():
            shutil.rmtree(replay_root)
        record_many(
            games, config.record_steps, replay_root, seed=config.seed, progress=progress,
            capacity=max(config.record_steps + 100, 1000),
        )
        runs: tuple[int, ...] = (1,)
        split = parse_split("all")
    else:
        replay_root, runs, split = dataset, parse_runs(config.runs), parse_split(config.split)
    return build_store(replay_root, store_dir, games, runs, split, seed=config.seed, progress=progress)


# ------------------------------------------------------------------------------------- algos


def build_algo(config: PretrainConfig, games: tuple[str, ...], *, stage: int = 2) -> Any:
    """The algo object the trainer drives, from the config's model preset and method."""
    algo = config.resolved_algo
    if algo == "jowa":
        from workbench.algos.jowa import JOWA

        return JOWA.build(config.model, games, stage=stage)
    from workbench.algos.scaled_ql import ScaledQL, ScaledQLConfig

    period = config.train_preset.target_update_period
    return ScaledQL.build(
        config.model, games, ScaledQLConfig(algo=algo, target_update_period=period),
        feature_norm=config.feature_norm,
    )


def algo_policy(algo: Any, *, planning_horizon: int = 2, beam_width: int = 2) -> Any:
    """The evaluation policy of an algo: greedy Q for Q-networks, beam search for JOWA."""
    from workbench.algos.jowa import JOWA

    if isinstance(algo, JOWA):
        return algo.policy(horizon=planning_horizon, beam_width=beam_width)
    return algo.policy()


def load_algo(checkpoint: str | Path, *, device: str = "auto") -> tuple[Any, dict[str, Any], Path]:
    """Rebuild a run's algo from its ``config.json`` and load the checkpoint's weights.

    Returns (algo in eval mode, the run's config dict, the checkpoint directory).
    """
    ckpt = ckpt_io.resolve_checkpoint(checkpoint)
    run_dir = ckpt.parent.parent
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: cannot tell which model {ckpt} holds")
    run_config = json.loads(config_path.read_text())
    params = {k: v for k, v in run_config.items() if k != "resolved"}
    config = PretrainConfig.from_params(**params)
    algo = build_algo(config, config.game_list)
    ckpt_io.load_checkpoint(ckpt, algo.model, target=getattr(algo, "target_model", None))
    dev = resolve_device(device)
    if hasattr(algo, "to"):
        algo.to(dev)
    algo.model.eval()
    return algo, run_config, ckpt


# ------------------------------------------------------------------------------------- train


def _train_config(config: PretrainConfig, *, stage: int = 2) -> TrainConfig:
    preset = config.train_preset
    jowa = config.resolved_algo == "jowa"
    return TrainConfig(
        steps=config.effective_steps,
        lr=config.effective_lr(stage),
        weight_decay=0.01 if jowa else 0.0,  # JOWA: AdamW 0.01 (Table 12); Scaled QL: Adam
        grad_clip=1.0,  # both papers (Table 12, Table 14)
        target_update_period=preset.target_update_period,
        log_every=preset.log_every,
        checkpoint_every=preset.checkpoint_every,
        device=config.device,
        compile=config.compile,
        seed=config.seed,
    )


def _sampler(config: PretrainConfig, store: Path, algo: Any, rank: int, world: int, tokens: Path | None = None):
    from workbench.data.sampler import SequenceSampler, TransitionSampler

    batch = config.effective_batch_size
    if batch % world:
        raise ValueError(f"batch_size {batch} must be divisible by the number of processes {world}")
    per_rank = batch // world
    games = config.game_list
    if config.resolved_algo == "jowa":
        return SequenceSampler(store, games, per_rank, seq_len=algo.seq_len, seed=config.seed, tokens=tokens,
                               rank=rank, world_size=world)
    gpb = min(config.train_preset.games_per_batch, per_rank)
    while per_rank % gpb:
        gpb -= 1
    return TransitionSampler(
        store, games, per_rank, n_step=algo.config.n_step, gamma=algo.config.gamma,
        stratified=True, games_per_batch=gpb, seed=config.seed, rank=rank, world_size=world,
    )


def _batches(sampler):
    def from_step(start: int):
        sampler.load_state_dict({"batch_index": start, "seed": sampler.seed, "rank": sampler.rank})
        return iter(sampler)

    return from_step


def _pretokenize(algo: Any, store: Path, run_dir: Path, config: PretrainConfig, rank: int, world: int,
                 progress: bool) -> Path:
    """Stage 2 freezes the tokenizer: encode the store once (rank 0) and train on the tokens."""
    from workbench.data.tokens import tokenize_store

    out = run_dir / "data" / "tokens"
    if rank == 0:
        tokenize_store(store, algo.model.tokenizer, out, device=resolve_device(config.device), progress=progress)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return out


def pretrain(config: PretrainConfig, *, progress: bool = True) -> PretrainResult:
    """Record/build data, train, evaluate and draw figures for one pretraining run."""
    rank, world = init_distributed()
    run_dir = Path(config.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    games = config.game_list
    store = prepare_dataset(config, run_dir, progress=progress) if rank == 0 else None
    if world > 1:
        import torch.distributed as dist

        holder = [str(store) if store else None]
        dist.broadcast_object_list(holder, src=0)
        store = Path(holder[0])

    jowa = config.resolved_algo == "jowa"
    tokens = None
    algo = build_algo(config, games, stage=1 if jowa else 2)
    if jowa:
        # Stage 1 (tokenizer + world model) in its own run dir; stage 2 continues the same weights.
        train(algo, _batches(_sampler(config, store, algo, rank, world)), _train_config(config, stage=1),
              run_dir / "stage1", run_config=config.to_dict(), resume=config.resume, progress=progress,
              find_unused_parameters=True)
        algo.set_stage(2)
        algo.update_target()  # the Q head starts stage 2 with its target equal to itself
        tokens = _pretokenize(algo, store, run_dir, config, rank, world, progress)
    summary = train(
        algo, _batches(_sampler(config, store, algo, rank, world, tokens)), _train_config(config), run_dir,
        run_config=config.to_dict(), resume=config.resume, progress=progress,
        find_unused_parameters=jowa,
    )
    checkpoint = ckpt_io.resolve_checkpoint(run_dir)
    if rank != 0:
        return PretrainResult(run_dir, checkpoint, {}, summary=summary)

    scores = evaluate_algo(
        algo, games, run_dir / "eval" / "scores.json", episodes=config.eval_episodes,
        num_envs=config.num_envs, max_steps=config.effective_eval_max_steps, seed=config.seed,
        planning_horizon=config.planning_horizon, beam_width=config.beam_width, progress=progress,
    )
    figures = run_figures(run_dir, scores)
    summary = {
        "run_dir": str(run_dir), "checkpoint": str(checkpoint), "steps": summary["steps"],
        "resumed_from": summary["resumed_from"], "final_loss": summary["last_metrics"].get("loss"),
        "mean_scores": {g: scores["per_game"][g]["mean"] for g in games},
        "iqm_human_normalized": (scores.get("aggregates") or {}).get("iqm"),
    }
    ckpt_io.atomic_write_json(run_dir / "summary.json", summary)
    return PretrainResult(run_dir, checkpoint, scores, figures, summary)


# ------------------------------------------------------------------------------------- evaluate


def evaluate_algo(
    algo: Any, games: tuple[str, ...], out_path: Path, *, episodes: int, num_envs: int, max_steps: int,
    seed: int, planning_horizon: int = 2, beam_width: int = 2, epsilon: float = 0.001,
    game_ids: list[int] | None = None, mode: int | None = None, difficulty: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the evaluator on an algo's policy and write the scores JSON."""
    from workbench.evaluate import evaluate

    algo.model.eval()
    with torch.no_grad():
        result = evaluate(
            algo_policy(algo, planning_horizon=planning_horizon, beam_width=beam_width), games,
            game_ids=game_ids, episodes_per_game=episodes, num_envs=num_envs, seed=seed, epsilon=epsilon,
            max_agent_steps=max_steps, mode=mode, difficulty=difficulty, out_path=str(out_path), progress=progress,
        )
    return result


def evaluate_run(config: EvaluateConfig, *, progress: bool = True) -> dict[str, Any]:
    """Evaluate a checkpoint (notebook 05): scores JSON, aggregates and a figure."""
    from workbench.games import resolve_games
    from workbench.viz.figures import make_scores_figure

    algo, run_config, ckpt = load_algo(config.checkpoint, device=config.device)
    trained = tuple(run_config["resolved"]["games"])
    games = resolve_games(config.games) if config.games else trained
    unknown = [g for g in games if g not in trained]
    if unknown:
        raise ValueError(
            f"games {unknown} have no head in this checkpoint; it was trained on {list(trained)} "
            "(fine-tune it on a new game first)"
        )
    run_dir = ckpt.parent.parent
    out = Path(config.output) if config.output else run_dir / "eval" / f"scores_{'-'.join(games)}.json"
    scores = evaluate_algo(
        algo, games, out, episodes=config.episodes, num_envs=config.num_envs, max_steps=config.max_steps,
        seed=config.seed, planning_horizon=config.planning_horizon, beam_width=config.beam_width,
        epsilon=config.epsilon, game_ids=[trained.index(g) for g in games],
        mode=None if config.mode < 0 else config.mode,
        difficulty=None if config.difficulty < 0 else config.difficulty, progress=progress,
    )
    return {
        "scores_path": str(out), "checkpoint": str(ckpt), "per_game": scores["per_game"],
        "aggregate": scores.get("aggregates"), "figure": make_scores_figure(scores),
        "config": asdict(config),
    }


# ------------------------------------------------------------------------------------- figures


def run_figures(run_dir: Path, scores: dict[str, Any]) -> dict[str, Any]:
    """Learning curve and per-game scores of one run, saved under ``run_dir/figures``."""
    from workbench.viz.figures import make_learning_curve_figure, make_scores_figure, save_figure

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    records = [r for r in records if "error" not in r]
    keys = {k for r in records for k in r}
    metric_names = sorted(k for k in keys if k.startswith("loss/") and k != "loss/total") or ["loss"]
    metric_names += [k for k in ("q/data_mean", "dist/edge_mass", "grad_norm", "samples_per_s") if k in keys]
    figures = {
        "learning_curve": make_learning_curve_figure({run_dir.name: records}, metric_names, title="Training")
        .update_layout(height=180 * len(metric_names) + 120),
        "scores": make_scores_figure(scores),
    }
    for name, fig in figures.items():
        save_figure(fig, run_dir / "figures" / name)
    return figures


def main(argv: list[str] | None = None) -> int:
    """``python -m workbench.pipeline --model resnet101 ...`` (and under ``torchrun``)."""
    from workbench.config import parse_args

    config = parse_args(PretrainConfig, argv, prog="python -m workbench.pipeline")
    result = pretrain(config)
    print(json.dumps(result.summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

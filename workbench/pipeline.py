"""One run, end to end: data -> algo -> train (each stage) -> evaluate -> figures.

What the notebooks call. Each step is one function a reader can follow::

    run = open_run(config)                        # the run folder: new, resumed (config checked) or reset
    store = prepare_dataset(config, run.path)      # record (if no dataset) and build the store
    algo = spec.build(model, games, settings, seed)  # from the algorithm registry
    for stage in config.stages():                  # one stage (Scaled QL) or two (JOWA)
        spec.enter_stage(algo, stage.name, ...); train(algo, spec.batches(...), ..., run.path / stage.subdir)
    evaluate(algo.policy(options), games, ...)     # the one evaluator
    figures                                        # learning curve, scores

Run folder layout: see ``workbench.run``; ``data/replay`` (recorded DQN-Replay files),
``data/store`` (memory-mapped store) and, for JOWA, ``stage1/`` and ``data/tokens``.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from workbench import checkpoint as ckpt_io
from workbench import jobs, tblog
from workbench.algos.base import Algo, EvalOptions, StageContext
from workbench.baselines import reference_scores, summary_lines, verdict
from workbench.config import RESUMABLE_FIELDS, EvaluateConfig, PretrainConfig
from workbench.data.build import build_store
from workbench.data.record import record_many
from workbench.data.splits import parse_runs, parse_split
from workbench.data.store import ReplayStore
from workbench.devices import resolve_device
from workbench.evaluate import evaluate
from workbench.fileio import read_json, refuse_symlink
from workbench.games import canonical_game, resolve_games
from workbench.jobs import Job, locked
from workbench.paths import resolve_path
from workbench.reference import released_reference
from workbench.run import MARKER, Run, load_algo
from workbench.train import init_distributed, train_stages


@dataclass
class PretrainResult:
    """What a pretraining run leaves behind (paths) and shows (figures, summary)."""

    run_dir: Path
    checkpoint: Path
    scores: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------- run folder

PRETRAIN = Job("pretrain", entries=("checkpoints", "metrics.jsonl", "diagnostics.jsonl", "eval", "figures",
                                    "summary.json", "data", "stage1", "history.jsonl", tblog.FOLDER),
               resumable=RESUMABLE_FIELDS)
"""Pretraining's run folder: what it writes (all replaced by ``resume=False``) and what may change
on resume (``config.RESUMABLE_FIELDS``)."""


def open_run(config: PretrainConfig) -> Run:
    """The run folder of ``config``, ready to train into (``jobs.Job.open_run``)."""
    return PRETRAIN.open_run(config, [resolve_path(config.dataset)] if config.dataset else [])


# ------------------------------------------------------------------------------------- data


class DataSource(Protocol):
    """What :func:`prepare_dataset` reads from a job's config (``PretrainConfig``, and the data
    request of ``workbench.finetune``)."""

    @property
    def game_list(self) -> tuple[str, ...]: ...
    @property
    def dataset(self) -> str: ...
    @property
    def split(self) -> str: ...
    @property
    def runs(self) -> str: ...
    @property
    def record_steps(self) -> int: ...
    @property
    def seed(self) -> int: ...


def prepare_dataset(config: DataSource, run_dir: Path, *, progress: bool = True,
                    recording_split: str = "all") -> Path:
    """Return the path of a built store for the run, recording and building as needed.

    An existing complete store (its manifest present) is reused, so a resumed run does not
    record again. Recording is deterministic in the seed; a partial recording left by an
    interrupted run is discarded and recorded again. ``recording_split`` is the split a
    recording is built with (fine-tuning: the paper's subsample of the held-out game's data).
    """
    games = config.game_list
    dataset = resolve_path(config.dataset) if config.dataset else None
    if dataset is not None and not dataset.exists():
        raise FileNotFoundError(f"dataset {dataset} does not exist: give a built store, a DQN-Replay root, or ''")
    if dataset is not None and (dataset / "manifest.json").is_file():
        store = ReplayStore(dataset)
        missing = [g for g in games if g not in store.games]
        if missing:
            raise ValueError(f"store {dataset} lacks games {missing}; it holds {list(store.games)}")
        return dataset

    store_dir = run_dir / "data" / "store"
    # The run's own data folders: never recorded into, built into or reused through a link.
    refuse_symlink(run_dir / "data", "data folder")
    refuse_symlink(store_dir, "data folder")
    if dataset is None:
        replay_root = run_dir / "data" / "replay"
        refuse_symlink(replay_root, "data folder")
        if (store_dir / "manifest.json").is_file():
            return store_dir
        same = recorded_store_like(config, run_dir, recording_split)
        if same is not None:  # recording is deterministic in the seed: the same data, not recorded twice
            return same
        if replay_root.exists() or replay_root.is_symlink():
            # Only a recording this workbench left in its own marked run folder is deleted.
            if not (run_dir / MARKER).is_file() or replay_root.is_symlink() or not replay_root.is_dir():
                raise FileExistsError(
                    f"{replay_root} exists but is not a recording of a workbench run ({run_dir / MARKER} missing, or "
                    "it is a link or a file); refusing to delete it. Give it as dataset=, or choose another output_dir"
                )
            shutil.rmtree(replay_root)
        record_many(
            games, config.record_steps, replay_root, seed=config.seed, progress=progress,
            capacity=max(config.record_steps + 100, 1000),
        )
        runs: tuple[int, ...] = (1,)
        split = parse_split(recording_split)
    else:
        replay_root, runs, split = dataset, parse_runs(config.runs), parse_split(config.split)
    return build_store(replay_root, store_dir, games, runs, split, seed=config.seed, progress=progress)


def recorded_store_like(config: DataSource, run_dir: Path, recording_split: str = "all") -> Path | None:
    """A store another run beside ``run_dir`` recorded and built exactly as this run would (same
    games in the same order, steps, seeds, recorder and split), verified against its digests;
    None when there is none. Recording is deterministic in the seed, so it holds the same data."""
    split = parse_split(recording_split).manifest_params()
    names = [canonical_game(g) for g in config.game_list]
    for manifest in sorted(run_dir.parent.glob("*/data/store/manifest.json")):
        store = manifest.parent
        if store.parent.parent.resolve() == run_dir.resolve() or store.is_symlink():
            continue
        try:
            doc = read_json(manifest)
            if (doc.get("games") != names or doc.get("split") != split or doc.get("seed") != config.seed
                    or doc.get("runs") != ["1"] or doc.get("n_step") != 3 or doc.get("context_after") != 7):
                continue
            root = Path(doc["source_root"])
            infos = [read_json(root / g / "1" / "replay_logs" / "record_info.json") for g in names]
            if any(i.get("steps") != config.record_steps or i.get("seed") != config.seed + k
                   or i.get("policy") != "random" or i.get("capacity") != max(config.record_steps + 100, 1000)
                   for k, i in enumerate(infos)):
                continue
            ReplayStore(store).verify()
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable, damaged or of another layout: not this run's data
        return store
    return None


# ------------------------------------------------------------------------------------- algos


def build_algo(config: PretrainConfig, data_settings: dict[str, Any] | None = None) -> Algo:
    """A freshly initialised algo (weights from the config's seed) for the config's games, with
    the settings its algorithm computed from the data (``AlgoSpec.settings_from_data``)."""
    settings = dataclasses.replace(config.settings, **(data_settings or {}))
    return config.spec.build(config.model, config.game_list, settings, config.seed)


# ------------------------------------------------------------------------------------- train


def pretrain(config: PretrainConfig, *, progress: bool = True) -> PretrainResult:
    """Record/build data, train every stage, evaluate and draw figures for one pretraining run.

    The run folder is locked for the whole job (:class:`workbench.run.RunLock`): a second job on
    the same folder fails at once, naming the holder."""
    rank, world = init_distributed()
    if rank != 0:  # rank 0 holds the lock for the job
        return _pretrain(config, rank, world, progress)
    with locked(config):  # paper scale on a CPU stops here, with the estimate
        return _pretrain(config, rank, world, progress)


def _pretrain(config: PretrainConfig, rank: int, world: int, progress: bool) -> PretrainResult:
    batch = config.effective_batch_size
    if batch % world:
        raise ValueError(f"batch_size {batch} must be divisible by the number of processes {world}")
    resolved = config.resolve()
    if rank == 0:
        run = open_run(config)
        store = prepare_dataset(config, run.path, progress=progress)
        run.update_resolved({"store": str(store)})  # its own, the dataset's, or an identical recording's
    else:
        run, store = Run(Path(config.run_dir)), None
    if world > 1:
        holder = [str(store) if store else None]
        dist.broadcast_object_list(holder, src=0)
        store = Path(str(holder[0]))
    assert store is not None

    spec, games = config.spec, config.game_list
    # Every rank derives these from the same store; rank 0 records them with the run.
    data_settings = spec.settings_from_data(config.settings, store, games)
    if rank == 0 and data_settings:
        run.update_resolved({"data_settings": data_settings})
    algo = build_algo(config, data_settings)
    context = StageContext(
        store=store, games=games, batch_size=batch, games_per_batch=resolved["games_per_batch"], seed=config.seed,
        rank=rank, world_size=world, run_dir=run.path, device=resolve_device(config.device), progress=progress,
    )
    summary = train_stages(
        algo, config.stages(), run.path, enter_stage=lambda stage: spec.enter_stage(algo, stage.name, context),
        batches=lambda stage: spec.batches(algo, stage.name, context), log_every=resolved["log_every"],
        checkpoint_every=resolved["checkpoint_every"], device=config.device, seed=config.seed,
        compile=config.compile, progress=progress,
    )
    checkpoint = ckpt_io.resolve_checkpoint(run.path)
    if rank != 0:
        return PretrainResult(run.path, checkpoint, {}, summary=summary)

    scores = evaluate_algo(
        algo, games, run.path / "eval" / "scores.json", episodes=config.effective_eval_episodes,
        num_envs=config.num_envs, max_steps=config.effective_eval_max_steps, seed=config.seed,
        options=config.eval_options, sticky_actions=config.eval_sticky_actions,
        noop_starts=config.eval_noop_starts, progress=progress,
    )
    with tblog.open_log(run.path) as events:  # beside the last stage's curves, at its last step
        events.scores(scores, summary["steps"])
    # The honest lines under the same protocol: is the agent above random and above one button?
    references: dict[str, Any] = {}
    if config.eval_references:
        references = reference_scores(
            games, episodes=config.effective_eval_episodes, max_agent_steps=config.effective_eval_max_steps,
            seed=config.seed, num_envs=config.num_envs, sticky_actions=config.eval_sticky_actions,
            noop_starts=config.eval_noop_starts, progress=progress,
        )
        # in a subfolder: eval/*.json are score files (Run.score_files)
        ckpt_io.atomic_write_json(run.path / "eval" / "references" / "scores.json", references)
    figures = run_figures(run, scores)
    mean_scores = {g: scores["per_game"][g]["mean"] for g in games}
    summary = {
        "run_dir": str(run.path), "checkpoint": str(checkpoint), "algo": spec.name, "steps": summary["steps"],
        "resumed_from": summary["resumed_from"], "final_loss": summary["last_metrics"].get("loss"),
        "mean_scores": mean_scores,
        "baselines": summary_lines(references),
        "verdict": verdict(mean_scores, references),
        "iqm_human_normalized": (scores.get("aggregates") or {}).get("iqm"),
        # Scores of episodes cut at a step cap below the protocol's are partial returns.
        "eval_max_steps": scores["max_agent_steps"], "truncated_episodes": scores["truncated_episodes"],
        "comparable_to_papers": scores["comparable_to_papers"], "note": scores["note"],
    }
    ckpt_io.atomic_write_json(run.path / "summary.json", summary)
    return PretrainResult(run.path, checkpoint, scores, figures, summary)


# ------------------------------------------------------------------------------------- evaluate


def evaluate_algo(
    algo: Algo, games: tuple[str, ...], out_path: Path, *, episodes: int, num_envs: int, max_steps: int,
    seed: int, options: EvalOptions | None = None, epsilon: float = 0.001,
    game_ids: list[int] | None = None, mode: int | None = None, difficulty: int | None = None,
    sticky_actions: float = 0.0, noop_starts: int = 0, progress: bool = True,
) -> dict[str, Any]:
    """Run the evaluator on an algo's policy and write the scores JSON."""
    algo.model.eval()
    with torch.no_grad():
        result = evaluate(
            algo.policy(options or EvalOptions()), games,
            game_ids=game_ids, episodes_per_game=episodes, num_envs=num_envs, seed=seed, epsilon=epsilon,
            max_agent_steps=max_steps, mode=mode, difficulty=difficulty, out_path=str(out_path), progress=progress,
            sticky_actions=sticky_actions, noop_starts=noop_starts,
        )
    return result


def evaluate_run(config: EvaluateConfig, *, progress: bool = True) -> dict[str, Any]:
    """Evaluate a checkpoint (notebook 05): scores JSON, aggregates and a figure."""
    from workbench.viz.results_figures import make_scores_figure  # noqa: PLC0415  (plotly, an optional extra)

    algo, run, ckpt = load_algo(resolve_path(config.checkpoint), device=config.device)
    trained = run.games
    # A fine-tuned model also holds its source's games; by default it is evaluated on its new one.
    default = tuple(run.resolved.get("eval_games") or trained)
    games = resolve_games(config.games) if config.games else default
    unknown = [g for g in games if g not in trained]
    if unknown:
        raise ValueError(
            f"games {unknown} have no head in this checkpoint; it was trained on {list(trained)} "
            "(fine-tune it on a new game first)"
        )
    out = resolve_path(config.output) if config.output else run.path / "eval" / f"scores_{'-'.join(games)}.json"
    scores = evaluate_algo(
        algo, games, out, episodes=config.episodes, num_envs=config.num_envs, max_steps=config.max_steps,
        seed=config.seed, options=config.eval_options(trained), epsilon=config.epsilon,
        sticky_actions=config.sticky_actions, noop_starts=config.noop_starts,
        game_ids=[trained.index(g) for g in games],
        mode=None if config.mode < 0 else config.mode,
        difficulty=None if config.difficulty < 0 else config.difficulty, progress=progress,
    )
    if out.resolve().is_relative_to(run.path.resolve()):  # scores in the run: in its TensorBoard view too
        with tblog.open_log(run.path) as events:
            events.scores(scores, int(ckpt_io.read_state(ckpt).get("step", 0)), prefix="evaluate")
    references: dict[str, Any] = {}
    if config.references:
        references = reference_scores(
            games, episodes=config.episodes, max_agent_steps=config.max_steps, seed=config.seed,
            num_envs=config.num_envs, sticky_actions=config.sticky_actions, noop_starts=config.noop_starts,
            epsilon=config.epsilon, mode=None if config.mode < 0 else config.mode,
            difficulty=None if config.difficulty < 0 else config.difficulty, progress=progress,
        )
        ckpt_io.atomic_write_json(out.parent / "references" / out.name, references)
    means = {g: scores["per_game"][g]["mean"] for g in games}
    released = released_reference(run.resolved, means, scores["comparable_to_papers"])
    if released is not None:
        print("\n".join(released["lines"]))
    return {
        "scores_path": str(out), "checkpoint": str(ckpt), "per_game": scores["per_game"],
        "baselines": summary_lines(references), "released_reference": released,
        "verdict": verdict(means, references),
        "aggregate": scores.get("aggregates"), "figure": make_scores_figure(scores),
        "truncated_episodes": scores["truncated_episodes"], "comparable_to_papers": scores["comparable_to_papers"],
        "note": scores["note"],
        "config": asdict(config),
    }


# ------------------------------------------------------------------------------------- figures


def run_figures(run: Run, scores: dict[str, Any]) -> dict[str, Any]:
    """Learning curves (every stage) and per-game scores of one run, saved under ``figures/``."""
    from workbench.viz.analysis import curve_names  # noqa: PLC0415  (plotly, an optional extra)
    from workbench.viz.export import save_figure  # noqa: PLC0415  (plotly, an optional extra)
    from workbench.viz.results_figures import (  # noqa: PLC0415  (plotly, an optional extra)
        make_learning_curve_figure,
        make_representation_figure,
        make_scores_figure,
    )

    records, _ = run.all_metrics()
    keys = {k for r in records for k in r}
    names = curve_names(run.algo_name, keys) or ["loss"]
    names += [k for k in ("grad_norm", "samples_per_s") if k in keys]
    figures = {
        "learning_curve": make_learning_curve_figure({run.name: records}, names, title="Training")
        .update_layout(height=180 * len(names) + 120),
        "scores": make_scores_figure(scores),
    }
    if run.all_metrics("diagnostics.jsonl")[0]:
        figures["representation"] = make_representation_figure(run.path)
    for name, fig in figures.items():
        save_figure(fig, run.path / "figures" / name)
    return figures


def main(argv: list[str] | None = None) -> int:
    """``python -m workbench.pipeline --model resnet101 ...`` (and under ``torchrun``).

    ``--dry-run`` prints the fully resolved configuration as JSON (per stage: steps, batch, lr,
    target period; the algorithm's settings) and touches no file.
    """
    return jobs.main(PretrainConfig, pretrain, argv, "python -m workbench.pipeline")


if __name__ == "__main__":
    raise SystemExit(main())

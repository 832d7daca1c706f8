"""Issue 29.2, a live view: every job writes TensorBoard event files beside its ``metrics.jsonl``
(``<run or stage>/tensorboard/``): each logged record's numbers under their names at the record's
step, the evaluation scores, and the configuration as text once per run. The event files are read
back with TensorBoard's own reader and compared with the JSON lines value by value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from linear_trainable import Algo, batches
from linear_trainable import cfg as _cfg
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from workbench import tblog
from workbench.fileio import SymlinkError
from workbench.train import train


def cfg(steps: int, **kw):
    return _cfg(steps, **{"device": "cpu", **kw})


def events(folder: Path) -> EventAccumulator:
    """Every event file of ``folder``, read as TensorBoard reads one run (restart markers honoured)."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator) -> dict[str, dict[int, float]]:
    """tag -> {step: value}; a step logged twice for one tag fails (the reader must see it once)."""
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags()["scalars"]:
        points = acc.Scalars(tag)
        steps = [p.step for p in points]
        assert len(steps) == len(set(steps)), f"{tag}: steps {steps} repeat"
        out[tag] = {p.step: p.value for p in points}
    return out


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_records_match(records: list[dict], seen: dict[str, dict[int, float]], prefix: str = "",
                         skip: tuple[str, ...] = ()) -> None:
    """Every number of every record is a scalar at the record's step, equal in float32 (the event
    format's precision), and no scalar of these names exists at a step without a record."""
    assert records
    names = set()
    for r in records:
        for key, value in r.items():
            if key == "step" or key in skip or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            tag = prefix + key
            names.add(tag)
            assert tag in seen, f"{tag} has no scalars; tags: {sorted(seen)}"
            assert r["step"] in seen[tag], f"{tag}: no value at step {r['step']}"
            assert seen[tag][r["step"]] == np.float32(value), (tag, r["step"], seen[tag][r["step"]], value)
    for tag in names:
        assert set(seen[tag]) == {r["step"] for r in records if tag[len(prefix):] in r}, tag


# ------------------------------------------------------------------------------ the trainer


@pytest.mark.slow  # seconds: the fast loop keeps under a minute
def test_training_writes_every_metric_at_its_step_and_the_config_once(tmp_path):
    run = tmp_path / "run"
    train(Algo(), batches, cfg(6), run, progress=False)
    records = jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    acc = events(run / tblog.FOLDER)
    seen = scalars(acc)
    assert {"loss", "grad_norm", "samples_per_s", "lr"} <= set(seen)
    assert_records_match(records, seen)
    # the configuration as text, once, at step 0
    (config,) = acc.Tensors("config/text_summary")
    assert config.step == 0
    text = config.tensor_proto.string_val[0].decode()
    assert '"lr": 0.01' in text and '"steps": 6' in text


def test_a_resumed_run_adds_an_event_file_and_the_reader_sees_each_step_once(tmp_path):
    """Killed after its checkpoint at step 4 with steps 5-6 already logged: metrics.jsonl drops
    them on resume and so does the reader of the event files (the restart marker of the new file)."""
    run = tmp_path / "run"

    def dies_after_six(start: int):
        for i, batch in enumerate(batches(start)):
            if start + i == 6:
                raise KeyboardInterrupt("killed")
            yield batch

    with pytest.raises(KeyboardInterrupt):
        train(Algo(), dies_after_six, cfg(8, checkpoint_every=4), run, progress=False)
    assert [r["step"] for r in jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    first = sorted((run / tblog.FOLDER).iterdir())
    assert len(first) == 1

    summary = train(Algo(), batches, cfg(8, checkpoint_every=4), run, progress=False)
    assert summary["resumed_from"] == 4
    assert len(list((run / tblog.FOLDER).iterdir())) == 2  # a new event file; the first one is kept as it was
    records = jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))
    seen = scalars(events(run / tblog.FOLDER))
    # samples_per_s is a wall-clock rate: the resumed session measured steps 5-6 again
    assert_records_match(records, seen)
    assert len(events(run / tblog.FOLDER).Tensors("config/text_summary")) == 1  # once per run


def test_a_symlinked_tensorboard_folder_is_refused_and_nothing_is_written_through_it(tmp_path):
    elsewhere = tmp_path / "another-run-tensorboard"
    elsewhere.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / tblog.FOLDER).symlink_to(elsewhere)
    with pytest.raises(SymlinkError, match="TensorBoard folder .* is a symbolic link"):
        train(Algo(), batches, cfg(2), run, progress=False)
    assert list(elsewhere.iterdir()) == []


def test_event_files_are_off_with_the_switch_and_on_ranks_other_than_0(tmp_path, monkeypatch):
    monkeypatch.setenv(tblog.ENV, "0")
    train(Algo(), batches, cfg(2), tmp_path / "off", progress=False)
    assert (tmp_path / "off" / "metrics.jsonl").is_file() and not (tmp_path / "off" / tblog.FOLDER).exists()
    monkeypatch.delenv(tblog.ENV)
    log = tblog.open_log(tmp_path / "rank1", enabled=False)  # what train opens on rank != 0
    log.scalars({"step": 1, "loss": 1.0})
    log.close()
    assert not log.enabled and not (tmp_path / "rank1").exists()


def test_scores_and_nested_records_become_scalars(tmp_path):
    result = {"per_game": {"Pong": {"mean": 3.5, "scores": [3.0, 4.0]}, "Breakout": {"scores": [1.0, 2.0]}},
              "human_normalized": {"Pong": 0.25, "Breakout": None},
              "aggregates": {"iqm": 0.125, "median": float("nan")}}
    with tblog.open_log(tmp_path) as log:
        log.scores(result, 7)
        log.scalars({"step": 3, "probe": {"srank": 5, "dead": 0.5}, "ok": True, "note": "x"}, prefix="diagnostics/")
    seen = scalars(events(tmp_path / tblog.FOLDER))
    assert seen == {"eval/Pong/mean": {7: 3.5}, "eval/Breakout/mean": {7: 1.5}, "eval/Pong/human_normalized": {7: 0.25},
                    "eval/aggregate/iqm": {7: 0.125}, "diagnostics/probe/srank": {3: 5.0},
                    "diagnostics/probe/dead": {3: 0.5}}


# ------------------------------------------------------------------------------ the online loop


@pytest.mark.slow  # seconds: the fast loop keeps under a minute
def test_online_run_writes_metrics_episodes_and_evaluations(tmp_path):
    from test_online import GAME, WalkEnv, _config, _tiny_eval

    from workbench.online import run_online

    kw = dict(frames=4 * 110, capacity=200, checkpoint_every=10_000, eval_every=4 * 50,
              agent_args={"min_replay_history": 40, "update_period": 1, "batch_size": 2,
                          "epsilon_decay_period": 50, "sticky_actions": 0.0})
    result = run_online(_config(tmp_path / "run", **kw), progress=False, env_factory=WalkEnv,
                        evaluate_fn=_tiny_eval(WalkEnv))
    run = result.run_dir
    acc = events(run / tblog.FOLDER)
    seen = scalars(acc)
    metrics = jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [51, 101]
    assert_records_match(metrics, seen)
    episodes = jsonl(run / "episodes.jsonl")
    assert_records_match([{"step": e["step"], "return": e["return"], "length": e["length"]} for e in episodes],
                         seen, prefix="episode/")
    curve = json.loads((run / "curve.json").read_text())
    assert [c["step"] for c in curve] == [0, 50, 100, 110]
    assert seen[f"eval/{GAME}/mean"] == {c["step"]: np.float32(c["score"]) for c in curve}
    (config,) = acc.Tensors("config/text_summary")
    assert '"kind": "online"' in config.tensor_proto.string_val[0].decode()


# ------------------------------------------------------------------------------ pretraining's evaluation


@pytest.mark.slow  # records, builds, trains and evaluates: about 15 s of CPU
def test_pretraining_writes_its_evaluation_scores_beside_the_last_stage(tmp_path):
    from workbench.config import PretrainConfig
    from workbench.pipeline import pretrain

    config = PretrainConfig.from_params(output_dir=str(tmp_path / "run"), games="Pong", steps=2, batch_size=8,
                                        record_steps=100, eval_episodes=1, eval_max_steps=10, num_envs=1,
                                        device="cpu")
    result = pretrain(config, progress=False)
    run = result.run_dir
    scores = json.loads((run / "eval" / "scores.json").read_text())
    acc = events(run / tblog.FOLDER)
    seen = scalars(acc)
    assert seen["eval/Pong/mean"] == {2: np.float32(scores["per_game"]["Pong"]["mean"])}
    assert_records_match(jsonl(run / "metrics.jsonl"), seen)
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"kind": "pretrain"' in text and '"resolved"' in text


@pytest.mark.slow  # two processes
def test_under_ddp_rank_0_alone_writes_events(tmp_path):
    import torch.multiprocessing as mp
    from test_train import _ddp_worker, _free_port

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    run = tmp_path / "run"
    assert len(list((run / tblog.FOLDER).iterdir())) == 1  # one writer: rank 0's
    assert_records_match(jsonl(run / "metrics.jsonl"), scalars(events(run / tblog.FOLDER)))

"""Issue 27, nothing lost at the seams: symlinks inside a run folder are never followed for writes,
truncation or pruning; ``sweep run`` checks before it writes its index; a fine-tune records the
content hash of its source checkpoint and refuses to resume against a changed one; a corrupt source
is refused before the fine-tune's folder exists; score files hold numbers only.

Each test is the case as a user hits it: real files, real symbolic links, the jobs' own entry
points (``pretrain``, ``train``, ``finetune``, ``python -m workbench.metrics``, the sweep CLI)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from linear_trainable import Algo, batches
from linear_trainable import cfg as _cfg
from shared_paths import DQN_FIXTURES

from workbench import checkpoint as ckpt_io
from workbench.algos.scaled_ql import ScaledQL, ScaledQLConfig
from workbench.checkpoint import CheckpointError
from workbench.config import PretrainConfig
from workbench.fileio import SymlinkError
from workbench.run import LOCK, ResumeMismatch, Run
from workbench.train import train, truncate_metrics

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ a tiny trainer run


def cfg(steps: int, **kw):
    return _cfg(steps, **{"device": "cpu", **kw})


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links not followed) -> sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def _tiny_pretrain(tmp_path: Path, **kw) -> PretrainConfig:
    return PretrainConfig.from_params(output_dir=str(tmp_path / "run"), games="Pong", steps=1, batch_size=8,
                                      record_steps=100, eval_episodes=1, eval_max_steps=10, num_envs=1,
                                      device="cpu", **kw)


# ------------------------------------------------------------------------------ (a) symlinks: the lock


def test_a_symlinked_lock_file_is_refused_and_its_target_is_not_truncated(tmp_path):
    from workbench.pipeline import pretrain

    config = _tiny_pretrain(tmp_path)
    run = Path(config.run_dir)
    run.mkdir()
    precious = tmp_path / "thesis.tex"
    precious.write_text("three years of work\n")
    (run / LOCK).symlink_to(precious)
    with pytest.raises(SymlinkError, match=rf"{LOCK} is a symbolic link \(to {re.escape(str(precious))}\)"):
        pretrain(config, progress=False)
    assert precious.read_text() == "three years of work\n"  # before: truncated to the lock's JSON
    assert sorted(p.name for p in run.iterdir()) == [LOCK]  # nothing else was written


# ------------------------------------------------------------------------------ (a) symlinks: metrics


def test_metrics_and_diagnostics_symlinks_are_refused_for_appends_and_truncation(tmp_path):
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text("")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to(elsewhere)
    with pytest.raises(SymlinkError, match=r"run/metrics\.jsonl is a symbolic link"):
        train(Algo(), batches, cfg(2), run, progress=False)
    assert elsewhere.read_text() == ""  # before: the run's metric lines were appended outside it
    assert not (run / "checkpoints").exists()  # refused before a step ran

    # truncation on resume (metrics and diagnostics share it) refuses a link too, and leaves both alone
    other = tmp_path / "other-diagnostics.jsonl"
    other.write_text('{"step": 2}\n{"step": 9}\n')
    (run / "diagnostics.jsonl").symlink_to(other)
    with pytest.raises(SymlinkError, match=r"diagnostics\.jsonl is a symbolic link"):
        truncate_metrics(run / "diagnostics.jsonl", 2)
    assert (run / "diagnostics.jsonl").is_symlink() and other.read_text() == '{"step": 2}\n{"step": 9}\n'


# ------------------------------------------------------------------------------ (a) symlinks: checkpoints


def test_a_symlinked_checkpoints_folder_is_refused_before_resume_train_or_prune(tmp_path):
    a = tmp_path / "a"
    train(Algo(), batches, cfg(4), a, progress=False)  # another run: step_2, step_4
    before = _tree(a / "checkpoints")
    b = tmp_path / "b"
    b.mkdir()
    (b / "checkpoints").symlink_to(a / "checkpoints")
    with pytest.raises(SymlinkError, match=r"b/checkpoints is a symbolic link"):
        train(Algo(), batches, cfg(6, keep_checkpoints=1), b, progress=False)
    # before: b resumed from a's step 4, wrote step_6 into a and pruned a's step_2 and step_4
    assert _tree(a / "checkpoints") == before
    assert not (b / "metrics.jsonl").exists()

    # a checkpoint step folder that is a link into another run is refused by name as well
    (b / "checkpoints").unlink()
    (b / "checkpoints").mkdir()
    (b / "checkpoints" / "step_00000004").symlink_to(a / "checkpoints" / "step_00000004")
    with pytest.raises(SymlinkError, match=r"step_00000004 is a symbolic link"):
        train(Algo(), batches, cfg(6, keep_checkpoints=1), b, progress=False)
    assert _tree(a / "checkpoints") == before


def test_a_job_refuses_symlinked_entries_of_its_run_folder(tmp_path):
    from workbench.pipeline import open_run

    config = _tiny_pretrain(tmp_path)
    open_run(config)
    run = Path(config.run_dir)
    other = tmp_path / "other-run"
    (other / "eval").mkdir(parents=True)
    (other / "eval" / "scores.json").write_text('{"theirs": true}')
    (run / "eval").symlink_to(other / "eval")
    for resume in (True, False):
        with pytest.raises(SymlinkError, match=r"run/eval is a symbolic link"):
            open_run(dataclasses.replace(config, resume=resume))
    assert (run / "eval").is_symlink() and (other / "eval" / "scores.json").read_text() == '{"theirs": true}'


def test_symlinked_data_folders_are_refused_before_recording_or_reuse(tmp_path):
    from workbench.pipeline import open_run, prepare_dataset

    config = _tiny_pretrain(tmp_path)
    run = open_run(config).path
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (run / "data").symlink_to(foreign)
    with pytest.raises(SymlinkError, match=r"run/data is a symbolic link"):
        prepare_dataset(config, run, progress=False)
    assert list(foreign.iterdir()) == []  # before: the recording and the store went into foreign/

    # a data/store that links to another run's store is not taken as this run's data
    (run / "data").unlink()
    (run / "data").mkdir()
    theirs = tmp_path / "their-store"
    theirs.mkdir()
    (theirs / "manifest.json").write_text("{}")
    (run / "data" / "store").symlink_to(theirs)
    with pytest.raises(SymlinkError, match=r"data/store is a symbolic link"):
        prepare_dataset(config, run, progress=False)


# ------------------------------------------------------------------------------ (b) sweep.json


def test_sweep_run_refuses_before_it_rewrites_sweep_json(tmp_path, capsys):
    from workbench.sweep import load_sweep, main, sweep_status

    root = tmp_path / "sweep"
    doc = {"name": "seams", "base": {"model": "resnet-tiny", "games": "Pong", "steps": 1},
           "factors": {"feature_norm": [True, False]}, "seeds": [0], "output_dir": str(root)}
    file = tmp_path / "seams.yaml"
    file.write_text(json.dumps(doc))
    sweep = load_sweep(str(file))
    index = sweep_status(sweep)  # the index a previous run left
    index["updated"] = "2000-01-01T00:00:00+0000"
    (root / "sweep.json").write_text(json.dumps(index))
    before = (root / "sweep.json").read_bytes()
    blocked = sweep.points[0].run_dir
    blocked.mkdir()
    (blocked / "notes.txt").write_text("not a run")  # a point's folder the sweep may not write into
    assert main(["run", str(file)]) == 2
    err = capsys.readouterr().err
    assert "nothing was started" in err and "notes.txt" in err
    assert (root / "sweep.json").read_bytes() == before  # before: rewritten, then refused


# ------------------------------------------------------------------------------ (c, d) fine-tune source


def _source(path: Path, seed: int = 1, step: int = 10) -> Path:
    settings = ScaledQLConfig(target_update_period=50)
    algo = ScaledQL.build("resnet-tiny", ["Breakout"], settings, seed=seed)
    if not Run(path).is_marked():
        Run(path).create("pretrain", {}, {"algo": "scaled_ql", "model": "resnet-tiny", "games": ["Breakout"],
                                          "settings": dataclasses.asdict(settings)})
    return ckpt_io.save_checkpoint(path, step, algo.model, target=algo.target_model)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


FT = dict(game="Pong", dataset=str(DQN_FIXTURES), steps=1, batch_size=8, eval_episodes=1, eval_max_steps=10,
          num_envs=1, device="cpu")


def test_finetune_records_the_source_hash_and_refuses_to_resume_on_a_changed_source(tmp_path):
    from workbench.finetune import FinetuneConfig, finetune, open_run

    source = tmp_path / "pretrain"
    old = _source(source)
    old_hash = _sha256(old / "model.safetensors")
    config = FinetuneConfig.from_params(checkpoint=str(source), output_dir=str(tmp_path / "ft"), **FT)
    run = open_run(config)  # what a fine-tune stopped after it started leaves (the full job: the slow test below)
    assert run.resolved["source"]["sha256"] == old_hash

    new = _source(source, seed=2, step=20)  # the source run is retrained: its latest checkpoint changes
    new_hash = _sha256(new / "model.safetensors")
    config = FinetuneConfig.from_params(checkpoint=str(source), output_dir=str(tmp_path / "ft"), **FT)
    with pytest.raises(ResumeMismatch, match=rf"source checkpoint.*{old_hash}.*{new_hash}"):
        finetune(config, progress=False)
    assert Run(tmp_path / "ft").resolved["source"]["sha256"] == old_hash  # config.json still names the old one


@pytest.mark.slow
def test_a_finished_finetune_is_not_resumed_against_a_retrained_source(tmp_path):
    from workbench.finetune import FinetuneConfig, finetune

    source = tmp_path / "pretrain"
    old_hash = _sha256(_source(source) / "model.safetensors")
    config = FinetuneConfig.from_params(checkpoint=str(source), output_dir=str(tmp_path / "ft"), **FT)
    finetune(config, progress=False)
    new_hash = _sha256(_source(source, seed=2, step=20) / "model.safetensors")
    config = FinetuneConfig.from_params(checkpoint=str(source), output_dir=str(tmp_path / "ft"), **FT)
    with pytest.raises(ResumeMismatch, match=rf"{old_hash}.*{new_hash}"):
        finetune(config, progress=False)


def test_a_corrupt_source_checkpoint_is_refused_before_the_finetune_folder_is_created(tmp_path):
    from workbench.finetune import FinetuneConfig, finetune

    source = tmp_path / "pretrain"
    ckpt = _source(source)
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated (a copy cut short)
    out = tmp_path / "ft"
    config = FinetuneConfig.from_params(checkpoint=str(source), output_dir=str(out), **FT)
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match the sha256"):
        finetune(config, progress=False)
    assert not out.exists()  # before: the folder was created and the new game's data built first


# ------------------------------------------------------------------------------ (e) score files


@pytest.mark.parametrize("doc,entry", [
    ({"m": {"Pong": [True, False]}}, r"'m'.*Pong.*run 0 is True"),
    ({"m": {"Pong": [1.0, "2.5"]}}, r"'m'.*Pong.*run 1 is '2\.5'"),
    ({"m": {"Pong": 3, "Breakout": [float("nan")]}}, r"'m'.*Breakout.*run 0 is nan"),
    ({"m": {"Pong": [float("inf")]}}, r"'m'.*Pong.*run 0 is inf"),
    ({"per_game": {"Pong": {"scores": [-21.0, False]}}}, r"per_game.*Pong.*run 1 is False"),
    ({"per_game": {"Pong": {"scores": [-21.0, "NaN"]}}}, r"per_game.*Pong.*run 1 is 'NaN'"),
], ids=["bools", "string", "nan", "inf", "evaluator-bool", "evaluator-string"])
def test_metrics_cli_refuses_booleans_strings_and_non_finite_scores(tmp_path, doc, entry):
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(doc))  # json writes NaN / Infinity, as Python's json reads them
    proc = subprocess.run([sys.executable, "-m", "workbench.metrics", str(path), "--reps", "10"],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stdout  # before: [true, false] gave an IQM and exit 0
    assert "Traceback" not in proc.stderr
    assert str(path) in proc.stderr
    assert re.search(entry, proc.stderr), proc.stderr


# ------------------------------------------------------------------------------ (e) provenance of a checkpoint


def test_an_optimizer_lr_edited_in_state_json_is_refused_on_resume(tmp_path):
    """state.json is covered by its own digest: an lr edited to 0.5 is not used on resume."""
    run = tmp_path / "run"
    train(Algo(), batches, cfg(4), run, progress=False)
    ckpt = ckpt_io.latest_checkpoint(run)
    state = json.loads((ckpt / "state.json").read_text())
    state["optimizer"]["param_groups"][0]["lr"] = 0.5
    (ckpt / "state.json").write_text(json.dumps(state))
    metrics = (run / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match=r"state\.json was changed after it was written"):
        train(Algo(), batches, cfg(6), run, progress=False)
    assert (run / "metrics.jsonl").read_text() == metrics


def test_a_config_json_with_swapped_games_is_refused_before_any_game_plays(tmp_path):
    """Weights trained with heads (Pong, Breakout) are not loaded under a config.json edited to
    (Breakout, Pong): every game would act with the other's head."""
    run_dir = tmp_path / "run"
    settings = ScaledQLConfig()
    resolved = {"algo": "scaled_ql", "model": "resnet-tiny", "games": ["Pong", "Breakout"],
                "settings": dataclasses.asdict(settings)}
    Run(run_dir).create("pretrain", {}, resolved)
    algo = ScaledQL.build("resnet-tiny", ["Pong", "Breakout"], settings, seed=0)
    ckpt_io.save_checkpoint(run_dir, 5, algo.model, target=algo.target_model)
    Run.open(run_dir).build_algo(device="cpu")  # as written: loads
    doc = json.loads((run_dir / "config.json").read_text())
    doc["resolved"]["games"] = ["Breakout", "Pong"]
    (run_dir / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"config\.json no longer describes the weights"):
        Run.open(run_dir).build_algo(device="cpu")


# ------------------------------------------------------------------------------ (f) online: lock first, sizes first


def _online(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_ROOT"}
    return subprocess.run([sys.executable, "-m", "workbench.online", "--game", "Pong", "--device", "cpu", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_online_jobs_on_a_running_folder_touch_nothing(tmp_path):
    """A real second process holds the run's lock (as a running online job does); a job started on
    the same folder with resume=false, or with other frames, fails at once with exit 2 and leaves
    every byte of the running run as it was (before: the reset deleted its checkpoints and logged
    replay, and a changed --frames rewrote its config.json)."""
    run_dir = tmp_path / "busy"
    Run(run_dir).create("online", {"game": "Pong", "frames": 800}, {"algo": "scaled_ql", "games": ["Pong"]})
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    logs = run_dir / "data" / "replay" / "Pong" / "1" / "replay_logs"
    logs.mkdir(parents=True)
    (logs / "$store$_action_ckpt.0.gz").write_bytes(b"logged replay")
    algo = ScaledQL.build("resnet-tiny", ["Pong"], ScaledQLConfig(), seed=0)
    ckpt_io.save_checkpoint(run_dir, 10, algo.model, target=algo.target_model)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom workbench.run import RunLock\n"
         "with RunLock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n", str(run_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = _tree(run_dir)  # the run as the running job holds it (its lock file included)
        for args in (["--resume", "false"], ["--frames", "4000"]):
            out = _online(tmp_path, "--output-dir", "busy", *args)
            assert out.returncode == 2, out.stderr
            assert str(holder.pid) in out.stderr and "Traceback" not in out.stderr, out.stderr
            assert _tree(run_dir) == before
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_online_capacity_beyond_memory_is_refused_before_the_folder_exists(tmp_path):
    out = _online(tmp_path, "--output-dir", "new", "--capacity", "100000000000")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert re.search(r"capacity=100,000,000,000 rows needs [\d,.]+ GiB of memory", out.stderr), out.stderr
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------ (g) sweep names are folder names


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b"])
def test_a_sweep_name_that_is_not_a_plain_folder_name_is_refused(tmp_path, name):
    """A sweep named '..' would write its points into runs/ itself (runs/sweeps/..)."""
    from workbench.sweep import load_sweep

    doc = {"name": name, "base": {"model": "resnet-tiny", "games": "Pong", "steps": 1},
           "factors": {"feature_norm": [True, False]}, "seeds": [0]}
    with pytest.raises(ValueError, match="plain folder name"):
        load_sweep(doc)

"""Issue 17, run folders: never touch what is not ours, one writer per run, honest resume, the
seed is the seed, validation before work (with exit code 2 on the command line)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workbench.config import EvaluateConfig, PretrainConfig
from workbench.run import LOCK, MARKER, ResumeMismatch, Run, RunLock, RunLocked


def _config(tmp_path: Path, **kw) -> PretrainConfig:
    return PretrainConfig.from_params(output_dir=str(tmp_path / "run"), **kw)


# ------------------------------------------------------------------------------ never touch what is not ours


def test_no_dataset_never_deletes_a_replay_folder_outside_a_marked_run(tmp_path):
    from workbench.pipeline import prepare_dataset

    folder = tmp_path / "someone"
    replay = folder / "data" / "replay" / "Pong" / "1" / "replay_logs"
    replay.mkdir(parents=True)
    (replay / "$store$_action_ckpt.0.gz").write_bytes(b"real data")
    (folder / "data" / "replay" / "notes.txt").write_text("unrelated")
    with pytest.raises(FileExistsError, match=r"not a recording of a workbench run.*refusing to delete"):
        prepare_dataset(PretrainConfig(output_dir=str(folder), record_steps=100), folder, progress=False)
    assert (replay / "$store$_action_ckpt.0.gz").read_bytes() == b"real data"
    assert (folder / "data" / "replay" / "notes.txt").read_text() == "unrelated"


def test_the_lock_is_never_put_into_a_foreign_folder_and_cwd_is_refused(tmp_path, monkeypatch):
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"not a workbench run.*config\.json"):
        RunLock(foreign).acquire()
    assert sorted(p.name for p in foreign.iterdir()) == ["config.json"]
    monkeypatch.chdir(foreign)
    with pytest.raises(FileExistsError, match="current directory"):
        RunLock(os.getcwd()).acquire()
    # '' takes the default run folder, never the current directory
    assert Path(PretrainConfig(output_dir="").run_dir).resolve() != foreign.resolve()
    assert Path(PretrainConfig(output_dir="").run_dir).name == "pretrain-resnet-tiny"


# ------------------------------------------------------------------------------ one writer per run

_HOLDER = """
import sys, time
from workbench.run import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.mark.slow
def test_a_second_run_fails_at_once_naming_the_holder(tmp_path):
    import workbench.pipeline as pipeline

    config = _config(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, config.run_dir], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(RunLocked) as err:
            pipeline.pretrain(config, progress=False)
        assert time.monotonic() - t0 < 5
        msg = str(err.value)
        assert f'"pid": {holder.pid}' in msg and socket.gethostname() in msg and '"started"' in msg
        assert not (Path(config.run_dir) / "config.json").exists()  # the second run wrote nothing
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_a_stale_lock_of_a_killed_run_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    holder.kill()  # SIGKILL: no clean-up ran, the lock file still names the dead process
    holder.wait()
    assert f'"pid": {holder.pid}' in (tmp_path / "run" / LOCK).read_text()
    with RunLock(tmp_path / "run"):
        info = json.loads((tmp_path / "run" / LOCK).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()


# ------------------------------------------------------------------------------ honest resume


@pytest.mark.parametrize("change,field", [
    ({"games": "Breakout,Pong"}, "games: 'Pong,Breakout' -> 'Breakout,Pong'"),  # heads would swap
    ({"seed": 1}, "seed: 0 -> 1"),
    ({"record_steps": 200}, "record_steps: 3000 -> 200"),
    ({"model": "resnet18"}, "model: 'resnet-tiny' -> 'resnet18'"),
])
def test_resume_stops_on_any_non_resumable_change_naming_it(tmp_path, change, field):
    from workbench.pipeline import open_run

    run = open_run(_config(tmp_path))
    with pytest.raises(ResumeMismatch) as err:
        open_run(_config(tmp_path, **change))
    assert field in str(err.value) and "resume=False" in str(err.value)
    assert Run(run.path).params["seed"] == 0 and Run(run.path).params["games"] == "Pong,Breakout"


# ------------------------------------------------------------------------------ the seed is the seed


@pytest.mark.slow
def test_same_seed_gives_bit_identical_checkpoints_and_another_seed_differs(tmp_path, dopamine_store, monkeypatch):
    import workbench.pipeline as pipeline

    class Trained(Exception):
        pass

    def stop(*a, **k):
        raise Trained  # training is over and checkpointed: the evaluation is not what is tested

    monkeypatch.setattr(pipeline, "evaluate_algo", stop)

    def weights(seed: int, name: str) -> dict[str, torch.Tensor]:
        config = PretrainConfig(output_dir=str(tmp_path / name), dataset=str(dopamine_store), steps=2,
                                batch_size=8, seed=seed, device="cpu")
        with pytest.raises(Trained):
            pipeline.pretrain(config, progress=False)
        return load_file(str(tmp_path / name / "checkpoints" / "step_00000002" / "model.safetensors"))

    a, b, c = weights(3, "a"), weights(3, "b"), weights(4, "c")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


# ------------------------------------------------------------------------------ validate before work


@pytest.mark.parametrize("params,pattern", [
    ({"eval_max_steps": 27_001}, r"eval_max_steps 27001 is above the evaluation protocol's cap of 27000"),
    ({"lr": float("nan")}, r"lr must be a finite number"),
    ({"device": "tpu"}, r"unknown device 'tpu'; valid here: auto, cpu"),
    ({"device": "cuda:7"}, r"device 'cuda:7' is not available on this machine; valid here: auto, cpu"),
    ({"seed": -1}, r"seed must be >= 0"),
])
def test_pretrain_config_validates_before_work(params, pattern):
    if params.get("device") == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(ValueError, match=pattern):
        PretrainConfig(**params)


def test_evaluate_config_validates_cap_and_device():
    with pytest.raises(ValueError, match="max_steps 30000 is above"):
        EvaluateConfig(max_steps=30_000)
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        EvaluateConfig(device="gpu")


def _cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("module,args,pattern", [
    ("workbench.pipeline", ["--lr", "nan"], "lr must be a finite number"),
    ("workbench.pipeline", ["--eval-max-steps", "99999"], "above the evaluation protocol's cap"),
    ("workbench.pipeline", ["--device", "tpu"], "unknown device 'tpu'"),
    ("workbench.viz.video", ["--checkpoint", "x", "--game", "Pong", "--epsilon", "1.5"],
     r"epsilon must be in \[0, 1\]"),
    ("workbench.viz.video", ["--checkpoint", "x", "--game", "Pong", "--fps", "0"], "fps must be an integer >= 1"),
    ("workbench.viz.video", ["--checkpoint", "x", "--game", "Pong", "--seed", "-2"], "seed must be >= 0"),
    ("workbench.data.record", ["--games", "Pong", "--steps", "10", "--output-dir", "out", "--run", "../../escape"],
     "may not lead out of it"),
    ("workbench.data.record", ["--games", "Pong", "--steps", "10", "--output-dir", "out", "--seed", "-1"],
     "seed must be an int >= 0"),
    ("workbench.metrics", ["missing.json"], "no such file: missing.json"),
])
def test_command_lines_print_the_message_without_traceback_and_exit_2(tmp_path, module, args, pattern):
    import re

    out = _cli(module, *args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert re.search(pattern, out.stderr) and "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing was written


def test_marker_and_lock_names_are_distinct():
    assert MARKER != LOCK

"""A job never empties the folder that holds its own input (issue: a reset deleted the input,
then failed): ``resume=False`` with the dataset or the source checkpoint inside ``output_dir``
is refused before anything is deleted. Errors a user can fix end a job's command line with one
line and exit 2, as a bad flag does."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
from shared_paths import DQN_FIXTURES

from workbench import checkpoint as ckpt_io
from workbench.algos.scaled_ql import ScaledQL, ScaledQLConfig
from workbench.config import PretrainConfig
from workbench.data.build import build_store
from workbench.finetune import FinetuneConfig, finetune
from workbench.pipeline import pretrain
from workbench.run import Run, RunLock


def test_pretraining_reset_refuses_a_dataset_inside_its_folder(tmp_path):
    run_dir = tmp_path / "X"
    Run(run_dir).create("pretrain", {}, {"algo": "scaled_ql", "model": "resnet-tiny", "games": ["Pong"]})
    store = build_store(DQN_FIXTURES, run_dir / "data" / "store", ["Pong"], [1], "first:1", progress=False)
    config = PretrainConfig.from_params(games="Pong", dataset=str(store), output_dir=str(run_dir), resume=False,
                                        steps=1, eval_episodes=1, num_envs=1)
    with pytest.raises(ValueError, match=r"resume=False would empty .*X, which holds this job's input .*store"):
        pretrain(config, progress=False)
    assert (store / "manifest.json").is_file()  # the dataset is still there


def test_finetune_reset_refuses_its_own_source_run(tmp_path):
    source = tmp_path / "X"
    settings = ScaledQLConfig(target_update_period=50)
    algo = ScaledQL.build("resnet-tiny", ["Breakout"], settings, seed=1)
    Run(source).create("pretrain", {}, {"algo": "scaled_ql", "model": "resnet-tiny", "games": ["Breakout"],
                                        "settings": dataclasses.asdict(settings)})
    ckpt_io.save_checkpoint(source, 10, algo.model, target=algo.target_model)
    before = ckpt_io.resolve_checkpoint(source)
    config = FinetuneConfig.from_params(checkpoint=str(source), game="Pong", dataset=str(DQN_FIXTURES),
                                        output_dir=str(source), resume=False, steps=1, device="cpu")
    with pytest.raises(ValueError, match="which holds this job's input"):
        finetune(config, progress=False)
    assert ckpt_io.resolve_checkpoint(source) == before and (before / "model.safetensors").is_file()
    assert Run.open(source).kind == "pretrain"  # the source run is untouched


@pytest.mark.slow
def test_online_reset_refuses_its_own_pretrained_run(tmp_path):
    """``online --checkpoint X --output-dir X --resume false`` (before: X emptied, then a bare
    AssertionError): one line, exit 2, X untouched."""
    source = tmp_path / "X"
    settings = ScaledQLConfig()
    Run(source).create("pretrain", {}, {"algo": "scaled_ql", "model": "resnet-tiny", "games": ["Pong"],
                                        "settings": dataclasses.asdict(settings)})
    algo = ScaledQL.build("resnet-tiny", ["Pong"], settings, seed=1)
    ckpt_io.save_checkpoint(source, 10, algo.model, target=algo.target_model)
    def tree():  # every file and its bytes (the job's lock file aside: taking the lock is allowed)
        return {str(p.relative_to(source)): p.read_bytes() for p in source.rglob("*")
                if p.is_file() and p.name != ".workbench-lock"}

    before = tree()
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_ROOT"}
    out = subprocess.run([sys.executable, "-m", "workbench.online", "--game", "Pong", "--device", "cpu",
                          "--checkpoint", "X", "--output-dir", "X", "--resume", "false"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "which holds this job's input" in out.stderr and "Traceback" not in out.stderr
    assert tree() == before


def _cli(cwd, *args):
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_ROOT"}
    return subprocess.run([sys.executable, "-m", "workbench.pipeline", "--games", "Pong", "--record-steps", "100",
                           "--steps", "1", "--eval-episodes", "1", "--num-envs", "1", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_errors_a_user_can_fix_exit_2_with_one_line_and_nothing_touched(tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "draft.txt").write_text("mine")
    out = _cli(tmp_path, "--output-dir", "notes")  # a folder that is not a run
    assert out.returncode == 2 and "error:" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["draft.txt"]

    other = tmp_path / "other"
    Run(other).create("pretrain", {"games": "Breakout"}, {"algo": "scaled_ql", "games": ["Breakout"]})
    out = _cli(tmp_path, "--output-dir", "other")  # another experiment's run: no silent resume
    assert out.returncode == 2 and "different configuration" in out.stderr and "Traceback" not in out.stderr

    with RunLock(tmp_path / "busy"):  # a folder held by a running job
        out = _cli(tmp_path, "--output-dir", "busy")
    assert out.returncode == 2 and "Traceback" not in out.stderr and str(os.getpid()) in out.stderr, out.stderr


@pytest.mark.slow
def test_a_second_run_with_the_same_recording_reuses_the_first_runs_store(tmp_path):
    """The headline run after the main job records nothing: a store recorded and built exactly as
    it would record (same games, steps, seeds, split) is reused after its digests are verified; a
    different recording is not."""
    def config(name, **kw):
        return PretrainConfig.from_params(output_dir=str(tmp_path / name), games="Pong", steps=1, batch_size=8,
                                          record_steps=120, eval_episodes=1, eval_max_steps=10, num_envs=1,
                                          eval_references=False, device="cpu", **kw)

    pretrain(config("a"), progress=False)
    store_a = tmp_path / "a" / "data" / "store"
    pretrain(config("b", model="resnet-small"), progress=False)
    assert not (tmp_path / "b" / "data").exists()  # nothing recorded, nothing built
    assert Run.open(tmp_path / "b").resolved["store"] == str(store_a)
    pretrain(config("c", seed=1), progress=False)  # another seed: other data, its own recording
    assert (tmp_path / "c" / "data" / "store" / "manifest.json").is_file()

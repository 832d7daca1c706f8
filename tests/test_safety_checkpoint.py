"""Issue 17, checkpoints: checksums, tensor checks, non-finite weights, `latest`, temp folders,
hand-edited state.json, pruning only our own checkpoints, honest trainer-level resume."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from linear_trainable import Algo, batches, cfg
from safetensors.torch import load_file, save_file

from workbench import checkpoint as ckpt_io
from workbench.checkpoint import CheckpointError
from workbench.run import ResumeMismatch
from workbench.train import train


def _run(tmp_path: Path, steps: int = 4, **kw) -> Path:
    train(Algo(), batches, cfg(steps, **kw), tmp_path / "run", progress=False)
    return tmp_path / "run"


def _rewrite(ckpt: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Replace a file of a checkpoint *and* its recorded checksum (a checkpoint of another model)."""
    save_file(tensors, str(ckpt / name))
    state = json.loads((ckpt / "state.json").read_text())
    state["files"][name] = hashlib.sha256((ckpt / name).read_bytes()).hexdigest()
    state.pop("state_sha256", None)  # as an older workbench wrote it: only the tensors can tell
    (ckpt / "state.json").write_text(json.dumps(state))


def test_every_file_has_a_checksum_and_a_flipped_bit_or_truncation_is_named(tmp_path):
    run = _run(tmp_path)
    ckpt = ckpt_io.latest_checkpoint(run)
    assert ckpt is not None
    files = json.loads((ckpt / "state.json").read_text())["files"]
    assert set(files) == {"model.safetensors", "optimizer.safetensors", "rng.safetensors"}
    model_file = ckpt / "model.safetensors"
    data = bytearray(model_file.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight: safetensors itself loads this without complaint
    model_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match the sha256"):
        ckpt_io.load_checkpoint(ckpt, Algo().model)
    data[-3] ^= 0x01
    model_file.write_bytes(bytes(data))
    opt = ckpt / "optimizer.safetensors"
    opt.write_bytes(opt.read_bytes()[:-10])
    algo = Algo()
    optimizer = torch.optim.AdamW(algo.model.parameters())
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors does not match the sha256"):
        ckpt_io.load_checkpoint(ckpt, algo.model, optimizer=optimizer)


def test_wrong_dtype_extra_and_missing_tensors_are_named(tmp_path):
    run = _run(tmp_path)
    ckpt = ckpt_io.latest_checkpoint(run)
    assert ckpt is not None
    good = load_file(str(ckpt / "model.safetensors"))
    cases = {
        "dtype": ({**good, "weight": good["weight"].double()}, r"tensor 'weight' is torch.float64 \(1, 4\)"),
        "extra": ({**good, "bias2": torch.zeros(1)}, r"unexpected tensors \['bias2'\]"),
        "missing": ({k: v for k, v in good.items() if k != "bias"}, r"missing tensors \['bias'\]"),
    }
    for tensors, pattern in cases.values():
        _rewrite(ckpt, "model.safetensors", tensors)
        model = Algo().model
        before = model.weight.detach().clone()
        with pytest.raises(CheckpointError, match=r"model\.safetensors.*" + pattern):
            ckpt_io.load_checkpoint(ckpt, model)
        assert torch.equal(model.weight, before)  # nothing loaded
    (ckpt / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"state\.json is not valid JSON"):
        ckpt_io.load_checkpoint(ckpt, Algo().model)


def test_non_finite_weights_are_refused_by_evaluator_explorer_and_video(tmp_path, capsys):
    from workbench.config import PretrainConfig
    from workbench.run import Run, load_algo
    from workbench.viz import video
    from workbench.viz.rollout import load_policy

    config = PretrainConfig(output_dir=str(tmp_path / "run"), games="Pong")
    run = Run(tmp_path / "run")
    run.create("pretrain", config.params(), config.resolve())
    algo = config.spec.build(config.model, config.game_list, config.settings, config.seed)
    name, param = next(iter(algo.model.named_parameters()))
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    ckpt_io.save_checkpoint(run.path, 1, algo.model, target=algo.target_model)
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' holds NaN or Inf"):
        load_algo(run.path, device="cpu")  # what evaluate_run calls
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load_policy(run.path, "Pong", device="cpu")  # the explorer
    assert video.main(["--checkpoint", str(run.path), "--game", "Pong", "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert "NaN or Inf" in err and "Traceback" not in err
    assert not (tmp_path / "v").exists()


def test_latest_may_only_point_inside_its_own_checkpoints_folder(tmp_path):
    run = _run(tmp_path)
    other = _run(tmp_path / "other")
    for bad in ("../../other/run/checkpoints/step_00000004", str(other / "checkpoints" / "step_00000004"), "x"):
        (run / "checkpoints" / "latest").write_text(bad + "\n")
        with pytest.raises(CheckpointError, match="not a checkpoint folder inside"):
            ckpt_io.resolve_checkpoint(run)
    # a symlinked step folder leading elsewhere is refused as well
    (run / "checkpoints" / "step_00000009").symlink_to(other / "checkpoints" / "step_00000004")
    (run / "checkpoints" / "latest").write_text("step_00000009\n")
    with pytest.raises(CheckpointError, match="not a checkpoint folder inside"):
        ckpt_io.resolve_checkpoint(run)


def test_temporary_step_folders_of_a_killed_save_are_removed_by_the_next_run(tmp_path):
    run = _run(tmp_path, steps=2)
    leftover = run / "checkpoints" / ".step_00000004.k1ll3d"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    _run(tmp_path, steps=3, checkpoint_every=100)  # resumes; its one save is at step 3
    assert not leftover.exists()
    assert not list((run / "checkpoints").glob(".step_*"))


def test_hand_edited_state_json_is_an_error_and_metrics_are_kept(tmp_path):
    run = _run(tmp_path)
    metrics = (run / "metrics.jsonl").read_text()
    ckpt = ckpt_io.latest_checkpoint(run)
    assert ckpt is not None
    state = json.loads((ckpt / "state.json").read_text())
    for bad, pattern in ((-3, r"'step' must be an integer >= 0, got -3"),
                         (2, r"'step' is 2 but the folder is step_00000004"), ("4", r"'step' must be an integer")):
        (ckpt / "state.json").write_text(json.dumps({**state, "step": bad}))
        with pytest.raises(CheckpointError, match=pattern):
            _run(tmp_path, steps=6)
        assert (run / "metrics.jsonl").read_text() == metrics  # before: truncated to steps <= -3, i.e. wiped


def test_pruning_deletes_only_checkpoints_the_workbench_wrote(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    foreign = ckpts / "step_00000001"
    foreign.mkdir()
    (foreign / "model.safetensors").write_bytes(b"someone else's weights")
    _run(tmp_path, steps=8, keep_checkpoints=1)
    assert (foreign / "model.safetensors").read_bytes() == b"someone else's weights"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000001", "step_00000008"]
    # a foreign folder where a checkpoint would go is not replaced either
    squatter = tmp_path / "run2" / "checkpoints" / "step_00000002"
    squatter.mkdir(parents=True)
    (squatter / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not written by the workbench"):
        train(Algo(), batches, cfg(2), tmp_path / "run2", progress=False)
    assert (squatter / "notes.txt").read_text() == "mine"


def test_trainer_resume_with_other_optimizer_settings_stops_before_loading(tmp_path):
    run = _run(tmp_path)
    weights_before = load_file(str(run / "checkpoints" / "step_00000004" / "model.safetensors"))
    with pytest.raises(ResumeMismatch, match=r"lr: 0\.01 -> 0\.05"):
        train(Algo(), batches, cfg(8, lr=0.05), run, progress=False)  # before: kept 0.01 silently
    with pytest.raises(ResumeMismatch, match=r"seed: 0 -> 1"):
        train(Algo(), batches, cfg(8, seed=1), run, progress=False)
    assert ckpt_io.latest_checkpoint(run) == run / "checkpoints" / "step_00000004"
    after = load_file(str(run / "checkpoints" / "step_00000004" / "model.safetensors"))
    assert all(torch.equal(weights_before[k], after[k]) for k in after)
    summary = train(Algo(), batches, cfg(6, log_every=2), run, progress=False)  # steps, log_every may change
    assert summary["resumed_from"] == 4 and summary["steps"] == 6
    assert os.path.isdir(run / "checkpoints" / "step_00000006")


@pytest.mark.parametrize("field,value", [("lr", float("nan")), ("seed", -1), ("grad_clip", float("inf"))])
def test_train_config_refuses_non_finite_and_negative_settings(field, value):
    with pytest.raises(ValueError, match=field):
        cfg(4, **{field: value})

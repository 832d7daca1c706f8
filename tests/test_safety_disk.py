"""Issue 17, full disk (a 2 MiB tmpfs): recording, store building, checkpointing, video writing
and JSON writes stop with a message naming the folder and the space needed, and leave what was
there before intact. Skipped, with the reason, where mounting a tmpfs is not permitted."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from shared_paths import DQN_FIXTURES
from torch import nn

from workbench import checkpoint as ckpt_io
from workbench.fileio import DiskFullError, atomic_write_json


@pytest.fixture
def small_disk():
    """A 2 MiB tmpfs, unmounted afterwards."""
    mnt = Path(tempfile.mkdtemp(prefix="wb-full-"))
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount permission): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        mnt.rmdir()


def _fill(folder: Path, leave: int) -> None:
    """Fill the file system of ``folder`` until about ``leave`` bytes are free."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(folder / "filler", "wb") as f:
        f.write(b"\1" * max(free - leave, 0))


def test_recorder_stops_with_a_message_instead_of_sigbus(small_disk):
    from workbench.data.record import record

    # The ring (1000 rows, 7 MB) does not fit in 2 MiB; before, the memmap pages hit the full disk: SIGBUS.
    with pytest.raises(DiskFullError, match=rf"no space left in {small_disk}.*ring buffer.*needs about 6\.7 MiB"):
        record("Pong", 50, small_disk, capacity=1000, progress=False)
    leftovers = [p for p in small_disk.rglob("*") if p.is_file()]
    assert leftovers == []


def test_store_build_stops_before_work_naming_the_space_needed(small_disk):
    from workbench.data.build import build_store

    out = small_disk / "store"
    with pytest.raises(DiskFullError, match=rf"no space left in {out}.*store of \d+ rows.*needs about"):
        build_store(DQN_FIXTURES, out, ["Pong", "Breakout"], [1], "all", progress=False)
    assert not (out / "manifest.json").exists()


def test_checkpoint_on_a_full_disk_keeps_the_previous_one(small_disk):
    model = nn.Linear(128, 256)  # 129 KiB of weights, 258 KiB of Adam moments
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 128)).sum().backward()
    opt.step()
    first = ckpt_io.save_checkpoint(small_disk, 1, model, optimizer=opt)
    _fill(small_disk, leave=200_000)
    with pytest.raises(DiskFullError, match=rf"no space left in {small_disk / 'checkpoints'} for checkpoint step 2"):
        ckpt_io.save_checkpoint(small_disk, 2, model, optimizer=opt)
    assert ckpt_io.latest_checkpoint(small_disk) == first
    assert not list((small_disk / "checkpoints").glob(".step_*"))
    ckpt_io.load_checkpoint(first, nn.Linear(128, 256))  # verifies every checksum


def test_video_on_a_full_disk_is_an_error_and_the_old_video_survives(small_disk):
    from workbench.viz.video import write_mp4

    path = small_disk / "episode.mp4"
    write_mp4([np.zeros((64, 64, 3), np.uint8)] * 4, path, fps=4)
    old = path.read_bytes()
    _fill(small_disk, leave=20_000)
    noise = np.random.default_rng(0).integers(0, 256, (60, 128, 128, 3), dtype=np.uint8)  # does not compress
    with pytest.raises(OSError, match=rf"no space left in {small_disk}.*video episode\.mp4"):
        write_mp4(list(noise), path, fps=30)  # before: returned the path of an unplayable mp4
    assert path.read_bytes() == old
    assert sorted(p.name for p in small_disk.iterdir()) == ["episode.mp4", "filler"]


def test_json_write_on_a_full_disk_keeps_the_old_file(small_disk):
    target = small_disk / "summary.json"
    atomic_write_json(target, {"old": 1})
    _fill(small_disk, leave=0)
    with pytest.raises(DiskFullError, match=rf"no space left in {small_disk} for summary\.json"):
        atomic_write_json(target, {"new": "x" * 100_000})
    assert target.read_text() == '{\n  "old": 1\n}\n'
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "summary.json"]

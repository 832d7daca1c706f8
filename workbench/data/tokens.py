"""A pre-tokenized, memory-mapped copy of a store's frames (what JOWA's stage 2 reads).

Once the tokenizer is frozen, encoding the same frames on every step is wasted work: encode
every stored frame once, as uint16 (rows, 36) (vocabulary 2048 fits; int64 would be 4x larger),
next to nothing else. Layout::

    out/{Game}/tokens.npy      uint16 (rows, 36), row i = tokens of the store's frame row i
    out/manifest.json          store path, its manifest checksum, tokenizer checksum; written last

A directory whose manifest matches the store and the tokenizer is reused; a game whose file is
complete is not encoded again after an interruption.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from workbench.data.store import ReplayStore
from workbench.fileio import atomic_write_json
from workbench.models.tokenizer import TOKENS_PER_FRAME, Tokenizer
from workbench.progress import progress_bar

FORMAT_VERSION = 1


def module_checksum(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, shapes, dtypes and bytes), order-independent."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _manifest(store: ReplayStore, tokenizer_sha: str) -> dict:
    store_sha = hashlib.sha256((store.path / "manifest.json").read_bytes()).hexdigest()
    return {"format_version": FORMAT_VERSION, "store": str(store.path.resolve()), "store_manifest_sha256": store_sha,
            "tokenizer_sha256": tokenizer_sha, "games": list(store.games)}


@torch.no_grad()
def tokenize_store(
    store: ReplayStore | str | os.PathLike, tokenizer: Tokenizer, out: str | os.PathLike, *,
    batch_size: int = 256, device: str | torch.device = "cpu", progress: bool = True,
) -> Path:
    """Encode every frame of ``store`` with ``tokenizer.encode`` into ``out``; return ``out``."""
    store = store if isinstance(store, ReplayStore) else ReplayStore(store)
    out = Path(out)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    expected = _manifest(store, module_checksum(tokenizer))
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        if json.loads(manifest_path.read_text()) == expected:
            return out
        manifest_path.unlink()  # another store or tokenizer: the copy is stale, rebuild it

    was_training = tokenizer.training
    tokenizer.eval().to(device)
    try:
        for game in store.games:
            frames = store.game(game).frames
            rows = len(frames)
            done_marker = out / game / "complete.json"
            path = out / game / "tokens.npy"
            if done_marker.is_file() and json.loads(done_marker.read_text()) == {"rows": rows, **expected}:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tokens = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(rows, TOKENS_PER_FRAME))
            batches = range(0, rows, batch_size)
            for lo in progress_bar(batches, desc=f"tokenize {game}", unit="batch", disable=not progress):
                batch = torch.from_numpy(np.array(frames[lo:lo + batch_size])).to(device)  # a writable copy
                tokens[lo:lo + batch_size] = tokenizer.encode(batch).to("cpu").numpy().astype(np.uint16)
            tokens.flush()
            del tokens
            atomic_write_json(done_marker, {"rows": rows, **expected})
    finally:
        tokenizer.train(was_training)
    atomic_write_json(manifest_path, expected)  # last: marks the copy complete
    return out

"""The pre-tokenized store copy equals encoding the frames directly, and feeds the sequence sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from shared_paths import DQN_FIXTURES

from workbench.data.build import build_store
from workbench.data.sampler import SequenceSampler
from workbench.data.tokens import tokenize_store
from workbench.models.tokenizer import Tokenizer, tokenizer_config


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(DQN_FIXTURES, tmp_path_factory.mktemp("store") / "s", ["Pong"], [1], "first:1", progress=False)


def tiny_tokenizer(seed: int) -> Tokenizer:
    torch.manual_seed(seed)
    return Tokenizer(tokenizer_config("tiny"))


@pytest.mark.slow
def test_tokens_equal_direct_encoding_and_are_reused(store, tmp_path):
    tok = tiny_tokenizer(0)
    out = tokenize_store(store, tok, tmp_path / "tok", batch_size=64, progress=False)
    tokens = np.load(out / "Pong" / "tokens.npy", mmap_mode="r")
    frames = np.load(store / "Pong" / "frames.npy", mmap_mode="r")
    assert tokens.dtype == np.uint16 and tokens.shape == (len(frames), 36)
    rows = np.r_[0, 1, 2, 3, 100, 777, len(frames) - 1]
    with torch.no_grad():
        direct = tok.eval().encode(torch.from_numpy(np.ascontiguousarray(frames[rows]))).numpy()
    np.testing.assert_array_equal(tokens[rows], direct)

    stamp = (out / "Pong" / "tokens.npy").stat().st_mtime_ns
    tokenize_store(store, tok, out, progress=False)
    assert (out / "Pong" / "tokens.npy").stat().st_mtime_ns == stamp  # same tokenizer: reused

    other = tiny_tokenizer(1)
    tokenize_store(store, other, out, progress=False)  # another tokenizer: rebuilt
    with torch.no_grad():
        redone = other.eval().encode(torch.from_numpy(np.ascontiguousarray(frames[rows]))).numpy()
    np.testing.assert_array_equal(np.load(out / "Pong" / "tokens.npy")[rows], redone)


@pytest.mark.slow  # seconds: the fast loop keeps under a minute
def test_sequence_sampler_reads_the_token_copy(store, tmp_path):
    tok = tiny_tokenizer(2)
    out = tokenize_store(store, tok, tmp_path / "tok", progress=False)
    plain = SequenceSampler(store, ["Pong"], 4, seq_len=8, seed=5, prefetch=0).sample(0)
    with_tokens = SequenceSampler(store, ["Pong"], 4, seq_len=8, seed=5, tokens=out, prefetch=0).sample(0)
    assert "tokens" in with_tokens and "obs" not in with_tokens
    with torch.no_grad():
        expected = tok.eval().encode(plain["obs"])
    mask = plain["mask"]
    assert torch.equal(with_tokens["tokens"].long()[mask], expected[mask])
    for key in ("action", "reward", "terminal", "mask", "game_id"):
        assert torch.equal(plain[key], with_tokens[key]), key

"""GPT backbone: KV cache vs full forward, masks vs a hand-written attention, backends, gathers."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from workbench.models.gpt import GPT, GPTConfig


def _gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(**{**dict(n_layer=2, n_head=4, n_embd=32, max_tokens=80, dropout=0.1), **kw})
    return GPT(cfg).eval()


def _manual_forward(gpt: GPT, x: torch.Tensor, pos: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Reference transformer: explicit softmax(QK^T/sqrt(d) + mask) V, no SDPA anywhere.

    ``allowed`` (B, T, T) bool says which key each query may see."""
    h = x + gpt.pos_emb(pos)
    for blk in gpt.blocks:
        a = blk.attn
        B, T, C = h.shape
        q, k, v = a.qkv(blk.ln_1(h)).split(C, dim=2)
        q, k, v = (t.view(B, T, a.n_head, a.head_dim).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(a.head_dim)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
        h = h + a.proj(y)
        h = h + blk.mlp(blk.ln_2(h))
    return gpt.ln_f(h)


def test_full_forward_matches_manual_attention():
    gpt = _gpt()
    x = torch.randn(3, 20, 32)
    causal = torch.tril(torch.ones(20, 20, dtype=torch.bool))[None].expand(3, -1, -1)
    ref = _manual_forward(gpt, x, torch.arange(20)[None].expand(3, -1), causal)
    torch.testing.assert_close(gpt(x), ref, atol=1e-5, rtol=1e-5)


def test_cached_incremental_forward_equals_full_forward():
    gpt = _gpt()
    x = torch.randn(2, 75, 32)
    full = gpt(x)
    cache = gpt.new_cache(2, 75)
    outs, start = [], 0
    for size in (37, 1, 1, 10, 26):  # a prefix, single tokens, and chunks
        outs.append(gpt(x[:, start:start + size], cache=cache))
        start += size
    assert cache.length == 75
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", [SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION])
def test_attention_independent_of_backend(backend):
    gpt = _gpt()
    x = torch.randn(2, 30, 32)
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[0, :7] = False  # left padding forces the explicit-mask path
    default_plain, default_padded = gpt(x), gpt(x, valid=valid)
    try:
        with sdpa_kernel([backend, SDPBackend.MATH]):  # MATH as fallback where the kernel is unavailable
            other_plain, other_padded = gpt(x), gpt(x, valid=valid)
    except RuntimeError as err:  # pragma: no cover - backend absent on this build
        pytest.skip(str(err))
    torch.testing.assert_close(other_plain, default_plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(other_padded, default_padded, atol=1e-5, rtol=1e-5)


def test_left_padding_is_invisible():
    """A left-padded row equals the same tokens run alone (positions restart after the pads)."""
    gpt = _gpt()
    x = torch.randn(1, 12, 32)
    pads = torch.randn(1, 5, 32) * 100.0  # garbage that must not leak
    alone = gpt(x)
    padded = torch.cat([pads, x], 1)
    valid = torch.cat([torch.zeros(1, 5, dtype=torch.bool), torch.ones(1, 12, dtype=torch.bool)], 1)
    out = gpt(padded, valid=valid)
    torch.testing.assert_close(out[:, 5:], alone, atol=1e-5, rtol=1e-5)
    # Same through the cache, with the padding inside the cached prefix.
    cache = gpt.new_cache(1, 17)
    a = gpt(padded[:, :9], cache=cache, valid=valid[:, :9])
    b = gpt(padded[:, 9:], cache=cache)
    torch.testing.assert_close(torch.cat([a, b], 1)[:, 5:], alone, atol=1e-5, rtol=1e-5)
    # And against the hand-written reference with the explicit mask.
    allowed = torch.tril(torch.ones(17, 17, dtype=torch.bool)) & valid[0][None, :]
    allowed |= torch.eye(17, dtype=torch.bool)
    pos = (torch.cumsum(valid.long(), 1) - 1).clamp(min=0)
    ref = _manual_forward(gpt, padded, pos, allowed[None])
    torch.testing.assert_close(out[:, 5:], ref[:, 5:], atol=1e-5, rtol=1e-5)


def test_gathered_cache_equals_recomputed():
    gpt = _gpt()
    x = torch.randn(3, 20, 32)
    valid = torch.ones(3, 20, dtype=torch.bool)
    valid[1, :4] = False
    cache = gpt.new_cache(3, 30)
    gpt(x, cache=cache, valid=valid)
    idx = torch.tensor([2, 0, 0, 1, 2])
    gathered = cache.index_select(idx)
    new = torch.randn(5, 6, 32)
    out = gpt(new, cache=gathered)
    ref = gpt(torch.cat([x[idx], new], 1), valid=torch.cat([valid[idx], torch.ones(5, 6, dtype=torch.bool)], 1))
    torch.testing.assert_close(out, ref[:, 20:], atol=1e-5, rtol=1e-5)
    # The gather copied: writing to the new cache leaves the old one untouched.
    before = cache.k.clone()
    gpt(torch.randn(5, 1, 32), cache=gathered)
    assert torch.equal(cache.k, before)


def test_capacity_and_length_errors():
    gpt = _gpt()
    with pytest.raises(ValueError, match="max_tokens"):
        gpt(torch.randn(1, 81, 32))
    cache = gpt.new_cache(1, 10)
    gpt(torch.randn(1, 8, 32), cache=cache)
    with pytest.raises(ValueError, match="cache capacity"):
        gpt(torch.randn(1, 3, 32), cache=cache)
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)


def test_dropout_active_only_in_training():
    gpt = _gpt()
    x = torch.randn(2, 10, 32)
    gpt.train()
    assert not torch.allclose(gpt(x), gpt(x))
    gpt.eval()
    torch.testing.assert_close(gpt(x), gpt(x))

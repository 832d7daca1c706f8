"""VQ-VAE tokenizer: shapes, token range, fp32 codebook distances, straight-through gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench.models.tokenizer import (
    Tokenizer,
    TokenizerConfig,
    tokenizer_config,
    tokens_from_storage,
    tokens_to_storage,
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    torch.manual_seed(0)
    return Tokenizer(tokenizer_config("tiny"))


def _frames(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (*shape, 84, 84), dtype=torch.uint8, generator=g)


def test_round_trip_shapes_and_range(tok):
    frames = _frames(2, 3)
    tokens = tok.encode(frames)
    assert tokens.shape == (2, 3, 36) and tokens.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < tok.cfg.vocab_size
    recon = tok.decode(tokens)
    assert recon.shape == (2, 3, 84, 84) and recon.dtype == torch.float32
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
    # decode accepts uint16 storage directly
    torch.testing.assert_close(tok.decode(torch.from_numpy(tokens_to_storage(tokens))), recon)


def test_tokens_are_nearest_codes_in_fp32_under_autocast(tok):
    frames = _frames(4, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, e, tokens = tok.encode_latents(frames)
    assert z.dtype == torch.float32 and e.dtype == torch.float32
    # Brute force in float64 on the same encodings.
    flat = z.double().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    dist = torch.cdist(flat, tok.codebook.weight.double())
    torch.testing.assert_close(tokens.flatten(), dist.argmin(1))
    torch.testing.assert_close(e.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), tok.codebook.weight[tokens.flatten()])


def test_straight_through_and_vq_gradients():
    torch.manual_seed(0)
    tok = Tokenizer(tokenizer_config("tiny"))
    frames = _frames(2, seed=2)
    enc = list(tok.encoder.parameters()) + list(tok.pre_quant.parameters())
    cb = tok.codebook.weight

    def grads(term: str):
        tok.zero_grad(set_to_none=True)
        out = tok(frames)
        x = frames.float()[:, None] / 255.0
        loss = {
            "recon": (out["recon"] - x[:, 0]).abs().mean(),
            "codebook": F.mse_loss(out["e"], out["z"].detach()),
            "commitment": F.mse_loss(out["z"], out["e"].detach()),
        }[term]
        loss.backward()
        has = lambda ps: any(p.grad is not None and p.grad.abs().sum() > 0 for p in ps)  # noqa: E731
        return has(enc), cb.grad is not None and cb.grad.abs().sum() > 0

    assert grads("recon") == (True, False)  # decoder gradient passes straight through to the encoder
    assert grads("codebook") == (False, True)  # only codes move toward encodings
    assert grads("commitment") == (True, False)  # only encodings move toward codes
    # The packaged loss is their sum and is finite.
    loss, metrics = tok.loss(frames)
    assert torch.isfinite(loss) and {"tokenizer/l1", "tokenizer/codebook", "tokenizer/commitment"} <= set(metrics)


def test_training_reduces_reconstruction_loss():
    torch.manual_seed(0)
    tok = Tokenizer(tokenizer_config("tiny"))
    frames = _frames(4, seed=3)
    opt = torch.optim.Adam(tok.parameters(), lr=1e-3)
    first = None
    for _ in range(8):
        loss, _ = tok.loss(frames)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first


def test_storage_helpers():
    t = torch.tensor([[0, 2047, 5]])
    s = tokens_to_storage(t)
    assert s.dtype == np.uint16
    back = tokens_from_storage(s)
    assert back.dtype == torch.int64 and torch.equal(back, t)
    assert torch.equal(tokens_from_storage(torch.from_numpy(s)), t)
    with pytest.raises(ValueError, match="uint16"):
        tokens_to_storage(np.array([70000]))


def test_perceptual_needs_local_weights(tmp_path):
    with pytest.raises(ValueError, match="perceptual_weights"):
        TokenizerConfig(perceptual=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer(tokenizer_config("tiny", perceptual=True, perceptual_weights=str(tmp_path / "missing.safetensors")))


def test_perceptual_with_user_weights(tmp_path):
    from safetensors.torch import save_file

    from workbench.models.tokenizer import VGGPerceptualLoss

    # A stand-in for the user's VGG16 file: right keys and shapes, random values.
    state, c_in, i = {}, 3, 0
    for v in VGGPerceptualLoss._CFG:
        if v == "M":
            i += 1
            continue
        state[f"features.{i}.weight"] = torch.randn(int(v), c_in, 3, 3) * 0.01
        state[f"features.{i}.bias"] = torch.zeros(int(v))
        c_in, i = int(v), i + 2
    path = tmp_path / "vgg16.safetensors"
    save_file(state, str(path))
    tok = Tokenizer(tokenizer_config("tiny", perceptual=True, perceptual_weights=str(path)))
    loss, metrics = tok.loss(_frames(2))
    assert torch.isfinite(loss) and "tokenizer/perceptual" in metrics
    assert not any("features" in k for k in tok.state_dict())  # frozen VGG is not checkpointed


def test_unknown_preset_lists_choices():
    with pytest.raises(ValueError, match="paper, tiny"):
        tokenizer_config("huge")

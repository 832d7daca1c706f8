"""The VQ-VAE of JOWA's public code (github.com/CJReinforce/JOWA, ``src/models/tokenizer/``,
``config/tokenizer/default.yaml``), so that its released ``checkpoints/JOWA/tokenizer.pt``
can be used by the workbench (``python -m workbench.convert jowa``).

It is a model option of JOWA, not a replacement: the presets ``jowa-40m-ref``, ``jowa-70m-ref``
and ``jowa-150m-ref`` (``workbench.models.world_action.PRESETS``) carry a
:class:`RefTokenizerConfig`, and :func:`build_tokenizer` builds this tokenizer for them; every
other preset keeps the workbench's own :class:`~workbench.models.tokenizer.Tokenizer`.

Architecture (taming-transformers style, as the released weights need it):

- input: one 84x84 grayscale frame in [0, 1], mapped to [-1, 1] (``x * 2 - 1``);
- encoder: 3x3 conv 1 -> 64; three levels of 2 residual blocks (GroupNorm with **2 groups**,
  eps 1e-6, swish, 3x3 conv, twice; no timestep projection), self-attention after each block at
  the levels of resolution 12 and 6; between the levels a downsampling conv with zero padding of
  one pixel on the right and bottom: kernel 8 / stride 7 (84 -> 12), then kernel 3 / stride 2
  (12 -> 6); middle: block, attention, block; out: GroupNorm, swish, 3x3 conv 64 -> 512;
- 1x1 conv 512 -> 512, nearest code in a 2048 x 512 codebook (6 x 6 = 36 tokens, row-major),
  1x1 conv 512 -> 512;
- decoder: 3x3 conv 512 -> 64, middle (block, attention, block), three levels of 3 residual
  blocks with nearest upsampling x7 (6 -> 42) then x2 (42 -> 84), each followed by a 3x3 conv;
  GroupNorm, swish, 3x3 conv 64 -> 1, output in [-1, 1] (mapped back to [0, 1] here). The
  reference decoder starts its resolution bookkeeping at 4 instead of 6 (its comment: "bug in
  decoder"), so its upsampling levels have **no** attention; ``decoder_start_res`` keeps that.

Self-attention is single-head over the H*W positions with 1x1-conv q, k, v and output
projections, scale ``C ** -0.5`` (the same as ``scaled_dot_product_attention``'s default).

The submodule names are the reference's below ``encoder.``/``decoder.``; the quantizer's parts
take the workbench tokenizer's names (``pre_quant``, ``codebook``, ``post_quant``), so every
method of :class:`~workbench.models.tokenizer.Tokenizer` (encode, decode, quantize, loss ...)
works unchanged. Differences from the reference, both outside the released weights: codebook
distances are computed in fp32 (the reference evaluated under bf16 autocast), and the training
loss's L1 term is taken on [0, 1] frames (the reference's on [-1, 1], i.e. twice as large);
the reference's LPIPS perceptual network is not part of this module (``perceptual`` works as for
the workbench tokenizer, from a local VGG16 file).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workbench.models.tokenizer import FRAME_SIZE, TOKENS_PER_FRAME, Tokenizer, TokenizerConfig, VGGPerceptualLoss

__all__ = ["RefTokenizer", "RefTokenizerConfig", "build_tokenizer", "reference_geometry"]


@dataclass(frozen=True)
class RefTokenizerConfig(TokenizerConfig):
    """The reference tokenizer's hyperparameters (``config/tokenizer/default.yaml``).

    Inherited fields keep their meaning: ``channels`` (``ch``), ``res_blocks``
    (``num_res_blocks``), ``attn_resolutions``, ``z_channels``, ``vocab_size``, ``embed_dim`` and
    the loss settings; ``pad`` is unused (the reference does not pad the frame)."""

    attn_resolutions: tuple[int, ...] = (6, 12)
    ch_mult: tuple[int, ...] = (1, 1, 1)
    """Channel multiplier of each level (``channels * ch_mult[i]`` channels at level i)."""
    down_scales: tuple[int, ...] = (7, 2)
    """Encoder: stride of the downsampling after each level but the last (kernel = stride + 1)."""
    up_scales: tuple[int, ...] = (7, 2)
    """Decoder: nearest-upsampling factor after each level but the last, lowest resolution first
    (the reference upsamples x7 first, 6 -> 42 -> 84: not the encoder's order reversed)."""
    norm_groups: int = 2
    """GroupNorm groups of every normalisation layer."""
    decoder_start_res: int = 4
    """The decoder's resolution counter at its lowest level (4 in the reference, not the true 6):
    decides which decoder levels get attention (none, with the reference's values)."""
    dropout: float = 0.0

    def __post_init__(self) -> None:
        n = self.num_layers
        if len(self.ch_mult) != n or len(self.down_scales) != n - 1 or len(self.up_scales) != n - 1:
            raise ValueError(f"ch_mult needs {n} entries, down_scales and up_scales {n - 1}; got {self.ch_mult}, "
                             f"{self.down_scales} and {self.up_scales}")
        if min(*self.down_scales, *self.up_scales, *self.ch_mult, self.norm_groups) < 1:
            raise ValueError("down_scales, up_scales, ch_mult and norm_groups must be >= 1")
        for m in self.ch_mult:
            if (self.channels * m) % self.norm_groups:
                raise ValueError(f"{self.channels * m} channels do not split into {self.norm_groups} groups")
        side, out = reference_geometry(self)
        if side * side != TOKENS_PER_FRAME or out != FRAME_SIZE:
            raise ValueError(
                f"this reference tokenizer geometry encodes an {FRAME_SIZE}x{FRAME_SIZE} frame to {side}x{side} = "
                f"{side * side} tokens and decodes to {out}x{out}; the workbench's world model reads "
                f"{TOKENS_PER_FRAME} tokens per frame ({FRAME_SIZE}x{FRAME_SIZE} frames), so it cannot use it"
            )
        super().__post_init__()


def reference_geometry(cfg: RefTokenizerConfig) -> tuple[int, int]:
    """(side of the token grid, side of the decoded frame) for an 84x84 input.

    A downsampling of stride s (kernel s + 1, one pixel of padding right and bottom) maps r to
    ``r // s``; the decoder multiplies by its ``up_scales``."""
    side = FRAME_SIZE
    for s in cfg.down_scales:
        side = (side + 1 - (s + 1)) // s + 1
    out = side
    for s in cfg.up_scales:
        out *= s
    return side, out


def _norm(cfg: RefTokenizerConfig, ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=cfg.norm_groups, num_channels=ch, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm1, swish, conv1, norm2, swish, dropout, conv2, plus the input (1x1 conv when the
    channel count changes)."""

    def __init__(self, cfg: RefTokenizerConfig, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1 = _norm(cfg, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(cfg, c_out)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, cfg: RefTokenizerConfig, ch: int) -> None:
        super().__init__()
        self.norm = _norm(cfg, ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)

        def seq(t: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 1, HW, C)
            return t.reshape(B, C, H * W).transpose(1, 2)[:, None]

        y = F.scaled_dot_product_attention(seq(self.q(h)), seq(self.k(h)), seq(self.v(h)))  # scale C ** -0.5
        return x + self.proj_out(y[:, 0].transpose(1, 2).reshape(B, C, H, W))


class Downsample(nn.Module):
    def __init__(self, ch: int, scale: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, kernel_size=scale + 1, stride=scale, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # one zero pixel right and bottom


class Upsample(nn.Module):
    def __init__(self, ch: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=float(self.scale), mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, cfg: RefTokenizerConfig, ch: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(cfg, ch, ch)
        self.attn_1 = AttnBlock(cfg, ch)
        self.block_2 = ResnetBlock(cfg, ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """Residual blocks, each followed by attention when the level has it, then the resampler."""

    def __init__(self, blocks: list[nn.Module], attn: list[nn.Module], resample: nn.Module | None, name: str) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)
        self.resample_name = name if resample is not None else ""
        if resample is not None:
            self.add_module(name, resample)  # the reference's key: 'downsample' / 'upsample'

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        resample = self._modules.get(self.resample_name)
        return h if resample is None else resample(h)


class RefEncoder(nn.Module):
    """(N, 1, 84, 84) in [-1, 1] -> (N, z_channels, 6, 6)."""

    def __init__(self, cfg: RefTokenizerConfig) -> None:
        super().__init__()
        ch = cfg.channels
        self.conv_in = nn.Conv2d(1, ch, 3, padding=1)
        mults = (1, *cfg.ch_mult)
        res, c_in = FRAME_SIZE, ch
        levels = []
        for i, mult in enumerate(cfg.ch_mult):
            c_out = ch * mult
            blocks: list[nn.Module] = []
            attn: list[nn.Module] = []
            c = ch * mults[i]
            for _ in range(cfg.res_blocks):
                blocks.append(ResnetBlock(cfg, c, c_out))
                c = c_out
                if res in cfg.attn_resolutions:
                    attn.append(AttnBlock(cfg, c))
            down = None
            if i < len(cfg.down_scales):
                down = Downsample(c, cfg.down_scales[i])
                res //= cfg.down_scales[i]
            levels.append(_Level(blocks, attn, down, "downsample"))
            c_in = c
        self.down = nn.ModuleList(levels)
        self.mid = _Mid(cfg, c_in)
        self.norm_out = _norm(cfg, c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class RefDecoder(nn.Module):
    """(N, z_channels, 6, 6) -> (N, 1, 84, 84) in [-1, 1] scale (unclamped)."""

    def __init__(self, cfg: RefTokenizerConfig) -> None:
        super().__init__()
        ch, n = cfg.channels, len(cfg.ch_mult)
        c = ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = _Mid(cfg, c)
        res = cfg.decoder_start_res
        levels: list[nn.Module] = [nn.Identity()] * n
        scales = iter(cfg.up_scales)
        for i in reversed(range(n)):  # lowest resolution first; stored at index i, as in the reference
            c_out = ch * cfg.ch_mult[i]
            blocks: list[nn.Module] = []
            attn: list[nn.Module] = []
            for _ in range(cfg.res_blocks + 1):
                blocks.append(ResnetBlock(cfg, c, c_out))
                c = c_out
                if res in cfg.attn_resolutions:
                    attn.append(AttnBlock(cfg, c))
            up = None
            if i > 0:
                scale = next(scales)
                up = Upsample(c, scale)
                res *= scale
            levels[i] = _Level(blocks, attn, up, "upsample")
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(cfg, c)
        self.conv_out = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class RefTokenizer(Tokenizer):
    """The reference VQ-VAE behind the workbench tokenizer's interface: ``encode`` uint8 frames
    ``(..., 84, 84)`` -> int64 tokens ``(..., 36)``, ``decode`` tokens -> frames in [0, 1], and
    the same ``quantize``/``encode_latents``/``decode_latents``/``forward``/``loss``.

    It subclasses :class:`Tokenizer` for that interface (and so that the planner, the token cache
    and the fine-tuning code take it as a tokenizer), but builds its own networks instead of the
    workbench geometry."""

    cfg: RefTokenizerConfig

    def __init__(self, cfg: RefTokenizerConfig) -> None:
        nn.Module.__init__(self)  # not Tokenizer.__init__: it would build the workbench geometry
        self.cfg = cfg
        # Other networks than Tokenizer's: its methods only call them (x -> z, z -> frame).
        self.encoder = RefEncoder(cfg)  # type: ignore[assignment]
        self.pre_quant = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.codebook = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / cfg.vocab_size, 1.0 / cfg.vocab_size)
        self.post_quant = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = RefDecoder(cfg)  # type: ignore[assignment]
        self._perceptual: list[VGGPerceptualLoss] = []
        if cfg.perceptual:
            assert cfg.perceptual_weights is not None  # TokenizerConfig refuses perceptual without weights
            self._perceptual.append(VGGPerceptualLoss(cfg.perceptual_weights))

    def decode_latents(self, e: torch.Tensor) -> torch.Tensor:
        """(N, D, 6, 6) codes -> (N, 84, 84) frames in [0, 1] scale (unclamped); the reference
        decoder's output is in [-1, 1]."""
        return (self.decoder(self.post_quant(e))[:, 0] + 1.0) * 0.5


def build_tokenizer(cfg: TokenizerConfig) -> Tokenizer:
    """The tokenizer a JOWA model config asks for: the reference's for a
    :class:`RefTokenizerConfig`, the workbench's own otherwise."""
    if isinstance(cfg, RefTokenizerConfig):
        return RefTokenizer(cfg)
    return Tokenizer(cfg)

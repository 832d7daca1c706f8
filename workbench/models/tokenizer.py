"""VQ-VAE tokenizer of JOWA: one 84x84 grayscale frame <-> 36 tokens from a 2048 x 512 codebook.

Geometry (the paper fixes 84x84 input, 6x6 = 36 tokens, 3 layers of 2 residual blocks, 64
channels and self-attention at resolutions 6 and 12, Tables 7-8, but not how 84 reaches 6:
84 halves to 21, which does not halve to 6). We zero-pad the frame by 6 pixels per side to
96x96, patchify it with a 4x4 stride-4 convolution to 24x24, then run the 3 layers at 24, 12
and 6 (downsampling between them), with self-attention at 12 and 6. The decoder mirrors it:
layers at 6, 12, 24, a 4x4 stride-4 transposed convolution back to 96x96, and a crop to 84x84.
Zero padding loses nothing (the decoder crops it away); the stride-4 patchify stem keeps the
full-resolution work small (one convolution at 96x96), which matters on CPU.

Loss (paper E.1.1, equal weights): ``|x - D(z)|_1 + |sg(E(x)) - e|^2 + |sg(e) - E(x)|^2``
(+ a perceptual term). Codebook distances are computed in fp32 with autocast disabled (bf16
distances tie and flip nearest codes); the decoder gets the straight-through estimate
``E(x) + sg(e - E(x))``.

Perceptual loss: OFF by default. The public implementation downloaded VGG weights at start-up
(even for evaluation); here the loss is usable only with VGG16 weights the user supplies as a
local safetensors file (torchvision key layout ``features.N.weight``, optional LPIPS linear
layers ``lin0..lin4.weight`` of shape (1, C, 1, 1); uniform channel weights if absent). Nothing is
ever downloaded. The cost of leaving it off is blurrier reconstructions of small sprites (L1
alone favours the mean); tokens still identify frames, which is what the world model needs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

FRAME_SIZE = 84
TOKENS_PER_FRAME = 36


@dataclass(frozen=True)
class TokenizerConfig:
    """VQ-VAE hyperparameters (Tables 7-8 for the paper preset)."""

    channels: int = 64
    """Channels of every convolution layer (Table 7)."""
    num_layers: int = 3
    """Resolution levels (24, 12, 6): 3 for the paper geometry (any other count fails validation)."""
    res_blocks: int = 2
    """Residual blocks per layer."""
    attn_resolutions: tuple[int, ...] = (12, 6)
    """Resolutions with a self-attention layer after each residual block."""
    z_channels: int = 512
    """Channels of the encoder's last convolution (before the 1x1 projection to embed_dim)."""
    vocab_size: int = 2048
    embed_dim: int = 512
    pad: int = 6
    """Zero padding per side: 84 + 2*6 = 96 = 4 * 24."""
    commitment_weight: float = 1.0
    """Weight of |sg(e) - E(x)|^2 (the paper weights all terms equally)."""
    perceptual: bool = False
    """Add the perceptual loss; needs `perceptual_weights` (a local safetensors file)."""
    perceptual_weights: str | None = None
    perceptual_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.num_layers != 3:
            raise ValueError(
                f"num_layers must be 3 (resolutions 24, 12, 6 give 6x6 = 36 tokens), got {self.num_layers}"
            )
        if (FRAME_SIZE + 2 * self.pad) != 96:
            raise ValueError(f"pad must be 6 (84 + 2*pad = 96 = 4 * 24), got {self.pad}")
        if self.vocab_size > 65536:
            raise ValueError(f"vocab_size must fit uint16 storage (<= 65536), got {self.vocab_size}")
        bad = [r for r in self.attn_resolutions if r not in (24, 12, 6)]
        if bad:
            raise ValueError(f"attn_resolutions must be among (24, 12, 6), got {bad}")
        if self.perceptual and not self.perceptual_weights:
            raise ValueError(
                "perceptual=True needs perceptual_weights: a local safetensors file of VGG16 weights "
                "(torchvision layout 'features.N.weight'); nothing is downloaded. Set perceptual=False "
                "to train with L1 + VQ losses only (the default)."
            )


TOKENIZER_PRESETS: dict[str, TokenizerConfig] = {
    "paper": TokenizerConfig(),
    "tiny": TokenizerConfig(channels=16, res_blocks=1, attn_resolutions=(6,), z_channels=32, embed_dim=32),
}


def tokenizer_config(name: str, **overrides) -> TokenizerConfig:
    """Preset by name ('paper', 'tiny'), optionally with field overrides."""
    if name not in TOKENIZER_PRESETS:
        raise ValueError(f"unknown tokenizer preset {name!r}; valid: {', '.join(TOKENIZER_PRESETS)}")
    return replace(TOKENIZER_PRESETS[name], **overrides)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(32, ch // 4) if ch >= 4 else 1, num_channels=ch, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
            _norm(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions of a feature map."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)
        y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(y.transpose(-1, -2).reshape(B, C, H, W))


def _level(cfg: TokenizerConfig, res: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(cfg.res_blocks):
        layers.append(ResBlock(cfg.channels))
        if res in cfg.attn_resolutions:
            layers.append(AttnBlock(cfg.channels))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """(N, 1, 84, 84) in [-1, 1] -> (N, z_channels, 6, 6)."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        ch = cfg.channels
        self.pad = cfg.pad
        self.stem = nn.Conv2d(1, ch, kernel_size=4, stride=4)  # 96 -> 24
        self.levels = nn.ModuleList([_level(cfg, r) for r in (24, 12, 6)])
        self.down = nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1) for _ in range(2)])  # 24->12->6
        self.mid = nn.Sequential(ResBlock(ch), AttnBlock(ch), ResBlock(ch))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, cfg.z_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(F.pad(x, (self.pad,) * 4))
        for i, level in enumerate(self.levels):
            h = level(h)
            if i < len(self.down):
                h = self.down[i](h)
        return self.out(self.mid(h))


class Decoder(nn.Module):
    """(N, z_channels, 6, 6) -> (N, 1, 84, 84) in [0, 1] scale (unclamped)."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        ch = cfg.channels
        self.pad = cfg.pad
        self.inp = nn.Conv2d(cfg.z_channels, ch, 3, padding=1)
        self.mid = nn.Sequential(ResBlock(ch), AttnBlock(ch), ResBlock(ch))
        self.levels = nn.ModuleList([_level(cfg, r) for r in (6, 12, 24)])
        self.up = nn.ModuleList([nn.Conv2d(ch, ch, 3, padding=1) for _ in range(2)])  # after 2x nearest
        self.head = nn.Sequential(
            _norm(ch), nn.SiLU(), nn.ConvTranspose2d(ch, ch, kernel_size=4, stride=4),  # 24 -> 96
            nn.SiLU(), nn.Conv2d(ch, 1, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.inp(z))
        for i, level in enumerate(self.levels):
            h = level(h)
            if i < len(self.up):
                h = self.up[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        p = self.pad
        return self.head(h)[..., p:-p, p:-p]


class VGGPerceptualLoss(nn.Module):
    """LPIPS-style distance on VGG16 features, from a local safetensors file (never downloads)."""

    _CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
    _TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in `features`
    _CHANNELS = (64, 128, 256, 512, 512)

    shift: torch.Tensor  # buffers, registered in __init__
    scale: torch.Tensor

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()

        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"perceptual_weights {str(path)!r} does not exist; supply a local safetensors file of "
                "VGG16 weights (torchvision layout 'features.N.weight') or set perceptual=False"
            )
        layers: list[nn.Module] = []
        c_in = 3
        for v in self._CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))  # 84 -> 42 -> 21 -> 11 -> 6
            else:
                layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU()]
                c_in = int(v)
        self.features = nn.Sequential(*layers)
        self.lins = nn.ParameterList(
            [nn.Parameter(torch.full((1, c, 1, 1), 1.0 / c), requires_grad=False) for c in self._CHANNELS]
        )
        state = load_file(str(path))
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        missing = set(self.features.state_dict()) - set(feats)
        if missing:
            raise ValueError(
                f"{path} lacks VGG16 weights {sorted(missing)[:4]}... (need torchvision's 'features.N.*' keys)"
            )
        self.features.load_state_dict({k: feats[k] for k in self.features.state_dict()})
        for i in range(len(self._CHANNELS)):
            if f"lin{i}.weight" in state:
                self.lins[i].data.copy_(state[f"lin{i}.weight"].reshape(1, -1, 1, 1))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((x * 2 - 1).expand(-1, 3, -1, -1) - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self._TAPS:
                out.append(h / (h.norm(dim=1, keepdim=True) + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean distance between images ``x`` and ``y`` ``(N, 1, H, W)`` in [0, 1]."""
        total = x.new_zeros(())
        for w, fx, fy in zip(self.lins, self._feats(x), self._feats(y)):
            total = total + (w * (fx - fy) ** 2).sum(dim=1).mean()
        return total

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        return super().train(False)  # a fixed metric: never in training mode


class Tokenizer(nn.Module):
    """VQ-VAE: ``encode`` uint8 frames ``(..., 84, 84)`` -> int64 tokens ``(..., 36)``; ``decode`` back."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.pre_quant = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.codebook = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / cfg.vocab_size, 1.0 / cfg.vocab_size)
        self.post_quant = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)
        # Kept in a list so its frozen VGG weights stay out of state_dict / checkpoints.
        self._perceptual: list[VGGPerceptualLoss] = []
        if cfg.perceptual:
            assert cfg.perceptual_weights is not None  # TokenizerConfig refuses perceptual without weights
            self._perceptual.append(VGGPerceptualLoss(cfg.perceptual_weights))

    # -- building blocks ------------------------------------------------------------------
    @staticmethod
    def _frames_to_input(frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        if frames.shape[-2:] != (FRAME_SIZE, FRAME_SIZE):
            raise ValueError(f"frames must be (..., 84, 84), got {tuple(frames.shape)}")
        lead = tuple(frames.shape[:-2])
        x = frames.reshape(-1, 1, FRAME_SIZE, FRAME_SIZE)
        x = x.float() / 255.0 if frames.dtype == torch.uint8 else x.float()
        return x, lead

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codes of ``z`` ``(N, D, 6, 6)``: (codes e ``(N, D, 6, 6)``, tokens ``(N, 36)``).

        Distances are computed in fp32 with autocast off: under bf16 many distances tie.
        """
        N, D, H, W = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.float().permute(0, 2, 3, 1).reshape(-1, D)
            emb = self.codebook.weight.float()
            dist = flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ emb.t() + emb.pow(2).sum(1)[None]
            tokens = dist.argmin(dim=1)
            e = emb[tokens].view(N, H, W, D).permute(0, 3, 1, 2)
        return e, tokens.view(N, H * W)

    def encode_latents(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z = E(x), e = nearest codes, tokens) for frames flattened to ``(N, 84, 84)``."""
        x, _ = self._frames_to_input(frames)
        z = self.pre_quant(self.encoder(x * 2.0 - 1.0)).float()
        e, tokens = self.quantize(z)
        return z, e, tokens

    def decode_latents(self, e: torch.Tensor) -> torch.Tensor:
        """(N, D, 6, 6) codes -> (N, 84, 84) frames in [0, 1] scale (unclamped)."""
        return self.decoder(self.post_quant(e))[:, 0]

    # -- public API -----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames ``(..., 84, 84)`` -> int64 tokens ``(..., 36)``."""
        _, lead = self._frames_to_input(frames)
        _, _, tokens = self.encode_latents(frames)
        return tokens.view(*lead, TOKENS_PER_FRAME)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(..., 36)`` (any integer dtype) -> float frames ``(..., 84, 84)`` in [0, 1]."""
        lead = tuple(tokens.shape[:-1])
        flat = tokens.reshape(-1, TOKENS_PER_FRAME).long()
        side = int(TOKENS_PER_FRAME ** 0.5)
        e = self.codebook(flat).view(-1, side, side, self.cfg.embed_dim).permute(0, 3, 1, 2)
        return self.decode_latents(e).clamp(0.0, 1.0).view(*lead, FRAME_SIZE, FRAME_SIZE)

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frames ``(..., 84, 84)`` -> dict(recon (N,84,84), tokens (N,36), z, e) with straight-through."""
        z, e, tokens = self.encode_latents(frames)
        z_st = z + (e - z).detach()  # straight-through: decoder gradients reach the encoder
        return {"recon": self.decode_latents(z_st.to(z.dtype)), "tokens": tokens, "z": z, "e": e}

    def loss(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Paper E.1.1: L1 + codebook + commitment (+ perceptual) on frames ``(..., 84, 84)``."""
        x, _ = self._frames_to_input(frames)
        out = self(frames)
        recon = out["recon"].float()
        l1 = (recon - x[:, 0]).abs().mean()
        codebook = F.mse_loss(out["e"], out["z"].detach())  # moves codes toward encodings
        commitment = F.mse_loss(out["z"], out["e"].detach())  # keeps encodings near their codes
        loss = l1 + codebook + self.cfg.commitment_weight * commitment
        metrics = {"tokenizer/l1": l1.detach(), "tokenizer/codebook": codebook.detach(),
                   "tokenizer/commitment": commitment.detach()}
        if self._perceptual:
            perc = self._perceptual[0].to(x.device)(recon[:, None], x)
            loss = loss + self.cfg.perceptual_weight * perc
            metrics["tokenizer/perceptual"] = perc.detach()
        with torch.no_grad():  # distinct codes in the batch (a collapse detector); no host sync
            used = torch.zeros(self.cfg.vocab_size, device=x.device).index_fill_(0, out["tokens"].flatten(), 1.0)
            metrics["tokenizer/codes_used"] = used.sum()
        return loss, metrics


def tokens_to_storage(tokens: torch.Tensor | np.ndarray) -> np.ndarray:
    """Tokens (any int dtype) -> uint16 numpy array for stores (2 bytes/token, not int64's 8)."""
    arr = tokens.detach().cpu().numpy() if torch.is_tensor(tokens) else np.asarray(tokens)
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.uint16).max):
        raise ValueError(f"tokens must be in [0, 65535] for uint16 storage, got [{arr.min()}, {arr.max()}]")
    return arr.astype(np.uint16)


def tokens_from_storage(tokens: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint16 tokens (numpy or torch) -> int64 torch tensor for embedding lookups."""
    if isinstance(tokens, np.ndarray):
        tokens = torch.from_numpy(tokens.astype(np.int64, copy=False))
    return tokens.long()

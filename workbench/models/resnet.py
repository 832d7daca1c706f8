"""ResNet encoders for 84x84x4 Atari stacks, as modified by Scaled Q-learning (paper 000, App. B.1).

Differences from He et al. (2016):

* **GroupNorm instead of BatchNorm.** The paper says "group normalization (with a group size of 4)".
  We read this as **4 groups** per GroupNorm layer (``num_groups=4``), which is what the public
  lineage of this design (the JAX ResNetV1 of PTR / jaxrl_m that the paper builds on) uses.
  The other reading, 4 channels per group, would give 16..512 groups; it is available through
  ``ResNetEncoder(..., num_groups=None, channels_per_group=4)`` for an ablation.
  GroupNorm has no running statistics, so train and eval modes compute the same function.
* **Learned spatial embeddings instead of global pooling** (:class:`SpatialLearnedEmbeddings`).
* **Stem.** The standard 7x7 stride-2 convolution + 3x3 stride-2 max-pool is kept. On 84x84 inputs
  it gives a 21x21 map after the stem and 21 -> 11 -> 6 -> 3 over the stages, so the final map is
  3x3. That is small but fine: the spatial embedding keeps all 9 positions (no pooling), and the
  paper's parameter figure (about 80M for ResNet-101) is consistent with this stem.
* **Small inputs** (MinAtar's 10x10 planes, ``stem="small"``): a 3x3 stride-1 convolution and no
  max-pool, so the stages see 10 -> 5 -> 3 -> 2 instead of a 3x3 map after the stem; everything
  else (GroupNorm, spatial embeddings, zero-initialised residuals) as above.
* **Bottleneck stride** sits on the 3x3 convolution (the "v1.5" placement used by torchvision and
  the flax examples); the parameter count is identical to He et al.'s placement on the 1x1.
* The last GroupNorm of each residual branch is zero-initialised, so every block starts as the
  identity (Goyal et al., 2017); this keeps the 100+-layer variants trainable from step one.

The encoder takes float input already scaled to [0, 1]; :class:`workbench.models.qnet.QNetwork`
does the uint8 -> float / 255 conversion (one place for the contract).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from workbench.geometry import ATARI

__all__ = [
    "ResNetSpec",
    "RESNET_SPECS",
    "BasicBlock",
    "Bottleneck",
    "SpatialLearnedEmbeddings",
    "ResNetEncoder",
    "resnet_encoder",
]

BlockKind = Literal["basic", "bottleneck"]


@dataclass(frozen=True)
class ResNetSpec:
    """Depth/width of one ResNet variant: block type, blocks per stage, first stage width."""

    block: BlockKind
    layers: tuple[int, ...]
    base_width: int = 64


# He et al. (2016), Table 1. 'resnet-tiny' (CPU smoke tests) and 'resnet-small' (the CPU study's
# second model size, twice the widths) are not in any paper.
RESNET_SPECS: dict[str, ResNetSpec] = {
    "resnet18": ResNetSpec("basic", (2, 2, 2, 2)),
    "resnet34": ResNetSpec("basic", (3, 4, 6, 3)),
    "resnet50": ResNetSpec("bottleneck", (3, 4, 6, 3)),
    "resnet101": ResNetSpec("bottleneck", (3, 4, 23, 3)),
    "resnet152": ResNetSpec("bottleneck", (3, 8, 36, 3)),
    "resnet-tiny": ResNetSpec("basic", (1, 1, 1, 1), base_width=8),
    "resnet-small": ResNetSpec("basic", (1, 1, 1, 1), base_width=16),
}


def _group_norm(channels: int, num_groups: int | None, channels_per_group: int | None) -> nn.GroupNorm:
    if num_groups is None:
        if channels_per_group is None or channels % channels_per_group:
            raise ValueError(
                f"GroupNorm: {channels} channels not divisible by channels_per_group={channels_per_group}"
            )
        num_groups = channels // channels_per_group
    if channels % num_groups:
        raise ValueError(f"GroupNorm: {channels} channels not divisible into {num_groups} groups")
    return nn.GroupNorm(num_groups, channels, eps=1e-5)


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every convolution is followed by a GroupNorm with its own shift.
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, norm_groups: int | None, cpg: int | None):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv(cin, width, 3, stride)
        self.norm1 = _group_norm(width, norm_groups, cpg)
        self.conv2 = _conv(width, cout, 3)
        self.norm2 = _group_norm(cout, norm_groups, cpg)
        nn.init.zeros_(self.norm2.weight)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_conv(cin, cout, 1, stride), _group_norm(cout, norm_groups, cpg))

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand x4, residual (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, norm_groups: int | None, cpg: int | None):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv(cin, width, 1)
        self.norm1 = _group_norm(width, norm_groups, cpg)
        self.conv2 = _conv(width, width, 3, stride)
        self.norm2 = _group_norm(width, norm_groups, cpg)
        self.conv3 = _conv(width, cout, 1)
        self.norm3 = _group_norm(cout, norm_groups, cpg)
        nn.init.zeros_(self.norm3.weight)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_conv(cin, cout, 1, stride), _group_norm(cout, norm_groups, cpg))

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.act(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        return self.act(y + self.shortcut(x))


class SpatialLearnedEmbeddings(nn.Module):
    """Learned spatial embedding in place of global pooling.

    A kernel ``K`` of shape ``(H, W, C, F)`` multiplies the feature map point-wise and is summed over
    the spatial positions: ``out[b, c, f] = sum_{h,w} x[b, c, h, w] * K[h, w, c, f]``, flattened to
    ``C * F`` features. Unlike mean pooling it keeps *where* things are (which matters in Atari),
    with ``H*W*C*F`` parameters instead of a dense layer over the whole ``C*H*W`` map.
    """

    def __init__(self, channels: int, height: int, width: int, num_features: int = 8):
        super().__init__()
        self.channels, self.height, self.width, self.num_features = channels, height, width, num_features
        self.kernel = nn.Parameter(torch.empty(height, width, channels, num_features))
        # Each output sums H*W products, so that is its fan-in (LeCun normal).
        nn.init.normal_(self.kernel, std=1.0 / math.sqrt(height * width))

    @property
    def out_dim(self) -> int:
        return self.channels * self.num_features

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1:] != (self.channels, self.height, self.width):
            raise ValueError(
                f"SpatialLearnedEmbeddings expects (B, {self.channels}, {self.height}, {self.width}), "
                f"got {tuple(x.shape)}"
            )
        # einsum is memory-format agnostic, so channels_last feature maps work unchanged.
        out = torch.einsum("bchw,hwcf->bcf", x, self.kernel.to(x.dtype))
        return out.reshape(x.shape[0], self.out_dim)


def _stem_out(size: int) -> int:
    size = (size + 2 * 3 - 7) // 2 + 1  # 7x7 conv, stride 2, pad 3
    return (size + 2 * 1 - 3) // 2 + 1  # 3x3 max-pool, stride 2, pad 1


def _down(size: int) -> int:
    return (size + 2 * 1 - 3) // 2 + 1  # 3x3 conv, stride 2, pad 1 (1x1 shortcut agrees)


class ResNetEncoder(nn.Module):
    """ResNet backbone + learned spatial embedding: float (B, C_in, H, W) in [0,1] -> (B, out_dim)."""

    def __init__(
        self,
        block: BlockKind,
        layers: Sequence[int],
        base_width: int = 64,
        in_channels: int = 4,
        input_hw: tuple[int, int] = ATARI.frame_shape,
        num_groups: int | None = 4,
        channels_per_group: int | None = None,
        spatial_features: int = 8,
        stem: Literal["imagenet", "small"] = "imagenet",
    ):
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"unknown block {block!r}; valid: 'basic', 'bottleneck'")
        if stem not in ("imagenet", "small"):
            raise ValueError(f"unknown stem {stem!r}; valid: 'imagenet' (7x7/2 + max-pool), 'small' (3x3/1)")
        if (num_groups is None) == (channels_per_group is None):
            raise ValueError("give exactly one of num_groups, channels_per_group")
        block_cls: type[BasicBlock] | type[Bottleneck] = BasicBlock if block == "basic" else Bottleneck
        g, cpg = num_groups, channels_per_group
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, base_width, 7, stride=2, padding=3, bias=False),
                _group_norm(base_width, g, cpg),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
            h, w = _stem_out(input_hw[0]), _stem_out(input_hw[1])
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, base_width, 3, stride=1, padding=1, bias=False),
                _group_norm(base_width, g, cpg),
                nn.ReLU(inplace=True),
            )
            h, w = input_hw
        stages: list[nn.Module] = []
        cin = base_width
        for i, n in enumerate(layers):
            width = base_width * 2**i
            stride = 1 if i == 0 else 2
            blocks: list[nn.Module] = []
            for j in range(n):
                blocks.append(block_cls(cin, width, stride if j == 0 else 1, g, cpg))
                cin = width * block_cls.expansion
            if stride == 2:
                h, w = _down(h), _down(w)
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.feature_shape = (cin, h, w)
        self.embed = SpatialLearnedEmbeddings(cin, h, w, spatial_features)
        self.out_dim = self.embed.out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.embed(self.stages(self.stem(x)))


def resnet_encoder(name: str, **overrides: object) -> ResNetEncoder:
    """Build a named ResNet encoder ('resnet18' ... 'resnet152', 'resnet-tiny', 'resnet-small')."""
    if name not in RESNET_SPECS:
        raise ValueError(f"unknown ResNet {name!r}; valid: {sorted(RESNET_SPECS)}")
    spec = RESNET_SPECS[name]
    kwargs: dict[str, object] = dict(block=spec.block, layers=spec.layers, base_width=spec.base_width)
    kwargs.update(overrides)
    return ResNetEncoder(**kwargs)  # type: ignore[arg-type]

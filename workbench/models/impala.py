"""IMPALA-CNN encoder (Espeholt et al., 2018) with a width multiplier.

Paper 000's scaling study (Section 5.2, Figure 6) compares "three IMPALA models with varying
widths (4, 8, 16)", numbers taken from Lee et al. (2022). We read the width as a **channel
multiplier** on the original IMPALA-CNN channels (16, 32, 32), as in the IMPALA scaling of
Cobbe et al. (2020): width 4 -> (64, 128, 128), 8 -> (128, 256, 256), 16 -> (256, 512, 512).

Architecture: three stacks of [3x3 conv -> 3x3 max-pool stride 2 -> 2 residual blocks
(ReLU, conv, ReLU, conv, + skip)], then ReLU, flatten and the original Linear -> 256 + ReLU.
The 256-d projection is kept (it is part of IMPALA-CNN and keeps the flattened 11x11xC map from
feeding a 2048-wide trunk layer directly, which would dwarf the encoder in parameter count).
No normalization layers, as in the original. Input: float in [0, 1], (B, 4, 84, 84).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from workbench.geometry import ATARI

__all__ = [
    "IMPALA_WIDTHS", "ImpalaResidual", "ImpalaStack", "ImpalaEncoder", "MinAtarCNN", "NatureCNN", "impala_encoder",
]

# Named widths: the paper's scaling study (4, 8, 16) plus a CPU smoke size.
IMPALA_WIDTHS: dict[str, int] = {
    "impala-small": 4,
    "impala-medium": 8,
    "impala-large": 16,
    "impala-tiny": 1,
}
BASE_CHANNELS: tuple[int, int, int] = (16, 32, 32)


class ImpalaResidual(nn.Module):
    """Pre-activation residual block: x + conv(relu(conv(relu(x))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()  # not in-place: x is reused by the skip connection

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.act(self.conv1(self.act(x))))


class ImpalaStack(nn.Module):
    """conv 3x3 -> max-pool 3x3 stride 2 -> two residual blocks."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.res1 = ImpalaResidual(cout)
        self.res2 = ImpalaResidual(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.res2(self.res1(self.pool(self.conv(x))))


class MinAtarCNN(nn.Module):
    """The network of the MinAtar paper (Young & Tian 2019): one 3x3 stride-1 convolution with 16
    channels and a ReLU on the 10x10 input; flattened. (Its 128-unit hidden layer is the trunk's.)"""

    def __init__(self, in_channels: int, input_hw: tuple[int, int], channels: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, stride=1)
        self.act = nn.ReLU()
        h, w = input_hw[0] - 2, input_hw[1] - 2
        self.feature_shape = (channels, h, w)
        self.out_dim = channels * h * w

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x)).flatten(1)


class NatureCNN(nn.Module):
    """The DQN network's convolutions (Mnih et al. 2015): 32 8x8/4, 64 4x4/2, 64 3x3/1, each with
    a ReLU, flattened (its 512-unit hidden layer is the trunk's). No normalization layers."""

    def __init__(self, in_channels: int, input_hw: tuple[int, int]):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        )
        h, w = input_hw
        for k, st in ((8, 4), (4, 2), (3, 1)):
            h, w = (h - k) // st + 1, (w - k) // st + 1
        if h < 1 or w < 1:
            raise ValueError(f"the DQN network needs frames of at least 36x36, got {input_hw}")
        self.feature_shape = (64, h, w)
        self.out_dim = 64 * h * w

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1)


class ImpalaEncoder(nn.Module):
    """IMPALA-CNN: float (B, C_in, H, W) in [0, 1] -> (B, fc_dim)."""

    def __init__(
        self,
        width: int = 1,
        in_channels: int = 4,
        input_hw: tuple[int, int] = ATARI.frame_shape,
        channels: Sequence[int] = BASE_CHANNELS,
        fc_dim: int = 256,
    ):
        super().__init__()
        if width < 1:
            raise ValueError(f"IMPALA width multiplier must be >= 1, got {width}")
        chans = [c * width for c in channels]
        stacks: list[nn.Module] = []
        cin = in_channels
        h, w = input_hw
        for c in chans:
            stacks.append(ImpalaStack(cin, c))
            cin = c
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # pool 3, stride 2, pad 1
        self.stacks = nn.Sequential(*stacks)
        self.feature_shape = (cin, h, w)
        self.fc = nn.Linear(cin * h * w, fc_dim)
        self.act = nn.ReLU()
        self.out_dim = fc_dim

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.stacks(x))
        return self.act(self.fc(x.flatten(1)))


def impala_encoder(name: str, **overrides: object) -> ImpalaEncoder:
    """Build a named IMPALA encoder ('impala-small', 'impala-medium', 'impala-large', 'impala-tiny')."""
    if name not in IMPALA_WIDTHS:
        raise ValueError(f"unknown IMPALA preset {name!r}; valid: {sorted(IMPALA_WIDTHS)}")
    kwargs: dict[str, object] = dict(width=IMPALA_WIDTHS[name])
    kwargs.update(overrides)
    return ImpalaEncoder(**kwargs)  # type: ignore[arg-type]

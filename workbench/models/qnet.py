"""Scaled Q-learning Q-network: encoder -> trunk -> feature normalization -> per-game heads.

Paper 000, Appendix B.1::

    obs uint8 (B,4,84,84) / 255 -> encoder (ResNet + spatial embedding, or IMPALA-CNN)
      -> Linear 2048 -> LayerNorm -> 3 x (Linear 1024 -> ReLU)
      -> x / ||x||_2 (gradients flow through; switchable for the ablation)
      -> head of game g: Linear 1024 -> |A_g| x 51 (C51 logits) or |A_g| (MSE values / BC logits)

**Per-game heads, vectorized.** All games' heads are stored as one weight matrix
``(sum_g |A_g| * K, 1024)`` (K = atoms, or 1), so the parameter count is exactly the sum of the
per-game heads and every head is initialised like a separate ``nn.Linear(1024, |A_g| * K)``.
The forward pass computes every head for every sample with one matmul and then gathers each
sample's own game's block into the fixed ``MAX_ACTIONS = 18`` slots through an index table
``(num_games, 18 * K)``. The extra matmul work is sum|A|*K*1024 MACs per sample (26 MFLOP for the
40-game C51 setting, ~2% of a ResNet-101 forward) and keeps the graph static (no per-game Python
loop, no data-dependent shapes) for ``torch.compile`` and DDP. Invalid slots (``>= |A_g|``) are
filled with the finite constant ``INVALID_FILL = 0.0`` (a uniform distribution for C51, Q = 0 for
MSE) that has no gradient path to any parameter; every consumer masks them with ``valid_mask``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.games import MAX_ACTIONS, geometry_of, num_actions
from workbench.geometry import ATARI, FrameGeometry
from workbench.models.impala import IMPALA_WIDTHS, MinAtarCNN, NatureCNN, impala_encoder
from workbench.models.resnet import RESNET_SPECS, resnet_encoder

__all__ = [
    "MAX_ACTIONS",
    "INVALID_FILL",
    "PRESETS",
    "Trunk",
    "PerGameHeads",
    "QNetwork",
    "build_qnet",
    "count_parameters",
    "parameter_table",
    "resolve_num_actions",
]

INVALID_FILL = 0.0


class Trunk(nn.Module):
    """Linear(d_in, trunk_dim) -> LayerNorm -> num_hidden x (Linear(hidden_dim) -> ReLU) [-> L2 norm]."""

    def __init__(
        self,
        in_dim: int,
        trunk_dim: int = 2048,
        hidden_dim: int = 1024,
        num_hidden: int = 3,
        feature_norm: bool = True,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, trunk_dim), nn.LayerNorm(trunk_dim)]
        d = trunk_dim
        for _ in range(num_hidden):
            layers += [nn.Linear(d, hidden_dim), nn.ReLU(inplace=True)]
            d = hidden_dim
        self.mlp = nn.Sequential(*layers)
        self.feature_norm = feature_norm
        self.out_dim = d

    def forward(self, x: Tensor) -> Tensor:
        x = self.mlp(x)
        if self.feature_norm:
            # DR3-style normalization: unit L2 norm by construction, gradients pass through the
            # norm (no detach). Computed in float32: a bf16 sum of 1024 squares loses precision.
            x = F.normalize(x.float(), p=2.0, dim=-1, eps=1e-6).to(x.dtype)
        return x


class PerGameHeads(nn.Module):
    """One linear head per game, evaluated jointly and gathered into MAX_ACTIONS slots."""

    index: Tensor  # buffers, registered in __init__
    valid_mask_table: Tensor

    def __init__(self, in_dim: int, num_actions_per_game: Sequence[int], outputs_per_action: int):
        super().__init__()
        n_actions = [int(n) for n in num_actions_per_game]
        if not n_actions:
            raise ValueError("need at least one game")
        bad = [n for n in n_actions if not 1 <= n <= MAX_ACTIONS]
        if bad:
            raise ValueError(f"action counts must be in [1, {MAX_ACTIONS}], got {bad}")
        k = outputs_per_action
        self.num_actions = tuple(n_actions)
        self.outputs_per_action = k
        total = sum(n_actions) * k
        self.weight = nn.Parameter(torch.empty(total, in_dim))
        self.bias = nn.Parameter(torch.empty(total))
        # Same init as separate nn.Linear(in_dim, |A_g| * k) heads: U(-1/sqrt(in), 1/sqrt(in)).
        bound = in_dim**-0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)
        # index[g, a * k + i] = column of game g, action a, output i in the joint output; invalid
        # slots point at column `total`, a constant column appended in forward().
        index = torch.full((len(n_actions), MAX_ACTIONS * k), total, dtype=torch.long)
        start = 0
        for g, n in enumerate(n_actions):
            index[g, : n * k] = torch.arange(start, start + n * k)
            start += n * k
        self.register_buffer("index", index, persistent=False)
        valid = torch.zeros(len(n_actions), MAX_ACTIONS, dtype=torch.bool)
        for g, n in enumerate(n_actions):
            valid[g, :n] = True
        self.register_buffer("valid_mask_table", valid, persistent=False)

    def head_slice(self, game: int) -> slice:
        """Rows of ``weight``/``bias`` that form game ``game``'s head."""
        start = sum(self.num_actions[:game]) * self.outputs_per_action
        return slice(start, start + self.num_actions[game] * self.outputs_per_action)

    def forward(self, x: Tensor, game_id: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)  # (B, total)
        fill = out.new_full((out.shape[0], 1), INVALID_FILL)
        out = torch.cat([out, fill], dim=1)
        cols = self.index[game_id]  # (B, 18 * k)
        out = torch.gather(out, 1, cols)
        return out.view(x.shape[0], MAX_ACTIONS, self.outputs_per_action)


class QNetwork(nn.Module):
    """Multi-game Q-network of Scaled QL.

    ``forward(obs, game_id)`` takes ``obs`` uint8 (B, 4, H, W) stacks of ``geometry``'s frames
    (Atari: 84x84; MinAtar: packed planes, unpacked to channels here) and ``game_id`` int64 (B,) and
    returns C51 logits (B, 18, num_atoms) when ``distributional`` else values (B, 18) (MSE
    Q-values, or BC action logits). Slots ``>= |A_g|`` hold ``INVALID_FILL`` and must be masked.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_games: int,
        num_actions_per_game: Sequence[int],
        distributional: bool,
        num_atoms: int = 51,
        feature_norm: bool = True,
        *,
        trunk_dim: int = 2048,
        hidden_dim: int = 1024,
        num_hidden: int = 3,
        geometry: FrameGeometry = ATARI,
    ):
        super().__init__()
        self.geometry = geometry
        if len(num_actions_per_game) != num_games:
            raise ValueError(
                f"num_games={num_games} but num_actions_per_game has {len(num_actions_per_game)} entries"
            )
        enc_dim = getattr(encoder, "out_dim", None)
        if not isinstance(enc_dim, int):
            raise TypeError("encoder must expose an integer `out_dim` (its flattened feature size)")
        self.encoder = encoder
        self.trunk = Trunk(enc_dim, trunk_dim, hidden_dim, num_hidden, feature_norm)
        self.distributional = distributional
        self.num_atoms = num_atoms if distributional else 1
        self.heads = PerGameHeads(self.trunk.out_dim, num_actions_per_game, self.num_atoms)
        self.num_games = num_games
        self.channels_last = False

    def to_channels_last(self) -> QNetwork:
        """Store conv weights and feed inputs as NHWC (faster convolutions on GPU, esp. bf16)."""
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # accepted; not in torch's stubs
        self.channels_last = True
        return self

    @property
    def feature_norm(self) -> bool:
        return self.trunk.feature_norm

    @property
    def num_actions(self) -> tuple[int, ...]:
        return self.heads.num_actions

    @property
    def valid_mask_table(self) -> Tensor:
        """bool (num_games, 18): True where the slot is one of the game's minimal actions."""
        return self.heads.valid_mask_table

    def valid_mask(self, game_id: Tensor) -> Tensor:
        """bool (B, 18) valid-action mask for each sample's game."""
        return self.heads.valid_mask_table[game_id]

    def features(self, obs: Tensor) -> Tensor:
        """Representation fed to the heads (after feature normalization when enabled)."""
        if obs.dtype != torch.uint8:
            raise TypeError(f"obs must be uint8 {self.geometry.stack_shape(-1)} frames, got {obs.dtype}")
        # Division here (not in the data pipeline) keeps the 4x smaller uint8 on the wire.
        x = self.geometry.unpack(obs).to(torch.float32).div_(255.0)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.trunk(self.encoder(x))

    def forward(self, obs: Tensor, game_id: Tensor) -> Tensor:
        out = self.heads(self.features(obs), game_id)
        return out if self.distributional else out.squeeze(-1)


# ----------------------------------------------------------------------------- presets

# Trunk sizes: the paper's (2048, 1024 x 3) for real presets; small ones so CPU smoke runs take
# seconds. Tiny presets are not from any paper.
_PAPER_TRUNK = dict(trunk_dim=2048, hidden_dim=1024, num_hidden=3)
_TINY_TRUNK = dict(trunk_dim=128, hidden_dim=64, num_hidden=3)
_SMALL_TRUNK = dict(trunk_dim=256, hidden_dim=128, num_hidden=3)
_CPU_RESNETS = ("resnet-tiny", "resnet-small")
# The MinAtar paper's network: its 128-unit hidden layer is the trunk (with the paper's LayerNorm
# and feature normalization of the Scaled QL trunk in front of the heads).
_MINATAR_TRUNK = dict(trunk_dim=128, hidden_dim=128, num_hidden=1)
# The DQN network: its 512-unit hidden layer is the trunk (after the trunk's LayerNorm).
_NATURE_TRUNK = dict(trunk_dim=512, hidden_dim=512, num_hidden=1)

PRESETS: dict[str, dict[str, object]] = {
    **{name: dict(kind="resnet", **_PAPER_TRUNK) for name in RESNET_SPECS if name not in _CPU_RESNETS},
    "resnet-tiny": dict(kind="resnet", **_TINY_TRUNK),
    "resnet-small": dict(kind="resnet", **_SMALL_TRUNK),
    **{name: dict(kind="impala", **_PAPER_TRUNK) for name in IMPALA_WIDTHS if name != "impala-tiny"},
    # half the original IMPALA channels: its first conv runs at full 84x84 resolution.
    "impala-tiny": dict(kind="impala", channels=(8, 16, 16), fc_dim=64, **_TINY_TRUNK),
    "minatar-cnn": dict(kind="minatar", **_MINATAR_TRUNK),
    "nature-cnn": dict(kind="nature", **_NATURE_TRUNK),
}
#: Frame sides up to this get ResNet's small-input stem (3x3 stride 1, no max-pool).
SMALL_INPUT = 16


def resolve_num_actions(games: Sequence[str] | Sequence[int]) -> list[int]:
    """Minimal-action-set sizes: ints are taken as is; names go through ``workbench.games``."""
    out: list[int] = []
    for g in games:
        if isinstance(g, (int,)) and not isinstance(g, bool):
            out.append(int(g))
            continue
        if not isinstance(g, str):
            raise TypeError(f"games must be names or action counts, got {g!r}")
        out.append(int(num_actions(g)))
    return out


def build_qnet(
    preset_name: str,
    games: Sequence[str] | Sequence[int],
    distributional: bool = True,
    feature_norm: bool = True,
    num_atoms: int = 51,
) -> QNetwork:
    """Build a named Q-network preset for ``games`` (names, or minimal-action counts per game).

    Presets: resnet18/34/50/101/152 (paper 000 B.1), impala-small/medium/large (widths 4/8/16 of
    the scaling study), CPU sizes resnet-tiny, impala-tiny and resnet-small (the CPU study's second
    size), minatar-cnn (the MinAtar paper's network) and nature-cnn (the DQN network, Atari frames).
    The games' suite sets the input geometry (``workbench.geometry``; action counts alone mean
    Atari): ResNets on small frames get a 3x3 stride-1 stem.
    """
    if preset_name not in PRESETS:
        raise ValueError(f"unknown model preset {preset_name!r}; valid: {sorted(PRESETS)}")
    names = [g for g in games if isinstance(g, str)]
    geometry = geometry_of(names) if names else ATARI
    cfg = dict(PRESETS[preset_name])
    kind = cfg.pop("kind")
    trunk = {k: cfg.pop(k) for k in ("trunk_dim", "hidden_dim", "num_hidden")}
    io: dict[str, object] = dict(in_channels=geometry.in_channels, input_hw=geometry.plane_shape)
    encoder: nn.Module
    if kind == "resnet":
        stem = "small" if max(geometry.plane_shape) <= SMALL_INPUT else "imagenet"
        encoder = resnet_encoder(preset_name, stem=stem, **io, **cfg)
    elif kind == "minatar":
        encoder = MinAtarCNN(geometry.in_channels, geometry.plane_shape)
    elif kind == "nature":
        encoder = NatureCNN(geometry.in_channels, geometry.plane_shape)
    else:
        encoder = impala_encoder(preset_name, **io, **cfg)
    n_actions = resolve_num_actions(games)
    return QNetwork(
        encoder, len(n_actions), n_actions, distributional, num_atoms, feature_norm, **trunk,  # type: ignore[arg-type]
        geometry=geometry,
    )


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts of a QNetwork by part: encoder, trunk, heads, total."""
    inner = getattr(model, "module", model)  # DDP
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    parts = {
        name: sum(p.numel() for p in getattr(inner, name).parameters())
        for name in ("encoder", "trunk", "heads")
    }
    parts["total"] = sum(p.numel() for p in inner.parameters())
    return parts


def parameter_table(games: Sequence[str] | Sequence[int], distributional: bool = True) -> str:
    """Markdown table preset -> parameter counts (built on the meta device: no memory, no init)."""
    lines = [
        "| preset | encoder | trunk | heads | total | total without heads |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in PRESETS:
        with torch.device("meta"):
            c = count_parameters(build_qnet(name, games, distributional))
        cells = [c["encoder"], c["trunk"], c["heads"], c["total"], c["total"] - c["heads"]]
        lines.append(f"| {name} | " + " | ".join(f"{v / 1e6:.2f}M" for v in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m workbench.models.qnet [game names ...]: 40-game table by default
    import sys

    if len(sys.argv) > 1:
        _games: Sequence[str] | Sequence[int] = sys.argv[1:]
    else:  # minimal-action-set sizes of paper 000's 40 training games (ALE minimal sets)
        _games = [10, 7, 9, 4, 18, 18, 9, 18, 4, 6, 18, 18, 9, 6, 18, 9, 18, 3, 18, 8,
                  18, 18, 18, 18, 18, 18, 14, 6, 8, 6, 6, 18, 18, 18, 10, 6, 9, 10, 18, 18]  # fmt: skip
    print("C51 (|A| x 51 heads)\n" + parameter_table(_games, True))
    print("\nMSE / BC (|A| heads)\n" + parameter_table(_games, False))

"""Frame geometry: the one home of frame shape, stack size, action slots and padding rows.

Every module that allocates frames or stacks (envs, the DQN-Replay reader and writer, the store,
the samplers, the recorder, the models) asks this module instead of writing ``84``. A suite of
games (Atari, MinAtar) declares one :class:`FrameGeometry`; the game names select the suite
(:func:`workbench.games.suite_of`), so a run never names its geometry.

**Planes.** Every suite stores a frame as one 2-D uint8 image ``frame_shape``, so the store,
the samplers and the DQN-Replay files are the same code for every suite. A suite whose
observation has several binary channels (MinAtar: 10x10 grids with up to 10 channels) packs them
as ``planes`` images stacked vertically: frame ``(planes * h, w)``, channel ``c`` in rows
``c*h .. (c+1)*h``, value 255 where the channel is on. A model unpacks a stack of frames
``(B, stack, planes*h, w)`` into ``(B, stack*planes, h, w)`` with :meth:`FrameGeometry.unpack`
(a free view).

**Stack.** Four frames per state in every suite: DQN-Replay's layout (``stack_size=4`` and three
zero padding rows before every episode) is what the store's row arithmetic relies on. MinAtar's
own agents see one frame; four frames of a Markov state cost compute, not correctness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: this module stays importable without loading torch
    import torch

__all__ = [
    "ATARI", "GEOMETRIES", "MAX_ACTIONS", "MINATAR", "PADDING_ROWS", "STACK", "FrameGeometry", "geometry_for_shape",
]

#: Frames per state (oldest first), for every suite.
STACK = 4
#: Zero rows DQN-Replay writes before every episode (``STACK - 1``): a first state's stack is padded.
PADDING_ROWS = STACK - 1
#: Action slots every model outputs (ALE's full action set); a game's valid slots come first.
MAX_ACTIONS = 18


@dataclass(frozen=True)
class FrameGeometry:
    """Shape of one stored frame and how a model reads a stack of them."""

    suite: str
    frame_shape: tuple[int, int]
    """(H, W) of one stored uint8 frame (all planes)."""
    planes: int = 1
    """Channel planes stacked vertically in a frame (1 for grayscale Atari)."""
    stack: int = STACK
    max_actions: int = MAX_ACTIONS

    def __post_init__(self) -> None:
        if self.frame_shape[0] % self.planes:
            raise ValueError(f"frame height {self.frame_shape[0]} is not a multiple of planes={self.planes}")

    @property
    def frame_bytes(self) -> int:
        return self.frame_shape[0] * self.frame_shape[1]

    @property
    def plane_shape(self) -> tuple[int, int]:
        """(h, w) of one channel plane: what a model's convolutions see."""
        return self.frame_shape[0] // self.planes, self.frame_shape[1]

    @property
    def in_channels(self) -> int:
        """Input channels of a model: stacked frames times planes."""
        return self.stack * self.planes

    def stack_shape(self, batch: int) -> tuple[int, int, int, int]:
        """Shape of ``batch`` stacked states: ``(batch, stack, H, W)``."""
        return (batch, self.stack, *self.frame_shape)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, stack, planes*h, w)`` -> ``(B, stack*planes, h, w)`` (a view; identity for 1 plane)."""
        if self.planes == 1:
            return x
        h, w = self.plane_shape
        return x.reshape(x.shape[0], x.shape[1] * self.planes, h, w)


#: Atari 2600 through ALE, preprocessed as DQN (grayscale 84x84, Dopamine's pipeline).
ATARI = FrameGeometry("atari", (84, 84))
#: MinAtar (Young & Tian 2019): 10x10 grids, up to 10 binary channels (Seaquest), packed as planes.
MINATAR = FrameGeometry("minatar", (100, 10), planes=10)

GEOMETRIES: dict[str, FrameGeometry] = {g.suite: g for g in (ATARI, MINATAR)}


def geometry_for_shape(frame_shape: Sequence[int]) -> FrameGeometry:
    """The suite whose stored frames have ``frame_shape`` (a store or a file knows only its shape)."""
    shape = tuple(int(s) for s in frame_shape)
    for g in GEOMETRIES.values():
        if g.frame_shape == shape:
            return g
    valid = {name: g.frame_shape for name, g in GEOMETRIES.items()}
    raise ValueError(f"no suite stores frames of shape {shape}; suites: {valid}")

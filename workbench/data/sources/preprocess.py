"""Stored Atari frames of another dataset -> the 84x84 grayscale rows of DQN-Replay.

What DQN-Replay holds per row (Dopamine's ``AtariPreprocessing``, mirrored step for step by
:class:`workbench.envs.AtariProtocolEnv`): ALE's grayscale screen (``ale.getScreenGrayscale``) of
the last two emulator frames of an agent step, max-pooled, then resized to 84x84 with
``cv2.resize(..., (84, 84), interpolation=cv2.INTER_AREA)``.

What :func:`dqn_frames` applies to a stored frame, exactly:

1. RGB (``H x W x 3``) -> ALE's grayscale, computed per pixel as ALE computes its grayscale
   palette (``ColourPalette::calculateGrayscaleValues`` in the Arcade Learning Environment):
   ``round(0.2989 * R + 0.5870 * G + 0.1140 * B)`` in double precision, halves rounded up (C's
   ``round`` on non-negative numbers). On frames straight from the emulator this equals
   ``ale.getScreenGrayscale()`` bit for bit (``tests/test_sources_minari.py`` checks it on ale-py's
   screens); OpenCV's ``cv2.COLOR_RGB2GRAY`` (0.299/0.587/0.114, fixed point) agrees with it on all
   128 NTSC palette colours but not on arbitrary RGB (e.g. frames that went through JPEG).
   A grayscale frame (``H x W`` or ``H x W x 1``) is taken as ALE grayscale as it is.
2. Resize to 84x84 with ``cv2.resize(gray, (84, 84), interpolation=cv2.INTER_AREA)``: the call
   :meth:`workbench.envs.AtariProtocolEnv._obs` makes (``OBS_SHAPE[::-1]`` there, as here). A frame
   that is already 84x84 passes unchanged.

What cannot be redone: the max-pool over the last two emulator frames of each agent step. A
dataset stores one frame per agent step (gymnasium's ``ALE/*-v5`` returns the last frame of the
frame skip, unpooled), so the frame pooled with it is gone; objects that flicker between frames
(Space Invaders' shots, Pac-Man's ghosts) can be missing from converted rows where DQN-Replay's
pooled rows show them. Frame stacks (``4 x 84 x 84``) are refused: the converter wants one frame
per step.
"""

from __future__ import annotations

import cv2
import numpy as np

from workbench.geometry import ATARI

__all__ = ["ALE_GRAY_WEIGHTS", "PREPROCESSING", "ale_grayscale", "dqn_frames", "frame_kind"]

#: ALE's RGB -> grayscale weights (ColourPalette::calculateGrayscaleValues), applied in this order.
ALE_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
OUT_SHAPE = ATARI.frame_shape  # (84, 84)
_CHUNK = 64  # frames converted at once: bounds the float64 temporaries (~17 MB each for 210x160 RGB)

#: What the converter applies, in words (recorded in every converted root's source_info.json).
PREPROCESSING = {
    "grayscale": "RGB frames: ALE's palette grayscale round(0.2989*R + 0.5870*G + 0.1140*B) in double precision, "
                 "halves rounded up (ALE ColourPalette::calculateGrayscaleValues; equals ale.getScreenGrayscale() on "
                 "emulator screens); grayscale frames are taken as they are",
    "resize": "cv2.resize(gray, (84, 84), interpolation=cv2.INTER_AREA), as workbench.envs.AtariProtocolEnv._obs "
              "and Dopamine's AtariPreprocessing; 84x84 frames unchanged",
    "frame_pooling": "not redone: a stored frame is one emulator frame per agent step; DQN-Replay rows are the max "
                     "of the last two frames of each step, which no stored dataset keeps",
    "reward": "clipped to [-1, 1] with np.clip in the reward file (as DQN-Replay stores it); raw rewards kept in "
              "{Game}/1/source/checkpoint_<N>.npz",
}


def frame_kind(shape: tuple[int, ...]) -> str:
    """``"rgb"`` or ``"gray"`` for the shape of one stored frame; anything else is an error."""
    if len(shape) == 3 and shape[2] == 3 and min(shape[:2]) >= 8:
        return "rgb"
    if (len(shape) == 2 or (len(shape) == 3 and shape[2] == 1)) and min(shape[:2]) >= 8:
        return "gray"
    raise ValueError(
        f"observation frames of shape {tuple(shape)} are neither RGB (H, W, 3) nor grayscale (H, W) or (H, W, 1): "
        "frame stacks and vector observations cannot be turned into DQN-Replay rows (one frame per step)"
    )


def ale_grayscale(rgb: np.ndarray) -> np.ndarray:
    """ALE's grayscale of uint8 RGB frames ``(..., H, W, 3)`` -> ``(..., H, W)`` uint8 (see module doc)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB frames (..., H, W, 3), got {rgb.dtype} {rgb.shape}")
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    x = r * ALE_GRAY_WEIGHTS[0] + g * ALE_GRAY_WEIGHTS[1] + b * ALE_GRAY_WEIGHTS[2]  # C's left-to-right order
    f = np.floor(x)
    return (f + (x - f >= 0.5)).astype(np.uint8)  # C round(): halves away from zero (x >= 0 here)


def dqn_frames(frames: np.ndarray) -> np.ndarray:
    """Stored frames ``(T, H, W[, C])`` uint8 -> DQN-Replay rows ``(T, 84, 84)`` uint8 (see module doc)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"observation frames must be uint8 pixels, got dtype {frames.dtype}")
    if frames.ndim < 3:
        raise ValueError(f"expected a batch of frames (T, H, W[, C]), got shape {frames.shape}")
    kind = frame_kind(frames.shape[1:])
    out = np.empty((len(frames), *OUT_SHAPE), dtype=np.uint8)
    for lo in range(0, len(frames), _CHUNK):
        part = frames[lo : lo + _CHUNK]
        gray = ale_grayscale(part) if kind == "rgb" else part.reshape(part.shape[:3])
        for i, g in enumerate(gray):
            out[lo + i] = g if g.shape == OUT_SHAPE else cv2.resize(g, OUT_SHAPE[::-1], interpolation=cv2.INTER_AREA)
    return out

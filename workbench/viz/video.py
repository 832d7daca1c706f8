"""Rollout videos: mp4 (H.264, yuv420p) with a score / action / Q-value overlay.

Frames are the env's RGB screen (``render_rgb=True``) upscaled with nearest neighbour, plus a
side panel listing the step, the score so far, the action taken and one bar per action for
its Q value (the chosen one in red). Writing uses moviepy 2 (``ImageSequenceClip`` for frame
lists; a lazily rendered ``VideoClip`` for rollouts, so long episodes are not held in memory
as overlaid frames) and imageio-ffmpeg's bundled ffmpeg, so it works offline.

Command line (batch recording from a checkpoint)::

    python -m workbench.viz.video --checkpoint runs/pretrain --game Pong --episodes 3 \
        --out videos/ --seed 0 --max-steps 2000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from workbench import games
from workbench.fileio import atomic_write_json, disk_full
from workbench.viz.rollout import Rollout, load_policy, play_rollout

__all__ = [
    "VideoResult",
    "inline_video",
    "main",
    "overlay_frame",
    "record_checkpoint",
    "record_episode",
    "rollout_to_mp4",
    "write_mp4",
]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_CHOSEN = (214, 39, 40)  # RGB
_BAR = (110, 150, 210)
_TEXT = (235, 235, 235)
_PANEL_BG = (24, 24, 32)


def _even(n: int) -> int:
    return n + (n % 2)


def overlay_frame(
    frame: np.ndarray,
    *,
    step: int,
    score: float,
    action_name: str,
    q_values: Sequence[float] | None = None,
    action_names: Sequence[str] | None = None,
    chosen: int | None = None,
    scale: int = 2,
    panel_width: int = 220,
) -> np.ndarray:
    """Upscale ``frame`` (``(H, W)`` or ``(H, W, 3)`` uint8) and add a text/Q panel on the right.

    The result is uint8 ``(H', W', 3)`` with even ``H'`` and ``W'`` (H.264 yuv420p needs them).
    """
    f = np.asarray(frame)
    if f.dtype != np.uint8:
        raise ValueError(f"frame must be uint8, got {f.dtype}")
    if f.ndim == 2:
        f = np.repeat(f[:, :, None], 3, axis=2)
    if f.ndim != 3 or f.shape[2] != 3:
        raise ValueError(f"frame must be (H, W) or (H, W, 3), got {f.shape}")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    big = cv2.resize(f, (f.shape[1] * scale, f.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    n_q = 0 if q_values is None else len(q_values)
    line = 18
    height = _even(max(big.shape[0], 4 * line + 8 + n_q * line))
    width = _even(big.shape[1] + panel_width)
    out = np.empty((height, width, 3), np.uint8)
    out[:] = _PANEL_BG
    out[: big.shape[0], : big.shape[1]] = big
    x0 = big.shape[1] + 8

    def text(s: str, y: int, color: tuple[int, int, int] = _TEXT, size: float = 0.45) -> None:
        cv2.putText(out, s, (x0, y), _FONT, size, color, 1, cv2.LINE_AA)

    text(f"step {step}", line)
    text(f"score {score:g}", 2 * line)
    text(f"action {action_name}", 3 * line, _CHOSEN)
    if n_q:
        q = np.asarray(q_values, dtype=np.float64)
        names = list(action_names) if action_names is not None else [str(i) for i in range(n_q)]
        lo, hi = float(min(q.min(), 0.0)), float(max(q.max(), 0.0))
        span = hi - lo if hi > lo else 1.0
        bar_x0, bar_w = x0 + 90, panel_width - 100
        zero_x = bar_x0 + int(round((0.0 - lo) / span * bar_w))
        for i in range(n_q):
            y = 4 * line + 6 + i * line
            color = _CHOSEN if i == chosen else _TEXT
            cv2.putText(out, f"{names[i][:9]:<9}", (x0, y), _FONT, 0.35, color, 1, cv2.LINE_AA)
            end_x = bar_x0 + int(round((q[i] - lo) / span * bar_w))
            a, b = sorted((zero_x, end_x))
            cv2.rectangle(out, (a, y - 10), (max(b, a + 1), y - 2), _CHOSEN if i == chosen else _BAR, -1)
            cv2.putText(out, f"{q[i]:.2f}", (bar_x0 + bar_w - 34, y), _FONT, 0.3, _TEXT, 1, cv2.LINE_AA)
    return out


def write_mp4(frames: Sequence[np.ndarray], path: str | os.PathLike[str], *, fps: int = 30) -> Path:
    """Write a list of ``(H, W, 3)`` uint8 frames (same size) to an H.264 mp4; returns the path.

    Odd sizes are padded by one black row/column (yuv420p needs even sizes).
    """
    from moviepy import ImageSequenceClip  # noqa: PLC0415  (moviepy: optional extra, ~0.5 s)

    if len(frames) == 0:
        raise ValueError("write_mp4: no frames")
    shape = np.asarray(frames[0]).shape
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"frames must be (H, W, 3) uint8 RGB, got {shape}")
    _check_fps(fps)
    padded = [_pad_even(np.asarray(f, dtype=np.uint8)) for f in frames]
    # moviepy takes a 4-D array for a folder name: it must be a list of frames.
    clip = ImageSequenceClip(list(padded), fps=fps)
    try:
        return _write_verified(clip, Path(path), fps, len(padded))
    finally:
        clip.close()


def _check_fps(fps: int) -> None:
    if isinstance(fps, bool) or not isinstance(fps, int) or fps < 1:
        raise ValueError(f"fps must be an integer >= 1, got {fps!r}")


def _write_verified(clip: Any, path: Path, fps: int, frames: int) -> Path:
    """Write ``clip`` to a temporary mp4 next to ``path``, check that it decodes to ``frames``
    frames, and only then move it into place: ffmpeg can exit 0 on a full disk leaving an mp4
    without its index, and an existing video at ``path`` must survive a failed write."""
    import imageio_ffmpeg  # noqa: PLC0415  (imageio-ffmpeg: optional extra)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix or '.mp4'}")
    try:
        try:
            clip.write_videofile(str(tmp), fps=fps, codec="libx264", audio=False, logger=None,
                                 ffmpeg_params=["-pix_fmt", "yuv420p"])
            decoded, _ = imageio_ffmpeg.count_frames_and_secs(str(tmp))
        except (OSError, RuntimeError) as exc:
            raise _video_error(path, frames, exc) from None
        if decoded != frames:
            raise _video_error(path, frames, RuntimeError(f"it decodes to {decoded} of {frames} frames"))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _video_error(path: Path, frames: int, exc: BaseException) -> OSError:
    free = shutil.disk_usage(path.parent).free
    if free < (8 << 20) or "No space left" in str(exc):
        return disk_full(path.parent, frames * 20_000, f"the video {path.name}")
    return OSError(f"writing {path} failed: the mp4 ffmpeg wrote is unplayable ({exc}); nothing was written there")


def _pad_even(f: np.ndarray) -> np.ndarray:
    h, w = f.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return f
    return np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)))


def _rollout_overlay(rollout: Rollout, t: int, scale: int) -> np.ndarray:
    q = rollout.q_values[t] if rollout.q_values is not None else None
    a = int(rollout.actions[t])
    return overlay_frame(
        rollout.display_frame(t), step=t, score=float(rollout.scores()[t]),
        action_name=rollout.action_names[a], q_values=q, action_names=rollout.action_names,
        chosen=a, scale=scale,
    )


def rollout_to_mp4(
    rollout: Rollout,
    path: str | os.PathLike[str],
    *,
    fps: int = 30,
    scale: int = 2,
    max_frames: int | None = None,
) -> Path:
    """Render a rollout (RGB screens when recorded) with the overlay to mp4; frames are drawn
    on demand, so memory stays at one frame. The score shown at step t includes its reward."""
    from moviepy import VideoClip  # noqa: PLC0415  (moviepy: optional extra, ~0.5 s)

    _check_fps(fps)
    n = len(rollout) if max_frames is None else min(len(rollout), int(max_frames))
    if n == 0:
        raise ValueError("rollout_to_mp4: the rollout has no steps")
    first = _rollout_overlay(rollout, 0, scale)

    def frame_at(t: float) -> np.ndarray:
        i = min(int(round(t * fps)), n - 1)
        return first if i == 0 else _rollout_overlay(rollout, i, scale)

    clip = VideoClip(frame_function=frame_at, duration=n / fps)
    try:
        return _write_verified(clip, Path(path), fps, n)
    finally:
        clip.close()


def inline_video(
    rollout: Rollout,
    path: str | os.PathLike[str],
    *,
    fps: int = 30,
    scale: int = 2,
    max_frames: int = 1800,
) -> Any:
    """Write the rollout's mp4 (at most ``max_frames`` frames, to keep notebooks small) and
    return an ``IPython.display.Video`` embedding it."""
    from IPython.display import Video  # noqa: PLC0415  (IPython: optional, notebook display only)

    out = rollout_to_mp4(rollout, path, fps=fps, scale=scale, max_frames=max_frames)
    return Video(str(out), embed=True, html_attributes="controls loop")


@dataclass
class VideoResult:
    """One recorded episode."""

    path: str
    game: str
    seed: int
    steps: int
    score: float
    episode_end: str  # "terminated", "truncated" or "max_steps"


def record_episode(
    policy: Any,
    game: str,
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    max_steps: int = 2000,
    epsilon: float = 0.001,
    game_id: int | None = None,
    fps: int = 30,
    scale: int = 2,
    progress: bool = True,
) -> VideoResult:
    """Play one eval-protocol episode with ``policy`` (Policy object or checkpoint path) and
    write it to ``path`` as mp4 with the overlay. Playing is ``rollout.play_rollout``: same
    env, frame stacking and epsilon stream as the explorer."""
    rollout = play_rollout(policy, game, seed=seed, max_steps=max_steps, epsilon=epsilon,
                           game_id=game_id, render_rgb=True, progress=progress)
    out = rollout_to_mp4(rollout, path, fps=fps, scale=scale)
    return VideoResult(path=str(out), game=rollout.game, seed=int(seed), steps=len(rollout),
                       score=float(rollout.rewards.sum()),
                       episode_end=str(rollout.meta.get("episode_end", "max_steps")))


def record_checkpoint(
    checkpoint: str | os.PathLike[str],
    game: str,
    *,
    episodes: int = 1,
    out_dir: str | os.PathLike[str] = "videos",
    seed: int = 0,
    max_steps: int = 2000,
    epsilon: float = 0.001,
    fps: int = 30,
    scale: int = 2,
) -> list[VideoResult]:
    """Record ``episodes`` episodes (seeds ``seed``, ``seed+1``, ...) of a checkpoint's policy;
    writes ``<out_dir>/<game>_seed<s>.mp4`` and ``<out_dir>/videos.json`` (a summary)."""
    # Every argument is checked before the checkpoint is loaded or an episode is played.
    for name, value in (("episodes", episodes), ("max_steps", max_steps), ("scale", scale)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 0.0 <= epsilon <= 1.0:  # also refuses NaN
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    _check_fps(fps)
    game = games.canonical_game(game)
    policy, info = load_policy(checkpoint, game)  # load once for all episodes
    out = Path(out_dir)
    results = []
    for i in tqdm(range(episodes), desc=f"recording {game}"):
        s = seed + i
        results.append(record_episode(policy, game, out / f"{game}_seed{s}.mp4", seed=s,
                                      max_steps=max_steps, epsilon=epsilon,
                                      game_id=info.get("game_id", 0), fps=fps, scale=scale,
                                      progress=False))
    summary = {"checkpoint": info.get("checkpoint", str(checkpoint)), "episodes": [asdict(r) for r in results]}
    atomic_write_json(out / "videos.json", summary)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: record episodes of a checkpoint to mp4."""
    p = argparse.ArgumentParser(prog="python -m workbench.viz.video", description=main.__doc__)
    p.add_argument("--checkpoint", required=True, help="run dir, checkpoints/ dir or checkpoint dir")
    p.add_argument("--game", required=True, help="game name (e.g. Pong, ms_pacman)")
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--out", default="videos", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="first episode seed; episode i uses seed+i")
    p.add_argument("--max-steps", type=int, default=2000, help="agent steps per video at most")
    p.add_argument("--epsilon", type=float, default=0.001)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--scale", type=int, default=2, help="upscaling of the 210x160 screen")
    a = p.parse_args(argv)
    try:
        results = record_checkpoint(a.checkpoint, a.game, episodes=a.episodes, out_dir=a.out,
                                    seed=a.seed, max_steps=a.max_steps, epsilon=a.epsilon,
                                    fps=a.fps, scale=a.scale)
    except (ValueError, OSError, NotImplementedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(f"{r.path}: {r.game} seed {r.seed}, {r.steps} steps, score {r.score:g} ({r.episode_end})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

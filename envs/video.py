"""Episode videos for notebooks and reports: roll out or replay an env, tile several episodes, write MP4 or GIF."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np

from .episode import play_episode

__all__ = ["rollout_frames", "replay_frames", "tile_episodes", "write_video"]


def rollout_frames(
    env: gym.Env,
    policy: Callable[[Any], np.ndarray],
    *,
    seed: int | None = None,
    options: dict[str, Any] | None = None,
    max_steps: int | None = None,
) -> list[np.ndarray]:
    """RGB frames of one episode of `policy(obs) -> action` in `env` (made with render_mode='rgb_array')."""
    if env.render_mode != "rgb_array":
        raise ValueError(f"rollout_frames needs an env made with render_mode='rgb_array', got {env.render_mode!r}")
    return play_episode(env, policy, seed=seed, options=options, max_steps=max_steps, render=True).frames


def replay_frames(
    env: gym.Env, actions: Iterable[np.ndarray], *, seed: int | None = None, options: dict[str, Any] | None = None
) -> list[np.ndarray]:
    """RGB frames of executing a fixed action sequence (e.g. a recorded episode) from reset(seed, options)."""
    actions = list(actions)
    return rollout_frames(env, _ActionSequence(actions), seed=seed, options=options, max_steps=len(actions))


class _ActionSequence:
    """A policy that ignores observations and returns the next stored action."""

    def __init__(self, actions: list[np.ndarray]):
        self._actions = iter(actions)

    def __call__(self, obs: Any) -> np.ndarray:
        """The next action, whatever the observation."""
        return next(self._actions)


def tile_episodes(episodes: Sequence[Sequence[np.ndarray]], ncols: int | None = None, gap: int = 4) -> list[np.ndarray]:
    """Frames of a grid showing several episodes side by side; finished episodes hold their last frame."""
    if not episodes or any(len(frames) == 0 for frames in episodes):
        raise ValueError("tile_episodes needs at least one episode, each with at least one frame")
    shapes = {frames[0].shape for frames in episodes}
    if len(shapes) != 1:
        raise ValueError(f"all episodes must have frames of one shape, got {sorted(shapes)}")
    ((height, width, channels),) = shapes
    ncols = ncols or math.ceil(math.sqrt(len(episodes)))
    nrows = math.ceil(len(episodes) / ncols)
    grid = np.full((nrows * (height + gap) - gap, ncols * (width + gap) - gap, channels), 255, dtype=np.uint8)
    tiled = []
    for t in range(max(len(frames) for frames in episodes)):
        canvas = grid.copy()
        for i, frames in enumerate(episodes):
            row, col = divmod(i, ncols)
            y, x = row * (height + gap), col * (width + gap)
            canvas[y : y + height, x : x + width] = frames[min(t, len(frames) - 1)]
        tiled.append(canvas)
    return tiled


def write_video(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = 10.0) -> Path:
    """Write RGB uint8 frames to an .mp4 (H.264 via imageio-ffmpeg) or .gif file, atomically (a failed encode leaves
    neither a truncated video nor a changed old one); returns the path."""
    from scidiff.commands import atomic_write, remove_stale_temps

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"video path must end in .mp4 or .gif, got {path.name!r}")
    if not frames:
        raise ValueError("write_video needs at least one frame")
    frames = [np.asarray(frame, dtype=np.uint8) for frame in frames]
    remove_stale_temps(path)
    if suffix == ".gif":
        return atomic_write(path, lambda tmp: imageio.mimwrite(tmp, frames, format="GIF", duration=1000.0 / fps, loop=0))
    # H.264 in yuv420p needs even sides; pad with white rather than let ffmpeg rescale the frames.
    frames = [_pad_even(frame) for frame in frames]
    return atomic_write(path, lambda tmp: imageio.mimwrite(
        tmp, frames, format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1, ffmpeg_log_level="error"))


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """Pad a frame with white to even height and width."""
    height, width = frame.shape[:2]
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), constant_values=255)

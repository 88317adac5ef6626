"""One episode of a policy in an env: the loop shared by demonstration recording, videos and evaluations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["Episode", "play_episode"]


@dataclass
class Episode:
    """One played episode: observations (the reset one, then one per step), actions, frames and the last info."""

    observations: list[Any]
    actions: list[np.ndarray]
    frames: list[np.ndarray]
    info: dict[str, Any]
    terminated: bool = False


def play_episode(
    env: gym.Env,
    policy: Callable[[Any], np.ndarray],
    *,
    seed: int | None = None,
    options: dict[str, Any] | None = None,
    max_steps: int | None = None,
    render: bool = False,
) -> Episode:
    """Step `policy(obs) -> action` from reset(seed, options) until termination, truncation or `max_steps`;
    with `render`, an RGB frame after the reset and after every step."""
    obs, info = env.reset(seed=seed, options=options)
    episode = Episode([obs], [], [env.render()] if render else [], info)
    truncated = False
    while not (episode.terminated or truncated) and (max_steps is None or len(episode.actions) < max_steps):
        action = policy(obs)
        obs, _, episode.terminated, truncated, episode.info = env.step(action)
        episode.observations.append(obs)
        episode.actions.append(action)
        if render:
            episode.frames.append(env.render())
    return episode

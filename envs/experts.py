"""Scripted experts that generate demonstrations, keyed by the Gymnasium id of their task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from .particle import GOAL_A, GOAL_B, VISITED

__all__ = ["Expert", "ParticleExpert", "particle_mode_average", "EXPERTS", "make_expert"]


class Expert(Protocol):
    """A scripted policy: reset(seed) before each episode, then call it on each observation for an action."""

    def reset(self, seed: int | None = None) -> None: ...

    def __call__(self, obs: np.ndarray) -> np.ndarray: ...


class ParticleExpert:
    """IBC's multimodal particle oracle (Florence et al. 2021): target a randomly chosen goal, then the other one."""

    def __init__(self, seed: int | None = None):
        self._rng = np.random.default_rng(seed)
        self.first_goal: int | None = None

    def reset(self, seed: int | None = None) -> None:
        """Pick the goal order for the next episode (0 = goal A first, 1 = goal B first), fair coin."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.first_goal = int(self._rng.integers(2))

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Target position: the chosen first goal until it is visited, then the other goal."""
        if self.first_goal is None:
            raise RuntimeError("ParticleExpert: call reset() before the first action")
        goals = (obs[GOAL_A], obs[GOAL_B])
        first = self.first_goal
        target = goals[1 - first] if obs[VISITED][first] > 0.5 else goals[first]
        return np.asarray(target, dtype=np.float32).copy()


def particle_mode_average(obs: np.ndarray) -> np.ndarray:
    """The mean of ParticleExpert's two modes, what an MSE-regression policy learns: the goals' midpoint until one
    goal is visited, then the other goal (a baseline that shows the task is multimodal)."""
    visited = obs[VISITED] > 0.5
    if visited.any():
        return np.asarray(obs[GOAL_B] if visited[0] else obs[GOAL_A], dtype=np.float32).copy()
    return np.asarray((obs[GOAL_A] + obs[GOAL_B]) / 2, dtype=np.float32)


EXPERTS: dict[str, Callable[[int | None], Expert]] = {"scidiff/Particle-v0": ParticleExpert}


def make_expert(env_id: str, seed: int | None = None) -> Expert:
    """The scripted expert of Gymnasium id `env_id`; a ValueError lists the ids that have one."""
    if env_id not in EXPERTS:
        raise ValueError(
            f"no scripted expert for {env_id!r}; experts exist for {sorted(EXPERTS)} "
            "(PushT has none: its demonstrations are human teleoperation)"
        )
    return EXPERTS[env_id](seed)

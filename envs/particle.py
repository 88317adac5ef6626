"""A multimodal 2-D particle task after IBC's particle environment (Florence et al., Implicit Behavioral Cloning, 2021).

A point mass in the unit square, driven by a PD controller towards the commanded target position (IBC's
dynamics: 200 Hz explicit Euler, k_p = 10, k_v = 5, 10 substeps per 20 Hz action), must visit two goals; a goal
counts as visited when the particle comes within 0.05 of it after a control step (IBC's goal_distance). Either
order succeeds, so demonstrations that pick the order at random are bimodal: a policy that averages the two
modes steers between the goals and reaches neither.

Observation (10 floats): agent position, agent velocity, goal A, goal B, and a visited flag per goal. The flags
make the task Markov: without them a particle standing on goal A cannot tell whether B still needs a visit.
Goals are drawn at least `min_goal_separation` apart, and the agent away from both, so that every episode
needs both goals; IBC draws all three uniformly.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from . import draw
from .validation import as_finite_vector

__all__ = ["ParticleEnv", "pd_transition", "render_particle"]

# Observation layout: slices into the 10-vector.
POS, VEL, GOAL_A, GOAL_B, VISITED = slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8), slice(8, 10)
_GOAL_COLORS = ((46, 160, 67), (31, 119, 180))  # goal A green, goal B blue (IBC's figure colours)
_AGENT_COLOR = (40, 40, 40)
_TARGET_COLOR = (214, 39, 40)
_BORDER_COLOR = (200, 200, 200)


def pd_transition(dt: float, substeps: int, k_p: float, k_v: float) -> np.ndarray:
    """Matrix mapping (pos - target, vel) over one control step of IBC's explicit-Euler PD substeps."""
    # The dynamics are linear in the offset from the target, so the substeps collapse into one matrix power.
    substep = np.array([[1.0, dt], [-k_p * dt, 1.0 - k_v * dt]])
    return np.linalg.matrix_power(substep, substeps)


def render_particle(
    obs: np.ndarray, size: int = 256, goal_radius: float = 0.05, target: np.ndarray | None = None
) -> np.ndarray:
    """RGB image (size, size, 3) of a particle observation: goals as rings (filled once visited), agent as a dot."""
    obs = np.asarray(obs, dtype=np.float64)
    canvas = draw.new_canvas(size)
    draw.border(canvas, _BORDER_COLOR)
    for goal, visited, color in zip((obs[GOAL_A], obs[GOAL_B]), obs[VISITED], _GOAL_COLORS, strict=True):
        center = goal * size
        draw.disc(canvas, center, goal_radius * size, color)
        if not visited:
            draw.disc(canvas, center, max(goal_radius * size - 3, 1), (255, 255, 255))
    if target is not None:
        draw.marker(
            canvas, draw.to_pixels(np.asarray(target) * size), _TARGET_COLOR, size=max(3, size // 24), thickness=1
        )
    draw.disc(canvas, obs[POS] * size, max(2, size / 64), _AGENT_COLOR)
    return canvas


class ParticleEnv(gym.Env):
    """Visit two goals in either order with a PD-controlled point mass (IBC's particle task, multimodal variant)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        render_mode: str | None = None,
        render_size: int = 256,
        dt: float = 0.005,
        substeps: int = 10,
        k_p: float = 10.0,
        k_v: float = 5.0,
        goal_radius: float = 0.05,
        min_goal_separation: float = 0.3,
    ):
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        if not 2 * goal_radius < min_goal_separation < 1.0:
            raise ValueError(f"min_goal_separation must lie in (2 * goal_radius, 1), got {min_goal_separation}")
        self.render_mode, self.render_size = render_mode, int(render_size)
        self.dt, self.substeps, self.k_p, self.k_v = dt, substeps, k_p, k_v
        self.goal_radius, self.min_goal_separation = goal_radius, min_goal_separation
        self.action_space = spaces.Box(low=0.0, high=1.0, shape=(2,), dtype=np.float32)
        # Positions get margins: the underdamped PD overshoots targets near the border by a few percent.
        low = np.array([-0.25, -0.25, -10, -10, 0, 0, 0, 0, 0, 0], dtype=np.float32)
        high = np.array([1.25, 1.25, 10, 10, 1, 1, 1, 1, 1, 1], dtype=np.float32)
        self.observation_space = spaces.Box(low=low, high=high, dtype=np.float32)
        self._transition = pd_transition(dt, substeps, k_p, k_v)
        self._obs: np.ndarray | None = None
        self._target: np.ndarray | None = None
        self._first_goal = -1

    def _sample_layout(self) -> np.ndarray:
        """Agent, goal A, goal B positions (3, 2): goals min_goal_separation apart, agent outside both goal radii."""
        while True:
            points = self.np_random.uniform(0.0, 1.0, size=(3, 2))
            far_apart = np.linalg.norm(points[1] - points[2]) >= self.min_goal_separation
            agent_clear = np.all(np.linalg.norm(points[1:] - points[0], axis=1) >= 2 * self.goal_radius)
            if far_apart and agent_clear:
                return points

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Draw a new layout (agent at rest, no goal visited)."""
        super().reset(seed=seed)
        agent, goal_a, goal_b = self._sample_layout()
        self._obs = np.concatenate([agent, np.zeros(2), goal_a, goal_b, np.zeros(2)]).astype(np.float64)
        self._target, self._first_goal = None, -1
        return self._observation(), self._info()

    def _observation(self) -> np.ndarray:
        """The float32 observation vector."""
        return self._obs.astype(np.float32)

    def _info(self) -> dict[str, Any]:
        """Success and which goal (0 = A, 1 = B, -1 = none yet) was visited first, to measure mode balance."""
        return {"is_success": bool(self._obs[VISITED].all()), "first_goal": self._first_goal}

    def step(self, action):
        """Drive the particle towards target position `action` in [0, 1]^2 for one 20 Hz control step; targets are
        clipped to that square (NaN and inf are refused), so the particle and its observation stay in their spaces."""
        if self._obs is None:
            raise RuntimeError("ParticleEnv: call reset() before step()")
        target = as_finite_vector(action, 2, "Particle action (target x, y in [0, 1])")
        target = np.clip(target, self.action_space.low, self.action_space.high)
        offset, vel = self._transition @ np.stack([self._obs[POS] - target, self._obs[VEL]])
        pos = target + offset
        self._obs[POS], self._obs[VEL], self._target = pos, vel, target
        distance = np.linalg.norm(np.stack([self._obs[GOAL_A], self._obs[GOAL_B]]) - pos, axis=1)
        reached = distance < self.goal_radius
        if self._first_goal < 0 and reached.any():
            self._first_goal = int(np.argmin(distance))
        self._obs[VISITED] = np.maximum(self._obs[VISITED], reached)
        success = bool(self._obs[VISITED].all())
        return self._observation(), float(success), success, False, self._info()

    def render(self) -> np.ndarray | None:
        """RGB frame of the current state with the last commanded target marked."""
        if self.render_mode is None:
            gym.logger.warn("ParticleEnv.render() needs render_mode='rgb_array' at construction")
            return None
        if self._obs is None:
            raise RuntimeError("ParticleEnv: call reset() before render()")
        return render_particle(self._obs, self.render_size, self.goal_radius, self._target)

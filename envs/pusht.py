"""PushT (Chi et al., Diffusion Policy, RSS 2023): push a T-shaped block onto a fixed goal pose with a round agent.

Faithful to Chi et al.'s ``PushTEnv`` (real-stanford/diffusion_policy): 512 x 512 px workspace, walls at 5..506,
a kinematic agent (radius 15) driven by the PD law ``acc = 100 (target - pos) + 20 (0 - vel)``, 10 physics
substeps at 100 Hz per 10 Hz action, a T of two boxes (120 x 30 bar, 30 x 90 stem; mass 1) with the goal pose
(256, 256, pi/4), reward = clip(coverage / 0.95, 0, 1) and termination when coverage > 0.95 (the 300-step limit
comes from the registered TimeLimit). The original's quirks that change the physics are kept on purpose:
the block's moment of inertia counts the bar twice, and ``body.friction = 1`` is not a pymunk property, so
every shape has friction 0.

Seeds follow Chi et al., not gym-pusht 0.1.8: ``reset(seed=s)`` draws the state from the legacy
``np.random.RandomState(s)`` (agent ~ randint(50, 450)^2, block ~ randint(100, 400)^2,
angle = randn() * 2 pi - pi), so seeds 100000.. give Chi et al.'s evaluation states; gym-pusht 0.1.8 draws from
the environment's generator instead, so equal seeds give different states there.
Seeded resets place the block as Chi et al.'s evaluation runner does (``legacy_test: True``: position, then
angle, so the block turns about its centre of gravity away from the drawn position), so seeds 100000.. start
exactly where Chi et al.'s test episodes start.
``reset(options={"reset_to_state": [agent_x, agent_y, block_x, block_y, block_angle]})`` sets the block's angle
before its position (pymunk rotates about the centre of gravity, so the other order, which gym-pusht keeps,
moves the block away from the requested position); this is the order that replays Chi et al.'s recorded
episodes exactly.

Runs on pymunk 6 and 7 (only the collision-callback API differs). Rendering is headless (OpenCV), shaped after
the original pygame drawing so that pixel observations look like the recorded ``img`` frames.
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
import numpy as np
import pymunk
import shapely
from gymnasium import spaces

from . import draw
from .validation import as_finite_vector

__all__ = [
    "PushTEnv",
    "OBS_TYPES",
    "GOAL_POSE",
    "BLOCK_KEYPOINTS_LOCAL",
    "legacy_reset_state",
    "tee_world_vertices",
    "block_keypoints",
    "coverage",
    "render_pusht",
    "replay",
    "mirror_points",
    "mirror_state",
    "mirror_recording",
]

WORKSPACE = 512
SIM_HZ = 100
CONTROL_HZ = 10
DT = 1.0 / SIM_HZ
K_P, K_V = 100.0, 20.0
AGENT_RADIUS = 15.0
SUCCESS_THRESHOLD = 0.95
GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])
OBS_TYPES = ("state", "keypoints", "pixels_agent_pos")

# The T in the block frame (Chi et al.'s add_tee with scale 30, length 4): a bar and a stem.
_SCALE, _LENGTH = 30.0, 4.0
TEE_BOXES_LOCAL = np.array(
    [
        [
            (-_LENGTH * _SCALE / 2, _SCALE),
            (_LENGTH * _SCALE / 2, _SCALE),
            (_LENGTH * _SCALE / 2, 0),
            (-_LENGTH * _SCALE / 2, 0),
        ],
        [(-_SCALE / 2, _SCALE), (-_SCALE / 2, _LENGTH * _SCALE), (_SCALE / 2, _LENGTH * _SCALE), (_SCALE / 2, _SCALE)],
    ]
)
_WALLS = (((5, 506), (5, 5)), ((5, 5), (506, 5)), ((506, 5), (506, 506)), ((5, 506), (506, 506)))
_WALL_RADIUS = 2.0

# Chi et al.'s 9 block keypoints (PymunkKeypointManager.create_from_pusht_env, seed 0): pixels of the rendered T
# picked by farthest-point sampling, each shifted by a uniform(0, 1) draw. Their values are a property of the task,
# recovered from the recorded data/keypoint array (tests check them against it).
BLOCK_KEYPOINTS_LOCAL = np.array(
    [
        [9.269786713764, 90.040973523936],
        [-60.983472364471, -1.186729760800],
        [60.912755577278, -1.393364224233],
        [-0.270503439016, 25.543624991465],
        [-14.064927576212, 122.815853554122],
        [39.002738500170, 32.857404276588],
        [-39.966414424695, 32.729655446430],
        [-16.824344379397, 62.863178922350],
        [23.541461220249, -1.700288109463],
    ]
)

# pygame colour names used by the original drawing; pymunk's debug draw fills with the colour brightened by 1.2.
_GOAL_COLOR = (144, 238, 144)  # LightGreen
_WALL_COLOR = (211, 211, 211)  # LightGray
_BLOCK_EDGE, _BLOCK_FILL = (119, 136, 153), (143, 163, 184)  # LightSlateGray
_AGENT_EDGE, _AGENT_FILL = (65, 105, 225), (78, 126, 255)  # RoyalBlue
_ACTION_COLOR = (255, 0, 0)


def legacy_reset_state(seed: int) -> np.ndarray:
    """Chi et al.'s initial state for `seed` from the legacy RandomState: [agent_xy, block_xy, block_angle]."""
    rs = np.random.RandomState(seed=seed)
    return np.array(
        [
            rs.randint(50, 450),
            rs.randint(50, 450),
            rs.randint(100, 400),
            rs.randint(100, 400),
            rs.randn() * 2 * np.pi - np.pi,
        ],
        dtype=np.float64,
    )


def _rotation(angle: float | np.ndarray) -> np.ndarray:
    """2-D rotation matrices (..., 2, 2) of angles (...)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def _to_world(local_points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Map block-frame points (..., 2) to the world for a body pose (x, y, angle), like pymunk's local_to_world;
    a batch of poses (T, 3) maps points (K, 2) to (T, K, 2)."""
    return local_points @ _rotation(pose[..., 2]).swapaxes(-1, -2) + pose[..., None, :2]


def tee_world_vertices(pose: np.ndarray) -> np.ndarray:
    """World vertices (2, 4, 2) of the T's bar and stem at body pose (x, y, angle)."""
    return _to_world(TEE_BOXES_LOCAL, np.asarray(pose, dtype=np.float64))


def block_keypoints(pose: np.ndarray) -> np.ndarray:
    """Chi et al.'s 9 block keypoints (9, 2) in the world for body pose (x, y, angle); (T, 9, 2) for poses (T, 3)."""
    return _to_world(BLOCK_KEYPOINTS_LOCAL, np.asarray(pose, dtype=np.float64))


@functools.cache
def _goal_boxes() -> np.ndarray:
    """Shapely polygons of the goal T's two boxes (constant)."""
    return shapely.polygons(tee_world_vertices(GOAL_POSE))


def coverage(pose: np.ndarray) -> float:
    """Fraction of the goal T's area covered by the block at body pose (x, y, angle) (Chi et al.'s coverage)."""
    goal = _goal_boxes()
    block = shapely.polygons(tee_world_vertices(pose))
    # The two boxes of each T only share an edge, so the overlap is the sum of the four box-box overlaps.
    overlap = shapely.area(shapely.intersection(goal[:, None], block[None, :])).sum()
    return float(overlap / shapely.area(goal).sum())


@functools.cache
def _background() -> np.ndarray:
    """The 512 x 512 canvas with the goal T and the walls, drawn once."""
    canvas = draw.new_canvas(WORKSPACE)
    for box in tee_world_vertices(GOAL_POSE):
        draw.fill_polygon(canvas, box, _GOAL_COLOR)
    for a, b in _WALLS:
        draw.fat_segment(canvas, np.array(a, float), np.array(b, float), _WALL_RADIUS, _WALL_COLOR)
    canvas.setflags(write=False)
    return canvas


def render_pusht(
    state: np.ndarray, size: int = 96, action: np.ndarray | None = None, smooth: bool = False
) -> np.ndarray:
    """RGB image (size, size, 3) uint8 of a PushT state [agent_xy, block_xy, angle], drawn like Chi et al.'s env."""
    state = np.asarray(state, dtype=np.float64)
    canvas = _background().copy()
    for box in tee_world_vertices(state[2:5]):
        draw.outlined_polygon(canvas, box, _BLOCK_FILL, _BLOCK_EDGE, radius=2.0)
    draw.disc(canvas, state[:2], AGENT_RADIUS, _AGENT_EDGE)
    draw.disc(canvas, state[:2], AGENT_RADIUS - 4, _AGENT_FILL)
    image = draw.resize(canvas, size, smooth=smooth)
    if action is not None:
        # Chi et al. mark the commanded target with a red cross after resizing.
        coord = (np.asarray(action, dtype=np.float64) / WORKSPACE * size).astype(np.int32)
        draw.marker(image, coord, _ACTION_COLOR, size=max(1, int(8 / 96 * size)), thickness=max(1, int(1 / 96 * size)))
    return image


def _on_post_solve(space: pymunk.Space, callback) -> None:
    """Call `callback(arbiter)` after each solved contact; pymunk 7 replaced add_collision_handler by on_collision."""
    if hasattr(space, "on_collision"):
        space.on_collision(0, 0, post_solve=lambda arbiter, _space, _data: callback(arbiter))
    else:
        handler = space.add_collision_handler(0, 0)
        handler.post_solve = lambda arbiter, _space, _data: callback(arbiter)


class PushTEnv(gym.Env):
    """Chi et al.'s PushT task as a Gymnasium env; obs_type 'state' (5), 'keypoints' (20) or 'pixels_agent_pos'."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        obs_type: str = "state",
        render_mode: str | None = None,
        render_size: int = 256,
        observation_size: int = 96,
    ):
        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type must be one of {OBS_TYPES}, got {obs_type!r}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.obs_type = obs_type
        self.render_mode = render_mode
        self.render_size = int(render_size)
        self.observation_size = int(observation_size)
        self.action_space = spaces.Box(low=0.0, high=float(WORKSPACE), shape=(2,), dtype=np.float64)
        self.observation_space = self._observation_space()
        self.space: pymunk.Space | None = None
        self._last_action: np.ndarray | None = None
        self._n_contact_points = 0

    def _observation_space(self) -> spaces.Space:
        """The Box (or Dict) of this obs_type, with Chi et al.'s bounds."""
        if self.obs_type == "state":
            return spaces.Box(low=np.zeros(5), high=np.array([WORKSPACE] * 4 + [2 * np.pi]), dtype=np.float64)
        if self.obs_type == "keypoints":
            # Chi et al.'s resets can put part of the T beyond the walls, so keypoints get a margin of the T's reach.
            reach = float(np.ceil(np.linalg.norm(BLOCK_KEYPOINTS_LOCAL, axis=1).max()))
            return spaces.Box(low=-reach, high=WORKSPACE + reach, shape=(20,), dtype=np.float64)
        size = self.observation_size
        return spaces.Dict(
            {
                "pixels": spaces.Box(low=0, high=255, shape=(size, size, 3), dtype=np.uint8),
                "agent_pos": spaces.Box(low=0.0, high=float(WORKSPACE), shape=(2,), dtype=np.float64),
            }
        )

    # --- physics -------------------------------------------------------------------------------------------
    def _build_space(self) -> None:
        """A fresh pymunk space with walls, agent and block, as Chi et al.'s _setup."""
        space = pymunk.Space()
        space.gravity = (0, 0)
        space.damping = 0
        space.add(*[pymunk.Segment(space.static_body, a, b, _WALL_RADIUS) for a, b in _WALLS])

        agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        agent.position = (256, 400)
        space.add(agent, pymunk.Circle(agent, AGENT_RADIUS))

        # Chi et al. add the bar's moment twice (inertia2 is computed from the bar's vertices); kept for parity.
        bar, stem = (v.tolist() for v in TEE_BOXES_LOCAL)
        block = pymunk.Body(1, 2 * pymunk.moment_for_poly(1, vertices=bar))
        shapes = [pymunk.Poly(block, bar), pymunk.Poly(block, stem)]
        block.center_of_gravity = (shapes[0].center_of_gravity + shapes[1].center_of_gravity) / 2
        block.position = (256, 300)
        block.angle = 0
        space.add(block, *shapes)

        _on_post_solve(space, self._count_contacts)
        self.space, self.agent, self.block = space, agent, block

    def _count_contacts(self, arbiter: pymunk.Arbiter) -> None:
        """Accumulate contact points, reported per substep in info['n_contacts'] like the recorded data."""
        self._n_contact_points += len(arbiter.contact_point_set.points)

    def _set_state(self, state: np.ndarray, angle_first: bool) -> None:
        """Place agent and block, then settle one substep; pymunk rotates about the CoG, so the order matters."""
        self.agent.position = (float(state[0]), float(state[1]))
        if angle_first:
            self.block.angle = float(state[4])
            self.block.position = (float(state[2]), float(state[3]))
        else:
            self.block.position = (float(state[2]), float(state[3]))
            self.block.angle = float(state[4])
        self.space.step(DT)

    def _simulate(self, target: np.ndarray) -> None:
        """Ten 100 Hz substeps of the PD-driven agent towards `target`, in Chi et al.'s arithmetic order."""
        tx, ty = float(target[0]), float(target[1])
        agent = self.agent
        for _ in range(SIM_HZ // CONTROL_HZ):
            px, py = agent.position
            vx, vy = agent.velocity
            ax = K_P * (tx - px) + K_V * (0.0 - vx)
            ay = K_P * (ty - py) + K_V * (0.0 - vy)
            agent.velocity = (vx + ax * DT, vy + ay * DT)
            self.space.step(DT)

    # --- observations ----------------------------------------------------------------------------------------
    @property
    def state(self) -> np.ndarray:
        """Current [agent_x, agent_y, block_x, block_y, block_angle mod 2 pi] (the 'state' observation)."""
        self._require_reset()
        return np.array([*self.agent.position, *self.block.position, self.block.angle % (2 * np.pi)], dtype=np.float64)

    def _require_reset(self) -> None:
        """Raise a clear error when the env is used before reset()."""
        if self.space is None:
            raise RuntimeError("PushTEnv: call reset() before step(), render() or state")

    def _block_pose(self) -> np.ndarray:
        """Block body pose (x, y, unwrapped angle)."""
        return np.array([*self.block.position, self.block.angle], dtype=np.float64)

    def _observation(self) -> np.ndarray | dict[str, np.ndarray]:
        """Observation of the current state for this obs_type."""
        state = self.state
        if self.obs_type == "state":
            return state
        if self.obs_type == "keypoints":
            return np.concatenate([block_keypoints(self._block_pose()).ravel(), state[:2]])
        return {"pixels": render_pusht(state, size=self.observation_size), "agent_pos": state[:2].copy()}

    def _info(self, cover: float) -> dict[str, Any]:
        """Step information: coverage, success and the original's diagnostic entries."""
        substeps = SIM_HZ // CONTROL_HZ
        return {
            "coverage": cover,
            "is_success": cover > SUCCESS_THRESHOLD,
            "n_contacts": int(np.ceil(self._n_contact_points / substeps)),
            "pos_agent": np.array(self.agent.position),
            "vel_agent": np.array(self.agent.velocity),
            "block_pose": self._block_pose(),
            "goal_pose": GOAL_POSE.copy(),
        }

    # --- gymnasium API ---------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode from options['reset_to_state'], else from Chi et al.'s legacy seeded distribution."""
        super().reset(seed=seed)
        options = options or {}
        replay = options.get("reset_to_state") is not None
        if replay:
            state = as_finite_vector(options["reset_to_state"], 5, "reset_to_state")
        else:
            # Without a seed, continue the env's generator so that reset(seed=s); reset() is reproducible.
            state = legacy_reset_state(seed if seed is not None else int(self.np_random.integers(2**31)))
        self._build_space()
        self._n_contact_points = 0
        self._last_action = None
        # Recorded states replay exactly angle-first; Chi et al.'s test runner (legacy_test: True) sets position first.
        self._set_state(state, angle_first=replay)
        return self._observation(), self._info(coverage(self._block_pose()))

    def step(self, action):
        """Drive the agent towards the target position `action` (pixels) for one 10 Hz control step.

        Targets are clipped to the action space [0, 512]^2 (NaN and inf are refused): the agent is kinematic, as in
        Chi et al.'s env, so walls do not stop it, and a far-off target would fling it out of the workspace (and the
        observation out of its space) or through a wall. Every recorded action lies inside, so replays are unchanged.
        """
        self._require_reset()
        target = as_finite_vector(action, 2, "PushT action (target x, y in pixels)")
        target = np.clip(target, self.action_space.low, self.action_space.high)
        self._n_contact_points = 0
        self._last_action = target
        self._simulate(target)
        cover = coverage(self._block_pose())
        reward = float(np.clip(cover / SUCCESS_THRESHOLD, 0.0, 1.0))
        return self._observation(), reward, cover > SUCCESS_THRESHOLD, False, self._info(cover)

    def render(self) -> np.ndarray | None:
        """RGB frame (render_size^2) of the current state with the last commanded target marked."""
        if self.render_mode is None:
            gym.logger.warn("PushTEnv.render() needs render_mode='rgb_array' at construction")
            return None
        return render_pusht(self.state, size=self.render_size, action=self._last_action, smooth=True)

    def close(self) -> None:
        """Drop the physics space."""
        self.space = None


# The task's one symmetry: the goal T's axis of symmetry (its body y-axis, through (256, 256) at 3 pi / 4, the line
# x + y = 512). Reflecting the whole scene about it maps the goal onto itself and a T onto a T, and pymunk's rigid-
# body physics is reflection-invariant, so the mirror image of a demonstration is a demonstration (replays of
# mirrored recordings track the mirrored states to 1e-4 px in 19 of 21 recorded episodes, two drift by a few px
# through contacts; tests/envs/test_envs_pusht_mirror.py). The walls (5..506) are the only asymmetry, by one pixel.
_AXIS = _rotation(GOAL_POSE[2]) @ np.array([0.0, 1.0])
_MIRROR = 2.0 * np.outer(_AXIS, _AXIS) - np.eye(2)


def mirror_points(points: np.ndarray) -> np.ndarray:
    """World points (..., 2) (agent positions, action targets) reflected about the goal T's symmetry axis."""
    return (np.asarray(points, dtype=np.float64) - GOAL_POSE[:2]) @ _MIRROR.T + GOAL_POSE[:2]


def mirror_state(state: np.ndarray) -> np.ndarray:
    """States (..., 5) [agent_xy, block_xy, angle] of the mirrored scene: the T is symmetric about its body y-axis,
    so its mirror image is the T at the mirrored position with angle 2 theta_goal - angle (wrapped to [0, 2 pi))."""
    state = np.asarray(state, dtype=np.float64)
    angle = np.mod(2.0 * GOAL_POSE[2] - state[..., 4:5], 2 * np.pi)
    return np.concatenate([mirror_points(state[..., 0:2]), mirror_points(state[..., 2:4]), angle], axis=-1)


def mirror_recording(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PushT recordings (replay-buffer arrays, one row per step) of the mirrored scene, key by key: ``state`` and
    ``action`` reflected, ``keypoint`` recomputed from the mirrored block pose (Chi et al.'s keypoints are not
    symmetric on the T, so the mirrored T carries them elsewhere), ``n_contacts`` unchanged and ``img`` frames
    reflected about their anti-diagonal."""
    unknown = sorted(set(data) - {"state", "action", "keypoint", "n_contacts", "img"})
    if unknown:
        raise ValueError(f"no mirror image is defined for PushT recording key(s) {unknown}; PushT's mirror maps "
                         "state, action, keypoint, n_contacts and img")
    if "keypoint" in data and "state" not in data:
        raise ValueError("mirroring PushT keypoints needs the recorded 'state' (the keypoints follow the block pose)")
    out: dict[str, np.ndarray] = {}
    for key, values in data.items():
        values = np.asarray(values)
        if key == "state":
            out[key] = mirror_state(values).astype(values.dtype)
        elif key == "action":
            out[key] = mirror_points(values).astype(values.dtype)
        elif key == "keypoint":
            pose = mirror_state(data["state"])[:, 2:5]
            out[key] = block_keypoints(pose).reshape(values.shape).astype(values.dtype)
        elif key == "img":  # pixel (row, col) = (y, x) / 512 * size, so x + y = 512 is the anti-diagonal
            out[key] = np.ascontiguousarray(values[:, ::-1, ::-1].swapaxes(1, 2))
        else:
            out[key] = values.copy()
    return out


def replay(initial_state: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """States (len(actions) + 1, 5) reached from `initial_state` by executing `actions` (the recorded-data protocol)."""
    env = PushTEnv()
    states = [env.reset(options={"reset_to_state": initial_state})[0]]
    for action in np.asarray(actions):
        states.append(env.step(action)[0])
    return np.stack(states)

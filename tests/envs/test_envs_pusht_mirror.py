"""PushT's mirror symmetry about the goal T's axis: the mirror image of a recorded episode is an episode."""

from __future__ import annotations

import numpy as np
import pytest

from envs.pusht import (
    GOAL_POSE,
    block_keypoints,
    coverage,
    mirror_points,
    mirror_recording,
    mirror_state,
    render_pusht,
    replay,
)


def _angle_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs((a - b + np.pi) % (2 * np.pi) - np.pi).max())


def test_the_mirror_fixes_the_goal_and_coverage_and_is_an_involution():
    rng = np.random.default_rng(0)
    states = np.column_stack([rng.uniform(50, 450, (64, 4)), rng.uniform(-np.pi, np.pi, 64)])
    states[0, 2:] = GOAL_POSE
    mirrored = mirror_state(states)
    np.testing.assert_allclose(mirrored[0, 2:4], GOAL_POSE[:2])
    assert _angle_error(mirrored[0, 4], GOAL_POSE[2]) < 1e-12
    back = mirror_state(mirrored)
    np.testing.assert_allclose(back[:, :4], states[:, :4], atol=1e-9)
    assert _angle_error(back[:, 4], states[:, 4]) < 1e-9
    # The T's mirror image is a T (not a flipped one): the covered area of the goal is the same.
    near_goal = np.column_stack([GOAL_POSE[:2] + rng.normal(0, 20, (16, 2)), GOAL_POSE[2] + rng.normal(0, 0.4, 16)])
    for pose in near_goal:
        assert coverage(mirror_state(np.r_[0.0, 0.0, pose])[2:]) == pytest.approx(coverage(pose), abs=1e-9)
    assert max(coverage(p) for p in near_goal) > 0.5
    # A reflection, not a rotation: the orientation of a point triple flips.
    a, b, c = mirror_points(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    assert np.linalg.det(np.stack([b - a, c - a])) == pytest.approx(-1.0)


def test_mirrored_recordings_replay_as_mirrored_episodes(pusht_buffer):
    # pymunk's physics is reflection-invariant: replaying the mirrored actions from the mirrored first state tracks
    # the mirrored recording as closely as the plain replay tracks the recording (test_envs_pusht).
    for i in (0, 1, 128, 205):
        episode = pusht_buffer.episode(i)
        mirrored = mirror_recording({k: episode[k] for k in ("state", "action")})
        states = replay(mirrored["state"][0], mirrored["action"][:-1])
        want = mirrored["state"].astype(np.float64)
        position_error = np.linalg.norm(states[:, :4] - want[:, :4], axis=1).max()
        assert position_error < 0.01, f"episode {i}: the mirrored replay drifts {position_error:.3g} px"
        assert _angle_error(states[:, 4], want[:, 4]) < 1e-4


def test_mirrored_keypoints_and_frames_are_those_of_the_mirrored_scene(pusht_path):
    from envs.replay_buffer import ReplayBuffer

    data = ReplayBuffer.load(pusht_path, keys=["state", "keypoint", "img", "action"], episodes=[3]).data
    mirrored = mirror_recording(data)
    assert set(mirrored) == set(data) and all(mirrored[k].dtype == data[k].dtype for k in data)
    pose = mirror_state(data["state"].astype(np.float64))[:, 2:]
    np.testing.assert_allclose(mirrored["keypoint"], np.stack([block_keypoints(p) for p in pose]), atol=1e-3)
    index = np.arange(0, len(pose), 7)
    rendered = np.stack([render_pusht(s) for s in mirror_state(data["state"][index])]).astype(np.float32)
    mean_abs = np.abs(rendered - mirrored["img"][index]).mean()
    assert mean_abs < 1.0, f"the mirrored frames differ from the mirrored scene's rendering by {mean_abs:.2f} / 255"
    with pytest.raises(ValueError, match="'velocity'"):
        mirror_recording({"state": data["state"], "velocity": data["state"]})

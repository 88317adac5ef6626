"""Particle task: IBC's dynamics, an expert that succeeds with both goal orders, and a visibly multimodal task."""

from __future__ import annotations

import numpy as np
import pytest

from envs.experts import ParticleExpert, make_expert, particle_mode_average
from envs.particle import GOAL_A, GOAL_B, VISITED, ParticleEnv, pd_transition


def _run(env: ParticleEnv, policy, seed: int, limit: int = 50) -> dict:
    """Final info of one episode of `policy` capped at `limit` steps (the registered limit)."""
    obs, info = env.reset(seed=seed)
    for _ in range(limit):
        obs, _, terminated, _, info = env.step(policy(obs))
        if terminated:
            break
    return info


def test_pd_step_matches_ibc_substeps():
    pos, vel, target = np.array([0.1, 0.9]), np.array([0.3, -0.2]), np.array([0.7, 0.4])
    for _ in range(10):
        # IBC's particle env: x += v dt with the old v, then v += (k_p (target - x_old) - k_v v) dt.
        pos, vel = pos + vel * 0.005, vel + (10.0 * (target - pos) - 5.0 * vel) * 0.005
    offset, velocity = pd_transition(0.005, 10, 10.0, 5.0) @ np.stack([np.array([0.1, 0.9]) - target, [0.3, -0.2]])
    np.testing.assert_allclose(target + offset, pos, atol=1e-12)
    np.testing.assert_allclose(velocity, vel, atol=1e-12)


def test_expert_succeeds_with_both_orders():
    env, expert = ParticleEnv(), ParticleExpert(seed=0)
    successes, first_goals = [], []
    for seed in range(200):
        expert.reset()
        info = _run(env, expert, seed)
        successes.append(info["is_success"])
        first_goals.append(info["first_goal"])
    assert np.mean(successes) >= 0.99
    assert 0.4 <= np.mean(np.array(first_goals) == 0) <= 0.6, (
        "the expert should pick either goal first about half the time"
    )
    assert set(first_goals) == {0, 1}


def test_mode_averaging_policy_fails():
    env = ParticleEnv()
    success = np.mean([_run(env, particle_mode_average, seed)["is_success"] for seed in range(100)])
    assert success <= 0.15, f"a mode-averaging policy should mostly fail, succeeded in {success:.0%}"


def test_seeding_and_layout():
    env = ParticleEnv()
    first, _ = env.reset(seed=5)
    again, _ = env.reset(seed=5)
    np.testing.assert_array_equal(first, again)
    assert np.linalg.norm(first[GOAL_A] - first[GOAL_B]) >= env.min_goal_separation
    np.testing.assert_array_equal(first[VISITED], [0, 0])
    obs, reward, terminated, _, info = env.step(first[GOAL_A])
    assert obs.dtype == np.float32 and reward == 0.0 and not terminated and info["first_goal"] in (-1, 0)


def test_visiting_goal_sets_flag_and_both_terminate():
    env = ParticleEnv()
    obs, _ = env.reset(seed=1)
    for _ in range(40):
        obs, reward, terminated, _, info = env.step(obs[GOAL_B])
    assert obs[VISITED].tolist() == [0.0, 1.0] and info["first_goal"] == 1 and not terminated
    for _ in range(40):
        obs, reward, terminated, _, info = env.step(obs[GOAL_A])
        if terminated:
            break
    assert terminated and reward == 1.0 and info["is_success"]


@pytest.mark.parametrize("bad", [[np.nan, 0.5], [0.5], [[0.1, 0.2]], "up"])
def test_invalid_action_raises(bad):
    env = ParticleEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="Particle action"):
        env.step(bad)
    untouched = ParticleEnv()
    untouched.reset(seed=0)
    np.testing.assert_array_equal(env.step([0.5, 0.5])[0], untouched.step([0.5, 0.5])[0])


def test_far_off_targets_are_clipped_to_the_unit_square():
    env, clipped = ParticleEnv(), ParticleEnv()
    env.reset(seed=1)
    clipped.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(50):
        action = rng.choice([-1e9, -3.0, 1e9, 3.0, 0.5], size=2)
        obs = env.step(action)[0]
        assert env.observation_space.contains(obs), action
        np.testing.assert_array_equal(obs, clipped.step(np.clip(action, 0.0, 1.0))[0])


def test_expert_registry():
    assert isinstance(make_expert("scidiff/Particle-v0", seed=0), ParticleExpert)
    with pytest.raises(ValueError, match="no scripted expert"):
        make_expert("scidiff/PushT-v0")

"""Registration: every id passes Gymnasium's env_checker, vectorises, and re-importing the package is harmless."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs


@pytest.mark.filterwarnings("ignore:.*symmetric and normalized space")  # PushT's actions are pixels, as in Chi et al.
@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_env_checker_passes(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize(
    ("env_id", "limit"),
    [
        ("scidiff/PushT-v0", 300),
        ("scidiff/PushT-keypoints-v0", 300),
        ("scidiff/PushT-pixels-v0", 300),
        ("scidiff/Particle-v0", 50),
    ],
)
def test_step_limits(env_id, limit):
    assert gym.spec(env_id).max_episode_steps == limit


def test_reimport_and_reregister_are_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(envs)
        envs.register_envs()
    assert all(env_id in gym.registry for env_id in envs.ENV_IDS)


def test_sync_vector_env_of_eight():
    vec = gym.make_vec("scidiff/PushT-keypoints-v0", num_envs=8, vectorization_mode="sync")
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (8, 20)
    # make_vec seeds env i with seed + i, i.e. Chi et al.'s legacy states for seeds 0..7.
    expected_agents = np.stack([envs.pusht.legacy_reset_state(i)[:2] for i in range(8)])
    np.testing.assert_array_equal(obs[:, 18:], expected_agents)
    obs, reward, terminated, truncated, info = vec.step(obs[:, 18:] + 5.0)
    assert obs.shape == (8, 20) and reward.shape == (8,) and info["coverage"].shape == (8,)
    vec.close()


def test_import_needs_neither_torch_nor_pygame():
    code = "import sys, envs; print(sorted(m for m in ('torch', 'pygame') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

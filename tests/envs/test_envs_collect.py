"""Expert demonstration recording: deterministic per seed, consistent with the env, and the `collect` command."""

from __future__ import annotations

import argparse
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the ids)
from envs.cli import add_commands, run
from envs.collect import collect_episodes, episode_seeds, run_episode
from envs.experts import ParticleExpert
from envs.particle import GOAL_A, GOAL_B
from envs.replay_buffer import ReplayBuffer


def test_collection_is_deterministic_per_seed():
    first, failures = collect_episodes("scidiff/Particle-v0", 6, seed=0, progress=False)
    again, _ = collect_episodes("scidiff/Particle-v0", 6, seed=0, progress=False)
    other, _ = collect_episodes("scidiff/Particle-v0", 6, seed=1, progress=False)
    assert failures == 0 and first.n_episodes == 6 and set(first.keys) == {"state", "action"}
    np.testing.assert_array_equal(first.data["state"], again.data["state"])
    np.testing.assert_array_equal(first.data["action"], again.data["action"])
    assert not np.array_equal(first.data["state"][:5], other.data["state"][:5])
    # Both goal orders show up in the actions of the first step: they point at goal A or goal B.
    starts = np.r_[0, first.episode_ends[:-1]]
    targets_a = np.all(first.data["action"][starts] == first.data["state"][starts, 4:6], axis=1)
    assert 0 < targets_a.sum() < 6


def test_expert_episode_is_the_one_recorded_before_the_shared_episode_loop():
    # Recorded with the previous run_episode: on seed 3 the expert targets goal B for 14 steps, then goal A, and
    # succeeds after 34 steps.
    episode, success = run_episode(gym.make("scidiff/Particle-v0"), ParticleExpert(), seed=3)
    start = episode["state"][0]
    np.testing.assert_allclose(start[:2], [0.08564917, 0.23681051], atol=1e-7)
    np.testing.assert_array_equal(episode["action"], np.repeat(np.stack([start[GOAL_B], start[GOAL_A]]), [14, 20], 0))
    assert success and episode["state"].shape == (34, 10) and episode["action"].dtype == np.float32


def test_recorded_actions_reproduce_recorded_states():
    buffer, _ = collect_episodes("scidiff/Particle-v0", 3, seed=4, progress=False)
    env = gym.make("scidiff/Particle-v0")
    for i, episode_seed in enumerate(episode_seeds(4, 3)):
        episode = buffer.episode(i)
        obs, _ = env.reset(seed=int(episode_seed))
        for state, action in zip(episode["state"], episode["action"], strict=True):
            np.testing.assert_array_equal(obs, state)
            obs, _, terminated, _, info = env.step(action)
        assert terminated and info["is_success"], "only successful episodes are kept by default"


def test_collect_command(tmp_path):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    out = tmp_path / "particle.zarr"
    args = parser.parse_args(
        [
            "collect",
            "--env",
            "scidiff/Particle-v0",
            "--episodes",
            "4",
            "--seed",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert run(args) == 0
    loaded = ReplayBuffer.load(out)
    expected, _ = collect_episodes("scidiff/Particle-v0", 4, seed=2, progress=False)
    np.testing.assert_array_equal(loaded.data["action"], expected.data["action"])
    with pytest.raises(SystemExit):
        parser.parse_args(["collect", "--env", "scidiff/PushT-v0", "--out", str(out)])


def test_module_entry_point(tmp_path):
    out = tmp_path / "cli.zarr"
    command = [
        sys.executable,
        "-m",
        "envs.cli",
        "collect",
        "--env",
        "scidiff/Particle-v0",
        "--episodes",
        "2",
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "2 episodes" in result.stdout and ReplayBuffer.load(out).n_episodes == 2

"""Shared fixtures for the envs tests: the recorded PushT data (skipped with a reason when absent)."""

from __future__ import annotations

import pytest

from envs.replay_buffer import ReplayBuffer
from scidiff.data import data_path

PUSHT_ZARR = "pusht/pusht_cchi_v7_replay.zarr"


@pytest.fixture(scope="session")
def pusht_path():
    """Path of Chi et al.'s PushT demonstrations, or a skip naming the expected location."""
    try:
        return data_path(PUSHT_ZARR)
    except FileNotFoundError as error:
        pytest.skip(f"PushT demonstrations not available: {error}")


@pytest.fixture(scope="session")
def pusht_buffer(pusht_path):
    """The recorded states, actions and keypoints of all 206 episodes (no images)."""
    return ReplayBuffer.load(pusht_path, keys=["state", "action", "keypoint"])

"""ReplayBuffer: the zarr replay-buffer layout, round trips, episode access and clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

from envs.replay_buffer import ReplayBuffer


def _episode(length: int, value: float) -> dict[str, np.ndarray]:
    """A toy episode whose entries encode its own index, so mix-ups show."""
    return {
        "state": np.full((length, 3), value, np.float32),
        "action": np.arange(length * 2, dtype=np.float64).reshape(length, 2) + value,
    }


def test_add_episode_and_views():
    buffer = ReplayBuffer.empty()
    assert (buffer.n_episodes, buffer.n_steps) == (0, 0)
    for i, length in enumerate([2, 5, 3]):
        buffer.add_episode(_episode(length, i))
    assert (buffer.n_episodes, buffer.n_steps) == (3, 10)
    np.testing.assert_array_equal(buffer.episode_ends, [2, 7, 10])
    assert buffer.episode_ends.dtype == np.int64
    assert buffer.data["state"].shape == (10, 3)
    np.testing.assert_array_equal(buffer.episode(1)["state"], np.full((5, 3), 1.0))
    np.testing.assert_array_equal(buffer.episode(-1)["action"], _episode(3, 2)["action"])
    with pytest.raises(IndexError):
        buffer.episode(3)


def test_add_episode_rejects_inconsistent_arrays():
    buffer = ReplayBuffer.empty()
    with pytest.raises(ValueError, match="equal length"):
        buffer.add_episode({"state": np.zeros((3, 2)), "action": np.zeros((4, 2))})
    buffer.add_episode(_episode(2, 0))
    with pytest.raises(ValueError, match="keys"):
        buffer.add_episode({"state": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="step shape"):
        buffer.add_episode({"state": np.zeros((2, 4)), "action": np.zeros((2, 2))})
    assert buffer.n_episodes == 1


def test_save_load_round_trip_and_overwrite(tmp_path):
    buffer = ReplayBuffer.empty()
    for i, length in enumerate([4, 1, 6]):
        buffer.add_episode(_episode(length, i))
    path = tmp_path / "demo.zarr"
    buffer.save(path)
    smaller = ReplayBuffer.empty()
    smaller.add_episode(_episode(2, 9))
    smaller.save(path)  # replaces the first store
    buffer.save(path)
    assert sorted(os.listdir(tmp_path)) == ["demo.zarr"], "no temporary directories may be left behind"
    loaded = ReplayBuffer.load(path)
    np.testing.assert_array_equal(loaded.episode_ends, buffer.episode_ends)
    for key in ("state", "action"):
        np.testing.assert_array_equal(loaded.data[key], buffer.data[key])
        assert loaded.data[key].dtype == buffer.data[key].dtype
    # The on-disk layout is the replay-buffer one, readable with zarr alone.
    root = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(root["meta/episode_ends"][:], [4, 5, 11])
    np.testing.assert_array_equal(
        ReplayBuffer.load(path, keys=["action"], episodes=[2, 0]).episode(0)["action"], _episode(6, 2)["action"]
    )


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here.zarr"):
        ReplayBuffer.load(tmp_path / "nothing_here.zarr")
    buffer = ReplayBuffer.empty()
    buffer.add_episode(_episode(2, 0))
    buffer.save(tmp_path / "b.zarr")
    with pytest.raises(KeyError, match="available keys"):
        ReplayBuffer.load(tmp_path / "b.zarr", keys=["img"])
    with pytest.raises(IndexError, match="1 episodes"):
        ReplayBuffer.load(tmp_path / "b.zarr", episodes=[3])


def test_reads_the_pusht_zarr_v2(pusht_buffer, pusht_path):
    assert (pusht_buffer.n_episodes, pusht_buffer.n_steps) == (206, 25650)
    lengths = pusht_buffer.episode_lengths
    assert (lengths.min(), lengths.max()) == (49, 246)
    assert pusht_buffer.episode(0)["keypoint"].shape == (161, 9, 2)
    subset = ReplayBuffer.load(pusht_path, keys=["action"], episodes=[205])
    np.testing.assert_array_equal(subset.data["action"], pusht_buffer.episode(205)["action"])


def test_reads_a_zarr_v3_store(tmp_path):
    if int(zarr.__version__.split(".")[0]) < 3:
        pytest.skip("writing a zarr v3 store needs the zarr 3 library")
    root = zarr.open_group(str(tmp_path / "v3.zarr"), mode="w", zarr_format=3)
    root.create_array("data/action", data=np.arange(10, dtype=np.float32).reshape(5, 2))
    root.create_array("meta/episode_ends", data=np.array([2, 5], dtype=np.int64))
    loaded = ReplayBuffer.load(tmp_path / "v3.zarr")
    np.testing.assert_array_equal(loaded.episode(1)["action"], [[4, 5], [6, 7], [8, 9]])

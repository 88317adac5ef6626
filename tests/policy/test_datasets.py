"""Replay-buffer windows (Chi et al. 2023 SequenceSampler semantics): exact padding indices, splits, real PushT data."""

from types import SimpleNamespace

import numpy as np
import pytest

from scidiff.data import data_path
from scidiff.policy import (
    PUSHT_KEYPOINT_OBS,
    PUSHT_STATE_OBS,
    PolicyWindowDataset,
    episode_split,
    parse_obs_key,
    split_datasets,
    window_rows,
    window_table,
)


def toy_buffer():
    """Two episodes of lengths 3 and 5; every value encodes its buffer row."""
    rows = np.arange(8, dtype=np.float32)
    return SimpleNamespace(
        data={"obs": np.stack([rows, 10 * rows], 1), "action": rows[:, None] + 100, "grid": np.zeros((8, 2, 3))},
        episode_ends=np.array([3, 8]),
    )


def test_window_rows_are_edge_padded_within_episodes():
    # horizon 4, To = 2, Ta = 2: pad 1 before and 1 after.
    table = window_table(np.array([3, 8]), length=4, pad_before=1, pad_after=1)
    expected = [[0, 0, 1, 2], [0, 1, 2, 2], [3, 3, 4, 5], [3, 4, 5, 6], [4, 5, 6, 7], [5, 6, 7, 7]]
    np.testing.assert_array_equal(window_rows(table, 4), expected)


def test_dataset_items_follow_the_rows():
    ds = PolicyWindowDataset(toy_buffer(), horizon=4, n_obs_steps=2, n_action_steps=2, obs_keys=("obs",))
    assert len(ds) == 6 and ds.obs_dim == 2 and ds.action_dim == 1
    first, last = ds[0], ds[5]
    np.testing.assert_array_equal(first["obs"].numpy(), [[0, 0], [0, 0]])
    np.testing.assert_array_equal(first["action"].numpy()[:, 0], [100, 100, 101, 102])
    np.testing.assert_array_equal(last["obs"].numpy(), [[5, 50], [6, 60]])
    np.testing.assert_array_equal(last["action"].numpy()[:, 0], [105, 106, 107, 107])
    batch = ds.get_batch([0, 5])
    assert batch["obs"].shape == (2, 2, 2) and batch["action"].shape == (2, 4, 1)


def test_episode_mask_and_short_episodes():
    ds = PolicyWindowDataset(toy_buffer(), horizon=4, n_obs_steps=2, n_action_steps=2, obs_keys=("obs",),
                             episode_mask=np.array([False, True]))
    assert len(ds) == 4 and ds[0]["action"][0, 0] == 103
    np.testing.assert_array_equal(ds.episode_rows(), [3, 4, 5, 6, 7])
    # An episode of length 1 cannot hold a window of 8 keeping a real step at both ends after 1 + 1 padding.
    assert len(window_table(np.array([1]), length=8, pad_before=1, pad_after=1)) == 0


def test_obs_key_slices_flattened_features():
    assert parse_obs_key("state[:2]").stop == 2 and parse_obs_key(" keypoint ").key == "keypoint"
    with pytest.raises(ValueError, match="name\\[start:stop\\]"):
        parse_obs_key("state[2]")
    ds = PolicyWindowDataset(toy_buffer(), horizon=4, n_obs_steps=1, n_action_steps=1, obs_keys=("grid", "obs[1:]"))
    assert ds.obs_dim == 7
    with pytest.raises(KeyError, match="no key 'missing'"):
        PolicyWindowDataset(toy_buffer(), horizon=4, n_obs_steps=1, n_action_steps=1, obs_keys=("missing",))


def test_horizon_must_hold_the_executed_actions():
    with pytest.raises(ValueError, match="exceeds horizon 4"):
        PolicyWindowDataset(toy_buffer(), horizon=4, n_obs_steps=2, n_action_steps=4, obs_keys=("obs",))


def test_episode_split_is_deterministic_and_disjoint():
    train, val = episode_split(206, val_ratio=0.02, max_train_episodes=90, seed=42)
    assert val.sum() == 4 and train.sum() == 90 and not np.any(train & val)
    again = episode_split(206, val_ratio=0.02, max_train_episodes=90, seed=42)
    np.testing.assert_array_equal(train, again[0])
    np.testing.assert_array_equal(val, again[1])
    assert not np.array_equal(train, episode_split(206, 0.02, 90, seed=0)[0])
    train, val = episode_split(5)
    assert train.all() and not val.any()


@pytest.fixture(scope="module")
def pusht():
    try:
        path = data_path("pusht/pusht_cchi_v7_replay.zarr")
    except FileNotFoundError as err:
        pytest.skip(f"PushT replay buffer not available: {err}")
    zarr = pytest.importorskip("zarr")
    root = zarr.open(str(path), mode="r")
    # Only the low-dim arrays: the images alone are 2.8 GB as float32.
    data = {k: root["data"][k][:] for k in ("state", "keypoint", "action")}
    return SimpleNamespace(data=data, episode_ends=root["meta"]["episode_ends"][:])


def test_pusht_keypoint_windows(pusht):
    ds = PolicyWindowDataset(pusht, horizon=16, n_obs_steps=2, n_action_steps=8, obs_keys=PUSHT_KEYPOINT_OBS)
    ends = pusht.episode_ends
    assert len(ends) == 206 and ends[-1] == 25650
    # Each episode of length n gives n - 16 + 7 + 1 + 1 = n - 7 windows.
    assert len(ds) == 25650 - 7 * 206 and ds.obs_dim == 20 and ds.action_dim == 2
    kp, state, action = pusht.data["keypoint"], pusht.data["state"], pusht.data["action"]
    first = ds[0]
    frame0 = np.concatenate([kp[0].ravel(), state[0, :2]])
    np.testing.assert_array_equal(first["obs"].numpy(), [frame0, frame0])
    np.testing.assert_array_equal(first["action"].numpy(), action[[0, *range(15)]])
    n0 = ends[0]
    last_of_first = ds[n0 - 7 - 1]
    np.testing.assert_array_equal(last_of_first["action"].numpy(), action[[*range(n0 - 9, n0), *[n0 - 1] * 7]])
    np.testing.assert_array_equal(last_of_first["obs"].numpy()[:, 18:], state[n0 - 9 : n0 - 7, :2])


def test_pusht_chi_split(pusht):
    train, val = split_datasets(pusht, obs_keys=PUSHT_STATE_OBS)
    assert train.obs_dim == 5
    assert train.episode_mask.sum() == 90 and val.episode_mask.sum() == 4
    lengths = np.diff(np.concatenate([[0], pusht.episode_ends]))
    assert len(train) == int((lengths[train.episode_mask] - 7).sum())
    assert len(val) == int((lengths[val.episode_mask] - 7).sum())


def test_a_symmetry_adds_transformed_training_episodes_only():
    def negate(data):
        return {k: -v for k, v in data.items()}

    buffer = toy_buffer()
    del buffer.data["grid"]
    plain_train, plain_val = split_datasets(buffer, horizon=4, n_obs_steps=2, n_action_steps=2, obs_keys=("obs",),
                                            val_ratio=0.5, max_train_episodes=None, seed=1)
    train, val = split_datasets(buffer, horizon=4, n_obs_steps=2, n_action_steps=2, obs_keys=("obs",),
                                val_ratio=0.5, max_train_episodes=None, seed=1, symmetry=negate)
    assert len(train) == 2 * len(plain_train) and len(val) == len(plain_val)
    n = len(plain_train)
    for i in range(n):  # the transformed copy of each training window, in the same order
        for key in ("obs", "action"):
            np.testing.assert_array_equal(train[n + i][key], -plain_train[i][key])
            np.testing.assert_array_equal(train[i][key], plain_train[i][key])
    for i in range(len(val)):
        np.testing.assert_array_equal(val[i]["obs"], plain_val[i]["obs"])


def test_pusht_mirror_doubles_chi_training_windows_with_valid_mirrored_keypoints(pusht):
    from envs.pusht import block_keypoints, mirror_recording, mirror_state

    train, val = split_datasets(pusht, obs_keys=PUSHT_KEYPOINT_OBS, symmetry=mirror_recording)
    plain_train, plain_val = split_datasets(pusht, obs_keys=PUSHT_KEYPOINT_OBS)
    assert len(train) == 2 * len(plain_train) and len(val) == len(plain_val)
    window = train[len(plain_train) + 100]
    original = plain_train[100]
    obs = window["obs"].numpy().astype(np.float64)
    # The agent position is mirrored; the block keypoints are those of a T at the mirrored pose.
    agent = original["obs"].numpy()[:, 18:].astype(np.float64)
    np.testing.assert_allclose(obs[:, 18:], np.stack([512 - agent[:, 1], 512 - agent[:, 0]], 1), atol=1e-3)
    rows = np.flatnonzero((np.abs(pusht.data["keypoint"].reshape(-1, 18) - original["obs"].numpy()[-1, :18]) < 1e-6)
                          .all(1))
    pose = mirror_state(pusht.data["state"][rows[0]].astype(np.float64))[2:]
    np.testing.assert_allclose(obs[-1, :18].reshape(9, 2), block_keypoints(pose), atol=1e-2)

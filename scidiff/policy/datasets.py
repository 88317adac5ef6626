"""Training windows over a replay buffer: To observations and Tp actions per sample (Chi et al. 2023).

A replay buffer is any object with ``.data`` (a mapping key -> array of shape (T_total, ...), numpy or zarr)
and ``.episode_ends`` (cumulative episode ends, as zarr ``meta/episode_ends``). Windows are ``horizon`` steps
long and may start up to To-1 steps before an episode and end up to Ta-1 steps after it; the missing steps
repeat the episode's first or last step (edge padding, as Chi et al.'s SequenceSampler). Windows never cross
episode boundaries. Observations are the first To steps of a window, actions all Tp steps. Camera frames
(``camera_keys``) stay uint8 (H, W, 3) as stored and are gathered per batch; the policy crops and scales them.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "PUSHT_KEYPOINT_OBS",
    "PUSHT_STATE_OBS",
    "ObsKey",
    "parse_obs_key",
    "step_features",
    "camera_frames",
    "episode_split",
    "window_table",
    "window_rows",
    "PolicyWindowDataset",
    "split_datasets",
]

# PushT keypoints observation: 9 block keypoints (18) then the agent position (state[:, :2]) = 20-d (Chi et al. 2023).
PUSHT_KEYPOINT_OBS: tuple[str, ...] = ("keypoint", "state[:2]")
# PushT state observation: [agent_x, agent_y, block_x, block_y, block_angle] = 5-d.
PUSHT_STATE_OBS: tuple[str, ...] = ("state",)

@dataclass(frozen=True)
class ObsKey:
    """A buffer key and an optional column slice of its per-step features flattened, written 'key' or 'key[a:b]'."""

    key: str
    start: int | None = None
    stop: int | None = None


def parse_obs_key(spec: str) -> ObsKey:
    """Parse 'state', 'state[:2]' or 'keypoint[2:10]' into an ObsKey (envs.replay_buffer.parse_key_spec's syntax)."""
    from envs.replay_buffer import parse_key_spec

    name, columns = parse_key_spec(spec)
    return ObsKey(name) if columns is None else ObsKey(name, columns.start, columns.stop)


def _episode_ends(buffer: Any) -> np.ndarray:
    if not hasattr(buffer, "data") or not hasattr(buffer, "episode_ends"):
        raise TypeError(f"a replay buffer needs .data and .episode_ends attributes, got {type(buffer).__name__}")
    ends = np.asarray(buffer.episode_ends[:], dtype=np.int64)
    if ends.ndim != 1 or len(ends) == 0 or ends[0] <= 0 or np.any(np.diff(ends) <= 0):
        raise ValueError("episode_ends must be a non-empty, strictly increasing 1-D array of positive cumulative ends")
    return ends


def _read(buffer: Any, key: str, n_rows: int) -> np.ndarray:
    if key not in buffer.data:
        raise KeyError(f"replay buffer has no key {key!r}; it has {sorted(buffer.data.keys())}")
    arr = buffer.data[key]
    if arr.shape[0] < n_rows:
        raise ValueError(f"replay buffer key {key!r} has {arr.shape[0]} rows but episode_ends reach {n_rows}")
    # Slicing (not np.asarray) reads only what is needed from lazy arrays such as zarr.
    return np.asarray(arr[:n_rows])


def step_features(buffer: Any, keys: Sequence[str]) -> np.ndarray:
    """(T_total, dim) float32: each key's per-step values flattened and column-sliced, concatenated in order."""
    from envs.replay_buffer import step_columns  # not at import: the envs package imports the simulators

    if isinstance(keys, str):
        keys = (keys,)
    n_rows = int(_episode_ends(buffer)[-1])
    parts = []
    for spec in keys:
        k = parse_obs_key(spec)
        columns = None if k.start is None and k.stop is None else slice(k.start, k.stop)
        flat = step_columns(_read(buffer, k.key, n_rows), columns, f"obs key {spec!r}")
        parts.append(flat.astype(np.float32, copy=False))
    return np.concatenate(parts, axis=1)


def camera_frames(buffer: Any, key: str, n_rows: int) -> np.ndarray:
    """(T_total, H, W, 3) uint8 frames of a camera key (float 0-255 frames, as PushT's zarr stores them, converted)."""
    from envs.replay_buffer import uint8_frames

    return uint8_frames(key, _read(buffer, key, n_rows))


def episode_split(
    n_episodes: int, val_ratio: float = 0.0, max_train_episodes: int | None = None, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, val) episode masks, deterministic per seed (Chi et al. 2023, get_val_mask / downsample_mask).

    A positive val_ratio holds out round(n * val_ratio) episodes (at least 1, leaving at least 1 to train);
    max_train_episodes then subsamples the remaining ones (90 in Chi et al.'s PushT config).
    """
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    val = np.zeros(n_episodes, dtype=bool)
    if val_ratio > 0:
        n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
        val[np.random.default_rng(seed).choice(n_episodes, size=n_val, replace=False)] = True
    train = ~val
    if max_train_episodes is not None and train.sum() > max_train_episodes:
        if max_train_episodes < 1:
            raise ValueError(f"max_train_episodes must be >= 1, got {max_train_episodes}")
        candidates = np.flatnonzero(train)
        keep = candidates[np.random.default_rng(seed).choice(len(candidates), size=max_train_episodes, replace=False)]
        train = np.zeros(n_episodes, dtype=bool)
        train[keep] = True
    return train, val


def window_table(
    episode_ends: np.ndarray, length: int, pad_before: int = 0, pad_after: int = 0, episode_mask: np.ndarray | None = None
) -> np.ndarray:
    """(N, 3) int64 rows (episode_start, episode_length, offset): one per window of `length` steps (Chi et al. 2023).

    Offsets run from -pad_before to episode_length - length + pad_after, so every window keeps at least
    one real step at each end; the pads are clamped to length - 1 as in the original SequenceSampler.
    """
    ends = np.asarray(episode_ends, dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    mask = np.ones(len(ends), dtype=bool) if episode_mask is None else np.asarray(episode_mask, dtype=bool)
    if mask.shape != ends.shape:
        raise ValueError(f"episode_mask has shape {mask.shape}, expected {ends.shape} (one entry per episode)")
    pad_before = min(max(pad_before, 0), length - 1)
    pad_after = min(max(pad_after, 0), length - 1)
    rows = [
        np.stack(np.broadcast_arrays(s, e - s, np.arange(-pad_before, e - s - length + pad_after + 1)), axis=1)
        for s, e, keep in zip(starts, ends, mask)
        if keep
    ]
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 3), dtype=np.int64)


def window_rows(table: np.ndarray, length: int) -> np.ndarray:
    """(N, length) buffer row indices of windows, clamped to their episode: this clamping is the edge padding."""
    start, n, offset = (table[:, i : i + 1] for i in range(3))
    return start + np.clip(offset + np.arange(length), 0, n - 1)


class PolicyWindowDataset(Dataset):
    """Samples {"obs": (To, obs_dim), "action": (Tp, action_dim)} float32 tensors from a replay buffer (Chi et al. 2023),
    plus {"images": {camera: (To, H, W, 3) uint8}} for each of ``camera_keys``."""

    def __init__(
        self,
        buffer: Any,
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        obs_keys: Sequence[str] = PUSHT_KEYPOINT_OBS,
        action_key: str = "action",
        episode_mask: np.ndarray | None = None,
        camera_keys: Sequence[str] = (),
    ):
        if not 1 <= n_obs_steps <= horizon:
            raise ValueError(f"n_obs_steps must be in [1, horizon={horizon}], got {n_obs_steps}")
        if n_action_steps < 1 or n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(
                f"n_obs_steps - 1 + n_action_steps = {n_obs_steps - 1 + n_action_steps} exceeds horizon {horizon}"
            )
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.obs_keys, self.action_key = tuple([obs_keys] if isinstance(obs_keys, str) else obs_keys), action_key
        self.episode_ends = _episode_ends(buffer)
        n_episodes = len(self.episode_ends)
        self.episode_mask = np.ones(n_episodes, dtype=bool) if episode_mask is None else np.asarray(episode_mask, bool)
        self.obs = step_features(buffer, self.obs_keys)
        self.action = step_features(buffer, (action_key,))
        self.images = {key: camera_frames(buffer, key, len(self.obs)) for key in camera_keys}
        self.table = window_table(self.episode_ends, horizon, n_obs_steps - 1, n_action_steps - 1, self.episode_mask)

    @property
    def obs_dim(self) -> int:
        return self.obs.shape[1]

    @property
    def action_dim(self) -> int:
        return self.action.shape[1]

    def __len__(self) -> int:
        return len(self.table)

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, Tensor]:
        """Windows at the given indices stacked: {"obs": (B, To, obs_dim), "action": (B, Tp, action_dim)}."""
        rows = window_rows(self.table[np.asarray(indices, dtype=np.int64)], self.horizon)
        batch = {
            "obs": torch.from_numpy(self.obs[rows[:, : self.n_obs_steps]]),
            "action": torch.from_numpy(self.action[rows]),
        }
        if self.images:
            batch["images"] = {k: torch.from_numpy(v[rows[:, : self.n_obs_steps]]) for k, v in self.images.items()}
        return batch

    @property
    def camera_shapes(self) -> dict[str, list[int]]:
        """Camera key -> stored frame shape [H, W, 3], as DiffusionPolicy's ``cameras``."""
        return {k: list(v.shape[1:]) for k, v in self.images.items()}

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {k: ({c: f[0] for c, f in v.items()} if isinstance(v, dict) else v[0])
                for k, v in self.get_batch([index]).items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """Whole batch in one gather (DataLoader calls this instead of per-item __getitem__); collate with identity."""
        return self.get_batch(indices)

    def episode_rows(self) -> np.ndarray:
        """Buffer rows of this dataset's episodes (no padding), e.g. to fit normalisers on its own data."""
        starts = np.concatenate([[0], self.episode_ends[:-1]])
        return np.concatenate(
            [np.arange(s, e) for s, e, keep in zip(starts, self.episode_ends, self.episode_mask) if keep]
            or [np.zeros(0, dtype=np.int64)]
        )


def split_datasets(
    buffer: Any,
    horizon: int = 16,
    n_obs_steps: int = 2,
    n_action_steps: int = 8,
    obs_keys: Sequence[str] = PUSHT_KEYPOINT_OBS,
    action_key: str = "action",
    val_ratio: float = 0.02,
    max_train_episodes: int | None = 90,
    seed: int = 42,
    camera_keys: Sequence[str] = (),
    symmetry: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
) -> tuple[PolicyWindowDataset, PolicyWindowDataset]:
    """Train and validation window datasets over disjoint episodes; defaults follow Chi et al.'s PushT config.

    ``symmetry`` maps the buffer's arrays to those of the transformed scene (e.g. envs.pusht.mirror_recording): each
    training episode is then also trained on as its transformed copy; validation episodes stay as recorded.
    """
    ends = _episode_ends(buffer)
    train_mask, val_mask = episode_split(len(ends), val_ratio, max_train_episodes, seed)
    if camera_keys:  # convert the frames once; both splits then read the same uint8 arrays
        frames = {key: camera_frames(buffer, key, int(ends[-1])) for key in camera_keys}
        buffer = SimpleNamespace(data={**buffer.data, **frames}, episode_ends=ends)
    if symmetry is not None:  # the transformed episodes follow the recorded ones, in the same order
        n = int(ends[-1])
        recorded = {key: np.asarray(values[:n]) for key, values in buffer.data.items()}
        transformed = symmetry(recorded)
        buffer = SimpleNamespace(data={k: np.concatenate([v, transformed[k]]) for k, v in recorded.items()},
                                 episode_ends=np.concatenate([ends, ends + n]))
        train_mask, val_mask = np.tile(train_mask, 2), np.concatenate([val_mask, np.zeros_like(val_mask)])
    common = dict(horizon=horizon, n_obs_steps=n_obs_steps, n_action_steps=n_action_steps, obs_keys=obs_keys,
                  action_key=action_key, camera_keys=tuple(camera_keys))
    return (PolicyWindowDataset(buffer, episode_mask=train_mask, **common),
            PolicyWindowDataset(buffer, episode_mask=val_mask, **common))

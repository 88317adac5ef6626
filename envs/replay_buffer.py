"""Demonstration datasets in Chi et al.'s replay-buffer layout: a zarr group with ``data/<key>`` arrays (T_total, ...)
concatenated over episodes and ``meta/episode_ends`` (E,) int64 cumulative episode ends.

The same layout holds the PushT human data (zarr v2) and every dataset the project records. Reads zarr v2 or v3
with the zarr 2 or zarr 3 library; writes zarr v2 so that Chi et al.'s own tools read it too.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import zarr

__all__ = ["ReplayBuffer", "parse_key_spec", "step_columns", "uint8_frames"]

_ZARR3 = int(zarr.__version__.split(".")[0]) >= 3
_CHUNK_BYTES = 1 << 22  # ~4 MB chunks along time: whole frames per chunk, few files for small arrays


def _open_group(path: Path, mode: str):
    """Open a zarr group, writing zarr v2 metadata whichever zarr library is installed."""
    if mode == "w" and _ZARR3:
        return zarr.open_group(str(path), mode=mode, zarr_format=2)
    return zarr.open_group(str(path), mode=mode)


def _write_array(group, name: str, array: np.ndarray) -> None:
    """Store `array` under `name`, chunked along its first axis."""
    step_bytes = max(1, array[:1].nbytes)
    chunks = (max(1, min(len(array), _CHUNK_BYTES // step_bytes)), *array.shape[1:])
    if _ZARR3:
        group.create_array(name, data=array, chunks=chunks)
    else:
        group.create_dataset(name, data=array, chunks=chunks)


# 'key' or 'key[start:stop]'; keys may hold dots and slashes (LeRobot's "observation.state", zarr paths).
_KEY_SPEC = re.compile(r"^\s*([A-Za-z_][\w/.\-]*)\s*(?:\[\s*(-?\d*)\s*:\s*(-?\d*)\s*\])?\s*$")


def parse_key_spec(spec: str) -> tuple[str, slice | None]:
    """'state' -> ('state', None); 'state[:2]' -> ('state', slice(None, 2)): a key and an optional column slice of its
    per-step values flattened (the one syntax of policy observations and of LeRobot export features)."""
    match = _KEY_SPEC.match(spec) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(f"key {spec!r}: expected 'name' or 'name[start:stop]', e.g. 'state[:2]' ('state[2:3]' for "
                         "one column)")
    name, start, stop = match.groups()
    if "[" not in spec:
        return name, None
    return name, slice(int(start) if start else None, int(stop) if stop else None)


def step_columns(array: np.ndarray, columns: slice | None, spec: str = "") -> np.ndarray:
    """(T, k) view of an array's per-step values flattened, restricted to `columns`; a clear error when none remain."""
    flat = np.asarray(array).reshape(len(array), -1)
    if columns is not None:
        flat = flat[:, columns]
        if flat.shape[1] == 0:
            raise ValueError(f"{spec or 'key'} selects no columns of an array of shape {np.shape(array)}")
    return flat


def uint8_frames(name: str, frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) camera frames as uint8. Float frames of whole 0-255 values (Chi et al.'s PushT zarr stores them as
    float32) are converted in blocks, so no second full-size float copy is made; anything else is a clear error."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"camera {name!r}: expected frames of shape (T, H, W, 3), got {frames.shape}")
    if frames.dtype == np.uint8:
        return frames
    if frames.dtype.kind not in "iuf":
        raise ValueError(f"camera {name!r}: expected uint8 (or whole 0-255) frames, got {frames.dtype}")
    out = np.empty(frames.shape, dtype=np.uint8)
    for start in range(0, len(frames), 1024):
        block = frames[start : start + 1024]
        if block.size and (block.min() < 0 or block.max() > 255 or not np.array_equal(block, np.round(block))):
            raise ValueError(f"camera {name!r}: frames must be uint8, or whole numbers in 0..255; rows {start}.. hold "
                             f"{block.dtype} values in {block.min()}..{block.max()}")
        out[start : start + 1024] = block
    return out


class ReplayBuffer:
    """Episodes of aligned per-step arrays, held in memory; load() and save() use the replay-buffer zarr layout."""

    def __init__(self, data: dict[str, np.ndarray], episode_ends: np.ndarray):
        self._chunks = {key: [np.asarray(value)] for key, value in data.items()}
        self._ends = [np.asarray(episode_ends, dtype=np.int64).reshape(-1)]
        self._check()

    # --- construction -----------------------------------------------------------------------------------------
    @classmethod
    def empty(cls) -> ReplayBuffer:
        """A buffer with no episodes (keys are fixed by the first add_episode)."""
        return cls({}, np.zeros(0, dtype=np.int64))

    @classmethod
    def load(
        cls, path: str | os.PathLike, keys: list[str] | None = None, episodes: list[int] | None = None
    ) -> ReplayBuffer:
        """Read `data/<key>` (all keys, or `keys`; all episodes, or `episodes`) of a zarr v2/v3 store into memory."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no replay buffer at {path}")
        root = _open_group(path, "r")
        if "data" not in root or "meta" not in root or "episode_ends" not in root["meta"]:
            raise ValueError(f"{path} is not a replay buffer: expected groups data/ and meta/episode_ends")
        available = sorted(root["data"].array_keys())
        missing = sorted(set(keys or ()) - set(available))
        if missing:
            raise KeyError(f"{path} has no data/{missing[0]}; available keys: {available}")
        keys = keys if keys is not None else available
        ends = np.asarray(root["meta"]["episode_ends"][:], dtype=np.int64)
        if episodes is None:
            return cls({key: root["data"][key][:] for key in keys}, ends)
        # Read only the selected episodes' steps (e.g. a few image episodes without loading gigabytes).
        starts = np.r_[0, ends[:-1]]
        spans = [(int(starts[i]), int(ends[i])) for i in _episode_indices(episodes, len(ends), path)]
        data = {key: np.concatenate([root["data"][key][a:b] for a, b in spans]) for key in keys}
        return cls(data, np.cumsum([b - a for a, b in spans]))

    # --- views ------------------------------------------------------------------------------------------------
    @property
    def data(self) -> dict[str, np.ndarray]:
        """Per-step arrays, each (n_steps, ...), episodes concatenated."""
        for key, chunks in self._chunks.items():
            if len(chunks) > 1:
                # Episodes are appended as separate pieces and joined once, on first read.
                self._chunks[key] = [np.concatenate(chunks)]
        return {key: chunks[0] for key, chunks in self._chunks.items()}

    @property
    def episode_ends(self) -> np.ndarray:
        """Cumulative episode ends (n_episodes,) int64, as meta/episode_ends."""
        if len(self._ends) > 1:
            self._ends = [np.concatenate(self._ends)]
        return self._ends[0]

    @property
    def keys(self) -> list[str]:
        """Names of the per-step arrays."""
        return list(self._chunks)

    @property
    def n_episodes(self) -> int:
        """Number of episodes."""
        return int(len(self.episode_ends))

    @property
    def n_steps(self) -> int:
        """Total number of steps over all episodes."""
        ends = self.episode_ends
        return int(ends[-1]) if len(ends) else 0

    @property
    def episode_lengths(self) -> np.ndarray:
        """Steps per episode (n_episodes,)."""
        return np.diff(self.episode_ends, prepend=0)

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """Arrays of episode `i` (negative indices count from the end)."""
        n = self.n_episodes
        if not -n <= i < n:
            raise IndexError(f"episode {i} out of range for a buffer of {n} episodes")
        i %= n
        ends = self.episode_ends
        start = int(ends[i - 1]) if i > 0 else 0
        return {key: value[start : int(ends[i])] for key, value in self.data.items()}

    # --- edits ------------------------------------------------------------------------------------------------
    def add_episode(self, arrays: dict[str, np.ndarray]) -> None:
        """Append one episode: equal-length arrays with the buffer's keys (any keys for the first episode)."""
        arrays = {key: np.asarray(value) for key, value in arrays.items()}
        lengths = {key: len(value) if value.ndim else 0 for key, value in arrays.items()}
        if not arrays or len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise ValueError(f"an episode needs non-empty arrays of equal length, got lengths {lengths}")
        has_episodes = self._last_end() > 0
        if has_episodes and set(arrays) != set(self._chunks):
            raise ValueError(f"episode keys {sorted(arrays)} differ from the buffer's keys {sorted(self._chunks)}")
        for key, value in arrays.items():
            stored = self._chunks.get(key)
            if stored and stored[0].shape[1:] != value.shape[1:]:
                raise ValueError(
                    f"data/{key}: episode step shape {value.shape[1:]} differs from the buffer's {stored[0].shape[1:]}"
                )
        if not has_episodes:
            self._chunks = {key: [] for key in arrays}
        for key, value in arrays.items():
            self._chunks[key].append(value)
        self._ends.append(np.array([self._last_end() + next(iter(lengths.values()))], dtype=np.int64))

    def _last_end(self) -> int:
        """Total steps so far, without joining the appended pieces."""
        last = self._ends[-1]
        return int(last[-1]) if len(last) else 0

    def save(self, path: str | os.PathLike) -> None:
        """Write the zarr v2 replay-buffer layout to `path`, through a temporary directory renamed into place."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Half-written folders of saves killed mid-write (an .old-* folder is kept: it may be the only copy left).
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            root = _open_group(tmp, "w")
            data, meta = root.require_group("data"), root.require_group("meta")
            for key, value in self.data.items():
                _write_array(data, key, value)
            _write_array(meta, "episode_ends", self.episode_ends)
            _replace_dir(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{key}: {value.shape[1:]} {value.dtype}" for key, value in self.data.items())
        return f"ReplayBuffer({self.n_episodes} episodes, {self.n_steps} steps; {shapes})"

    def _check(self) -> None:
        """Validate that episode ends are increasing and match every array's length."""
        ends = self.episode_ends
        if len(ends) and (ends[0] <= 0 or np.any(np.diff(ends) <= 0)):
            raise ValueError(f"episode_ends must be positive and strictly increasing, got {ends[:10]}...")
        for key, value in self.data.items():
            if len(value) != self.n_steps:
                raise ValueError(f"data/{key} has {len(value)} steps but episode_ends ends at {self.n_steps}")


def _episode_indices(episodes: list[int], n: int, path: Path) -> list[int]:
    """Validated episode indices (negative ones count from the end)."""
    bad = [i for i in episodes if not -n <= int(i) < n]
    if bad or not len(episodes):
        raise IndexError(f"{path} has {n} episodes; cannot select {bad or 'no episodes'}")
    return [int(i) % n for i in episodes]


def _replace_dir(src: Path, dst: Path) -> None:
    """Move directory `src` to `dst`, replacing an existing `dst` with only a brief window without either."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)

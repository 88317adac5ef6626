"""LeRobotDataset (codebase_version v3.0) folders read into, and written from, the project's replay buffers.

The v3.0 layout, as huggingface/lerobot (``lerobot/datasets``) writes it::

    meta/info.json                              fps, counts, path templates, the features schema
    meta/stats.json                             min/max/mean/std/count/q01..q99 per feature
    meta/tasks.parquet                          task strings (the index, named "task") -> task_index
    meta/episodes/chunk-000/file-000.parquet    one row per episode: length, dataset_from/to_index, where its
                                                data and videos are (chunk/file, from/to timestamps), its stats
    data/chunk-000/file-000.parquet             one row per frame: the numeric features, index, episode_index,
                                                frame_index, timestamp, task_index
    videos/<camera>/chunk-000/file-000.mp4      each camera's frames, episodes one after the other in a file

``load_lerobot`` reads a local folder into a :class:`ReplayBuffer` keyed by the feature names verbatim
(``"observation.image"`` as (T, H, W, 3) uint8, ``"observation.state"``, ``"action"``, ``"next.reward"``...);
``export_lerobot`` writes a replay buffer as such a folder. Parquet goes through pyarrow, video through PyAV.
Videos are AV1 (libsvtav1, LeRobot's default encoder and settings) where PyAV can write it, else H.264 (libx264).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Mapping

import numpy as np

from .replay_buffer import ReplayBuffer, _replace_dir, parse_key_spec, step_columns, uint8_frames

__all__ = [
    "CODEBASE_VERSION",
    "SUPPORTED_VERSIONS",
    "PUSHT_FEATURES",
    "PUSHT_TASK",
    "load_lerobot",
    "export_lerobot",
    "is_lerobot_dataset",
]

CODEBASE_VERSION = "v3.0"
SUPPORTED_VERSIONS = ("v3.0",)
# LeRobot's own lerobot/pusht: the 96x96 camera, the agent position as state, the target position as action.
PUSHT_FEATURES = {"observation.image": "img", "observation.state": "state[:2]", "action": "action"}
PUSHT_TASK = "Push the T-shaped block onto the T-shaped target."

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
_CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + _CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + _CHUNK_FILE + ".mp4"
EPISODES_PATH = EPISODES_DIR + "/" + _CHUNK_FILE + ".parquet"
CHUNKS_SIZE = 1000  # files per chunk folder
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
# Columns every v3.0 frame has besides the features (LeRobot's DEFAULT_FEATURES, in its order).
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
# LeRobot's encoder defaults (VideoEncoderConfig): GOP 2, CRF 30, SVT-AV1 preset 12, yuv420p.
_CODEC_DEFAULTS = {"libsvtav1": {"crf": 30, "preset": 12}, "libx264": {"crf": 23, "preset": "medium"}}
_GOP = 2
_PIX_FMT = "yuv420p"
_TOLERANCE_S = 1e-4  # LeRobotDataset's default tolerance between a frame's timestamp and the decoded one


# --- reading ------------------------------------------------------------------------------------------------------
def is_lerobot_dataset(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder with a LeRobotDataset's meta/info.json (any codebase_version)."""
    return (Path(path) / INFO_PATH).is_file()


def _read_info(path: Path) -> dict:
    """meta/info.json of a v3.0 dataset, or a clear error naming the path and what is expected."""
    if not path.exists():
        raise FileNotFoundError(f"no LeRobotDataset at {path}: expected a folder with {INFO_PATH}")
    if not path.is_dir():
        raise ValueError(f"{path} is a file, not a LeRobotDataset folder (one with {INFO_PATH})")
    if not (path / INFO_PATH).is_file():
        raise ValueError(
            f"{path} is not a LeRobotDataset: no {INFO_PATH} (expected LeRobot's v3.0 layout: {INFO_PATH}, "
            f"{EPISODES_DIR}/chunk-XXX/file-XXX.parquet, data/chunk-XXX/file-XXX.parquet, videos/<camera>/...)"
        )
    try:
        info = json.loads((path / INFO_PATH).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path / INFO_PATH} is not valid JSON: {err}") from None
    version = info.get("codebase_version") if isinstance(info, dict) else None
    if version not in SUPPORTED_VERSIONS:
        hint = (" (convert it with LeRobot's lerobot/datasets/v30/convert_dataset_v21_to_v30.py)"
                if isinstance(version, str) and version.startswith("v2") else "")
        raise ValueError(
            f"{path} is a LeRobotDataset of codebase_version {version!r}; supported: {', '.join(SUPPORTED_VERSIONS)}"
            + hint
        )
    for field in ("fps", "features"):
        if field not in info:
            raise ValueError(f"{path / INFO_PATH} has no {field!r}; a v3.0 info.json needs fps and features")
    return info


def _read_episodes(path: Path) -> list[dict]:
    """Rows of meta/episodes/*/*.parquet (without the per-episode stats), sorted by episode_index."""
    import pyarrow.parquet as pq

    files = sorted((path / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    if not files:
        raise ValueError(f"{path} is not a complete LeRobotDataset: no {EPISODES_DIR}/chunk-XXX/file-XXX.parquet")
    rows: list[dict] = []
    for file in files:
        names = [n for n in pq.read_schema(file).names if not n.startswith("stats/")]
        rows += pq.read_table(file, columns=names).to_pylist()
    rows.sort(key=lambda row: row["episode_index"])
    indices = [row["episode_index"] for row in rows]
    if indices != list(range(len(rows))):
        raise ValueError(f"{path / EPISODES_DIR}: episode indices are not 0..{len(rows) - 1} (got {indices[:10]}...)")
    return rows


def _column_to_numpy(column, feature: dict, key: str, where: Path) -> np.ndarray:
    """An arrow column of a frames parquet as a (n, *shape) array (shape (1,) features as (n,))."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(column)
    if isinstance(column.type, pa.ExtensionType):  # HF datasets' ArrayND columns, if registered
        column = column.storage
    values = column
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(
        values.type
    ):
        values = pc.list_flatten(values)
    shape = tuple(int(s) for s in feature.get("shape", [1]))
    dtype = np.dtype(feature["dtype"])
    array = values.to_numpy(zero_copy_only=False)
    if shape == (1,):
        if array.size != n:
            raise ValueError(f"{where}: column {key!r} holds {array.size} values for {n} frames, expected shape (1,)")
        return array.astype(dtype, copy=False)
    if array.size != n * math.prod(shape):
        raise ValueError(f"{where}: column {key!r} holds {array.size} values for {n} frames of shape {shape}")
    return array.astype(dtype, copy=False).reshape(n, *shape)


def _decode_image_column(column, key: str, where: Path) -> np.ndarray:
    """An 'image' feature (encoded bytes in the parquet, {bytes, path}) as (n, H, W, C) uint8."""
    import imageio.v3 as iio

    frames = []
    for item in column.to_pylist():
        data = item.get("bytes") if isinstance(item, dict) else item
        if data is None:
            raise ValueError(f"{where}: image column {key!r} has a frame without embedded bytes")
        image = np.asarray(iio.imread(data))
        frames.append(image[..., None] if image.ndim == 2 else image[..., :3])
    return np.stack(frames).astype(np.uint8, copy=False)


@dataclass
class _EpisodeVideo:
    episode: int  # position in the output
    start: float  # from_timestamp in the video file
    stop: float  # to_timestamp
    timestamps: np.ndarray  # the frames' timestamps within the episode


def _decode_video_file(file: Path, wanted: list[_EpisodeVideo], fps: float, shape: tuple, key: str,
                       tolerance_s: float) -> dict[int, np.ndarray]:
    """Frames of the episodes `wanted` from one mp4, each frame the one at from_timestamp + its timestamp."""
    import av
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()  # one for all frames: to_ndarray(format=...) sets up swscale per frame, 20x slower
    half = 0.5 / fps
    runs: list[list[float]] = []  # time spans to decode, episodes less than a second apart decoded in one go
    for start, stop in sorted((w.start, w.stop) for w in wanted):
        if runs and start - runs[-1][1] < 1.0:
            runs[-1][1] = max(runs[-1][1], stop)
        else:
            runs.append([start, stop])
    times: list[float] = []
    frames: list[np.ndarray] = []
    try:
        with av.open(str(file)) as container:
            stream = container.streams.video[0]
            for first, last in runs:
                if first > half:  # land on the keyframe at or before the run's first frame
                    container.seek(max(0, int((first - half) / stream.time_base)), stream=stream, backward=True)
                elif times:
                    container.seek(0, stream=stream, backward=True)
                for frame in container.decode(stream):
                    if frame.pts is None:
                        continue
                    t = float(frame.pts * stream.time_base)
                    if t >= last - half:
                        break
                    if t >= first - half:
                        times.append(t)
                        frames.append(reformatter.reformat(frame, format="rgb24").to_ndarray())
    except av.error.FFmpegError as err:
        raise ValueError(f"cannot decode {file} (video of {key!r}): {err}") from None
    times_arr = np.asarray(times)
    out = {}
    for w in wanted:
        inside = np.flatnonzero((times_arr >= w.start - half) & (times_arr < w.stop - half))
        if len(inside) != len(w.timestamps):
            raise ValueError(
                f"{file}: {len(inside)} frames of {key!r} between {w.start:.3f} s and {w.stop:.3f} s, but the "
                f"metadata gives the episode {len(w.timestamps)} frames"
            )
        query = w.start + w.timestamps
        nearest = inside[np.abs(times_arr[inside][None, :] - query[:, None]).argmin(axis=1)]
        gap = np.abs(times_arr[nearest] - query)
        if np.any(gap > max(tolerance_s, 1e-9)):
            bad = int(np.argmax(gap))
            raise ValueError(
                f"{file}: frame {bad} of {key!r} is due at {query[bad]:.5f} s but the nearest decoded frame is at "
                f"{times_arr[nearest[bad]]:.5f} s (tolerance {tolerance_s} s)"
            )
        episode = np.stack([frames[i] for i in nearest])
        if episode.shape[1:] != shape:
            raise ValueError(f"{file}: frames of {key!r} are {episode.shape[1:]}, info.json says {shape}")
        out[w.episode] = episode
    return out


def _hwc_shape(feature: dict) -> tuple[int, int, int]:
    """(H, W, C) of a camera feature, whether info.json lists it HWC (the usual) or CHW."""
    shape = tuple(int(s) for s in feature["shape"])
    names = list(feature.get("names") or [])
    if len(shape) == 3 and names[:1] in (["channel"], ["channels"]):
        return shape[1], shape[2], shape[0]
    return shape  # type: ignore[return-value]


def load_lerobot(
    path: str | os.PathLike,
    keys: list[str] | None = None,
    episodes: list[int] | None = None,
    tolerance_s: float = _TOLERANCE_S,
) -> ReplayBuffer:
    """Read a local LeRobotDataset v3.0 folder into a ReplayBuffer keyed by its feature names.

    `keys` restricts what is read (videos are only decoded when a camera key is asked for); by default every
    feature but the bookkeeping columns (index, episode_index, frame_index, timestamp, task_index; these can be
    asked for by name). Cameras come back as (T, H, W, 3) uint8, features of shape (1,) as (T,). Episodes are
    those of `episodes` (episode indices, negative ones from the end) in that order, else all by episode_index.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    info = _read_info(path)
    features: dict[str, dict] = info["features"]
    fps = float(info["fps"])
    available = [k for k, f in features.items()
                 if k not in DEFAULT_FEATURES and f.get("dtype") not in ("string", "language")]
    requestable = available + [k for k in DEFAULT_FEATURES if k in features]
    if keys is None:
        keys = available
    else:
        missing = [k for k in keys if k not in requestable]
        if missing:
            raise ValueError(f"{path} has no feature {missing[0]!r}; available features: {requestable}")
    keys = list(dict.fromkeys(keys))
    rows = _read_episodes(path)
    if info.get("total_episodes") not in (None, len(rows)):
        raise ValueError(f"{path}: info.json says {info['total_episodes']} episodes, {EPISODES_DIR} lists {len(rows)}")
    n = len(rows)
    if episodes is None:
        chosen = list(range(n))
    else:
        bad = [i for i in episodes if not -n <= int(i) < n]
        if bad or not len(episodes):
            raise IndexError(f"{path} has {n} episodes; cannot select {bad or 'no episodes'}")
        chosen = [int(i) % n for i in episodes]
    lengths = [int(rows[e]["length"]) for e in chosen]

    video_keys = [k for k in keys if features[k]["dtype"] == "video"]
    table_keys = [k for k in keys if features[k]["dtype"] != "video"]
    # Frames: each parquet file needed is read once, only the needed columns and episodes.
    data_path = info.get("data_path", DATA_PATH)
    by_file: dict[Path, list[int]] = {}
    for pos, e in enumerate(chosen):
        row = rows[e]
        file = path / data_path.format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
        by_file.setdefault(file, []).append(pos)
    columns = list(dict.fromkeys(table_keys + ["episode_index", "frame_index", "index", "timestamp"]))
    pieces: dict[str, list] = {k: [None] * len(chosen) for k in keys}
    timestamps: list = [None] * len(chosen)
    for file, positions in by_file.items():
        if not file.is_file():
            raise FileNotFoundError(f"{path}: data file {file} of episodes {[chosen[p] for p in positions]} is missing")
        wanted = [chosen[p] for p in positions]
        schema_names = pq.read_schema(file).names
        absent = [c for c in columns if c not in schema_names and c != "timestamp"]
        if absent:
            raise ValueError(f"{file} has no column {absent[0]!r} (columns: {schema_names})")
        table = pq.read_table(file, columns=[c for c in columns if c in schema_names],
                              filters=[("episode_index", "in", wanted)])
        episode_col = table.column("episode_index").to_numpy()
        frame_col = table.column("frame_index").to_numpy()
        index_col = table.column("index").to_numpy()
        for pos in positions:
            e, row = chosen[pos], rows[chosen[pos]]
            sel = np.flatnonzero(episode_col == e)
            sel = sel[np.argsort(frame_col[sel], kind="stable")]
            expected_index = np.arange(row["dataset_from_index"], row["dataset_to_index"])
            if len(sel) != lengths[pos] or len(expected_index) != lengths[pos] or not np.array_equal(
                index_col[sel], expected_index
            ):
                raise ValueError(
                    f"{file}: episode {e} has {len(sel)} frames there (index {index_col[sel][:1]}..), but the episode "
                    f"metadata says length {lengths[pos]}, index {row['dataset_from_index']}..{row['dataset_to_index']}"
                )
            part = table.take(sel)
            for key in table_keys:
                if features[key]["dtype"] == "image":
                    pieces[key][pos] = _decode_image_column(part.column(key), key, file)
                else:
                    pieces[key][pos] = _column_to_numpy(part.column(key), features[key], key, file)
            timestamps[pos] = (
                part.column("timestamp").to_numpy().astype(np.float64)
                if "timestamp" in part.column_names else frame_col[sel].astype(np.float64) / fps
            )
    # Cameras: the frames at from_timestamp + timestamp in each episode's mp4.
    video_path = info.get("video_path") or VIDEO_PATH
    for key in video_keys:
        shape = _hwc_shape(features[key])
        by_video: dict[Path, list[_EpisodeVideo]] = {}
        for pos, e in enumerate(chosen):
            row = rows[e]
            try:
                where = (row[f"videos/{key}/chunk_index"], row[f"videos/{key}/file_index"])
                span = (float(row[f"videos/{key}/from_timestamp"]), float(row[f"videos/{key}/to_timestamp"]))
            except KeyError:
                raise ValueError(f"{path}: the metadata of episode {e} does not say where its {key!r} video is "
                                 f"(no videos/{key}/chunk_index, file_index, from_timestamp, to_timestamp)") from None
            file = path / video_path.format(video_key=key, chunk_index=where[0], file_index=where[1])
            if not file.is_file():
                raise FileNotFoundError(f"{path}: video file {file} of {key!r} (episode {e}) is missing")
            by_video.setdefault(file, []).append(_EpisodeVideo(pos, span[0], span[1], timestamps[pos]))
        for file, wanted in by_video.items():
            for pos, frames in _decode_video_file(file, wanted, fps, shape, key, tolerance_s).items():
                pieces[key][pos] = frames
    data = {key: np.concatenate(pieces[key]) for key in keys}
    return ReplayBuffer(data, np.cumsum(lengths, dtype=np.int64))


# --- writing ------------------------------------------------------------------------------------------------------
def _feature_array(buffer: ReplayBuffer, name: str, source) -> tuple[np.ndarray, list | dict | None]:
    """The (T, ...) array behind feature `name` and its explicit names, from a spec string or dict."""
    names = None
    if isinstance(source, Mapping):
        names = source.get("names")
        source = source.get("key")
    if not isinstance(source, str):
        raise ValueError(f"feature {name!r}: give its source as 'KEY', 'KEY[a:b]' or {{'key': ..., 'names': ...}}")
    key, columns = parse_key_spec(source)
    if key not in buffer.data:
        raise ValueError(f"feature {name!r} reads {key!r}, which the replay buffer lacks; its keys: {buffer.keys}")
    array = buffer.data[key]
    if columns is not None:
        array = step_columns(array, columns, f"feature {name!r}: {source!r}")
    return np.ascontiguousarray(array), names


def _camera_frames(name: str, array: np.ndarray) -> np.ndarray | None:
    """(T, H, W, 3) frames as uint8, or None for a non-camera array."""
    return uint8_frames(name, array) if array.ndim == 4 and array.shape[-1] == 3 else None


def _dtype_name(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return "bool"
    if dtype.kind in "iuf":
        return dtype.name
    raise ValueError(f"dtype {dtype} cannot be a LeRobot numeric feature (bool, int or float)")


def _stats(values: np.ndarray, image: bool = False) -> dict[str, np.ndarray]:
    """LeRobot's per-feature stats: min, max, mean, std, count, q01..q99; cameras per channel in [0, 1], (C, 1, 1)."""
    if image:  # uint8 (n, H, W, C): exact, from each channel's 256-bin histogram
        channels = values.shape[-1]
        hist = np.stack([np.bincount(values[..., c].ravel(), minlength=256) for c in range(channels)]).astype(float)
        levels = np.arange(256) / 255.0
        total = hist.sum(axis=1)
        mean = hist @ levels / total
        std = np.sqrt(np.maximum(hist @ levels**2 / total - mean**2, 0))
        cdf = np.cumsum(hist, axis=1) / total[:, None]
        out = {
            "min": levels[np.argmax(hist > 0, axis=1)],
            "max": levels[255 - np.argmax(hist[:, ::-1] > 0, axis=1)],
            "mean": mean,
            "std": std,
            **{f"q{round(q * 100):02d}": levels[np.argmax(cdf >= q, axis=1)] for q in QUANTILES},
        }
        out = {k: v.reshape(channels, 1, 1) for k, v in out.items()}
        return {**{k: out[k] for k in ("min", "max", "mean", "std")}, "count": np.array([len(values)]),
                **{k: v for k, v in out.items() if k.startswith("q")}}
    values = values.astype(np.float64).reshape(len(values), -1) if values.ndim == 1 else values.astype(np.float64)
    out = {"min": values.min(0), "max": values.max(0), "mean": values.mean(0), "std": values.std(0),
           "count": np.array([len(values)])}
    quantiles = np.quantile(values, QUANTILES, axis=0)
    for q, v in zip(QUANTILES, quantiles):
        out[f"q{round(q * 100):02d}"] = v
    return out


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file + 1 >= CHUNKS_SIZE else (chunk, file + 1)


def _arrow_type(dtype: np.dtype, shape: tuple[int, ...]):
    import pyarrow as pa

    arrow = pa.from_numpy_dtype(np.dtype(dtype))
    for size in reversed(shape if shape != (1,) else ()):
        arrow = pa.list_(arrow, size)
    return arrow


def _arrow_column(array: np.ndarray, shape: tuple[int, ...]):
    """(n, *shape) values as an arrow column: scalars for shape (1,), else nested fixed-size lists."""
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(array).reshape(-1))
    if shape == (1,):
        return flat
    for size in reversed(shape):
        flat = pa.FixedSizeListArray.from_arrays(flat, size)
    return flat


def _pandas_index_metadata(index: str, columns: list[tuple[str, str, str]]) -> bytes:
    """The b'pandas' schema metadata that makes pandas.read_parquet restore `index` as the frame's index (how LeRobot
    reads meta/tasks.parquet), written without importing pandas."""
    return json.dumps({
        "index_columns": [index],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": n, "field_name": n, "pandas_type": p, "numpy_type": t, "metadata": None}
                    for n, p, t in columns],
        "creator": {"library": "pyarrow", "version": __import__("pyarrow").__version__},
        "pandas_version": "2.2.0",
    }).encode()


class _VideoWriter:
    """One camera's mp4 files (frames at pts = frame / fps, episodes back to back), rolled over at the size limit."""

    def __init__(self, root: Path, key: str, fps: int, shape: tuple[int, int, int], codec: str, options: dict):
        self.root, self.key, self.fps, self.shape, self.codec, self.options = root, key, fps, shape, codec, options
        self.chunk, self.file, self.frames = 0, 0, 0
        self.container = self.stream = None
        self.first_path: Path | None = None

    def path(self) -> Path:
        return self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=self.chunk, file_index=self.file)

    def _open(self) -> None:
        import av

        path = self.path()
        path.parent.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration to stderr otherwise: errors only
        self.first_path = self.first_path or path
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream(self.codec, rate=self.fps, options=self.options)
        self.stream.height, self.stream.width = self.shape[0], self.shape[1]
        self.stream.pix_fmt = _PIX_FMT
        self.frames = 0

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
            self.container = None

    def add_episode(self, frames: np.ndarray) -> dict:
        """Append an episode's (n, H, W, 3) uint8 frames; its metadata columns."""
        import av

        written = self.path().stat().st_size if self.container is not None and self.path().exists() else 0
        if written >= VIDEO_FILES_SIZE_IN_MB * 1024**2:  # the muxer creates the file with its first packets
            self.close()
            self.chunk, self.file = _next_file(self.chunk, self.file)
        if self.container is None:
            self._open()
        start = self.frames
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = self.frames, Fraction(1, self.fps)
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
            self.frames += 1
        return {
            f"videos/{self.key}/chunk_index": self.chunk,
            f"videos/{self.key}/file_index": self.file,
            f"videos/{self.key}/from_timestamp": start / self.fps,
            f"videos/{self.key}/to_timestamp": self.frames / self.fps,
        }

    def info(self, encoder: dict) -> dict:
        """LeRobot's feature 'info' for this camera: what the stream of its first file says, then the encoder's."""
        import av

        with av.open(str(self.first_path)) as container:
            stream = container.streams.video[0]
            info = {
                "video.height": stream.height,
                "video.width": stream.width,
                "video.codec": stream.codec_context.codec.canonical_name,
                "video.pix_fmt": stream.pix_fmt,
                "video.fps": int(self.fps),
                "video.channels": 3,
                "has_audio": False,
            }
        # The encoder settings, as LeRobot records its VideoEncoderConfig fields.
        info.update({f"video.{k}": v for k, v in encoder.items()})
        info.update({"video.fast_decode": 0, "video.video_backend": "pyav", "video.extra_options": {},
                     "is_depth_map": False})
        return info


def default_codec() -> str:
    """libsvtav1 (AV1, LeRobot's default) when this PyAV can write it, else libx264 (H.264, which LeRobot reads)."""
    import av

    for codec in ("libsvtav1", "libx264"):
        try:
            av.codec.Codec(codec, "w")
            return codec
        except Exception:  # noqa: BLE001 - PyAV raises different errors for an unknown codec across versions
            continue
    raise RuntimeError("this PyAV can write neither libsvtav1 nor libx264: camera features cannot be encoded")


def _check_out(out: Path) -> None:
    """`out` as a place a LeRobotDataset may be written: new, empty, or an existing LeRobotDataset (replaced)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a new folder for the LeRobotDataset")
    if out.is_dir() and any(out.iterdir()) and not is_lerobot_dataset(out):
        raise ValueError(f"{out} is a folder that is not a LeRobotDataset (no {INFO_PATH}); refusing to replace it: "
                         "give a new path, or an existing LeRobotDataset folder to replace")


def export_lerobot(
    buffer: ReplayBuffer,
    out: str | os.PathLike,
    fps: int = 10,
    features: Mapping[str, str | Mapping] | None = None,
    task: str = PUSHT_TASK,
    robot_type: str | None = None,
    codec: str | None = None,
    crf: int | None = None,
) -> Path:
    """Write `buffer` as a LeRobotDataset v3.0 folder `out` (replacing a LeRobotDataset there; refusing anything else).

    `features` maps LeRobot feature names to replay-buffer sources: 'KEY', 'KEY[a:b]' or 'KEY[i]' (columns of the
    last axis), or {'key': source, 'names': [...]}; by default PushT's as in LeRobot's lerobot/pusht
    (observation.image <- img, observation.state <- state[:2], action <- action). (T, H, W, 3) arrays (uint8, or
    whole numbers 0..255 as in the PushT zarr) become mp4 camera streams in yuv420p (`codec`: libsvtav1 where PyAV
    has it, else libx264; `crf`: LeRobot's 30 for AV1, 23 for H.264; GOP 2), everything else numeric parquet
    columns. Every frame gets `task`. Written in a temporary folder beside `out`, renamed into place at the end.
    Returns `out`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    features = dict(PUSHT_FEATURES if features is None else features)
    if not features:
        raise ValueError("export_lerobot needs at least one feature")
    if not isinstance(fps, int) or fps <= 0:
        raise ValueError(f"fps must be a positive integer (LeRobot stores it as one), got {fps!r}")
    if buffer.n_episodes == 0:
        raise ValueError("the replay buffer has no episodes to export")
    for name in features:
        if "/" in name or name in DEFAULT_FEATURES or name in ("task",):
            raise ValueError(f"feature name {name!r} is not allowed (no '/', not one of {list(DEFAULT_FEATURES)})")
    _check_out(out)
    arrays: dict[str, np.ndarray] = {}
    schema: dict[str, dict] = {}
    for name, source in features.items():
        array, names = _feature_array(buffer, name, source)
        frames = _camera_frames(name, array)
        if frames is not None:
            array = frames
            if array.shape[1] % 2 or array.shape[2] % 2:
                raise ValueError(
                    f"feature {name!r}: {_PIX_FMT} video needs even height and width, got {array.shape[1:3]}")
            schema[name] = {"dtype": "video", "shape": list(array.shape[1:]), "names": ["height", "width", "channels"]}
        else:
            shape = tuple(array.shape[1:]) or (1,)
            if names is None and len(shape) == 1 and shape != (1,):
                names = {"motors": [f"motor_{i}" for i in range(shape[0])]}  # as in lerobot/pusht
            schema[name] = {"dtype": _dtype_name(array.dtype), "shape": list(shape), "names": names}
        arrays[name] = array
    schema.update({k: dict(v) for k, v in DEFAULT_FEATURES.items()})
    cameras = [k for k, f in schema.items() if f["dtype"] == "video"]
    numeric = [k for k, f in schema.items() if f["dtype"] != "video" and k not in DEFAULT_FEATURES]
    codec = codec or (default_codec() if cameras else None)
    encoder = {"g": _GOP, **_CODEC_DEFAULTS.get(codec, {})}
    if crf is not None:
        encoder["crf"] = crf
    options = {k: str(v) for k, v in encoder.items()}

    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    writers: list = []
    try:
        tmp.mkdir()
        videos = {k: _VideoWriter(tmp, k, fps, tuple(arrays[k].shape[1:]), codec, options) for k in cameras}
        writers = list(videos.values())
        ends = buffer.episode_ends
        starts = np.r_[0, ends[:-1]]
        types = {k: _arrow_type(np.dtype(schema[k]["dtype"]), tuple(schema[k]["shape"])) for k in numeric}
        types.update({"timestamp": pa.float32(), "frame_index": pa.int64(), "episode_index": pa.int64(),
                      "index": pa.int64(), "task_index": pa.int64()})
        frame_schema = pa.schema([(k, types[k]) for k in numeric + list(DEFAULT_FEATURES)])
        bytes_per_frame = sum(arrays[k][:1].nbytes for k in numeric) + 32
        chunk, file, file_frames, data_writer = 0, 0, 0, None
        episode_rows = []
        all_stats: dict[str, list] = {}
        for e, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
            n = b - a
            if data_writer is not None and (file_frames + n) * bytes_per_frame >= DATA_FILES_SIZE_IN_MB * 1024**2:
                data_writer.close()
                data_writer, file_frames = None, 0
                chunk, file = _next_file(chunk, file)
            if data_writer is None:
                data_file = tmp / DATA_PATH.format(chunk_index=chunk, file_index=file)
                data_file.parent.mkdir(parents=True, exist_ok=True)
                data_writer = pq.ParquetWriter(str(data_file), frame_schema, compression="snappy", use_dictionary=True)
            frame_index = np.arange(n, dtype=np.int64)
            bookkeeping = {
                "timestamp": (frame_index / fps).astype(np.float32),
                "frame_index": frame_index,
                "episode_index": np.full(n, e, dtype=np.int64),
                "index": np.arange(a, b, dtype=np.int64),
                "task_index": np.zeros(n, dtype=np.int64),
            }
            columns = [_arrow_column(arrays[k][a:b], tuple(schema[k]["shape"])) for k in numeric]
            columns += [pa.array(bookkeeping[k]) for k in DEFAULT_FEATURES]
            data_writer.write_table(pa.Table.from_arrays(columns, schema=frame_schema))  # one row group an episode
            file_frames += n
            row = {"episode_index": e, "tasks": [task], "length": n, "data/chunk_index": chunk,
                   "data/file_index": file, "dataset_from_index": a, "dataset_to_index": b}
            for key, writer in videos.items():
                row.update(writer.add_episode(arrays[key][a:b]))
            for key in schema:
                values = arrays[key][a:b] if key in arrays else bookkeeping[key]
                stats = _stats(values, image=key in cameras)
                all_stats.setdefault(key, []).append(stats)
                row.update({f"stats/{key}/{s}": v.tolist() for s, v in stats.items()})
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            episode_rows.append(row)
        data_writer.close()
        for writer in writers:
            writer.close()
        episodes_file = tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_file.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(episode_rows), str(episodes_file), compression="snappy")
        tasks = pa.table({"task_index": pa.array([0], pa.int64()), "task": pa.array([task], pa.string())})
        tasks = tasks.replace_schema_metadata({b"pandas": _pandas_index_metadata(
            "task", [("task_index", "int64", "int64"), ("task", "unicode", "object")])})
        pq.write_table(tasks, str(tmp / TASKS_PATH))
        for key, writer in videos.items():
            schema[key]["info"] = writer.info(encoder)
        stats = {key: _aggregate_stats(parts) for key, parts in all_stats.items()}
        (tmp / STATS_PATH).write_text(json.dumps({k: {s: v.tolist() for s, v in st.items()} for k, st in stats.items()},
                                                 indent=4))
        info = {
            "codebase_version": CODEBASE_VERSION,
            "fps": fps,
            "features": schema,
            "total_episodes": buffer.n_episodes,
            "total_frames": buffer.n_steps,
            "total_tasks": 1,
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
            "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB,
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if cameras else None,
            "robot_type": robot_type,
            "splits": {"train": f"0:{buffer.n_episodes}"},
        }
        (tmp / INFO_PATH).write_text(json.dumps(info, indent=4))
        _check_out(out)  # still safe to replace (nothing else appeared there meanwhile)
        _replace_dir(tmp, out)
    finally:
        for writer in writers:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - already failing; the temporary folder goes anyway
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _aggregate_stats(parts: list[dict]) -> dict[str, np.ndarray]:
    """Dataset stats from the episodes' as LeRobot's aggregate_stats makes them: min/max/mean/std/count of all frames
    (pooled exactly), each quantile the count-weighted mean of the episodes' (not the quantile of all frames)."""
    counts = np.array([p["count"][0] for p in parts], dtype=float)
    weights = counts / counts.sum()
    mean = sum(w * p["mean"] for w, p in zip(weights, parts))
    var = sum(w * (p["std"] ** 2 + (p["mean"] - mean) ** 2) for w, p in zip(weights, parts))
    out = {"min": np.min([p["min"] for p in parts], axis=0), "max": np.max([p["max"] for p in parts], axis=0),
           "mean": mean, "std": np.sqrt(var), "count": np.array([int(counts.sum())])}
    for q in QUANTILES:
        name = f"q{round(q * 100):02d}"
        out[name] = sum(w * p[name] for w, p in zip(weights, parts))
    return out

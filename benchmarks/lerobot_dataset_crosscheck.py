"""Cross-check of envs.lerobot_dataset against LeRobot itself, both ways, on PushT episodes.

1. scidiff -> LeRobot: `export_lerobot` writes N PushT episodes; LeRobot's `LeRobotDataset(repo_id, root=DIR)` reads
   them (in LeRobot's own venv); actions, states and frames are compared with the zarr.
2. LeRobot -> scidiff: LeRobot's `LeRobotDataset.create` / `add_frame` / `save_episode` / `finalize` writes the
   same episodes; `load_lerobot` reads them; compared with the zarr and with what LeRobot reads back of its own.
   Also a small LeRobot dataset with an 'image' feature (PNG inside the parquet) and two tasks.
3. The two folders' layouts (files, info.json, parquet schemas, stats) side by side.

The two venvs exchange .npz files: this script is run with the project's venv (the driver) and calls itself with
`--lerobot-python` (a venv with lerobot installed, Python >= 3.12) for the LeRobot steps. It prints max abs diffs;
frames in uint8 units. Usage:

    python benchmarks/lerobot_dataset_crosscheck.py --lerobot-python /tmp/venv-lerobot/bin/python [--episodes 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ID = "scidiff/pusht_crosscheck"  # a name only: the datasets are read from local folders, never the Hub
TASK = "Push the T-shaped block onto the T-shaped target."


# --- LeRobot side (runs in the lerobot venv; imports nothing of scidiff) ------------------------------------------
def _lerobot_read(root: Path, npz: Path) -> None:
    """Every frame of the dataset at `root` through LeRobotDataset.__getitem__, saved as arrays."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset(REPO_ID, root=root, video_backend="pyav", return_uint8=True)
    items = [dataset[i] for i in range(len(dataset))]
    arrays = {
        "action": np.stack([it["action"].numpy() for it in items]),
        "state": np.stack([it["observation.state"].numpy() for it in items]),
        "image": np.stack([it["observation.image"].numpy().transpose(1, 2, 0) for it in items]),  # CHW -> HWC
        "episode_index": np.array([int(it["episode_index"]) for it in items]),
        "frame_index": np.array([int(it["frame_index"]) for it in items]),
        "task": np.array([it["task"] for it in items]),
    }
    meta = {"total_episodes": dataset.meta.total_episodes, "total_frames": dataset.meta.total_frames,
            "fps": dataset.meta.fps, "video_keys": dataset.meta.video_keys,
            "stats_keys": sorted(dataset.meta.stats) if dataset.meta.stats else []}
    np.savez(npz, meta=json.dumps(meta), **arrays)


def _lerobot_write(source: Path, root: Path, npz: Path) -> None:
    """The episodes of `source` (.npz: image, state, action, episode_ends) written with LeRobot's recording API."""
    import lerobot
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    data = np.load(source)
    image, state, action, ends = data["image"], data["state"], data["action"], data["episode_ends"]
    motors = {"motors": ["motor_0", "motor_1"]}
    features = {
        "observation.image": {"dtype": "video", "shape": image.shape[1:], "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": state.shape[1:], "names": motors},
        "action": {"dtype": "float32", "shape": action.shape[1:], "names": motors},
    }
    dataset = LeRobotDataset.create(REPO_ID, fps=10, features=features, root=root, use_videos=True)
    start = 0
    for end in ends:
        for t in range(start, int(end)):
            dataset.add_frame({"observation.image": image[t], "observation.state": state[t], "action": action[t],
                               "task": TASK})
        dataset.save_episode()
        start = int(end)
    dataset.finalize()
    print(f"lerobot {getattr(lerobot, '__version__', '?')} wrote {len(ends)} episodes to {root}", flush=True)
    _lerobot_read(root, npz)


def _lerobot_write_images(root: Path, npz: Path) -> None:
    """A dataset with an 'image' feature (PNG bytes inside the parquet, no video), two tasks, and a scalar."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    rng = np.random.default_rng(0)
    features = {"observation.images.cam": {"dtype": "image", "shape": (16, 24, 3), "names": ["height", "width",
                                                                                            "channels"]},
                "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
                "action": {"dtype": "float32", "shape": (3,), "names": None}}
    images = rng.integers(0, 256, (2, 6, 16, 24, 3), dtype=np.uint8)
    actions = rng.normal(size=(2, 6, 3)).astype(np.float32)
    dataset = LeRobotDataset.create(REPO_ID, fps=5, features=features, root=root, use_videos=False)
    for e in range(2):
        for t in range(6):
            dataset.add_frame({"observation.images.cam": images[e, t], "next.reward": np.array([t / 10], np.float32),
                               "action": actions[e, t], "task": f"task {e}"})
        dataset.save_episode()
    dataset.finalize()
    np.savez(npz, image=images.reshape(-1, 16, 24, 3), action=actions.reshape(-1, 3),
             reward=np.tile(np.arange(6, dtype=np.float32) / 10, 2))


# --- driver (the project's venv) -----------------------------------------------------------------------------------
def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _frame_errors(a: np.ndarray, b: np.ndarray) -> str:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return f"mean {d.mean():.3f}, p99 {np.percentile(d, 99):.0f}, max {d.max()}"


def _layout(root: Path) -> dict:
    """What the folder holds: files, info.json keys and features, the parquet columns."""
    import pyarrow.parquet as pq

    info = json.loads((root / "meta/info.json").read_text())
    episodes = sorted((root / "meta/episodes").glob("*/*.parquet"))
    data = sorted((root / "data").glob("*/*.parquet"))
    return {
        "files": sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()),
        "info_keys": sorted(info),
        "features": {k: {f: v[f] for f in ("dtype", "shape", "names")} for k, v in info["features"].items()},
        "video_info": {k: v.get("info") for k, v in info["features"].items() if v["dtype"] == "video"},
        "episodes_columns": sorted(pq.read_schema(episodes[0]).names),
        "data_schema": {f.name: str(f.type) for f in pq.read_schema(data[0])},
        "stats_keys": sorted(json.loads((root / "meta/stats.json").read_text())),
    }


def _run_lerobot(python: str, *args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([python, __file__, *args], check=True, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lerobot-python", help="python of a venv with lerobot installed (driver mode)")
    parser.add_argument("--episodes", type=int, default=5, help="PushT episodes to use (the first N)")
    parser.add_argument("--zarr", type=Path, default=None, help="PushT replay buffer (default: the shared data)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the datasets go (default: a temp folder)")
    parser.add_argument("--lerobot-read", nargs=2, metavar=("ROOT", "NPZ"), help=argparse.SUPPRESS)
    parser.add_argument("--lerobot-write", nargs=3, metavar=("SOURCE", "ROOT", "NPZ"), help=argparse.SUPPRESS)
    parser.add_argument("--lerobot-write-images", nargs=2, metavar=("ROOT", "NPZ"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.lerobot_read:
        _lerobot_read(Path(args.lerobot_read[0]), Path(args.lerobot_read[1]))
        return 0
    if args.lerobot_write:
        _lerobot_write(*(Path(p) for p in args.lerobot_write))
        return 0
    if args.lerobot_write_images:
        _lerobot_write_images(*(Path(p) for p in args.lerobot_write_images))
        return 0
    if not args.lerobot_python:
        parser.error("--lerobot-python is required (a venv with lerobot: Python >= 3.12)")

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from envs.lerobot_dataset import export_lerobot, load_lerobot
    from envs.replay_buffer import ReplayBuffer
    from scidiff.data import data_path

    zarr = args.zarr or data_path("pusht/pusht_cchi_v7_replay.zarr")
    source = ReplayBuffer.load(zarr, keys=["img", "state", "action"], episodes=list(range(args.episodes)))
    image = source.data["img"].astype(np.uint8)
    state = source.data["state"][:, :2].astype(np.float32)
    action = source.data["action"].astype(np.float32)
    ends = source.episode_ends
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lerobot_crosscheck_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{args.episodes} PushT episodes, {source.n_steps} frames; work folder {work}")

    # 1. scidiff writes, LeRobot reads.
    ours = export_lerobot(source, work / "scidiff_written", fps=10)
    _run_lerobot(args.lerobot_python, "--lerobot-read", str(ours), str(work / "lerobot_read_scidiff.npz"))
    got = np.load(work / "lerobot_read_scidiff.npz")
    meta = json.loads(str(got["meta"]))
    own = load_lerobot(ours)
    starts = np.r_[0, ends[:-1]]
    expected_episode = np.repeat(np.arange(len(ends)), np.diff(np.r_[0, ends]))
    expected_frame = np.arange(len(action)) - np.repeat(starts, np.diff(np.r_[0, ends]))
    print("\n[1] scidiff export_lerobot -> LeRobot 0.6.1 LeRobotDataset")
    print(f"    LeRobot sees {meta['total_episodes']} episodes, {meta['total_frames']} frames, fps {meta['fps']}, "
          f"video keys {meta['video_keys']}; {len(got['action'])} items")
    print(f"    episode_index / frame_index equal: {np.array_equal(got['episode_index'], expected_episode)} / "
          f"{np.array_equal(got['frame_index'], expected_frame)}; task: {set(got['task'].tolist())}")
    print(f"    action max abs diff {_max_abs(got['action'], action)}")
    print(f"    state  max abs diff {_max_abs(got['state'], state)}")
    print(f"    frames LeRobot-decoded vs zarr:             {_frame_errors(got['image'], image)}")
    own_frames = own.data["observation.image"]
    print(f"    frames LeRobot-decoded vs load_lerobot:     {_frame_errors(got['image'], own_frames)}")

    # 2. LeRobot writes, scidiff reads.
    np.savez(work / "source.npz", image=image, state=state, action=action, episode_ends=ends)
    theirs = work / "lerobot_written"
    _run_lerobot(args.lerobot_python, "--lerobot-write", str(work / "source.npz"), str(theirs),
                 str(work / "lerobot_read_lerobot.npz"))
    back = load_lerobot(theirs)
    self_read = np.load(work / "lerobot_read_lerobot.npz")
    print("\n[2] LeRobot 0.6.1 LeRobotDataset.create/add_frame/save_episode -> scidiff load_lerobot")
    print(f"    {back}")
    print(f"    episode_ends equal: {np.array_equal(back.episode_ends, ends)}")
    print(f"    action max abs diff {_max_abs(back.data['action'], action)}")
    print(f"    state  max abs diff {_max_abs(back.data['observation.state'], state)}")
    print(f"    frames load_lerobot vs zarr:                {_frame_errors(back.data['observation.image'], image)}")
    print(f"    frames load_lerobot vs LeRobot's own read:  "
          f"{_frame_errors(back.data['observation.image'], self_read['image'])}")

    # 2b. LeRobot's 'image' features (PNG in the parquet), several tasks.
    _run_lerobot(args.lerobot_python, "--lerobot-write-images", str(work / "lerobot_images"),
                 str(work / "lerobot_images.npz"))
    images = load_lerobot(work / "lerobot_images")
    expected = np.load(work / "lerobot_images.npz")
    print("\n[2b] LeRobot dataset with an 'image' feature (PNG in parquet), 2 tasks -> scidiff load_lerobot")
    print(f"    {images}")
    print(f"    image max abs diff {_max_abs(images.data['observation.images.cam'], expected['image'])}, "
          f"action {_max_abs(images.data['action'], expected['action'])}, "
          f"next.reward {_max_abs(images.data['next.reward'], expected['reward'])}")

    # 3. Layout: what differs between the two folders.
    a, b = _layout(ours), _layout(theirs)
    print("\n[3] layout, scidiff-written vs LeRobot-written")
    for key in a:
        if a[key] == b[key]:
            print(f"    {key}: same")
        elif isinstance(a[key], list):
            only_ours, only_theirs = sorted(set(a[key]) - set(b[key])), sorted(set(b[key]) - set(a[key]))
            print(f"    {key}: only scidiff {only_ours}; only LeRobot {only_theirs}")
        else:
            print(f"    {key}: scidiff {json.dumps(a[key], default=str)}")
            print(f"    {'':{len(key)}}  LeRobot {json.dumps(b[key], default=str)}")
    ours_stats = json.loads((ours / "meta/stats.json").read_text())
    their_stats = json.loads((theirs / "meta/stats.json").read_text())
    print("    stats.json, max abs diff scidiff vs LeRobot (same 5 episodes; cameras in [0, 1]):")
    for feature in ("observation.image", "observation.state", "action"):
        diffs = {s: _max_abs(np.asarray(ours_stats[feature][s]), np.asarray(their_stats[feature][s]))
                 for s in ("min", "max", "mean", "std", "count", "q01", "q50", "q99")}
        print(f"      {feature}: " + ", ".join(f"{s} {d:.3g}" for s, d in diffs.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line for envs (mounted as ``scidiff envs``): ``collect`` records scripted-expert demonstrations;
``export-lerobot`` and ``import-lerobot`` convert replay buffers to and from LeRobotDataset (v3.0) folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_commands", "run", "main"]


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the envs subcommands (`collect`, `export-lerobot`, `import-lerobot`) to an argparse subparsers object."""
    from .experts import EXPERTS

    from scidiff.commands import HelpFormatter, add_threads_option

    collect = subparsers.add_parser(
        "collect", formatter_class=HelpFormatter,
        help="record scripted-expert episodes to a replay-buffer zarr",
        description="Record N scripted-expert episodes (deterministic per seed) in the replay-buffer zarr layout.",
    )
    collect.add_argument(
        "--env", required=True, choices=sorted(EXPERTS), help="Gymnasium id of a task with a scripted expert"
    )
    collect.add_argument("--episodes", type=int, default=100, help="number of episodes to record (default 100)")
    collect.add_argument("--seed", type=int, default=0, help="seed of the whole collection (default 0)")
    collect.add_argument("--out", type=Path, required=True,
                         help="output .zarr directory (an existing replay buffer there is replaced; anything else there "
                              "is refused)")
    collect.add_argument("--keep-failures", action="store_true", help="also keep episodes the expert failed")
    collect.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_threads_option(collect)
    collect.set_defaults(envs_run=_run_collect)

    export = subparsers.add_parser(
        "export-lerobot", formatter_class=HelpFormatter,
        help="write a replay-buffer zarr as a LeRobotDataset (v3.0) folder",
        description="Write a replay-buffer zarr as a LeRobotDataset v3.0 folder (parquet frames and metadata, mp4 "
                    "camera streams) that LeRobot's LeRobotDataset(repo_id, root=DIR) reads. The default features are "
                    "those of LeRobot's lerobot/pusht: observation.image <- img, observation.state <- state[:2], "
                    "action <- action.",
    )
    export.add_argument("--zarr", type=Path, required=True, help="input replay-buffer .zarr")
    export.add_argument("--out", type=Path, required=True,
                        help="output dataset folder (an existing LeRobotDataset there is replaced; anything else there "
                             "is refused)")
    export.add_argument("--fps", type=int, default=10, help="frames per second of the recording")
    export.add_argument("--feature", action="append", default=None, metavar="NAME=SOURCE",
                        help="a LeRobot feature and its replay-buffer source, KEY, KEY[a:b] or KEY[i] (repeatable; "
                             "default: PushT's observation.image=img, observation.state=state[:2], action=action)")
    export.add_argument("--episodes", type=int, default=None, help="export only the first N episodes (default: all)")
    export.add_argument("--task", default=None, help="the task string of every frame (default: PushT's)")
    export.add_argument("--robot-type", default=None, help="robot_type recorded in meta/info.json")
    export.add_argument("--codec", default=None, choices=["libsvtav1", "libx264"],
                        help="video encoder (default: libsvtav1, LeRobot's AV1, where PyAV has it; else libx264)")
    export.add_argument("--crf", type=int, default=None,
                        help="video quality, lower is better (default: LeRobot's 30 for AV1, 23 for H.264)")
    export.set_defaults(envs_run=_run_export_lerobot)

    imp = subparsers.add_parser(
        "import-lerobot", formatter_class=HelpFormatter,
        help="read a LeRobotDataset (v3.0) folder into a replay-buffer zarr",
        description="Read a local LeRobotDataset v3.0 folder into a replay-buffer zarr whose keys are the LeRobot "
                    "feature names (observation.image as (T, H, W, 3) uint8, observation.state, action, "
                    "next.reward...).",
    )
    imp.add_argument("--dataset", type=Path, required=True, help="input LeRobotDataset folder (with meta/info.json)")
    imp.add_argument("--out", type=Path, required=True,
                     help="output .zarr directory (an existing replay buffer there is replaced; anything else there is "
                          "refused)")
    imp.add_argument("--keys", nargs="+", default=None, metavar="FEATURE",
                     help="only these features (cameras are decoded only when asked for; default: every feature)")
    imp.set_defaults(envs_run=_run_import_lerobot)


def run(args: argparse.Namespace) -> int:
    """Run the envs subcommand chosen in `args`; returns the exit status."""
    return args.envs_run(args)


def _check_collect_out(out: Path) -> None:
    """``--out`` as a place a replay buffer may go: new, or an existing replay buffer (replaced). A folder that holds
    anything else (a project, a home folder) is refused: replacing it would delete it."""
    from scidiff.commands import check_output

    check_output(out, "--out", folder=True)
    if out.is_dir() and any(out.iterdir()) and not ((out / "meta" / "episode_ends").exists() and (out / "data").is_dir()):
        raise ValueError(f"--out {out} is a folder that is not a replay buffer (no data/ and meta/episode_ends); "
                         "refusing to replace it: give a new path such as demos.zarr")


def _run_collect(args: argparse.Namespace) -> int:
    """Record the episodes and write them to args.out."""
    from scidiff.commands import check_int, set_threads

    from . import register_envs
    from .collect import collect_episodes

    check_int("--episodes", args.episodes, 1)
    _check_collect_out(args.out)
    set_threads(args.threads)
    register_envs()
    buffer, failures = collect_episodes(
        args.env, args.episodes, seed=args.seed, keep_failures=args.keep_failures, progress=not args.no_progress
    )
    buffer.save(args.out)
    print(
        f"wrote {buffer} to {args.out} "
        f"({failures} failed expert episodes {'kept' if args.keep_failures else 'skipped'})"
    )
    return 0


def _feature_map(items: list[str] | None) -> dict[str, str] | None:
    """``--feature NAME=SOURCE`` options as the features mapping of export_lerobot (None: its PushT default)."""
    if not items:
        return None
    features = {}
    for item in items:
        name, sep, source = item.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise ValueError(f"--feature {item!r}: expected NAME=SOURCE, e.g. observation.state=state[:2]")
        features[name.strip()] = source.strip()
    return features


def _run_export_lerobot(args: argparse.Namespace) -> int:
    """Read the zarr (only the keys the features use) and write the LeRobotDataset."""
    from scidiff.commands import check_int, check_output

    from .lerobot_dataset import PUSHT_FEATURES, PUSHT_TASK, _check_out, export_lerobot
    from .replay_buffer import ReplayBuffer, parse_key_spec

    check_int("--fps", args.fps, 1)
    check_int("--episodes", args.episodes, 1, optional=True)
    features = _feature_map(args.feature)
    keys = sorted({parse_key_spec(source)[0] for source in (features or PUSHT_FEATURES).values()})
    check_output(args.out, "--out", folder=True)
    if args.out.resolve() == args.zarr.resolve():
        raise ValueError(f"--out {args.out} is the input --zarr: choose another folder")
    _check_out(args.out)
    episodes = None
    if args.episodes is not None:
        available = ReplayBuffer.load(args.zarr, keys=[]).n_episodes
        episodes = list(range(min(args.episodes, available)))
    buffer = ReplayBuffer.load(args.zarr, keys=keys, episodes=episodes)
    out = export_lerobot(buffer, args.out, fps=args.fps, features=features, task=args.task or PUSHT_TASK,
                         robot_type=args.robot_type, codec=args.codec, crf=args.crf)
    print(f"wrote {buffer.n_episodes} episodes, {buffer.n_steps} frames as a LeRobotDataset v3.0 to {out}")
    return 0


def _run_import_lerobot(args: argparse.Namespace) -> int:
    """Read the LeRobotDataset and save it as a replay buffer."""
    from .lerobot_dataset import load_lerobot

    _check_collect_out(args.out)
    if args.out.resolve() == args.dataset.resolve():
        raise ValueError(f"--out {args.out} is the input --dataset: choose another folder")
    buffer = load_lerobot(args.dataset, keys=args.keys)
    buffer.save(args.out)
    print(f"wrote {buffer} to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m envs.cli collect ...`` (or export-lerobot, import-lerobot)."""
    parser = argparse.ArgumentParser(prog="python -m envs.cli", description=__doc__)
    add_commands(parser.add_subparsers(required=True, metavar="command"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

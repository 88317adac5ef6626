"""Command line for envs: ``collect`` records scripted-expert demonstrations (mounted as ``scidiff envs``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_commands", "run", "main"]


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the envs subcommands (`collect`) to an argparse subparsers object."""
    from .experts import EXPERTS

    collect = subparsers.add_parser(
        "collect",
        help="record scripted-expert episodes to a replay-buffer zarr",
        description="Record N scripted-expert episodes (deterministic per seed) in the replay-buffer zarr layout.",
    )
    collect.add_argument(
        "--env", required=True, choices=sorted(EXPERTS), help="Gymnasium id of a task with a scripted expert"
    )
    collect.add_argument("--episodes", type=int, default=100, help="number of episodes to record (default 100)")
    collect.add_argument("--seed", type=int, default=0, help="seed of the whole collection (default 0)")
    collect.add_argument("--out", type=Path, required=True, help="output .zarr directory (replaced if it exists)")
    collect.add_argument("--keep-failures", action="store_true", help="also keep episodes the expert failed")
    collect.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    collect.set_defaults(envs_run=_run_collect)


def run(args: argparse.Namespace) -> int:
    """Run the envs subcommand chosen in `args`; returns the exit status."""
    return args.envs_run(args)


def _run_collect(args: argparse.Namespace) -> int:
    """Record the episodes and write them to args.out."""
    from . import register_envs
    from .collect import collect_episodes

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


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m envs.cli collect ...``."""
    parser = argparse.ArgumentParser(prog="python -m envs.cli", description=__doc__)
    add_commands(parser.add_subparsers(required=True, metavar="command"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""Command line for envs: ``collect`` records scripted-expert demonstrations (mounted as ``scidiff envs``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_commands", "run", "main"]


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the envs subcommands (`collect`) to an argparse subparsers object."""
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


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m envs.cli collect ...``."""
    parser = argparse.ArgumentParser(prog="python -m envs.cli", description=__doc__)
    add_commands(parser.add_subparsers(required=True, metavar="command"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

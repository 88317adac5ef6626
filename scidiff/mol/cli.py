"""Command line for molecules (mounted as ``scidiff mol``): ``build`` makes conformer training sets.

Each subcommand registers itself in ``add_commands`` with ``set_defaults(mol_run=handler)``; add new ones
(generate, evaluate) the same way.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["add_commands", "run", "main"]


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the mol subcommands to an argparse subparsers object."""
    build = subparsers.add_parser(
        "build",
        help="build an ETKDG + MMFF conformer training set (sharded SDF, resumable)",
        description="Build conformers for the leakage-free QM9 or drug-like SMILES lists of the data root (test "
                    "molecules removed), or for your own SMILES files (.csv with a 'smiles' column, or .smi[.gz]). "
                    "Rerunning the same command skips finished shards. Train on it with data.sdf=[OUT].",
    )
    build.add_argument("source", nargs="+", help="'qm9', 'drugs', or SMILES files")
    build.add_argument("--out", type=Path, required=True, help="output folder (shard_XXXXX.sdf, items.tsv, skip lists)")
    build.add_argument("--conformers", type=int, default=5, help="conformers per molecule (default 5)")
    build.add_argument("--limit", type=int, default=None, help="only the first N molecules (after exclusions)")
    build.add_argument("--shard-size", type=int, default=256, help="molecules per shard (default 256)")
    build.add_argument("--processes", type=int, default=None, help="worker processes (default: all cores)")
    build.add_argument("--seed", type=int, default=0, help="ETKDG seed (default 0)")
    build.add_argument("--no-mmff", action="store_true", help="keep ETKDG geometries without MMFF94 minimisation")
    build.set_defaults(mol_run=_run_build)
    from .commands import add_evaluate_command, add_generate_command

    add_generate_command(subparsers)
    add_evaluate_command(subparsers)


def run(args: argparse.Namespace) -> int:
    """Run the mol subcommand chosen in ``args``; returns the exit status."""
    return args.mol_run(args)


def _items(sources: list[str], limit: int | None) -> list[tuple[str, str]]:
    from .build import SOURCES, read_smiles_file

    items: list[tuple[str, str]] = []
    for source in sources:
        if source in SOURCES:
            kept, dropped = SOURCES[source]()
            print(f"{source}: {len(kept)} molecules; dropped {dropped}")
            items += kept
        else:
            items += read_smiles_file(source)
    return items[:limit]


def _run_build(args: argparse.Namespace) -> int:
    from .build import build_shards

    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # per-molecule skips are logged as warnings
    items = _items(args.source, args.limit)
    report = build_shards(items, args.out, num_conformers=args.conformers, shard_size=args.shard_size,
                          seed=args.seed, mmff=not args.no_mmff, processes=args.processes)
    print(f"{args.out}: {report.written} shards written, {report.reused} already done; this run: "
          f"{report.molecules} molecules, {report.conformers} conformers, {report.skipped} skipped "
          f"(reasons in shard_*.skipped.tsv)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m scidiff.mol.cli build ...``."""
    parser = argparse.ArgumentParser(prog="python -m scidiff.mol.cli", description=__doc__)
    add_commands(parser.add_subparsers(required=True, metavar="command"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

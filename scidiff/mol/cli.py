"""Command line for molecules (mounted as ``scidiff mol``): ``generate`` conformers, ``evaluate`` generators against
reference sets, ``build`` conformer training sets. All argparse of ``scidiff mol`` lives here; the work is done by
``pipeline``, ``evaluate`` and ``build``.

Each subcommand registers itself in ``add_commands`` with ``set_defaults(mol_run=handler)``; add new ones the same way.
Nothing here imports torch: the scidiff generator loads the model when it first runs.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path
from typing import Any

from scidiff.commands import HelpFormatter, add_threads_option, check_int, check_output, set_threads

from .build import SOURCES, build_qm9_pairs, build_shards, read_smiles_file
from .evaluate import compare_table, evaluate_method, file_generator, load_reference_set, save_results
from .forcefield import RELAXATIONS
from .io import UNASSIGNED_STEREO
from .pipeline import DEFAULT_METHOD, METHODS, GenerateFn, GenerateSummary, GenerationUnavailable, generate, get_generator
from .shards import RayOptions, generate_shards

__all__ = ["add_commands", "add_generate_command", "add_evaluate_command", "run_generate", "run_evaluate", "run", "main"]

PAIRS = "qm9-pairs"  # the build source of refinement pairs (not a SMILES list)
TORSION_PAIRS = "torsion-pairs"  # the build source of torsional-diffusion examples (drug-like list or SMILES files)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the mol subcommands to an argparse subparsers object."""
    build = subparsers.add_parser(
        "build", formatter_class=HelpFormatter,
        help="build an ETKDG + MMFF conformer training set or QM9 refinement pairs (sharded SDF, resumable)",
        description="Build conformers for the leakage-free QM9 or drug-like SMILES lists of the data root (test "
                    "molecules removed), or for your own SMILES files (.csv with a 'smiles' column, or .smi[.gz]). "
                    "'qm9-pairs' builds refinement pairs instead: for all of QM9 (the qm9pack package) minus the "
                    "reserved ids and the GEOM-QM9 test molecules, ETKDG + MMFF94 seeds each with its DFT geometry "
                    "aligned under a symmetry-aware atom mapping; validation ids go to OUT/validation_ids.txt. "
                    "'torsion-pairs' [SMILES files] builds torsional-diffusion examples: for drug-like molecules "
                    "with rotatable bonds (default the drug-like list; GEOM-DRUGS test molecules always removed) an "
                    "MMFF94 ensemble (seeds -> energy window -> RMSD de-duplication) and per reference conformer an "
                    "ETKDG local structure with its torsions matched to it, into OUT/train and OUT/validation. "
                    "Rerunning the same command skips finished shards. Train on it with data.sdf=[OUT].",
    )
    build.add_argument("source", nargs="+", help=f"{', '.join(map(repr, SOURCES))} or SMILES files; or {PAIRS!r} alone; "
                                                 f"or {TORSION_PAIRS!r} [SMILES files]")
    build.add_argument("--out", type=Path, required=True, help="output folder (shard_XXXXX.sdf, items.tsv, skip lists)")
    build.add_argument("--conformers", type=int, default=None,
                       help="conformers (qm9-pairs: seeds; torsion-pairs: ETKDG seeds of the ensemble) per molecule "
                            "(default 5; torsion-pairs 30)")
    build.add_argument("--limit", type=int, default=None, help="only the first N molecules (after exclusions)")
    build.add_argument("--shard-size", type=int, default=256, help="molecules per shard (default 256)")
    build.add_argument("--processes", type=int, default=None, help="worker processes (default: all cores)")
    build.add_argument("--seed", type=int, default=0, help="ETKDG seed (default 0)")
    build.add_argument("--no-mmff", action="store_true", help="keep ETKDG geometries without MMFF94 minimisation")
    torsion = build.add_argument_group("torsion-pairs")
    torsion.add_argument("--validation", type=int, default=0, help="molecules held out into OUT/validation")
    torsion.add_argument("--energy-window", type=float, default=6.0, help="kcal/mol above the MMFF94 minimum")
    torsion.add_argument("--dedup-rmsd", type=float, default=0.5, help="heavy-atom RMSD (Å) below which conformers are duplicates")
    torsion.add_argument("--max-references", type=int, default=10, help="reference conformers per molecule at most")
    build.set_defaults(mol_run=_run_build)
    add_generate_command(subparsers)
    add_evaluate_command(subparsers)


def add_generate_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``generate`` (INPUT -n N -o OUT.sdf) to an argparse subparsers object."""
    p = subparsers.add_parser(
        "generate", formatter_class=HelpFormatter, help="generate 3D conformers (explicit H) for SMILES / .smi / .csv / .sdf input into an SDF",
        description="One SDF record per conformer, named by the input id, with input_index, conf_id and the settings "
                    "used. Stereo of every conformer is checked against the input (mirror fix, bounded resampling); "
                    "wrong ones are never written. Exit status 1 only when nothing could be generated.")
    p.add_argument("input", help="a SMILES string, or a .smi/.csv/.tsv/.txt (optionally .gz) or .sdf file")
    p.add_argument("-n", "--num-conformers", type=int, default=10, help="conformers per molecule (default 10)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output .sdf (written atomically); with --shard-size a folder of shards")
    p.add_argument("--shard-size", type=int, default=None, metavar="N",
                   help="stream the input into OUTPUT/shard_XXXXX.sdf of N inputs each, with manifest.jsonl and "
                        "settings.json; rerunning the same command continues after the last finished shard "
                        "(conformers equal the one-file run's when N is a multiple of --batch-size)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the shards (needs --shard-size) on a Ray cluster through Ray Data, the same shards and "
                        "manifest: ADDRESS as ray.init takes it (auto, HOST:6379, ray://HOST:10001); without one "
                        "RAY_ADDRESS or a new local cluster. The input and OUTPUT must be at the same path on every "
                        "node. Needs pip install 'scidiff[ray]'")
    p.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="Ray actors (default: the cluster's CPUs / --ray-cpus)")
    p.add_argument("--ray-cpus", type=float, default=1.0, help="CPUs per Ray actor (also its torch threads)")
    p.add_argument("--ray-gpus", type=float, default=0.0, help="GPUs per Ray actor (with --device cuda)")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help=f"generator (default {DEFAULT_METHOD}: ETKDG + MMFF94 seeds refined towards DFT geometries)")
    p.add_argument("--sampler", default=None,
                   help="scidiff sampler (model only), e.g. ddim, heun (default: the one the model's run used)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (model only; default: the model run's)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed and batch size -> same output")
    p.add_argument("--batch-size", type=int, default=32, help="molecules per generator call (default 32)")
    p.add_argument("--device", default=None, help="torch device for the model, e.g. cpu, cuda")
    p.add_argument("--checkpoint", default=None, help="model weights for --method scidiff (default: the bundled ones)")
    p.add_argument("--torsion-checkpoint", default=None, metavar="MODEL.safetensors",
                   help="--method scidiff with torsional diffusion: for molecules with rotatable bonds, sample the "
                        "torsions of ETKDG + MMFF94 local structures with this torsion model (scidiff train "
                        "experiment=mol_torsion) before refinement; each record's method_used says which path made it")
    p.add_argument("--refine-outside-domain", action="store_true",
                   help="--method scidiff: refine every molecule, also those unlike the refiner's training molecules "
                        "(bundled: more than 9 heavy atoms, or elements other than H, C, N, O, F), which otherwise keep "
                        "their ETKDG + MMFF94 seeds (record property refine_skipped says why)")
    p.add_argument("--relax", choices=RELAXATIONS, default="none", help="post-relaxation (default none)")
    p.add_argument("--core", default=None, metavar="REF.sdf",
                   help="hold a shared scaffold: atoms matching the heavy atoms of REF.sdf's first molecule keep its "
                        "coordinates (etkdg, etkdg_mmff, scidiff); each record gets its core_rmsd")
    p.add_argument("--max-resample", type=int, default=2, help="resampling rounds for conformers with wrong stereo")
    p.add_argument("--unassigned-stereo", choices=UNASSIGNED_STEREO, default="keep-any",
                   help="stereocentres the input leaves open (a SMILES without @, an SDF with all-zero coordinates): "
                        "keep-any (any configuration, with a warning per molecule), enumerate (every stereoisomer, "
                        "as NAME_stereoK) or refuse (fail the molecule)")
    p.add_argument("--smiles-column", default=None, help="SMILES column name of a table with a header")
    p.add_argument("--id-column", default=None, help="id column name of a table with a header")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_threads_option(p)
    p.set_defaults(mol_run=run_generate)
    return p


def run_generate(args: argparse.Namespace, generate_fn: GenerateFn | None = None) -> int:
    """Run ``generate`` from parsed arguments; prints failures and the 'N/M molecules succeeded' line."""
    try:
        summary = _generate_from_args(args, generate_fn)
    except GenerationUnavailable as exc:
        print(f"scidiff: error: {exc}", file=sys.stderr)
        return 2
    for failure in summary.failed:
        print(f"failed: {failure.describe()}", file=sys.stderr)
    for failure in summary.stereo_dropped:
        print(f"stereo: {failure.describe()}", file=sys.stderr)
    for warning in summary.unassigned:
        print(f"warning: {warning.describe()} (--unassigned-stereo enumerate or refuse to change that)", file=sys.stderr)
    print(summary.line())
    return 0 if summary.succeeded else 1


def _generate_from_args(args: argparse.Namespace, generate_fn: GenerateFn | None) -> GenerateSummary:
    set_threads(getattr(args, "threads", None))
    shard_size = getattr(args, "shard_size", None)
    write = generate if shard_size is None else functools.partial(generate_shards, shard_size=shard_size)
    if getattr(args, "ray", None) is not None:
        if shard_size is None:
            raise ValueError("--ray runs shards: give --shard-size N too (e.g. 256)")
        write = functools.partial(write, ray=RayOptions(args.ray or None, args.ray_workers, args.ray_cpus, args.ray_gpus))
    return write(args.input, args.output, n=args.num_conformers, method=args.method, generate_fn=generate_fn,
                    seed=args.seed, batch_size=args.batch_size, relax=args.relax, max_resample=args.max_resample,
                    progress=not args.no_progress, smiles_column=args.smiles_column, id_column=args.id_column,
                    core=args.core, unassigned_stereo=getattr(args, "unassigned_stereo", "keep-any"),
                    **_model_options(args))


# The generator options that both generate and evaluate take from their command line (model methods only).
MODEL_OPTIONS = ("sampler", "steps", "device", "checkpoint", "torsion_checkpoint", "refine_outside_domain")


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model options given on the command line; an unset option or flag is left out (the run's own default)."""
    return {k: v for k in MODEL_OPTIONS if (v := getattr(args, k, None)) is not None and v is not False}


def add_evaluate_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``evaluate`` (methods or a generated SDF against a reference set) to an argparse subparsers object."""
    p = subparsers.add_parser(
        "evaluate", formatter_class=HelpFormatter, help="score generators side by side: ground state vs QM9 DFT, COV/AMR vs reference ensembles",
        description="qm9-dft: min heavy-atom RMSD to the QM9 DFT geometry (test split), -n conformers each. "
                    "geom-qm9 / geom-drugs / PATH.sdf: COV/AMR recall and precision with 2K conformers for K "
                    "references (locally built xTB-refined RDKit ensembles, not GEOM/CREST). Plus PoseBusters, "
                    "stereo preservation, speed and optional GFN2-xTB strain.")
    p.add_argument("--reference", default="qm9-dft",
                   help="qm9-dft, geom-qm9, geom-drugs, a reference .sdf grouped by mol_id, or a SMILES table "
                        "(.smi/.csv: PoseBusters, stereo and speed only)")
    p.add_argument("--smiles-column", default=None, help="SMILES column of a --reference table with a header")
    p.add_argument("--method", nargs="+", choices=METHODS, default=["etkdg", "etkdg_mmff"], help="generators to compare")
    p.add_argument("--generated", type=Path, nargs="*", default=[], help="also score these generated SDFs (matched by SMILES)")
    p.add_argument("-n", "--num-conformers", type=int, default=None,
                   help="conformers per molecule (default: 5 for qm9-dft, 2K for ensembles)")
    p.add_argument("--limit", type=int, default=None, help="first N molecules of the reference set")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--batch-size", type=int, default=32, help="molecules per generator call")
    p.add_argument("--sampler", default=None, help="scidiff sampler (model only; default: the model run's)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (model only; default: the model run's)")
    p.add_argument("--device", default=None, help="torch device for the model (default: cpu)")
    p.add_argument("--checkpoint", default=None, help="model weights for --method scidiff")
    p.add_argument("--torsion-checkpoint", default=None, help="torsion model for --method scidiff (see generate)")
    p.add_argument("--refine-outside-domain", action="store_true",
                   help="--method scidiff refines every molecule (see generate)")
    p.add_argument("--no-posebusters", action="store_true", help="skip the PoseBusters checks")
    p.add_argument("--strain-steps", type=int, default=0, help="GFN2-xTB relaxation steps for strain (0: off; slow)")
    p.add_argument("--json", type=Path, default=None, help="write every result (per molecule too) here")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_threads_option(p)
    p.set_defaults(mol_run=run_evaluate)
    return p


def _check_evaluate_args(args: argparse.Namespace) -> None:
    """Every setting, input and output of ``evaluate``, refused before any work."""
    check_int("-n/--num-conformers", args.num_conformers, 1, optional=True)
    check_int("--limit", args.limit, 1, optional=True)
    check_int("--batch-size", args.batch_size, 1)
    check_int("--steps", args.steps, 1, optional=True)
    check_int("--strain-steps", args.strain_steps, 0)
    for path in args.generated:
        if not path.is_file():
            raise FileNotFoundError(f"--generated {path}: no such file")
    if args.json:
        check_output(args.json, "--json", inputs=[*args.generated, args.reference])


def _with_progress(name: str, fn: GenerateFn, total: int, enabled: bool):
    """``fn`` that advances a progress bar (stderr) by the molecules of each batch it finishes."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=f"evaluate {name}", unit="mol", disable=not enabled)

    def generate_fn(mols, n, seed, **options):
        out = fn(mols, n, seed, **options)
        bar.update(len(mols))
        return out

    return generate_fn, bar


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``evaluate``: one result per method / file, a comparison table on stdout, optional JSON."""
    _check_evaluate_args(args)
    set_threads(args.threads)
    data = load_reference_set(args.reference, args.limit, args.smiles_column)
    for failure in data["skipped"]:  # bad lines of the reference, each by its line, before the long part
        print(f"skipped: {failure.describe()}", file=sys.stderr)
    if "references" in data:
        counts = [2 * ref.GetNumConformers() for ref in data["references"]] if args.num_conformers is None \
            else args.num_conformers
    else:
        counts = args.num_conformers or 5
    options = _model_options(args)
    runs = [(m, get_generator(m)) for m in args.method] + [(str(p), file_generator(p)) for p in args.generated]
    results = []
    for name, fn in runs:
        fn, bar = _with_progress(name, fn, len(data["inputs"]), not args.no_progress)
        with bar:
            results.append(evaluate_method(name, fn, data["inputs"], counts, seed=args.seed, dft=data.get("dft"),
                                           references=data.get("references"), deltas=data["deltas"],
                                           posebusters=not args.no_posebusters, strain_steps=args.strain_steps,
                                           batch_size=args.batch_size, skipped=data["skipped"], **options))
    for result in results[len(args.method):]:  # read from a file: generation speed was not measured
        result["summary"]["conf/s"] = result["summary"]["conf/cpu-s"] = float("nan")
    print(f"reference: {data['label']}; {len(data['inputs'])} molecules, {len(data['skipped'])} skipped")
    print(compare_table(results))
    if args.json:
        save_results(args.json, {"reference": data["label"], "results": results})
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the mol subcommand chosen in ``args``; returns the exit status."""
    return args.mol_run(args)


def _items(sources: list[str], limit: int | None) -> list[tuple[str, str]]:
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
    torsions = args.source[0] == TORSION_PAIRS
    if args.conformers is None:
        args.conformers = 30 if torsions else 5
    for option, value in (("--conformers", args.conformers), ("--shard-size", args.shard_size),
                          ("--max-references", args.max_references)):
        check_int(option, value, 1)
    check_int("--validation", args.validation, 0)
    check_int("--limit", args.limit, 1, optional=True)
    check_int("--processes", args.processes, 1, optional=True)
    check_output(args.out, "--out", folder=True)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # per-molecule skips are logged as warnings
    if PAIRS in args.source:
        if args.source != [PAIRS] or args.no_mmff:
            print(f"scidiff: error: {PAIRS} is built alone and always from MMFF94 seeds (no other sources, no --no-mmff)",
                  file=sys.stderr)
            return 2
        report, _, _ = build_qm9_pairs(args.out, num_conformers=args.conformers, limit=args.limit,
                                       shard_size=args.shard_size, seed=args.seed, processes=args.processes)
    elif torsions or TORSION_PAIRS in args.source:
        if not torsions or args.no_mmff or any(s in SOURCES or s == PAIRS for s in args.source[1:]):
            print(f"scidiff: error: {TORSION_PAIRS} comes first, followed only by SMILES files (none: the drug-like "
                  "list), and always uses MMFF94 (no --no-mmff)", file=sys.stderr)
            return 2
        from .torsion_data import build_torsion_pairs

        files = args.source[1:]
        reports, _ = build_torsion_pairs(
            args.out, items=[i for f in files for i in read_smiles_file(f)] if files else None, limit=args.limit,
            validation=args.validation, num_conformers=args.conformers, energy_window=args.energy_window,
            dedup_rmsd=args.dedup_rmsd, max_references=args.max_references, shard_size=args.shard_size,
            seed=args.seed, processes=args.processes)
        for split, report in reports.items():
            print(f"{args.out / split}: {report.written} shards written, {report.reused} already done; this run: "
                  f"{report.molecules} molecules, {report.conformers} conformers, {report.skipped} skipped "
                  f"(reasons in shard_*.skipped.tsv)")
        return 0
    else:
        report = build_shards(_items(args.source, args.limit), args.out, num_conformers=args.conformers,
                              shard_size=args.shard_size, seed=args.seed, mmff=not args.no_mmff, processes=args.processes)
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

"""GEOM-DRUGS test molecules: scidiff against ETKDG + MMFF94 on the same inputs, in one run.

Two parts, every method on the same molecules:
1. the first --limit molecules of GeoMol's DRUGS test set (``geom/DRUGS_test_smiles_corrected.csv``,
   ``corrected_smiles``), n conformers each: PoseBusters ``mol``, stereo and graph preservation (raw generator
   output, re-perceived from 3D), conformers/s, and GFN2-xTB strain E(conformer) - E(relaxed) on the first
   --strain-limit molecules' first --strain-conformers conformers with at most --strain-steps L-BFGS steps (a
   bounded relaxation: a lower bound on the strain);
2. COV/AMR recall and precision against ``reference/geom_drugs_ref.sdf`` (locally built xTB-refined RDKit
   ensembles, not GEOM's CREST ones: not comparable digit for digit with published tables, and built from ETKDG +
   MMFF94 seeds, which favours that baseline): 2K conformers for a molecule with K references, heavy-atom
   ``GetBestRMS``, headline delta 0.75 A, mean and median over molecules, with the delta sweep in the JSON
   (--coverage-limit: the first N molecules of it);
3. with --torsion-validation DIR: the same coverage on the held-out split of ``scidiff mol build torsion-pairs``
   (MMFF94 ensembles built here, labelled so).

Methods are the pipeline's generators, plus ``scidiff_torsional`` (``scidiff`` with --torsion-checkpoint: torsional
diffusion on ETKDG + MMFF94 local structures, then the refiner) and ``etkdg_mmff_10x_clustered`` (ETKDG + MMFF94 with
10x the conformers, clustered down by k-centre on heavy-atom RMSD; ``evaluate.clustered_generator``), any method
with ``_then_mmff`` appended (its conformers MMFF94-relaxed, as ``scidiff mol generate --relax mmff``;
``evaluate.relaxed_generator``) and
``scidiff_all_sizes`` (the refiner on every molecule, ``--refine-outside-domain``; plain ``scidiff`` leaves molecules
outside the refiner's training domain, here nearly all, at their ETKDG + MMFF94 seeds).

    OMP_NUM_THREADS=1 python benchmarks/mol_geom_drugs.py --limit 200 --json runs/eval/drugs200.json
    OMP_NUM_THREADS=1 python benchmarks/mol_geom_drugs.py --no-validity --coverage-limit 12 \
        --methods scidiff_torsional etkdg etkdg_mmff etkdg_mmff_10x_clustered \
        --torsion-checkpoint runs/mol_torsion/model.safetensors --torsion-validation runs/data/torsion_pairs/validation \
        --json runs/eval/torsional.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from scidiff.data import data_path
from scidiff.mol.evaluate import (DELTAS_DRUGS, GEOM_DRUGS_TEST_SMILES, clustered_generator, compare_table,
                                  evaluate_method, load_reference_set, relaxed_generator, save_results)
from scidiff.mol.pipeline import get_generator

OVERSAMPLE = 10  # etkdg_mmff_10x_clustered: conformers generated per conformer kept
RELAXED_SUFFIX = "_then_mmff"  # any method's conformers, then MMFF94-relaxed (evaluate.relaxed_generator)


def generator(method: str, torsion_checkpoint: str | None, torsion_t_start: float | None = None):
    """(generate_fn, options) of a benchmark method name."""
    if method.endswith(RELAXED_SUFFIX):  # e.g. scidiff_torsional_then_mmff: that method, then MMFF94 relaxation
        fn, options = generator(method.removesuffix(RELAXED_SUFFIX), torsion_checkpoint, torsion_t_start)
        return relaxed_generator(fn, "mmff"), options
    if method == "scidiff_torsional":
        if torsion_checkpoint is None:
            raise SystemExit("scidiff_torsional needs --torsion-checkpoint (a `scidiff train experiment=mol_torsion` run)")
        return get_generator("scidiff"), {"torsion_checkpoint": torsion_checkpoint, "torsion_t_start": torsion_t_start}
    if method == "scidiff_all_sizes":  # the refiner on every molecule, also outside its training domain
        return get_generator("scidiff"), {"refine_outside_domain": True}
    if method == f"etkdg_mmff_{OVERSAMPLE}x_clustered":
        return clustered_generator(get_generator("etkdg_mmff"), OVERSAMPLE), {}
    return get_generator(method), {}


def coverage_part(ref: dict, methods: list[str], args: argparse.Namespace) -> list[dict]:
    """COV/AMR with 2K conformers for K references, every method on the same molecules."""
    counts = [2 * r.GetNumConformers() for r in ref["references"]]
    print(f"{len(ref['inputs'])} molecules of {ref['label']}, {sum(counts) // 2} references, 2K conformers each",
          flush=True)
    results = []
    for method in methods:
        fn, options = generator(method, args.torsion_checkpoint, args.torsion_t_start)
        result = evaluate_method(method, fn, ref["inputs"], counts, seed=args.seed, references=ref["references"],
                                 deltas=DELTAS_DRUGS, posebusters=False, skipped=ref["skipped"], **options)
        results.append(result)
        print(compare_table([result]).splitlines()[-1], flush=True)
    print(compare_table(results), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=200, help="first N DRUGS test molecules (default 200)")
    parser.add_argument("-n", "--num-conformers", type=int, default=5, help="conformers per molecule in part 1")
    parser.add_argument("--methods", nargs="+", default=["etkdg_mmff", "scidiff"])
    parser.add_argument("--strain-limit", type=int, default=40, help="molecules scored for xTB strain (first N)")
    parser.add_argument("--strain-conformers", type=int, default=1, help="conformers per molecule for strain")
    parser.add_argument("--strain-steps", type=int, default=60, help="GFN2-xTB L-BFGS steps of the relaxation")
    parser.add_argument("--no-validity", action="store_true", help="skip part 1")
    parser.add_argument("--no-coverage", action="store_true", help="skip part 2")
    parser.add_argument("--coverage-limit", type=int, default=None, help="first N molecules of the reference set")
    parser.add_argument("--torsion-checkpoint", default=None, help="torsion model of method scidiff_torsional")
    parser.add_argument("--torsion-t-start", type=float, default=None,
                        help="scidiff_torsional from the local structures' own torsions noised to this sigma (radians; "
                             "SDEdit) instead of from noise")
    parser.add_argument("--torsion-validation", default=None,
                        help="part 3: a held-out torsion-pairs folder (scidiff mol build torsion-pairs --validation)")
    parser.add_argument("--validation-limit", type=int, default=None, help="first N molecules of part 3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    start = time.perf_counter()

    drugs = load_reference_set(str(data_path(GEOM_DRUGS_TEST_SMILES)), limit=args.limit,
                               smiles_column="corrected_smiles")
    if not args.no_validity:
        print(f"part 1: {len(drugs['inputs'])} of the first {args.limit} DRUGS test molecules "
              f"({len(drugs['skipped'])} skipped), n={args.num_conformers}", flush=True)
    validity = []
    for method in [] if args.no_validity else args.methods:
        fn, options = generator(method, args.torsion_checkpoint, args.torsion_t_start)
        result = evaluate_method(method, fn, drugs["inputs"], args.num_conformers, seed=args.seed,
                                 strain_steps=args.strain_steps, strain_limit=args.strain_limit,
                                 strain_conformers=args.strain_conformers, skipped=drugs["skipped"], **options)
        result["summary"]["xTB strain mean"] = result["xtb_strain"]["mean"]
        result["summary"]["strain confs"] = result["xtb_strain"]["n_conformers"]
        validity.append(result)
        print(compare_table([result]).splitlines()[-1], flush=True)
    if validity:
        print(compare_table(validity), flush=True)

    coverage, held_out = [], []
    if not args.no_coverage:
        print("part 2:", end=" ")
        coverage = coverage_part(load_reference_set("geom-drugs", limit=args.coverage_limit), args.methods, args)
    if args.torsion_validation:
        from scidiff.mol.torsion_data import reference_set

        print("part 3:", end=" ")
        held_out = coverage_part(reference_set(args.torsion_validation, args.validation_limit), args.methods, args)
    wall = time.perf_counter() - start
    print(f"total {wall:.0f} s; {platform.processor() or platform.machine()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    if args.json:
        save_results(args.json, {"argv": sys.argv[1:], "wall_s": wall, "validity": validity, "coverage": coverage,
                                 "held_out_coverage": held_out})
    return 0


if __name__ == "__main__":
    sys.exit(main())

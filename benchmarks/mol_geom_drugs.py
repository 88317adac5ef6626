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
   ``GetBestRMS``, headline delta 0.75 A, mean and median over molecules, with the delta sweep in the JSON.

    OMP_NUM_THREADS=1 python benchmarks/mol_geom_drugs.py --limit 200 --json runs/eval/drugs200.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from scidiff.data import data_path
from scidiff.mol.evaluate import DELTAS_DRUGS, compare_table, evaluate_method, load_reference_set, save_results
from scidiff.mol.pipeline import get_generator

DRUGS_TEST = "geom/DRUGS_test_smiles_corrected.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=200, help="first N DRUGS test molecules (default 200)")
    parser.add_argument("-n", "--num-conformers", type=int, default=5, help="conformers per molecule in part 1")
    parser.add_argument("--methods", nargs="+", default=["etkdg_mmff", "scidiff"])
    parser.add_argument("--strain-limit", type=int, default=40, help="molecules scored for xTB strain (first N)")
    parser.add_argument("--strain-conformers", type=int, default=1, help="conformers per molecule for strain")
    parser.add_argument("--strain-steps", type=int, default=60, help="GFN2-xTB L-BFGS steps of the relaxation")
    parser.add_argument("--no-coverage", action="store_true", help="skip part 2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    start = time.perf_counter()

    drugs = load_reference_set(str(data_path(DRUGS_TEST)), limit=args.limit, smiles_column="corrected_smiles")
    print(f"part 1: {len(drugs['inputs'])} of the first {args.limit} DRUGS test molecules "
          f"({len(drugs['skipped'])} skipped), n={args.num_conformers}", flush=True)
    validity = []
    for method in args.methods:
        result = evaluate_method(method, get_generator(method), drugs["inputs"], args.num_conformers, seed=args.seed,
                                 strain_steps=args.strain_steps, strain_limit=args.strain_limit,
                                 strain_conformers=args.strain_conformers, skipped=drugs["skipped"])
        result["summary"]["xTB strain mean"] = result["xtb_strain"]["mean"]
        result["summary"]["strain confs"] = result["xtb_strain"]["n_conformers"]
        validity.append(result)
        print(compare_table([result]).splitlines()[-1], flush=True)
    print(compare_table(validity), flush=True)

    coverage = []
    if not args.no_coverage:
        ref = load_reference_set("geom-drugs")
        counts = [2 * r.GetNumConformers() for r in ref["references"]]
        print(f"part 2: {len(ref['inputs'])} molecules of {ref['label']}, {sum(counts) // 2} references, "
              f"2K conformers each", flush=True)
        for method in args.methods:
            result = evaluate_method(method, get_generator(method), ref["inputs"], counts, seed=args.seed,
                                     references=ref["references"], deltas=DELTAS_DRUGS, posebusters=False,
                                     skipped=ref["skipped"])
            coverage.append(result)
            print(compare_table([result]).splitlines()[-1], flush=True)
        print(compare_table(coverage), flush=True)
    wall = time.perf_counter() - start
    print(f"total {wall:.0f} s; {platform.processor() or platform.machine()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    if args.json:
        save_results(args.json, {"argv": sys.argv[1:], "wall_s": wall, "validity": validity, "coverage": coverage})
    return 0


if __name__ == "__main__":
    sys.exit(main())

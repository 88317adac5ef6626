"""RDKit baselines on the QM9 DFT test split: ground-state recovery, PoseBusters, stereo and speed (issue 6 groundwork).

For each of the first --limit molecules of ``qm9_dft_test.npz`` (stereo perceived from the DFT geometry; molecules
whose bonds cannot be perceived are reported as skipped) generate 5 and 10 conformers with RDKit ETKDG and
ETKDG + MMFF94, and report the median min heavy-atom RMSD to the DFT geometry, the fractions below 0.1 / 0.25 /
0.5 A, the PoseBusters ``mol`` pass rate, stereo preservation and conformers/s on this CPU (wall and CPU time).
Reference (docs/molecules.md): 30 molecules, 5 conformers: ETKDG median 0.22 A, ETKDG + MMFF 0.07 A.

    OMP_NUM_THREADS=1 python benchmarks/mol_rdkit_baseline.py --limit 300 --json runs/mol_rdkit_baseline.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from scidiff.mol.datasets import read_qm9
from scidiff.mol.evaluate import BASELINES, compare_table, evaluate_method, save_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="first N test molecules (default: all 2,000)")
    parser.add_argument("--conformers", type=int, nargs="+", default=[5, 10], help="conformers per molecule")
    parser.add_argument("--methods", nargs="+", choices=sorted(BASELINES), default=["etkdg", "etkdg_mmff"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-posebusters", action="store_true")
    parser.add_argument("--strain-steps", type=int, default=0, help="GFN2-xTB steps for strain (0: off; slow)")
    parser.add_argument("--json", default=None, help="write all results here")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    built = read_qm9("test", limit=args.limit)
    print(f"QM9 DFT test: {built.summary()} ({time.perf_counter() - start:.1f} s)", flush=True)
    results = []
    for n in args.conformers:
        for method in args.methods:
            result = evaluate_method(method, BASELINES[method], built.molecules, n, seed=args.seed, dft=built.molecules,
                                     posebusters=not args.no_posebusters, strain_steps=args.strain_steps,
                                     skipped=built.skipped)
            result["summary"] = {"method": f"{method} n={n}", **{k: v for k, v in result["summary"].items() if k != "method"}}
            results.append(result)
            print(compare_table([result]).splitlines()[-1], flush=True)
    print(compare_table(results))
    print(f"skipped (bond perception from DFT failed): {len(built.skipped)}; total {time.perf_counter() - start:.0f} s; "
          f"{platform.processor() or platform.machine()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    if args.json:
        save_results(args.json, {"limit": args.limit, "skipped": [f"{s.name}: {s.reason}" for s in built.skipped],
                                 "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

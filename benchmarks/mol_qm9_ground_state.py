"""Ground-state recovery on the QM9 DFT test split for scidiff and RDKit ETKDG / ETKDG + MMFF, side by side.

For the first --limit molecules of ``qm9_dft_test.npz`` (never trained on; stereo perceived from the DFT geometry;
molecules whose bonds cannot be perceived are reported as skipped) generate each of --conformers conformer counts
with each method and report the median minimum heavy-atom RMSD to the DFT geometry (rdMolAlign.GetBestRMS on
RemoveHs), the fractions below 0.1 / 0.25 / 0.5 A, PoseBusters ``mol`` pass rate, stereo preservation and
conformers/s on this machine. Reference (molecules.md): 30 molecules, 5 conformers: ETKDG 0.22 A, + MMFF 0.07 A.

    OMP_NUM_THREADS=1 python benchmarks/mol_qm9_ground_state.py --limit 100 --methods scidiff etkdg etkdg_mmff
    OMP_NUM_THREADS=1 python benchmarks/mol_qm9_ground_state.py --limit 300 --methods etkdg etkdg_mmff --conformers 5 10
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from scidiff.mol.evaluate import compare_table, evaluate_method, save_results
from scidiff.mol.io import read_qm9
from scidiff.mol.pipeline import METHODS, get_generator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=100, help="first N test molecules (default 100; 2,000 in all)")
    parser.add_argument("--conformers", type=int, nargs="+", default=[5], help="conformers per molecule")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--checkpoint", default=None, help="weights for scidiff or scidiff_denovo (default: the bundled ones)")
    parser.add_argument("--sampler", default=None, help="override the model run's sampler (e.g. heun, dpmpp_2m)")
    parser.add_argument("--steps", type=int, default=None, help="override the model run's sampler steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-posebusters", action="store_true")
    parser.add_argument("--strain-steps", type=int, default=0, help="GFN2-xTB steps for strain (0: off; slow)")
    parser.add_argument("--json", default=None, help="write all results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    start = time.perf_counter()
    built = read_qm9("test", limit=args.limit)
    print(f"QM9 DFT test, first {args.limit}: {built.summary()}", flush=True)
    model_options = {k: v for k in ("checkpoint", "sampler", "steps") if (v := getattr(args, k)) is not None}
    results = []
    for n in args.conformers:
        for method in args.methods:
            options = model_options if method.startswith("scidiff") else {}
            result = evaluate_method(method, get_generator(method), built.molecules, n, seed=args.seed,
                                     dft=built.molecules, posebusters=not args.no_posebusters,
                                     strain_steps=args.strain_steps, skipped=built.skipped, **options)
            result["summary"] = {**result["summary"], "method": f"{method} n={n}"}
            results.append(result)
            print(compare_table([result]).splitlines()[-1], flush=True)
    print(compare_table(results))
    print(f"skipped (bond perception from the DFT geometry failed): {[s.name for s in built.skipped]}; "
          f"total {time.perf_counter() - start:.0f} s; {platform.processor() or platform.machine()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    if args.json:
        save_results(args.json, {"limit": args.limit, "skipped": [f"{s.name}: {s.reason}" for s in built.skipped],
                                 "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

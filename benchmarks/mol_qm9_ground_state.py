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
from rdkit import Chem

from scidiff.mol.evaluate import compare_table, evaluate_method, save_results
from scidiff.mol.io import read_qm9
from scidiff.mol.pipeline import METHODS, generate_outcomes, get_generator


def written_generator(method: str):
    """The whole pipeline of ``scidiff mol generate`` as a generator: its output is what would be written (inputs
    that fail come back without conformers)."""

    def generate_fn(mols, n, seed=0, **options):
        out = []
        for mol, outcome in zip(mols, generate_outcomes(list(mols), n, method, seed=seed, batch_size=max(len(mols), 1),
                                                        **options)):
            if outcome.mol is None:
                empty = Chem.Mol(mol)
                empty.RemoveAllConformers()
                out.append(empty)
            else:
                out.append(outcome.mol)
        return out

    return generate_fn


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
    parser.add_argument("--ids-file", default=None, help="only the test molecules named here (gdb_<id>, one a line)")
    parser.add_argument("--posebusters-limit", type=int, default=None, help="PoseBusters on the first N molecules only")
    parser.add_argument("--posebusters-no-energy", action="store_true",
                        help="PoseBusters without its energy-ratio check (which cannot run on strained cages)")
    parser.add_argument("--method-limit", nargs="*", default=[], metavar="METHOD=N",
                        help="run METHOD on the first N molecules only (e.g. etkdg_mmff_xtb=500; stated in the table)")
    parser.add_argument("--written", nargs="*", default=[], choices=METHODS,
                        help="also score what `scidiff mol generate` writes for these methods (stereo mirrored or "
                             "resampled, re-perceived bonds checked), not only the raw generator output")
    parser.add_argument("--written-n", type=int, nargs="*", default=None, help="conformer counts for --written rows")
    parser.add_argument("--json", default=None, help="write all results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    start = time.perf_counter()
    built = read_qm9("test", limit=args.limit)
    print(f"QM9 DFT test, first {args.limit}: {built.summary()}", flush=True)
    if args.ids_file:
        wanted = {line.strip() for line in open(args.ids_file, encoding="utf-8") if line.strip() and line[0] != "#"}
        built.molecules = [m for m in built.molecules if m.GetProp("_Name") in wanted]
        print(f"only the {len(built.molecules)} molecules of {args.ids_file}", flush=True)
    method_limits = {k: int(v) for k, v in (item.split("=") for item in args.method_limit)}
    model_options = {k: v for k in ("checkpoint", "sampler", "steps") if (v := getattr(args, k)) is not None}
    results = []
    # every n in turn, each with its methods, then the --written rows (what `scidiff mol generate` writes)
    written_n = args.written_n or args.conformers
    jobs = [(n, method, written) for n in sorted(set(args.conformers) | set(written_n), key=lambda k: (
        k not in args.conformers, args.conformers.index(k) if k in args.conformers else k))
        for method, written in [(m, False) for m in args.methods if n in args.conformers]
        + [(m, True) for m in args.written if n in written_n]]
    for n, method, written in jobs:
        options = model_options if method.startswith("scidiff") else {}
        mols = built.molecules[:method_limits.get(method)]
        generate_fn = written_generator(method) if written else get_generator(method)
        name = method + (" written" if written else "")
        result = evaluate_method(name, generate_fn, mols, n, seed=args.seed, dft=mols,
                                 posebusters=not args.no_posebusters, posebusters_limit=args.posebusters_limit,
                                 posebusters_energy=not args.posebusters_no_energy, strain_steps=args.strain_steps,
                                 skipped=built.skipped, **options)
        label = f"{name} n={n}" + (f" (first {len(mols)})" if method in method_limits else "")
        result["summary"] = {**result["summary"], "method": label}
        if "posebusters" in result:
            result["summary"]["PB mols"] = result["posebusters"]["n_molecules"]
        results.append(result)
        print(compare_table([result]).splitlines()[-1], flush=True)
        if args.json:  # after every row, so a run stopped early keeps what it measured
            save_results(args.json, {"limit": args.limit, "argv": sys.argv[1:], "wall_s": time.perf_counter() - start,
                                     "finished": False, "skipped": [f"{s.name}: {s.reason}" for s in built.skipped],
                                     "results": results})
    print(compare_table(results))
    print(f"skipped (bond perception from the DFT geometry failed): {[s.name for s in built.skipped]}; "
          f"total {time.perf_counter() - start:.0f} s; {platform.processor() or platform.machine()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    if args.json:
        save_results(args.json, {"limit": args.limit, "argv": sys.argv[1:], "wall_s": time.perf_counter() - start,
                                 "finished": True, "skipped": [f"{s.name}: {s.reason}" for s in built.skipped],
                                 "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

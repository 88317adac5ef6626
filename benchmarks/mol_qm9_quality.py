"""Ground-state recovery of a trained conformer model on the QM9 DFT test split, next to RDKit ETKDG and ETKDG + MMFF.

For the first --limit molecules of ``qm9_dft_test.npz`` (never trained on; stereo perceived from the DFT geometry,
molecules whose bonds cannot be perceived are reported as skipped), generate --conformers conformers per molecule
with each method and report the median minimum heavy-atom RMSD to the DFT geometry (rdMolAlign.GetBestRMS on
RemoveHs) and the fractions below 0.1 / 0.25 / 0.5 Å (scidiff.mol.evaluate), plus conformers/s on this CPU.

    OMP_NUM_THREADS=1 python benchmarks/mol_qm9_quality.py --limit 100 --weights scidiff/mol/weights/qm9.safetensors
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=100, help="first N test molecules (default 100)")
    parser.add_argument("--conformers", type=int, default=5)
    parser.add_argument("--weights", default=None, help="model.safetensors of a mol run (default: bundled qm9 weights)")
    parser.add_argument("--sampler", default=None, help="override the run's sampler name (e.g. heun, dpmpp_2m)")
    parser.add_argument("--steps", type=int, default=None, help="override the run's sampler steps")
    parser.add_argument("--methods", nargs="+", default=["scidiff", "etkdg", "etkdg_mmff"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write all results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from scidiff.core.config import SamplerSpec
    from scidiff.mol.datasets import read_qm9
    from scidiff.mol.evaluate import BASELINES, compare_table, evaluate_method, save_results
    from scidiff.mol.generate import bundled_weights, load_model, model_generate_fn

    built = read_qm9("test", limit=args.limit)
    print(f"QM9 DFT test, first {args.limit}: {built.summary()}", flush=True)
    results = []
    for method in args.methods:
        if method == "scidiff":
            model, diffusion, sampler = load_model(args.weights or bundled_weights("qm9"))
            sampler = SamplerSpec(args.sampler or sampler.name, args.steps or sampler.steps,
                                  sampler.options if args.sampler in (None, sampler.name) else {})
            print(f"scidiff: {sum(p.numel() for p in model.parameters())} parameters, sampler {sampler.name} "
                  f"{sampler.steps} steps", flush=True)
            generate_fn = model_generate_fn(model, diffusion, sampler)
        else:
            generate_fn = BASELINES[method]
        start = time.perf_counter()
        result = evaluate_method(method, generate_fn, built.molecules, args.conformers, seed=args.seed,
                                 dft=built.molecules, posebusters=False, skipped=built.skipped, batch_size=64)
        results.append(result)
        print(f"{method}: {time.perf_counter() - start:.0f} s", flush=True)
    print(compare_table(results))
    print(f"skipped (bond perception from the DFT geometry failed): {[s.name for s in built.skipped]}")
    if args.json:
        save_results(args.json, {"limit": args.limit, "skipped": [f"{s.name}: {s.reason}" for s in built.skipped],
                                 "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where the time of ``--method scidiff`` goes: the stages of the refiner generator timed one by one on QM9 test molecules.

Stages: ETKDG embedding, MMFF94 minimisation (the seeds), featurisation, the network (every sampler step) and the
pipeline's stereo + bond re-perception of the written conformers; the total is compared with a plain
``run_generator`` call of scidiff, ETKDG + MMFF94 and ETKDG + MMFF94 + GFN2-xTB on the same inputs.

    OMP_NUM_THREADS=1 python benchmarks/mol_refine_profile.py --limit 40 -n 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from rdkit import Chem

from scidiff.mol.chem import bonds_from_3d_match
from scidiff.mol.forcefield import etkdg_embed, mmff_relax
from scidiff.mol.io import read_qm9
from scidiff.mol.pipeline import _cached_model, get_generator, run_generator
from scidiff.mol.stereo import check_conformers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("-n", type=int, default=5)
    parser.add_argument("--baselines", nargs="*", default=["etkdg_mmff", "etkdg_mmff_xtb"])
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    mols = read_qm9("test", limit=args.limit).molecules
    model = _cached_model(None, "cpu", "qm9_refine")
    timings: dict[str, float] = {}

    def timed(name, fn, *a, **k):
        start = time.perf_counter()
        out = fn(*a, **k)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        return out

    seeds = []
    for mol in mols:
        out = Chem.Mol(mol)
        out.RemoveAllConformers()
        timed("ETKDG", etkdg_embed, out, args.n, 0)
        timed("MMFF94", mmff_relax, out)
        seeds.append(out)
    from scidiff.mol import generate as gen

    original = gen.featurize

    def counted(*a, **k):
        return timed("featurise", original, *a, **k)

    gen.featurize = counted
    try:
        refined = timed("refine (featurise + network)", gen.refine_conformers, seeds, model.net, model.diffusion,
                        model.sampler, 0)
    finally:
        gen.featurize = original
    for mol, ref in zip(refined, mols):
        timed("stereo re-perception", check_conformers, mol, ref)
        for conf in mol.GetConformers():
            timed("bond re-perception", bonds_from_3d_match, mol, conf.GetId())
    confs = sum(m.GetNumConformers() for m in refined)
    timings["network (refine - featurise)"] = timings["refine (featurise + network)"] - timings.get("featurise", 0.0)
    total = sum(v for k, v in timings.items() if k not in ("refine (featurise + network)",))
    print(f"{len(mols)} QM9 test molecules, n={args.n}, {confs} conformers, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print("| stage | s | % | ms/conformer |\n|---|---|---|---|")
    for name, value in timings.items():
        if name == "refine (featurise + network)":
            continue
        print(f"| {name} | {value:.2f} | {100 * value / total:.0f} | {1000 * value / confs:.1f} |")
    print(f"| total | {total:.2f} | 100 | {1000 * total / confs:.1f} |")
    rates = {}
    for method in ["scidiff", *args.baselines]:
        run = run_generator(get_generator(method), mols, args.n, 0)
        rates[method] = run.conformers / run.wall_s
        print(f"{method}: {run.conformers} conformers in {run.wall_s:.1f} s = {rates[method]:.1f} conf/s", flush=True)
    for method in args.baselines:
        print(f"scidiff / {method}: {rates['scidiff'] / rates[method]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

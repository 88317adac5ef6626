"""Choose the refiner's sampler steps on validation molecules (never on the test split), against ETKDG + MMFF94.

The validation ids are those `scidiff mol build qm9-pairs` drew and wrote to OUT/validation_ids.txt: QM9 molecules
outside every reserved id, the DFT test split, the GEOM-QM9 test molecules and the training list. For each, the
molecule is perceived from its DFT geometry (qm9pack), n conformers are generated, and the minimum heavy-atom RMSD
to the DFT geometry is reported (median, fractions below 0.05 / 0.1 / 0.25 Å), with the local-geometry errors.

    OMP_NUM_THREADS=1 python benchmarks/mol_refine_validation.py --pairs runs/data/qm9_pairs \
        --checkpoint runs/mol_refine/model.safetensors --steps 1 2 4
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from scidiff.mol.chem import MoleculeError, mol_from_xyz
from scidiff.mol.evaluate import compare_table, evaluate_method
from scidiff.mol.io import read_qm9pack
from scidiff.mol.pipeline import get_generator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, required=True, help="the pair build's folder (validation_ids.txt)")
    parser.add_argument("--checkpoint", default=None, help="refiner weights (default: the bundled ones)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4], help="Euler steps to compare")
    parser.add_argument("--conformers", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None, help="first N validation molecules")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    ids = [int(line) for line in (args.pairs / "validation_ids.txt").read_text().split()][: args.limit]
    mols = []
    for gdb_id, numbers, positions in read_qm9pack(ids=ids):
        try:
            mols.append(mol_from_xyz(numbers, positions, name=f"gdb_{gdb_id}"))
        except MoleculeError:
            pass  # bond perception fails for ~5 % (zwitterions): they are counted below
    print(f"{len(mols)} of {len(ids)} validation molecules perceived from their DFT geometry", flush=True)
    results = [evaluate_method("etkdg_mmff", get_generator("etkdg_mmff"), mols, args.conformers, dft=mols,
                               posebusters=False)]
    for steps in args.steps:
        result = evaluate_method("scidiff", get_generator("scidiff"), mols, args.conformers, dft=mols,
                                 posebusters=False, steps=steps,
                                 **({"checkpoint": args.checkpoint} if args.checkpoint else {}))
        result["summary"]["method"] = f"scidiff euler-{steps}"
        results.append(result)
        print(compare_table([result]).splitlines()[-1], flush=True)
    print(compare_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

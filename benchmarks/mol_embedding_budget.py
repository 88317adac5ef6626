"""Seeding time and quality of ``etkdg_embed``'s attempt budget, on QM9 training molecules (never the test split).

Two settings side by side on the first --limit molecules of ``qm9_dft_train.npz`` minus every reserved gdb id: RDKit's
default attempts everywhere (10 x atoms per conformer; cage fallback with 2,000 per conformer, its earlier setting)
and the current budget (``PROBE_ATTEMPTS`` for the first conformer and, on a molecule
that fails it, for the rest of the cascade; ``CAGE_MAX_ITERATIONS`` in the fallback). Reports CPU seconds, conformers
by embedding path, the molecules whose seeds differ, and on those the minimum heavy-atom RMSD to DFT after MMFF94.

    OMP_NUM_THREADS=1 python benchmarks/mol_embedding_budget.py --limit 3000
    OMP_NUM_THREADS=1 python benchmarks/mol_embedding_budget.py --limit 0 --drugs 200   # seeding time on drugs only

``--drugs N`` also times both settings on the first N GEOM-DRUGS test molecules (drug-sized; no DFT geometry there, so
time, conformers and changed molecules only: timing a setting is not tuning it).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import numpy as np
from rdkit import Chem

from scidiff.data import data_path
from scidiff.mol import forcefield
from scidiff.mol.build import qm9_reserved_gdb_ids
from scidiff.mol.evaluate import GEOM_DRUGS_TEST_SMILES, ground_state_rmsd, load_reference_set
from scidiff.mol.io import read_qm9

SETTINGS = {"rdkit_default": (0, 2000), "budget": (forcefield.PROBE_ATTEMPTS, forcefield.CAGE_MAX_ITERATIONS)}


def seeds(mols: list[Chem.Mol], n: int, probe: int, cage: int) -> tuple[list[Chem.Mol], float]:
    """Every molecule embedded with n conformers under one budget (0 = RDKit's default); their total CPU seconds."""
    forcefield.PROBE_ATTEMPTS, forcefield.CAGE_MAX_ITERATIONS = probe, cage
    out, cpu = [], 0.0
    for mol in mols:
        work = Chem.Mol(mol)
        work.RemoveAllConformers()
        start = time.process_time()
        forcefield.etkdg_embed(work, n, seed=0)
        cpu += time.process_time() - start
        out.append(work)
    return out, cpu


def changed_molecules(old: list[Chem.Mol], new: list[Chem.Mol]) -> list[int]:
    """Indices of the molecules whose seeds differ between two runs (count or any coordinate)."""
    return [i for i, (a, b) in enumerate(zip(old, new)) if a.GetNumConformers() != b.GetNumConformers()
            or any(not np.array_equal(x.GetPositions(), y.GetPositions())
                   for x, y in zip(a.GetConformers(), b.GetConformers()))]


def compare_settings(mols: list[Chem.Mol], n: int, label: str = "") -> tuple[dict, list[int]]:
    """Seed ``mols`` under every setting; print CPU seconds, conformers by path and the speed-up; return the runs
    and the molecules whose seeds differ."""
    runs = {name: seeds(mols, n, *budget) for name, budget in SETTINGS.items()}
    for name, (out, cpu) in runs.items():
        paths = Counter(c.GetProp(forcefield.EMBEDDING_PROP) for m in out for c in m.GetConformers())
        print(f"{label}{name} {SETTINGS[name]}: {len(mols)} molecules, {cpu:.1f} CPU-s, "
              f"{sum(paths.values())} conformers {dict(paths)}", flush=True)
    (old, old_cpu), (new, new_cpu) = runs["rdkit_default"], runs["budget"]
    changed = changed_molecules(old, new)
    print(f"{label}seeding {old_cpu / new_cpu:.2f}x faster; {len(changed)} molecules with other seeds", flush=True)
    return runs, changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=3000, help="first N molecules of the training split")
    parser.add_argument("-n", type=int, default=5, help="conformers per molecule")
    parser.add_argument("--drugs", type=int, default=0, help="also time the first N GEOM-DRUGS test molecules")
    args = parser.parse_args(argv)
    if args.drugs:
        drugs = load_reference_set(str(data_path(GEOM_DRUGS_TEST_SMILES)), limit=args.drugs,
                                   smiles_column="corrected_smiles")
        compare_settings(drugs["inputs"], args.n, "GEOM-DRUGS test, ")
    if args.limit < 1:
        return 0
    reserved = qm9_reserved_gdb_ids()
    mols = [m for m in read_qm9("train", limit=args.limit).molecules if m.GetIntProp("gdb_id") not in reserved]
    runs, changed = compare_settings(mols, args.n)
    for name, (out, _) in runs.items():
        rmsd = []
        for i in changed:
            forcefield.mmff_relax(out[i])
            rmsd.append(ground_state_rmsd(mols[i], out[i]))
        rmsd = np.asarray(rmsd)
        print(f"{name} on those, after MMFF94: median min RMSD to DFT {np.median(rmsd):.3f} A, "
              f"< 0.1 A {np.mean(rmsd < 0.1):.1%}, no conformer {int(np.sum(~np.isfinite(rmsd)))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

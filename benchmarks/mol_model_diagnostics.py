"""What limits a conformer model on QM9 ground-state recovery: force-field floors, denoising by noise level, bond lengths.

On held-out QM9 DFT test molecules this prints
1. the force-field floor: heavy-atom RMSD between the DFT geometry and the same geometry minimised with MMFF94
   (and GFN2-xTB with --xtb), i.e. how close a force-field-relaxed conformer can get to DFT at best;
2. the model's EDM loss at fixed noise levels, ||D(x0 + sigma eps) - x0||^2 / c_out(sigma)^2 per coordinate
   (Karras et al. 2022): 1 means the denoiser returns its input (no denoising), 0 is perfect;
3. the bond-length error of the model's generated conformers against DFT, and the ground-state RMSD of the model's
   conformers raw and MMFF94-relaxed, next to ETKDG + MMFF94 on the same molecules.

    OMP_NUM_THREADS=1 python benchmarks/mol_model_diagnostics.py --limit 40 --xtb
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from rdkit import Chem
from torch_geometric.data import Batch

from scidiff.mol.evaluate import ground_state_rmsd
from scidiff.mol.featurize import remove_mean
from scidiff.mol.forcefield import mmff_relax, xtb_relax
from scidiff.mol.generate import bundled_weights, load_model
from scidiff.mol.io import read_qm9
from scidiff.mol.pipeline import get_generator
from scidiff.mol.train import ConformerDataset

SIGMAS = (0.01, 0.02, 0.05, 0.1, 0.3, 1.0, 3.0, 10.0)


def force_field_floor(mols: list[Chem.Mol], relax) -> np.ndarray:
    """RMSD between each DFT geometry and its own force-field minimum (NaN where the force field has no parameters)."""
    out = []
    for dft in mols:
        relaxed = Chem.Mol(dft)
        ok = relax(relaxed)
        out.append(ground_state_rmsd(dft, relaxed) if ok else np.nan)
    return np.array(out)


@torch.no_grad()
def loss_by_sigma(checkpoint: str, mols: list[Chem.Mol], seed: int = 0) -> dict[float, float]:
    """EDM-normalised denoising error of the model at each fixed noise level, on the molecules' DFT geometries."""
    model, diffusion, _ = load_model(checkpoint)
    dataset = ConformerDataset.from_molecules(mols)
    batch = Batch.from_data_list([dataset[i] for i in range(len(dataset))], exclude_keys=["name", "smiles"])
    x0 = remove_mean(batch.pos, batch.batch)
    denoise = diffusion.denoiser(lambda x, t: model(x, t, batch))
    sigma_data = diffusion.process.sigma_data
    result = {}
    for sigma in SIGMAS:
        noise = remove_mean(torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)), batch.batch)
        estimate = denoise(x0 + sigma * noise, torch.full((x0.shape[0],), sigma, dtype=torch.float64))
        c_out_sq = (sigma * sigma_data) ** 2 / (sigma**2 + sigma_data**2)
        result[sigma] = float(((estimate - x0) ** 2).mean() / c_out_sq)
    return result


def bond_length_errors(dft_mols: list[Chem.Mol], generated: list[Chem.Mol]) -> np.ndarray:
    """Bond length in each generated conformer minus the DFT bond length, over all bonds and conformers (Å)."""
    errors = []
    for dft, gen in zip(dft_mols, generated):
        ref = dft.GetConformer().GetPositions()
        pairs = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in dft.GetBonds()])
        ref_len = np.linalg.norm(ref[pairs[:, 0]] - ref[pairs[:, 1]], axis=1)
        for conf in gen.GetConformers():
            pos = conf.GetPositions()
            errors.append(np.linalg.norm(pos[pairs[:, 0]] - pos[pairs[:, 1]], axis=1) - ref_len)
    return np.concatenate(errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=40, help="first N QM9 DFT test molecules for the generation checks")
    parser.add_argument("--conformers", type=int, default=5)
    parser.add_argument("--checkpoint", default=str(bundled_weights()))
    parser.add_argument("--xtb", action="store_true", help="also the GFN2-xTB floor (tblite; ~0.1 s per molecule)")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    mols = read_qm9("test", limit=args.limit).molecules
    held_out = read_qm9("test").molecules[-100:]  # the loss check uses the last 100 usable test molecules

    floor = force_field_floor(mols, lambda m: mmff_relax(m) is not None)
    print(f"MMFF94 minimum vs DFT ({np.isfinite(floor).sum()} molecules): median {np.nanmedian(floor):.3f} A, "
          f"90th percentile {np.nanpercentile(floor, 90):.3f} A")
    if args.xtb:
        floor = force_field_floor(mols, lambda m: np.isfinite(xtb_relax(m, 0, steps=200)))
        print(f"GFN2-xTB minimum vs DFT: median {np.nanmedian(floor):.3f} A, 90th percentile {np.nanpercentile(floor, 90):.3f} A")

    losses = loss_by_sigma(args.checkpoint, held_out)
    print("EDM loss by noise level (1 = no denoising): " + ", ".join(f"{s:g} A: {v:.3f}" for s, v in losses.items()))

    generated = get_generator("scidiff_denovo")(mols, args.conformers, seed=0, checkpoint=args.checkpoint)
    errors = np.abs(bond_length_errors(mols, generated))
    print(f"bond-length error of generated conformers: median {np.median(errors):.3f} A, "
          f"95th percentile {np.percentile(errors, 95):.3f} A")
    raw = [ground_state_rmsd(d, g) for d, g in zip(mols, generated)]
    for mol in generated:
        mmff_relax(mol)
    relaxed = [ground_state_rmsd(d, g) for d, g in zip(mols, generated)]
    baseline = get_generator("etkdg_mmff")(mols, args.conformers, seed=0)
    reference = [ground_state_rmsd(d, g) for d, g in zip(mols, baseline)]
    print(f"ground state, {len(mols)} molecules x {args.conformers} conformers, median min heavy-atom RMSD: "
          f"scidiff {np.median(raw):.3f} A, scidiff + MMFF94 {np.median(relaxed):.3f} A, "
          f"ETKDG + MMFF94 {np.median(reference):.3f} A")
    return 0


if __name__ == "__main__":
    sys.exit(main())

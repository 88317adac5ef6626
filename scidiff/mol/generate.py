"""Conformer generation: prepared RDKit molecules in, the same molecules with sampled conformers (Å) out.

Every molecule is featurised once; its graph is repeated for each requested conformer, and molecule x
conformer graphs are packed into batches of at most ``max_atoms`` atoms that go through the core sampler with
the zero-centre-of-mass projection (Hoogeboom et al. 2022). The model works in Å, so its samples are
coordinates as they are.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Sequence

import torch
from rdkit import Chem
from rdkit.Geometry import Point3D
from torch import nn
from torch_geometric.data import Batch, Data

from scidiff.core.config import Diffusion, SamplerSpec, build_diffusion, build_sampler
from scidiff.core.prediction import x0_denoiser

from .chem import MoleculeError, prepare_mol
from .datasets import Built, Skipped
from .featurize import featurize, remove_mean

__all__ = ["WEIGHTS_DIR", "bundled_weights", "load_model", "pack_batches", "sample_coordinates", "generate_conformers",
           "model_generate_fn"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def bundled_weights(name: str = "qm9") -> Path:
    """Path of weights shipped with the package (``scidiff/mol/weights/<name>.safetensors``)."""
    path = WEIGHTS_DIR / f"{name}.safetensors"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))) or "none"
        raise FileNotFoundError(f"no bundled conformer weights {name!r} at {path} (available: {available})")
    return path


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Diffusion, SamplerSpec]:
    """The EMA denoiser of a ``scidiff train experiment=mol_*`` run (model.safetensors) with its process and sampler."""
    from scidiff.core.checkpoint import load_inference

    from .train import build_model

    state, cfg = load_inference(path, device=device)
    if cfg.get("task") != "mol":
        raise ValueError(f"{path} holds weights of task {cfg.get('task')!r}, not a conformer model ('mol')")
    model = build_model(cfg["model"]).to(device)
    model.load_state_dict(state)
    return model.eval(), build_diffusion(cfg["process"]), build_sampler(cfg["sampler"])


def pack_batches(sizes: Sequence[int], max_atoms: int) -> list[list[int]]:
    """Consecutive items grouped so that each group has at most ``max_atoms`` atoms (an oversized item goes alone)."""
    groups: list[list[int]] = []
    load = 0
    for index, size in enumerate(sizes):
        if not groups or load + size > max_atoms:
            groups.append([])
            load = 0
        groups[-1].append(index)
        load += size
    return groups


@torch.no_grad()
def sample_coordinates(model: nn.Module, diffusion: Diffusion, sampler: SamplerSpec, graphs: Sequence[Data],
                       generator: torch.Generator) -> list[torch.Tensor]:
    """One sample of coordinates (N_i, 3) per graph, all graphs in one batch through the core sampler."""
    batch = Batch.from_data_list(list(graphs), exclude_keys=["name", "smiles"])
    device = next(model.parameters()).device
    batch = batch.to(device)
    project = partial(remove_mean, batch=batch.batch)
    denoise = x0_denoiser(lambda x, t: model(x, t, batch), diffusion.process, diffusion.prediction)
    x = sampler.run(denoise, (batch.num_nodes, 3), diffusion.process, generator=generator, device=device,
                    project=project).x
    return list(x.float().cpu().split(batch.ptr.diff().tolist()))


def generate_conformers(mols: Sequence[Chem.Mol], model: nn.Module, diffusion: Diffusion, sampler: SamplerSpec,
                        num_conformers: int = 5, seed: int = 0, max_atoms: int = 4096) -> Built:
    """``num_conformers`` sampled conformers for each molecule; molecules the featuriser rejects are reported in ``skipped``.

    Returned molecules are the prepared inputs (explicit H, ``_Name`` kept, int prop ``input_index``) with conformers
    in Å, in input order.
    """
    if num_conformers < 1:
        raise ValueError(f"num_conformers must be >= 1, got {num_conformers}")
    result = Built()
    prepared: list[Chem.Mol] = []
    graphs: list[Data] = []
    for index, mol in enumerate(mols):
        try:
            mol = prepare_mol(mol)
            mol.SetIntProp("input_index", index)
            graphs.append(featurize(mol))
        except MoleculeError as exc:
            result.skipped.append(Skipped(exc.molecule, exc.reason))
            continue
        mol.RemoveAllConformers()
        prepared.append(mol)
    jobs = [(m, c) for m in range(len(prepared)) for c in range(num_conformers)]
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for group in pack_batches([graphs[m].num_nodes for m, _ in jobs], max_atoms):
        coords = sample_coordinates(model, diffusion, sampler, [graphs[jobs[j][0]] for j in group], generator)
        for j, xyz in zip(group, coords):
            result_mol = prepared[jobs[j][0]]
            conformer = Chem.Conformer(result_mol.GetNumAtoms())
            for atom, (x, y, z) in enumerate(xyz.tolist()):
                conformer.SetAtomPosition(atom, Point3D(x, y, z))
            conformer.Set3D(True)
            result_mol.AddConformer(conformer, assignId=True)
    result.molecules = prepared
    return result


def model_generate_fn(model: nn.Module, diffusion: Diffusion, sampler: SamplerSpec, max_atoms: int = 4096):
    """The model as a ``generate_fn(mols, n, seed) -> one mol per input`` (scidiff.mol.evaluate's protocol);
    a molecule the featuriser rejects comes back without conformers."""

    def generate(mols: Sequence[Chem.Mol], n: int, seed: int = 0, **_) -> list[Chem.Mol]:
        built = generate_conformers(mols, model, diffusion, sampler, n, seed, max_atoms)
        out = [Chem.Mol(m) for m in mols]
        for mol in out:
            mol.RemoveAllConformers()
        for mol in built.molecules:
            out[mol.GetIntProp("input_index")] = mol
        return out

    return generate

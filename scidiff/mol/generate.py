"""Conformer sampling with the trained model: prepared RDKit molecules in, the same molecules with conformers (Å) out.

Every molecule is featurised once; its graph is repeated for each requested conformer, and molecule x
conformer graphs are packed into batches of at most ``max_atoms`` atoms that go through the core sampler with
the zero-centre-of-mass projection (Hoogeboom et al. 2022). The model works in Å, so its samples are
coordinates as they are. This module samples only: relaxation, stereo checks and files are the pipeline's.
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

from scidiff.core import Diffusion, SamplerSpec, build_diffusion, build_sampler, load_run

from .chem import MoleculeError
from .denoiser import build_model
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
    state, cfg = load_run(path, "mol", device=device)
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
    x = diffusion.sample(lambda x, t: model(x, t, batch), (batch.num_nodes, 3), sampler, generator=generator,
                         device=device, project=partial(remove_mean, batch=batch.batch)).x
    return list(x.float().cpu().split(batch.ptr.diff().tolist()))


def generate_conformers(mols: Sequence[Chem.Mol], model: nn.Module, diffusion: Diffusion, sampler: SamplerSpec,
                        num_conformers: int = 5, seed: int = 0, max_atoms: int = 4096) -> list[Chem.Mol]:
    """``num_conformers`` sampled conformers for each prepared molecule (``chem.prepare_mol``), aligned with the inputs.

    Each output is a copy of its input with the conformers in Å; one the featuriser rejects comes back without
    conformers and with the reason in its ``generation_error`` property.
    """
    if num_conformers < 1:
        raise ValueError(f"num_conformers must be >= 1, got {num_conformers}")
    out = [Chem.Mol(mol) for mol in mols]
    graphs: dict[int, Data] = {}
    for index, mol in enumerate(out):
        mol.RemoveAllConformers()
        try:
            graphs[index] = featurize(mol)
        except MoleculeError as exc:
            mol.SetProp("generation_error", exc.reason)
    jobs = [(m, c) for m in graphs for c in range(num_conformers)]
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for group in pack_batches([graphs[m].num_nodes for m, _ in jobs], max_atoms):
        coords = sample_coordinates(model, diffusion, sampler, [graphs[jobs[j][0]] for j in group], generator)
        for j, xyz in zip(group, coords):
            conformer = Chem.Conformer(out[jobs[j][0]].GetNumAtoms())
            for atom, (x, y, z) in enumerate(xyz.tolist()):
                conformer.SetAtomPosition(atom, Point3D(x, y, z))
            conformer.Set3D(True)
            out[jobs[j][0]].AddConformer(conformer, assignId=True)
    return out


def model_generate_fn(model: nn.Module, diffusion: Diffusion, sampler: SamplerSpec, max_atoms: int = 4096):
    """The model as a ``generate_fn(mols, n, seed) -> one mol per input`` (the pipeline's generator protocol)."""

    def generate(mols: Sequence[Chem.Mol], n: int, seed: int = 0, **_) -> list[Chem.Mol]:
        return generate_conformers(mols, model, diffusion, sampler, n, seed, max_atoms)

    return generate

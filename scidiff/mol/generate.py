"""Conformer sampling with a trained model: prepared RDKit molecules in, the same molecules with conformers (Å) out.

Two kinds of model share this code. A de novo model samples from Gaussian noise (``generate_conformers``); a refiner
was trained on (force-field seed, DFT target) pairs and runs the process from each seed conformer to the clean end
(``refine_conformers``; the seeds come from the generator named in its run config). Every molecule is featurised
once; its graph is repeated for each conformer, and molecule x conformer graphs are packed into batches of at most
``max_atoms`` atoms that go through the core sampler with the zero-centre-of-mass projection (Hoogeboom et al.
2022). The model works in Å. This module samples only: relaxation, stereo checks and files are the pipeline's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import torch
from rdkit import Chem
from torch import nn
from torch_geometric.data import Batch, Data

from scidiff.core import Diffusion, Pin, SamplerSpec, build_diffusion, build_sampler, load_run

from .chem import MoleculeError
from .denoiser import build_model
from .featurize import featurize, remove_mean

__all__ = ["WEIGHTS_DIR", "RefinerDomain", "ConformerModel", "bundled_weights", "load_model", "pack_batches", "sample_coordinates",
           "generate_conformers", "refine_conformers", "model_generate_fn"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def bundled_weights(name: str = "qm9") -> Path:
    """Path of weights shipped with the package (``scidiff/mol/weights/<name>.safetensors``)."""
    path = WEIGHTS_DIR / f"{name}.safetensors"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))) or "none"
        raise FileNotFoundError(f"no bundled conformer weights {name!r} at {path} (available: {available})")
    return path


@dataclass(frozen=True)
class RefinerDomain:
    """The molecules a refiner was trained on (its run's ``data.domain``): at most ``max_heavy_atoms`` heavy atoms, of
    ``elements`` only. A molecule outside it keeps its seeds: the QM9 refiner on drug-sized molecules left coverage
    where it was and raised GFN2-xTB strain 4.7x (README, "Conformer refinement")."""

    max_heavy_atoms: int | None = None
    elements: frozenset[str] | None = None

    @classmethod
    def from_config(cls, config: dict | None) -> "RefinerDomain | None":
        """The domain of a run's ``data.domain`` (None: the run states none, and every molecule is refined)."""
        if config is None:
            return None
        unknown = set(config) - {"max_heavy_atoms", "elements"}
        if unknown:
            raise ValueError(f"data.domain: unknown keys {sorted(unknown)}; expected max_heavy_atoms, elements")
        elements = config.get("elements")
        return cls(config.get("max_heavy_atoms"), None if elements is None else frozenset(elements))

    def outside(self, mol: Chem.Mol) -> str | None:
        """Why ``mol`` lies outside the domain (e.g. "24 heavy atoms > 9"), or None when it lies inside."""
        heavy = mol.GetNumHeavyAtoms()
        if self.max_heavy_atoms is not None and heavy > self.max_heavy_atoms:
            return f"{heavy} heavy atoms > {self.max_heavy_atoms}"
        foreign = sorted({a.GetSymbol() for a in mol.GetAtoms()} - self.elements) if self.elements else []
        return f"elements {', '.join(foreign)} not in {', '.join(sorted(self.elements))}" if foreign else None


@dataclass(frozen=True)
class ConformerModel:
    """A trained conformer model: the denoiser, its process and sampler, ``seeds``: the generator whose conformers
    a refiner starts from (None for a de novo model, which starts from noise), and ``domain``: the molecules a refiner
    is used on (None: all)."""

    net: nn.Module
    diffusion: Diffusion
    sampler: SamplerSpec
    seeds: str | None = None
    domain: RefinerDomain | None = None

    def __iter__(self) -> Iterator:
        """Unpacks as (net, diffusion, sampler), the form load_model returned before refiners existed."""
        return iter((self.net, self.diffusion, self.sampler))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ConformerModel:
    """The EMA denoiser of a ``scidiff train experiment=mol_*`` run (model.safetensors) with its process and sampler."""
    state, cfg = load_run(path, "mol", device=device)
    model = build_model(cfg["model"]).to(device)
    model.load_state_dict(state)
    data = cfg.get("data", {})
    return ConformerModel(model.eval(), build_diffusion(cfg["process"]), build_sampler(cfg["sampler"]),
                          data.get("seeds"), RefinerDomain.from_config(data.get("domain")))


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


@torch.inference_mode()
def sample_coordinates(model: nn.Module, diffusion: Diffusion, sampler: SamplerSpec, graphs: Sequence[Data],
                       generator: torch.Generator, sources: Sequence[torch.Tensor] | None = None,
                       pinned: Sequence[Sequence[int]] | None = None) -> list[torch.Tensor]:
    """One sample of coordinates (N_i, 3) per graph, all graphs in one batch through the core sampler: from Gaussian
    noise, or from ``sources`` (one (N_i, 3) seed per graph; results come back in the seeds' frames) for a refiner.
    ``pinned`` (atom ids per graph) holds those atoms at their seed positions (the core's pin hook); the seeds are then
    not centred, which the model allows: it sees only relative positions and its output has zero mean per molecule."""
    batch = Batch.from_data_list(list(graphs), exclude_keys=["name", "smiles"])
    device = next(model.parameters()).device
    batch = batch.to(device)
    project = partial(remove_mean, batch=batch.batch)
    source = None if sources is None else torch.cat(list(sources)).to(device)
    pin, offset = None, 0.0
    if pinned is not None and any(len(atoms) for atoms in pinned):
        mask = torch.zeros(batch.num_nodes, 1, dtype=torch.bool, device=device)
        for first, atoms in zip(batch.ptr.tolist(), pinned):
            mask[[first + i for i in atoms]] = True
        pin, project = Pin(mask.expand(-1, 3), source, source), None
    elif source is not None:  # centred seeds, and each result moved back to its seed's centroid
        offset = source - project(source)
        source = source - offset
    x = diffusion.sample(lambda x, t: model(x, t, batch), (batch.num_nodes, 3), sampler, generator=generator,
                         device=device, project=project, source=source, pin=pin).x + offset
    return list(x.float().cpu().split(batch.ptr.diff().tolist()))


def _set_positions(mol: Chem.Mol, xyz: torch.Tensor, conf_id: int | None = None) -> None:
    """Write (N, 3) coordinates into conformer ``conf_id``, or into a new 3D conformer when it is None."""
    conformer = Chem.Conformer(mol.GetNumAtoms()) if conf_id is None else mol.GetConformer(conf_id)
    conformer.SetPositions(xyz.double().numpy())  # one call, not one Point3D per atom
    if conf_id is None:
        conformer.Set3D(True)
        mol.AddConformer(conformer, assignId=True)


def _graphs(mols: Sequence[Chem.Mol]) -> dict[int, Data]:
    """Position -> graph of every molecule the featuriser accepts; the others lose their conformers and get the
    reason in ``generation_error``."""
    graphs: dict[int, Data] = {}
    for index, mol in enumerate(mols):
        try:
            graphs[index] = featurize(mol)
        except MoleculeError as exc:
            mol.RemoveAllConformers()
            mol.SetProp("generation_error", exc.reason)
    return graphs


def generate_conformers(mols: Sequence[Chem.Mol], model: nn.Module, diffusion: Diffusion, sampler: SamplerSpec,
                        num_conformers: int = 5, seed: int = 0, max_atoms: int = 4096) -> list[Chem.Mol]:
    """``num_conformers`` sampled conformers for each prepared molecule (``chem.prepare_mol``), aligned with the inputs.

    Each output is a copy of its input with the conformers in Å; one the featuriser rejects comes back without
    conformers and with the reason in its ``generation_error`` property.
    """
    if num_conformers < 1:
        raise ValueError(f"num_conformers must be >= 1, got {num_conformers}")
    out = [Chem.Mol(mol) for mol in mols]
    for mol in out:
        mol.RemoveAllConformers()
    graphs = _graphs(out)
    jobs = [(m, c) for m in graphs for c in range(num_conformers)]
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for group in pack_batches([graphs[m].num_nodes for m, _ in jobs], max_atoms):
        coords = sample_coordinates(model, diffusion, sampler, [graphs[jobs[j][0]] for j in group], generator)
        for j, xyz in zip(group, coords):
            _set_positions(out[jobs[j][0]], xyz)
    return out


def refine_conformers(mols: Sequence[Chem.Mol], model: nn.Module, diffusion: Diffusion, sampler: SamplerSpec,
                      seed: int = 0, max_atoms: int = 4096) -> list[Chem.Mol]:
    """Every conformer of every prepared molecule moved by the refiner from where it stands (its seed) to the clean
    end, in a copy; conformer ids, properties and the seed's centroid are kept. Atoms listed in a molecule's
    ``core_atoms`` property (``forcefield.core_conformers``) stay where they are. A molecule the featuriser rejects
    comes back without conformers and with the reason in ``generation_error``."""
    out = [Chem.Mol(mol) for mol in mols]
    graphs = _graphs(out)
    pinned = {m: [int(i) for i in out[m].GetProp("core_atoms").split(",")] if out[m].HasProp("core_atoms") else []
              for m in graphs}
    jobs = [(m, conf.GetId()) for m in graphs for conf in out[m].GetConformers()]
    seeds = [torch.tensor(out[m].GetConformer(c).GetPositions(), dtype=torch.float32) for m, c in jobs]
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for group in pack_batches([graphs[m].num_nodes for m, _ in jobs], max_atoms):
        coords = sample_coordinates(model, diffusion, sampler, [graphs[jobs[j][0]] for j in group], generator,
                                    sources=[seeds[j] for j in group], pinned=[pinned[jobs[j][0]] for j in group])
        for j, xyz in zip(group, coords):
            _set_positions(out[jobs[j][0]], xyz, jobs[j][1])
    return out


def model_generate_fn(model: nn.Module, diffusion: Diffusion, sampler: SamplerSpec, max_atoms: int = 4096):
    """A de novo model as a ``generate_fn(mols, n, seed) -> one mol per input`` (the pipeline's generator protocol)."""

    def generate(mols: Sequence[Chem.Mol], n: int, seed: int = 0, **_) -> list[Chem.Mol]:
        return generate_conformers(mols, model, diffusion, sampler, n, seed, max_atoms)

    return generate

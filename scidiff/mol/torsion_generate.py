"""Torsional diffusion at inference (Jing et al. 2022): a torsion score model samples the torsions of the rotatable
bonds of ETKDG + MMFF94 local structures through the core's sampler.

State: the torsion angles of a molecule's rotatable bonds on a fixed local structure (bond lengths, angles, rings).
The network (``torsion_head.TorsionScoreModel``) sees the coordinates at the current torsions and gives the score of
each torsion; ``torsion_score_fn`` is that score as the core's ``ScoreModel(x, sigma)``, used by training
(``torsion_train``) and sampling alike. ``sample_torsions`` runs the core's ``Diffusion.sample`` on the torus process
(wrapped to (-pi, pi] after every step, from wrapped noise at sigma = pi); ``torsional_conformers`` is the seed
generator of ``--method scidiff --torsion-checkpoint``. Inference side: imports nothing of build or train.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from rdkit import Chem
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from scidiff.core import Diffusion, SamplerSpec, build_diffusion, build_sampler, load_run
from scidiff.core.torus import wrap

from .chem import MoleculeError, bonds_from_3d_match
from .featurize import featurize
from .forcefield import etkdg_conformers
from .generate import ConformerModel, pack_batches
from .torsion import Bond, rotate_sides, dihedral, rotatable_bonds, rotating_sides, torsion_atoms
from .torsion_head import build_torsion_model, torsion_score

__all__ = ["TASK", "TorsionGraph", "torsion_graph", "torsion_item", "collate", "positions_at_torsions",
           "torsion_score_fn", "load_torsion_model", "sample_torsions", "torsional_conformers"]

log = logging.getLogger(__name__)

TASK = "mol_torsion"  # the task of a torsion model's run config (scidiff train experiment=mol_torsion)


def collate(items: Sequence[Data]) -> Batch:
    """A graph batch of items, names and SMILES left out (as train's collate; inference does not import train)."""
    return Batch.from_data_list(list(items), exclude_keys=["name", "smiles"])


@dataclass(frozen=True)
class TorsionGraph:
    """A molecule's graph with its rotatable bonds, their dihedral quadruples and the sides they rotate."""

    graph: Data
    bonds: list[Bond]
    quads: np.ndarray  # (T, 4)
    sides: tuple[np.ndarray, np.ndarray]  # rotating_sides: (T, N) masks, (T, 2) axes


def torsion_graph(mol: Chem.Mol, bonds: Sequence[Bond] | None = None) -> TorsionGraph:
    """Featurise a prepared molecule once, with its rotatable bonds (default ``rotatable_bonds``)."""
    bonds = rotatable_bonds(mol) if bonds is None else list(bonds)
    quads = np.array([torsion_atoms(mol, b) for b in bonds], dtype=np.int64).reshape(-1, 4)
    return TorsionGraph(featurize(mol), bonds, quads, rotating_sides(mol, bonds, mol.GetNumAtoms()))


def torsion_item(graph: TorsionGraph, index: int, positions: np.ndarray | Tensor) -> Data:
    """A batchable item: the graph at ``positions``, their torsions, the bonds (2, T) and ``graph_id`` = index."""
    item = copy.copy(graph.graph)  # shallow: the graph's tensors are shared
    pos = torch.as_tensor(positions, dtype=torch.float32)
    item.pos = pos
    item.torsions = torch.as_tensor(dihedral(pos.double().numpy(), graph.quads), dtype=torch.float32)
    item.rot_bond_index = torch.tensor(graph.bonds, dtype=torch.long).reshape(-1, 2).T.contiguous()  # PyG offsets it
    item.graph_id = index
    return item


def positions_at_torsions(batch: Batch, torsions: Tensor, graphs: Sequence[TorsionGraph]) -> Tensor:
    """The batch's coordinates with each molecule's rotatable bonds turned from ``batch.torsions`` to ``torsions``
    (both (T,) over the batch): rigid rotations of the smaller sides (``torsion``'s one implementation), per molecule."""
    pos = batch.pos.detach().double().cpu().numpy()
    change = (torsions.detach().double().cpu() - batch.torsions.detach().double().cpu()).numpy()
    out = np.empty_like(pos)
    atoms, first_bond = batch.ptr.tolist(), 0
    for k, graph in enumerate(graphs):
        masks, axes = graph.sides
        span = slice(atoms[k], atoms[k + 1])
        out[span] = rotate_sides(pos[span], masks, axes, change[first_bond : first_bond + len(graph.bonds)])
        first_bond += len(graph.bonds)
    return torch.as_tensor(out, dtype=batch.pos.dtype, device=batch.pos.device)


def torsion_score_fn(model: nn.Module, process, batch: Batch, graphs: Sequence[TorsionGraph]):
    """The core's ScoreModel ``score(x, sigma)`` of a batch: x the torsions (T,), sigma per torsion; the network sees
    the structure at x and the network time of its molecule's sigma."""
    bonds = batch.rot_bond_index
    bond_batch = batch.batch[bonds[0]]

    def score(x: Tensor, sigma: Tensor) -> Tensor:
        pos = positions_at_torsions(batch, wrap(x), graphs)
        graph_sigma = torch.ones(batch.num_graphs, dtype=torch.float64, device=pos.device)
        graph_sigma = graph_sigma.scatter(0, bond_batch, sigma.to(torch.float64))  # one sigma per molecule
        t = process.network_time(graph_sigma)[batch.batch].to(pos.dtype)
        return torsion_score(model, pos, t, batch, bonds, sigma, bond_batch).to(x.dtype)

    return score


def load_torsion_model(path: str | Path, device: str | torch.device = "cpu") -> ConformerModel:
    """The EMA torsion score model of a ``scidiff train experiment=mol_torsion`` run, with its process and sampler;
    ``seeds`` names the generator of its local structures (etkdg_mmff)."""
    state, cfg = load_run(path, TASK, device=device)
    model = build_torsion_model(cfg["model"]).to(device)
    model.load_state_dict(state)
    diffusion = build_diffusion(cfg["process"])
    return ConformerModel(model.eval(), diffusion, build_sampler(cfg["sampler"], diffusion.process),
                          cfg.get("data", {}).get("seeds", "etkdg_mmff"))


@torch.inference_mode()
def sample_torsions(model: nn.Module, diffusion: Diffusion, sampler: SamplerSpec, graphs: Sequence[TorsionGraph],
                    local: Sequence[np.ndarray], generator: torch.Generator, t_start: float | None = None) -> list[Tensor]:
    """One torsion sample per (graph, local structure), in one batch through the core sampler: the local structure
    with its rotatable bonds set to the sampled torsions, (N_i, 3) each. With ``t_start`` (a sigma in radians) the
    local structure's own torsions are noised to it and denoised from there (SDEdit, Meng et al. 2022; the core's
    ``x_start``) instead of starting from wrapped noise at sigma = pi."""
    batch = collate([torsion_item(g, k, pos) for k, (g, pos) in enumerate(zip(graphs, local))])
    device = next(model.parameters()).device
    batch = batch.to(device)
    score = torsion_score_fn(model, diffusion.process, batch, graphs)
    start = {} if t_start is None else {"x_start": batch.torsions, "t_start": t_start}
    x = diffusion.sample(score, (batch.torsions.shape[0],), sampler, generator=generator, device=device, **start).x
    pos = positions_at_torsions(batch, x, graphs)
    return list(pos.float().cpu().split(batch.ptr.diff().tolist()))


def torsional_conformers(mols: Sequence[Chem.Mol], model: ConformerModel, n: int, seed: int = 0,
                         max_atoms: int = 4096, max_resample: int = 3, t_start: float | None = None) -> list[Chem.Mol]:
    """n conformers per prepared molecule: ETKDGv3 + MMFF94 local structures (conformer i from seed + i, as
    ``etkdg_mmff``), with the torsions of the rotatable bonds sampled by the model. Molecules without rotatable bonds
    keep their local structures. A sample that puts atoms within bonding distance of each other (its bonds perceived
    from 3D are not the molecule's: ``chem.bonds_from_3d_match``) is drawn again from the same local structure, up to
    ``max_resample`` times, and then left at its local structure. Every conformer's ``torsional`` property says whether
    it was sampled (1) or not (0). ``t_start``: start from the local structure's torsions noised to that sigma
    (``sample_torsions``) rather than from noise."""
    out = [etkdg_conformers(mol, n, seed, mmff=True) for mol in mols]
    graphs: dict[int, TorsionGraph] = {}
    for index, mol in enumerate(out):
        for conf in mol.GetConformers():
            conf.SetIntProp("torsional", 0)
        if mol.GetNumConformers() and rotatable_bonds(mol):
            try:
                graphs[index] = torsion_graph(mol)
            except MoleculeError as exc:  # kept as local structures, the reason logged
                name = mol.GetProp("_Name") if mol.HasProp("_Name") else f"input {index}"
                log.warning("torsional sampling skipped for %s: %s", name, exc.reason)
    jobs = [(m, conf.GetId()) for m in graphs for conf in out[m].GetConformers()]
    local = {job: out[job[0]].GetConformer(job[1]).GetPositions() for job in jobs}
    generator = torch.Generator(device=next(model.net.parameters()).device).manual_seed(seed)
    for _ in range(1 + max_resample):
        clashing = []
        for group in pack_batches([graphs[m].graph.num_nodes for m, _ in jobs], max_atoms):
            coords = sample_torsions(model.net, model.diffusion, model.sampler, [graphs[jobs[j][0]] for j in group],
                                     [local[jobs[j]] for j in group], generator, t_start)
            for j, xyz in zip(group, coords):
                m, conf_id = jobs[j]
                conf = out[m].GetConformer(conf_id)
                conf.SetPositions(xyz.double().numpy())
                if not bonds_from_3d_match(out[m], conf_id):
                    conf.SetPositions(local[jobs[j]])
                    clashing.append(jobs[j])
                    continue
                conf.SetIntProp("torsional", 1)
                if conf.HasProp("mmff_energy"):  # the local structure's energy; the sampled torsions change it
                    conf.ClearProp("mmff_energy")
        jobs = clashing
        if not jobs:
            break
    if jobs:
        log.info("torsional sampling: %d conformers kept at their local structures after %d clashing samples each",
                 len(jobs), 1 + max_resample)
    return out

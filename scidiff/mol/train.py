"""The ``mol`` task of ``scidiff train``: conformers -> graphs -> EDM in Cartesian coordinates -> the core's loop.

Data flows one way: conformer sources (QM9 DFT geometries, SDF conformer sets built by ``scidiff mol build``)
become one featurised graph per molecule plus one coordinate tensor per conformer; batches are balanced by
atom count (node-count-aware batching); the loss is the core's ``diffusion_loss`` with one noise level per
molecule and noise projected to zero centre of mass (Hoogeboom et al. 2022); ``scidiff.core.train`` does the
rest (EMA, resume, logging, safetensors export).
"""

from __future__ import annotations

import copy
import heapq
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from rdkit import Chem
from torch import Tensor, nn
from torch.utils.data import Dataset
from torch_geometric.data import Batch, Data

from scidiff.core import Diffusion, TrainConfig, build_diffusion, train

from .chem import Failure, MoleculeError, implicit_hydrogen_atoms, prepare_mol
from .denoiser import build_model
from .featurize import featurize, remove_mean
from .io import read_conformers, read_qm9

__all__ = ["ConformerDataset", "node_balanced_batches", "conformer_loss", "load_sources", "train_from_config",
           "centred_coordinate_std"]

log = logging.getLogger(__name__)


@dataclass
class ConformerDataset(Dataset):
    """One featurised graph per molecule and one (N, 3) coordinate tensor per conformer; items are graphs with ``pos``."""

    graphs: list[Data]
    conformers: list[tuple[int, Tensor]]  # (graph index, coordinates in Å)

    def __len__(self) -> int:
        return len(self.conformers)

    def __getitem__(self, index: int) -> Data:
        graph_index, pos = self.conformers[index]
        item = copy.copy(self.graphs[graph_index])  # shallow: the graph's tensors are shared, not copied
        item.pos = pos
        return item

    def num_nodes(self) -> np.ndarray:
        """Atom count of every item (for node-count-aware batching)."""
        sizes = np.array([g.num_nodes for g in self.graphs], dtype=np.int64)
        return sizes[[g for g, _ in self.conformers]]

    @classmethod
    def from_molecules(cls, molecules: Iterable[Chem.Mol], skipped: list[Failure] | None = None) -> "ConformerDataset":
        """Featurise each prepared molecule once and keep all its conformers; molecules the featuriser rejects (e.g.
        hydrogens without coordinates) go to ``skipped``, or raise when it is None."""
        graphs: list[Data] = []
        conformers: list[tuple[int, Tensor]] = []
        for mol in molecules:
            try:
                graph = featurize(mol)
            except MoleculeError as exc:
                if skipped is None:
                    raise
                skipped.append(Failure(exc.molecule, exc.reason))
                continue
            graphs.append(graph)
            for conf in mol.GetConformers():
                conformers.append((len(graphs) - 1, torch.tensor(conf.GetPositions(), dtype=torch.float32)))
        return cls(graphs, conformers)


def node_balanced_batches(num_nodes: Sequence[int], max_nodes: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch of batches with about ``max_nodes`` atoms each: shuffled items go to the lightest of a fixed number of bins.

    The bin count, ceil(total atoms / max_nodes), is the same every epoch (as the core's loop requires), and
    greedy least-loaded assignment keeps every batch within one molecule of the mean atom count, so step time
    and memory stay flat whatever the mix of small and large molecules.
    """
    sizes = np.asarray(num_nodes, dtype=np.int64)
    if len(sizes) == 0:
        raise ValueError("node_balanced_batches: the dataset is empty")
    if max_nodes < sizes.max():
        raise ValueError(f"data.max_nodes={max_nodes} is smaller than the largest molecule ({int(sizes.max())} atoms)")
    num_batches = max(1, int(np.ceil(sizes.sum() / max_nodes)))
    order = torch.randperm(len(sizes), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    bins: list[list[int]] = [[] for _ in range(num_batches)]
    heap = [(0, b) for b in range(num_batches)]
    for item in order:
        load, b = heapq.heappop(heap)
        bins[b].append(item)
        heapq.heappush(heap, (load + int(sizes[item]), b))
    return bins


def conformer_loss(diffusion: Diffusion, net: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
    """The core's denoising loss on a graph batch: one noise level per molecule, noise and data at zero centre of mass."""
    project = partial(remove_mean, batch=batch.batch)
    return diffusion.loss(lambda x, t: net(x, t, batch), project(batch.pos), generator=generator, batch=batch.batch,
                          num_graphs=batch.num_graphs, project=project)


def _prepared(mol: Chem.Mol, skipped: list[Failure]) -> Chem.Mol | None:
    """A conformer set read from an SDF, prepared as every input is (``chem.prepare_mol``); None when it cannot train."""
    name = mol.GetProp("_Name") if mol.HasProp("_Name") else "unnamed"
    implicit = implicit_hydrogen_atoms(mol)
    if implicit:  # prepare_mol would add them without the conformers' coordinates
        skipped.append(Failure(name, f"has implicit hydrogens without coordinates (atoms {implicit[:5]})"))
        return None
    try:
        return prepare_mol(mol, name=name)
    except MoleculeError as exc:
        skipped.append(Failure(name, exc.reason))
        return None


def load_sources(data_cfg: dict[str, Any]) -> tuple[list[Chem.Mol], list[Failure]]:
    """Prepared molecules with conformers from the ``data`` section: ``qm9_dft`` (split name or null) and ``sdf`` (paths)."""
    molecules: list[Chem.Mol] = []
    skipped: list[Failure] = []
    split = data_cfg.get("qm9_dft")
    if split:
        if split != "train":  # the test split is for evaluation only
            raise ValueError(f"data.qm9_dft must be 'train' or null (the test split is never trained on), got {split!r}")
        built = read_qm9("train", limit=data_cfg.get("limit"))
        molecules += built.molecules
        skipped += built.skipped
    for path in data_cfg.get("sdf") or []:
        for mol in read_conformers(path, skipped=skipped):
            prepared = _prepared(mol, skipped)
            if prepared is not None:
                molecules.append(prepared)
    if not molecules:
        raise ValueError("data: no training molecules; set data.qm9_dft: train and/or data.sdf: [paths built by `scidiff mol build`]")
    return molecules, skipped


def centred_coordinate_std(dataset: ConformerDataset) -> float:
    """Per-coordinate standard deviation of zero-CoM positions over a dataset: EDM's sigma_data (Karras et al. 2022)."""
    centred = torch.cat([pos - pos.mean(0, keepdim=True) for _, pos in dataset.conformers])
    return float(centred.double().pow(2).mean().sqrt())


def _collate(items: list[Data]) -> Batch:
    return Batch.from_data_list(items, exclude_keys=["name", "smiles"])


def train_from_config(cfg: dict[str, Any]):
    """Train the conformer denoiser on the configured conformer sources with the shared loop."""
    diffusion = build_diffusion(cfg["process"])
    trainer_cfg = TrainConfig.from_mapping(cfg["trainer"])
    data_cfg = cfg["data"]
    molecules, skipped = load_sources(data_cfg)
    dataset = ConformerDataset.from_molecules(molecules, skipped)
    for item in skipped:
        log.info("skipped %s: %s", item.name, item.reason)  # summarised below; the list is in the log at INFO
    sizes = dataset.num_nodes()
    print(f"mol: {len(dataset.graphs)} molecules, {len(dataset)} conformers, {int(sizes.sum())} atoms "
          f"({len(skipped)} molecules skipped); centred coordinate std {centred_coordinate_std(dataset):.3f} Å "
          f"(process.sigma_data={cfg['process'].get('sigma_data', '-')})", flush=True)
    model = build_model(cfg["model"])
    max_nodes = int(data_cfg["max_nodes"])
    plan = partial(node_balanced_batches, sizes, max_nodes, trainer_cfg.seed)
    return train(model, dataset, partial(conformer_loss, diffusion), trainer_cfg, collate_fn=_collate,
                 batch_plan=plan, run_config=cfg)

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
    """One featurised graph per molecule and one (N, 3) coordinate tensor per conformer; items are graphs with ``pos``.

    A refinement set (``scidiff mol build qm9-pairs``) also has one source per conformer, the force-field seed that
    the target conformer is reached from; its items carry it as ``source``.
    """

    graphs: list[Data]
    conformers: list[tuple[int, Tensor]]  # (graph index, coordinates in Å)
    sources: list[Tensor] | None = None  # per conformer: the seed it is refined from (same atom order), or None

    def __len__(self) -> int:
        return len(self.conformers)

    def __getitem__(self, index: int) -> Data:
        graph_index, pos = self.conformers[index]
        item = copy.copy(self.graphs[graph_index])  # shallow: the graph's tensors are shared, not copied
        item.pos = pos
        if self.sources is not None:
            item.source = self.sources[index]
        return item

    def num_nodes(self) -> np.ndarray:
        """Atom count of every item (for node-count-aware batching)."""
        sizes = np.array([g.num_nodes for g in self.graphs], dtype=np.int64)
        return sizes[[g for g, _ in self.conformers]]

    @classmethod
    def from_molecules(cls, molecules: Iterable[Chem.Mol], skipped: list[Failure] | None = None,
                       max_pair_rmsd: float | None = None) -> "ConformerDataset":
        """Featurise each prepared molecule once and keep all its conformers; molecules the featuriser rejects (e.g.
        hydrogens without coordinates) go to ``skipped``, or raise when it is None.

        Conformers with an ``is_target`` property are (seed, target) pairs matched by their ``pair`` property: each
        target becomes a conformer with its seed as the source. ``max_pair_rmsd`` (Å, heavy atoms; targets are
        aligned to their seeds) keeps only pairs whose seed already lies in the target's conformer: a seed in another
        basin has no local step to the target, and averaging over such pairs would teach the refiner to drift."""
        graphs: list[Data] = []
        conformers: list[tuple[int, Tensor]] = []
        sources: list[Tensor] = []
        for mol in molecules:
            try:
                graph = featurize(mol)
            except MoleculeError as exc:
                if skipped is None:
                    raise
                skipped.append(Failure(exc.molecule, exc.reason))
                continue
            graphs.append(graph)
            heavy = graph.z > 1
            for target, source in _targets_and_sources(mol):
                if source is not None and max_pair_rmsd is not None and \
                        (target - source)[heavy].pow(2).sum(-1).mean().sqrt() > max_pair_rmsd:
                    continue
                conformers.append((len(graphs) - 1, target))
                if source is not None:
                    sources.append(source)
        if sources and len(sources) != len(conformers):
            raise ValueError("data: refinement pairs and plain conformer sets cannot be mixed in one training set")
        return cls(graphs, conformers, sources or None)


def _positions(conf: Chem.Conformer) -> Tensor:
    return torch.tensor(conf.GetPositions(), dtype=torch.float32)


def _targets_and_sources(mol: Chem.Mol) -> list[tuple[Tensor, Tensor | None]]:
    """(target, seed) per pair of a refinement set's molecule; (conformer, None) per conformer of a plain set."""
    confs = list(mol.GetConformers())
    if not confs or not confs[0].HasProp("is_target"):
        return [(_positions(c), None) for c in confs]
    seeds = {int(c.GetDoubleProp("pair")): c for c in confs if not c.GetDoubleProp("is_target")}
    return [(_positions(c), _positions(seeds[int(c.GetDoubleProp("pair"))])) for c in confs
            if c.GetDoubleProp("is_target") and int(c.GetDoubleProp("pair")) in seeds]


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


def conformer_loss(diffusion: Diffusion, net: nn.Module, batch: Batch, generator: torch.Generator,
                   source_noise: float = 0.0, hydrogen_weight: float = 1.0) -> Tensor:
    """The core's denoising loss on a graph batch: one noise level per molecule, noise and data at zero centre of mass.

    Batches of refinement pairs run the process from each seed (``batch.source``) to its target instead of from
    Gaussian noise; ``source_noise`` (Å) jitters the seeds. ``hydrogen_weight`` weights hydrogens' errors against
    heavy atoms': between a force field's minimum and DFT's, terminal OH / NH2 / CH3 rotations move hydrogens several
    times more than the heavy atoms move, which would drown the heavy-atom signal the metrics measure."""
    project = partial(remove_mean, batch=batch.batch)
    source = project(batch.source) if getattr(batch, "source", None) is not None else None
    weight = None if hydrogen_weight == 1.0 else torch.where(batch.z > 1, 1.0, hydrogen_weight)[:, None].to(batch.pos)
    return diffusion.loss(lambda x, t: net(x, t, batch), project(batch.pos), generator=generator, batch=batch.batch,
                          num_graphs=batch.num_graphs, project=project, source=source, source_noise=source_noise,
                          loss_mask=weight)


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
    """Prepared molecules with conformers from the ``data`` section: ``qm9_dft`` (split name or null) and ``sdf`` (paths
    of conformer sets, or of refinement pairs built by ``scidiff mol build qm9-pairs``)."""
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
    dataset = ConformerDataset.from_molecules(molecules, skipped, data_cfg.get("max_pair_rmsd"))
    for item in skipped:
        log.info("skipped %s: %s", item.name, item.reason)  # summarised below; the list is in the log at INFO
    sizes = dataset.num_nodes()
    print(f"mol: {len(dataset.graphs)} molecules, {len(dataset)} conformers, {int(sizes.sum())} atoms "
          f"({len(skipped)} molecules skipped); centred coordinate std {centred_coordinate_std(dataset):.3f} Å "
          f"(process.sigma_data={cfg['process'].get('sigma_data', '-')})", flush=True)
    model = build_model(cfg["model"])
    max_nodes = int(data_cfg["max_nodes"])
    plan = partial(node_balanced_batches, sizes, max_nodes, trainer_cfg.seed)
    loss = partial(conformer_loss, diffusion, source_noise=float(data_cfg.get("source_noise", 0.0)),
                   hydrogen_weight=float(data_cfg.get("hydrogen_weight", 1.0)))
    return train(model, dataset, loss, trainer_cfg, collate_fn=_collate, batch_plan=plan, run_config=cfg)

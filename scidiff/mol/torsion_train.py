"""The ``mol_torsion`` task of ``scidiff train``: Jing et al. 2022's torsional diffusion on the shared core.

The examples of ``scidiff mol build torsion-pairs`` (``torsion_data``) are matched structures: their torsions are the
clean points. ``torsion_loss`` is the core's ``Diffusion.loss`` on the torus process, so ``torus_score_loss``: one
sigma per molecule, the torsions noised, the structure rotated to the noised torsions (``torsion_generate``) and the
head asked for the score of the noise. The core's loop trains it (EMA, exact resume, checkpoints);
``train_from_config`` also logs the validation loss of the held-out split against training CPU-hours and keeps the
EMA weights of every evaluation under ``OUT/snapshots`` for coverage curves.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torch_geometric.data import Batch, Data

from scidiff.core import Diffusion, TrainConfig, build_diffusion, build_sampler, train
from scidiff.core.checkpoint import save_inference

from .chem import Failure, MoleculeError
from .generate import pack_batches
from .io import read_conformers
from .stereo import is_achiral, mirror_positions
from .torsion_data import MATCHED, examples_of
from .torsion_generate import TorsionGraph, collate, torsion_graph, torsion_item, torsion_score_fn
from .torsion_head import build_torsion_model
from .train import _prepared, node_balanced_batches

__all__ = ["TorsionExamples", "ZeroScore", "torsion_loss", "validation_loss", "train_from_config"]

log = logging.getLogger(__name__)


@dataclass
class TorsionExamples(Dataset):
    """Matched structures of torsion-pair molecules (``scidiff mol build torsion-pairs``): one item per example, its
    ``pos`` the matched structure and ``torsions`` the target torsions."""

    graphs: list[TorsionGraph]
    examples: list[tuple[int, Tensor]]  # (graph index, matched positions)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Data:
        graph_index, pos = self.examples[index]
        return torsion_item(self.graphs[graph_index], graph_index, pos)

    def num_nodes(self) -> np.ndarray:
        sizes = np.array([g.graph.num_nodes for g in self.graphs], dtype=np.int64)
        return sizes[[g for g, _ in self.examples]]

    @classmethod
    def from_sdf(cls, paths: Sequence[str | Path], skipped: list[Failure], max_match_rmsd: float | None = None,
                 mirror_achiral: bool = False) -> "TorsionExamples":
        """Examples of every torsion-pair SDF (file or folder) of ``paths``; ``max_match_rmsd`` (Å) drops examples whose
        matching left the local structure that far from its reference (another ring pucker, say).

        ``mirror_achiral`` adds, for every molecule without a stereocentre, each example's mirror image (every
        torsion negated). The head is parity-odd, so for such a molecule it can only represent a score with
        s(-tau) = -s(tau), the score of a mirror-symmetric ensemble; a finite MMFF94 ensemble is not symmetric, and
        its mirror images (same energy, valid conformers) make the data one the model can fit. (Measured on CPU: no
        gain in validation loss; the README's torsional section.)"""
        graphs: list[TorsionGraph] = []
        examples: list[tuple[int, Tensor]] = []
        for path in paths:
            for raw in read_conformers(path, skipped=skipped):
                mol = _prepared(raw, skipped)
                if mol is None:
                    continue
                try:
                    graph = torsion_graph(mol)
                except MoleculeError as exc:
                    skipped.append(Failure(exc.molecule, exc.reason))
                    continue
                matched = [c for c in examples_of(mol, MATCHED).values()
                           if max_match_rmsd is None or c.GetDoubleProp("match_rmsd") <= max_match_rmsd]
                if not graph.bonds or not matched:
                    continue
                graphs.append(graph)
                positions = [c.GetPositions() for c in matched]
                if mirror_achiral and is_achiral(mol):
                    positions += [mirror_positions(pos) for pos in positions]
                examples += [(len(graphs) - 1, torch.tensor(pos, dtype=torch.float32)) for pos in positions]
        if not examples:
            raise ValueError(f"data: no torsion examples in {list(paths)}; build them with `scidiff mol build torsion-pairs`")
        return cls(graphs, examples)


def torsion_loss(diffusion: Diffusion, graphs: Sequence[TorsionGraph], model: nn.Module, batch: Batch,
                 generator: torch.Generator) -> Tensor:
    """The core's torus score-matching loss on a batch of examples, one sigma per molecule (Jing et al. 2022)."""
    score = torsion_score_fn(model, diffusion.process, batch, [graphs[g] for g in batch.graph_id.tolist()])
    bond_batch = batch.batch[batch.rot_bond_index[0]]
    return diffusion.loss(score, batch.torsions, generator=generator, batch=bond_batch, num_graphs=batch.num_graphs)


class ZeroScore(nn.Module):
    """The zero score, the torus loss's baseline (1 in expectation). Its validation loss on the same fixed noise is the
    reference a torsion model must beat: the denoising target's irreducible variance keeps the loss near 1 for every
    model, and the learnable part is a few percent of it."""

    def forward(self, x: Tensor, t: Tensor, graph: Data, bonds: Tensor, bond_batch: Tensor | None = None) -> Tensor:
        return x.new_zeros(bonds.shape[1])


@torch.no_grad()
def validation_loss(diffusion: Diffusion, data: TorsionExamples, model: nn.Module, max_nodes: int, seed: int = 0) -> float:
    """The loss over every held-out example with fixed noise (the same draws at every evaluation)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for group in pack_batches(data.num_nodes().tolist(), max_nodes):
        batch = collate([data[i] for i in group])
        total += float(torsion_loss(diffusion, data.graphs, model, batch, generator)) * len(group)
        count += len(group)
    model.train(was_training)
    return total / count


def _cpu_hours_before(cfg: dict[str, Any]) -> float:
    """Training CPU-hours of the earlier runs that a resumed run continues: the last eval/cpu_hours the run logged at
    or before the step it resumes from (0 for a fresh run), so the learning curve's time axis runs on across resumes
    (the steps between that evaluation and the checkpoint are not counted)."""
    from scidiff.core.checkpoint import read_run_state
    from scidiff.core.trainer import checkpoint_path

    out_dir = Path(cfg["trainer"]["out_dir"])
    metrics = out_dir / "metrics.jsonl"
    if not cfg["trainer"].get("resume", True) or not checkpoint_path(out_dir).is_file() or not metrics.is_file():
        return 0.0
    step = read_run_state(checkpoint_path(out_dir))[0]
    logged = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    earlier = [r for r in logged if "eval/cpu_hours" in r and r["step"] <= step]
    return float(earlier[-1]["eval/cpu_hours"]) if earlier else 0.0


def train_from_config(cfg: dict[str, Any]):
    """Train the torsion score model on ``data.sdf`` (torsion-pair folders) with the shared loop; with
    ``data.validation_sdf`` every ``trainer.eval_every`` steps logs eval/val_loss and eval/cpu_hours and keeps the
    EMA weights in OUT/snapshots/step_XXXXXX.safetensors."""
    cpu_start = time.process_time() - 3600 * _cpu_hours_before(cfg)
    diffusion = build_diffusion(cfg["process"])
    build_sampler(cfg["sampler"], diffusion.process)
    trainer_cfg = TrainConfig.from_mapping(cfg["trainer"])
    data_cfg = cfg["data"]
    skipped: list[Failure] = []
    # ``scidiff train`` has checked the setting's type against the configs (a boolean).
    dataset = TorsionExamples.from_sdf(data_cfg["sdf"], skipped, data_cfg.get("max_match_rmsd"),
                                       data_cfg.get("mirror_achiral", False))
    held_out = TorsionExamples.from_sdf(data_cfg["validation_sdf"], skipped, data_cfg.get("max_match_rmsd")) \
        if data_cfg.get("validation_sdf") else None
    for item in skipped:
        log.info("skipped %s: %s", item.name, item.reason)
    print(f"mol_torsion: {len(dataset.graphs)} molecules, {len(dataset)} examples, "
          f"{sum(len(g.bonds) for g in dataset.graphs)} rotatable bonds; validation "
          f"{len(held_out) if held_out else 0} examples ({len(skipped)} skipped)", flush=True)
    model = build_torsion_model(cfg["model"])
    max_nodes = int(data_cfg["max_nodes"])
    out_dir = Path(trainer_cfg.out_dir)

    def evaluate(net: nn.Module, step: int) -> dict[str, float]:
        save_inference(out_dir / "snapshots" / f"step_{step:06d}.safetensors", net.state_dict(), cfg)
        val = validation_loss(diffusion, held_out, net, max_nodes)
        # the zero score on the same fixed noise: val_gain > 0 is what the model has learnt (1 - val_loss is not).
        return {"val_loss": val, "val_gain": zero_val - val, "cpu_hours": (time.process_time() - cpu_start) / 3600}

    zero_val = validation_loss(diffusion, held_out, ZeroScore(), max_nodes) if held_out is not None else None
    plan = partial(node_balanced_batches, dataset.num_nodes(), max_nodes, trainer_cfg.seed)
    loss = partial(torsion_loss, diffusion, dataset.graphs)
    return train(model, dataset, loss, trainer_cfg, collate_fn=collate, batch_plan=plan,
                 evaluate=evaluate if held_out is not None else None, run_config=cfg)



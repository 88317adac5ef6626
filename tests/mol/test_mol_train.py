"""The mol training path: node-balanced batches, the conformer dataset, the loss through the core, and the Hydra experiment."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from scidiff.core import TrainConfig, build_diffusion, train
from scidiff.core.config import compose, to_container
from scidiff.mol.build import embed_conformers
from scidiff.mol.denoiser import ConformerDenoiser, DenoiserConfig
from scidiff.mol.featurize import remove_mean
from scidiff.mol.train import (
    ConformerDataset,
    build_model,
    centred_coordinate_std,
    conformer_loss,
    node_balanced_batches,
)


def test_node_balanced_batches_cover_every_item_once_with_balanced_atom_counts():
    sizes = np.random.default_rng(0).integers(3, 30, size=500)
    epochs = [node_balanced_batches(sizes, 300, seed=1, epoch=e) for e in range(3)]
    assert len({len(b) for b in epochs}) == 1 and len(epochs[0]) == int(np.ceil(sizes.sum() / 300))
    for batches in epochs:
        assert sorted(i for b in batches for i in b) == list(range(500))
        loads = [int(sizes[b].sum()) for b in batches]
        assert max(loads) - min(loads) <= sizes.max() and max(loads) <= 300 + sizes.max()
    assert epochs[0] != epochs[1] and epochs[0] == node_balanced_batches(sizes, 300, seed=1, epoch=0)
    with pytest.raises(ValueError, match="smaller than the largest molecule"):
        node_balanced_batches([5, 40], 30, seed=0, epoch=0)


@pytest.fixture(scope="module")
def molecules():
    return [embed_conformers("N[C@@H](C)C(=O)O", 3, seed=1, name="ala"), embed_conformers("CCO", 2, seed=1, name="ethanol")]


def test_dataset_shares_one_graph_per_molecule(molecules):
    dataset = ConformerDataset.from_molecules(molecules)
    assert len(dataset.graphs) == 2 and len(dataset) == 5
    assert dataset.num_nodes().tolist() == [13, 13, 13, 9, 9]
    a, b = dataset[0], dataset[1]
    assert a.edge_index.data_ptr() == b.edge_index.data_ptr()  # shared, not copied per conformer
    assert not torch.equal(a.pos, b.pos)
    assert np.allclose(b.pos.numpy(), molecules[0].GetConformer(1).GetPositions(), atol=1e-5)
    assert 0.5 < centred_coordinate_std(dataset) < 2.0


def test_dataset_reports_molecules_without_hydrogen_coordinates(molecules):
    from rdkit import Chem

    heavy = Chem.RemoveHs(molecules[1])
    heavy.SetProp("_Name", "ethanol-noH")
    skipped = []
    dataset = ConformerDataset.from_molecules([molecules[0], heavy], skipped)
    assert len(dataset.graphs) == 1 and skipped[0].name == "ethanol-noH" and "implicit hydrogens" in skipped[0].reason


def test_loss_through_the_core_is_translation_invariant_and_trains(molecules, one_thread):
    from torch_geometric.data import Batch

    dataset = ConformerDataset.from_molecules(molecules)
    batch = Batch.from_data_list([dataset[i] for i in range(len(dataset))], exclude_keys=["name", "smiles"])
    diffusion = build_diffusion({"name": "edm", "sigma_data": 1.0, "prediction": "edm"})
    model = ConformerDenoiser(DenoiserConfig.small())
    loss = conformer_loss(diffusion, model, batch, torch.Generator().manual_seed(0))
    shifted = batch.clone()
    shifted.pos = batch.pos + torch.tensor([5.0, -3.0, 2.0])  # data are centred inside the loss
    assert conformer_loss(diffusion, model, shifted, torch.Generator().manual_seed(0)).item() == pytest.approx(loss.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_experiment_config_builds_edm_with_measured_sigma_data():
    cfg = to_container(compose(["experiment=mol_qm9"]))
    assert cfg["task"] == "mol" and cfg["process"]["name"] == "edm" and cfg["process"]["prediction"] == "edm"
    diffusion = build_diffusion(cfg["process"])
    assert diffusion.process.sigma_data == pytest.approx(1.4)
    assert isinstance(build_model(cfg["model"]), ConformerDenoiser)
    TrainConfig.from_mapping(cfg["trainer"])
    drugs = to_container(compose(["experiment=mol_drugs"]))
    assert drugs["data"]["sdf"] and drugs["model"]["num_scalars"] == DenoiserConfig().num_scalars
    with pytest.raises(ValueError, match="model: .*unexpected keyword"):
        build_model({"num_scalars": 8, "width": 3})


def test_scidiff_train_mol_qm9_runs_and_resumes(tmp_path, one_thread):
    """`scidiff train experiment=mol_qm9` end to end on 24 QM9 molecules: safetensors written, loadable, resumable."""
    pytest.importorskip("hydra")
    from scidiff.cli import main
    from scidiff.data import data_path
    from scidiff.mol.generate import load_model

    try:
        data_path("qm9/qm9_dft_train.npz")
    except FileNotFoundError as exc:
        pytest.skip(f"QM9 DFT split not available: {exc}")
    out = tmp_path / "run"
    args = ["train", "experiment=mol_qm9", f"trainer.out_dir={out}", "trainer.max_steps=2", "trainer.progress=false",
            "trainer.tensorboard=false", "data.limit=24", "data.max_nodes=120", "model.num_layers=1",
            "trainer.checkpoint_every=1"]
    assert main(args) == 0
    model, diffusion, sampler = load_model(out / "model.safetensors")
    assert diffusion.process.sigma_data == pytest.approx(1.4) and sampler.name == "heun"
    assert main(args[:3] + ["trainer.max_steps=3"] + args[4:]) == 0  # resumes at step 2
    lines = (out / "metrics.jsonl").read_text().splitlines()  # logged at max_steps: 2, then 3 after resuming
    assert [int(line.split(",")[0].split(":")[1]) for line in lines] == [2, 3]


def test_training_data_refuses_the_qm9_test_split():
    from scidiff.mol.train import load_sources

    with pytest.raises(ValueError, match="never trained on"):
        load_sources({"qm9_dft": "test"})
    with pytest.raises(ValueError, match="no training molecules"):
        load_sources({"qm9_dft": None, "sdf": []})

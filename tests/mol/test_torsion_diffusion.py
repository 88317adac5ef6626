"""The mol_torsion task: torsion examples through the core's torus loss and trainer (exact resume), and
`--method scidiff --torsion-checkpoint` generation (ETKDG + MMFF94 local structure -> torsional sampling ->
refinement -> stereo check -> SDF)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rdkit import Chem
from safetensors.torch import load_file

from scidiff.cli import main
from scidiff.core import build_diffusion
from scidiff.mol.chem import prepare_mol
from scidiff.mol.io import read_conformers
from scidiff.mol.pipeline import generate
from scidiff.mol.torsion import set_torsions
from scidiff.mol.torsion_data import build_torsion_pairs
from scidiff.mol.torsion_generate import collate, load_torsion_model, positions_at_torsions
from scidiff.mol.torsion_head import build_torsion_model
from scidiff.mol.torsion_train import TorsionExamples, torsion_loss

ITEMS = [("ibuprofen", "CC(C)Cc1ccc(cc1)[C@H](C)C(=O)O"), ("cinnamate", "CCOC(=O)/C=C/c1ccc(OC)cc1"),
         ("alanine_ester", "C[C@@H](N)C(=O)OCC")]
TINY = ["model.num_scalars=4", "model.num_vectors=2", "model.num_tensors=0", "model.num_layers=1",
        "model.head_scalars=4", "trainer.progress=false", "trainer.tensorboard=false", "data.max_nodes=80",
        "trainer.checkpoint_every=1", "trainer.eval_every=2", "trainer.warmup_steps=1", "sampler.steps=4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("torsion_data")
    build_torsion_pairs(out, items=ITEMS, validation=1, num_conformers=6, max_references=2, shard_size=2,
                        processes=1, progress=None)
    return out


def _train(data, out, steps: int) -> int:
    return main(["train", "experiment=mol_torsion", f"data.sdf=[{data / 'train'}]",
                 f"data.validation_sdf=[{data / 'validation'}]", f"trainer.out_dir={out}",
                 f"trainer.max_steps={steps}", *TINY])


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "torsion"
    assert _train(data, out, 4) == 0
    return out


def test_batched_rotation_is_set_torsions_and_the_loss_reaches_every_weight(data, one_thread):
    dataset = TorsionExamples.from_sdf([data / "train"], [])
    mols = [prepare_mol(m) for m in read_conformers(data / "train")]  # the dataset's graphs, in the same order
    batch = collate([dataset[i] for i in range(len(dataset))])
    new = torch.rand(batch.torsions.shape, generator=torch.Generator().manual_seed(0)) * 6 - 3
    moved = positions_at_torsions(batch, new, [dataset.graphs[g] for g in batch.graph_id.tolist()])
    first = 0
    for k, g in enumerate(batch.graph_id.tolist()):
        bonds, span = dataset.graphs[g].bonds, slice(int(batch.ptr[k]), int(batch.ptr[k + 1]))
        expected = set_torsions(batch.pos[span].double().numpy(), mols[g], bonds, new[first:first + len(bonds)].numpy())
        assert np.abs(moved[span].double().numpy() - expected).max() < 1e-4
        first += len(bonds)
    model = build_torsion_model({"num_scalars": 4, "num_vectors": 2, "num_tensors": 0, "num_layers": 1, "time_dim": 8,
                                 "edge_dim": 8, "num_rbf": 8, "head_scalars": 4, "head_harmonics": 3})
    loss = torsion_loss(build_diffusion({"name": "torus"}), dataset.graphs, model, batch, torch.Generator().manual_seed(0))
    loss.backward()
    unused = "head.backbone.head."  # the backbone's own 1o output: the torsion head reads the features before it
    assert torch.isfinite(loss)
    assert all(p.grad is not None for name, p in model.named_parameters() if not name.startswith(unused))


def test_training_logs_validation_and_resumes_exactly(data, run, tmp_path, monkeypatch, one_thread):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [line for line in lines if "eval/val_loss" in line]
    assert [e["step"] for e in evals] == [2, 4] and all(e["eval/cpu_hours"] > 0 for e in evals)
    gains = [e["eval/val_gain"] + e["eval/val_loss"] for e in evals]  # the zero score's loss: the same at every eval
    assert 0.5 < gains[0] < 2.0 and gains[0] == pytest.approx(gains[1], abs=1e-9)
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["step_000002.safetensors", "step_000004.safetensors"]
    from scidiff.mol import torsion_train

    real = torsion_train.validation_loss

    def killed(diffusion, data, model, *args, **kwargs):
        if isinstance(model, torsion_train.ZeroScore):  # the baseline, measured once before step 1
            return real(diffusion, data, model, *args, **kwargs)
        raise RuntimeError("killed")

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(torsion_train, "validation_loss", killed)  # dies at step 2, before that step's checkpoint
    with pytest.raises(RuntimeError, match="killed"):
        _train(data, resumed, 4)
    monkeypatch.undo()
    assert _train(data, resumed, 4) == 0  # the same command resumes from step 1
    straight, again = load_file(run / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert straight.keys() == again.keys() and all(torch.equal(straight[k], again[k]) for k in straight)
    model = load_torsion_model(run / "model.safetensors")
    assert model.diffusion.process.name == "torus" and model.sampler.name == "heun" and model.seeds == "etkdg_mmff"


def test_generation_with_a_torsion_checkpoint_writes_valid_stereo_kept_sdf(run, tmp_path, one_thread):
    out = tmp_path / "out.sdf"
    inputs = ["C[C@@H](N)C(=O)OCc1ccccc1", "Oc1ccccc1"]  # rotatable bonds and a stereocentre; none (phenol)
    summary = generate(inputs, out, n=2, method="scidiff", torsion_checkpoint=str(run / "model.safetensors"))
    assert summary.succeeded == 2
    records = [m for m in Chem.SDMolSupplier(str(out), removeHs=False)]
    assert len(records) == 4 and all(r is not None for r in records)
    used = {r.GetIntProp("input_index"): r.GetProp("method_used") for r in records}
    assert used == {0: "scidiff_torsional", 1: "scidiff_refine"}
    assert all(r.GetProp("torsion_checkpoint") == str(run / "model.safetensors") for r in records)
    want = Chem.FindMolChiralCenters(Chem.MolFromSmiles(inputs[0]))
    for record in records[:2]:
        Chem.AssignStereochemistryFrom3D(record)
        heavy = Chem.RemoveHs(record)
        assert Chem.MolToSmiles(heavy) == Chem.MolToSmiles(Chem.MolFromSmiles(inputs[0]))  # graph and stereo kept
        assert Chem.FindMolChiralCenters(heavy) == want
    default = tmp_path / "default.sdf"  # without the option: today's refiner path, records unchanged in kind
    generate(inputs[:1], default, n=1, method="scidiff")
    assert not next(iter(Chem.SDMolSupplier(str(default), removeHs=False))).HasProp("method_used")


@pytest.mark.parametrize("clash_rounds", [1, 99])
def test_clashing_torsion_samples_are_redrawn_then_left_at_the_local_structure(run, monkeypatch, clash_rounds):
    """A sample whose atoms overlap (bonds perceived from 3D are not the molecule's) is drawn again from the same local
    structure; after max_resample redraws it stays at its local structure, marked torsional = 0."""
    import scidiff.mol.torsion_generate as tg

    calls = []

    def fake_sample(net, diffusion, sampler, graphs, local, generator, t_start=None):
        calls.append(len(local))
        coords = [torch.tensor(pos, dtype=torch.float32) for pos in local]
        if len(calls) <= clash_rounds:
            for xyz in coords:
                xyz[0] = xyz[-1] + 0.1  # atom 0 onto the last hydrogen: a bond no molecule has
        return coords

    monkeypatch.setattr(tg, "sample_torsions", fake_sample)
    mol = prepare_mol(Chem.MolFromSmiles("C[C@@H](N)C(=O)OCc1ccccc1"))
    local = tg.etkdg_conformers(mol, 3, 0, mmff=True)
    out = tg.torsional_conformers([mol], load_torsion_model(run / "model.safetensors"), 3, seed=0, max_resample=2)[0]
    sampled = [c.GetIntProp("torsional") for c in out.GetConformers()]
    assert calls == [3] * min(clash_rounds + 1, 3)
    assert sampled == ([1, 1, 1] if clash_rounds == 1 else [0, 0, 0])
    for conf, before in zip(out.GetConformers(), local.GetConformers()):
        assert np.allclose(conf.GetPositions(), before.GetPositions(), atol=1e-5)  # redrawn or restored, never clashing
        assert tg.bonds_from_3d_match(out, conf.GetId())


def test_a_part_way_start_keeps_the_local_structures_torsions_near(run):
    """SDEdit on the torus: from the local structure's torsions noised to sigma = 0.04 rad the sample stays within a
    few hundredths of a radian of them; from noise (sigma = pi) it does not."""
    import scidiff.mol.torsion_generate as tg
    from scidiff.mol.torsion import dihedral

    mol = prepare_mol(Chem.MolFromSmiles("C[C@@H](N)C(=O)OCc1ccccc1"))
    model = load_torsion_model(run / "model.safetensors")
    local = tg.etkdg_conformers(mol, 4, 0, mmff=True)
    quads = tg.torsion_graph(mol).quads

    def moved(t_start):  # largest wrapped torsion change per conformer
        out = tg.torsional_conformers([mol], model, 4, seed=0, t_start=t_start)[0]
        changes = [np.abs(np.angle(np.exp(1j * (dihedral(c.GetPositions(), quads) - dihedral(b.GetPositions(), quads)))))
                   for c, b in zip(out.GetConformers(), local.GetConformers()) if c.GetIntProp("torsional")]
        assert changes  # at least one conformer was sampled, not restored
        return max(float(c.max()) for c in changes)

    assert moved(0.04) < 0.2 < moved(None)
    with pytest.raises(ValueError, match="t_start"):
        tg.torsional_conformers([mol], model, 1, seed=0, t_start=4.0)  # above sigma_max = pi


def test_mirroring_adds_negated_torsions_for_achiral_molecules_only(data):
    from scidiff.mol.stereo import is_achiral

    folders = [data / "train", data / "validation"]  # all three molecules
    plain = TorsionExamples.from_sdf(folders, [])
    mirrored = TorsionExamples.from_sdf(folders, [], mirror_achiral=True)
    mols = [prepare_mol(m) for f in folders for m in read_conformers(f)]  # the graphs, in the same order
    achiral = [is_achiral(m) for m in mols]
    assert any(achiral) and not all(achiral)  # the cinnamate, and ibuprofen / the alanine ester
    counts = np.bincount([g for g, _ in plain.examples], minlength=len(mols))
    assert len(mirrored) == len(plain) + sum(int(c) for c, a in zip(counts, achiral) if a)
    for g, a in enumerate(achiral):
        torsions = [mirrored[i].torsions for i, (h, _) in enumerate(mirrored.examples) if h == g]
        if not a:
            assert len(torsions) == counts[g]
            continue
        first, images = torsions[:counts[g]], torsions[counts[g]:]
        assert len(images) == counts[g]
        for t, m in zip(first, images):  # the mirror image negates every torsion (wrapped: pi and -pi agree)
            assert torch.allclose(torch.remainder(t + m + np.pi, 2 * np.pi) - np.pi, torch.zeros_like(t), atol=1e-4)


def test_mirror_achiral_must_be_a_boolean(data, tmp_path, capsys):
    assert main(["train", "experiment=mol_torsion", f"data.sdf=[{data / 'train'}]", "data.mirror_achiral=no",
                 f"trainer.out_dir={tmp_path / 'run'}", "trainer.max_steps=1", *TINY]) != 0
    assert "data.mirror_achiral must be a boolean" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field", ["head_harmonics", "head_prior"])
def test_head_term_sizes_must_be_non_negative_integers(data, tmp_path, capsys, field):
    assert main(["train", "experiment=mol_torsion", f"data.sdf=[{data / 'train'}]",
                 f"data.validation_sdf=[{data / 'validation'}]", f"model.{field}=-1",
                 f"trainer.out_dir={tmp_path / 'run'}", "trainer.max_steps=1", *TINY]) != 0
    assert f"model.{field}: expected an integer >= 0, got -1" in capsys.readouterr().err
    assert not list((tmp_path / "run").glob("*.safetensors")) and not (tmp_path / "run" / "checkpoints").exists()

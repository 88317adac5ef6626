"""The refiner: a flow from force-field seeds to targets, trained through the core's loop and sampled from the seeds."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem

from scidiff.core import TrainConfig, build_diffusion, build_sampler, train
from scidiff.mol.build import embed_conformers
from scidiff.mol.denoiser import build_model
from scidiff.mol.generate import refine_conformers
from scidiff.mol.stereo import check_conformers
from scidiff.mol.train import ConformerDataset, _collate, conformer_loss, node_balanced_batches

FLOW = {"name": "flow", "prediction": "velocity"}


def shortened_hydrogens(mol: Chem.Mol, conf_id: int, by: float = 0.15) -> np.ndarray:
    """A known local 'force-field error' to learn: every X-H bond of the conformer shorter by ``by`` Å."""
    pos = mol.GetConformer(conf_id).GetPositions()
    out = pos.copy()
    for atom in mol.GetAtoms():
        if atom.GetAtomicNum() == 1:
            h, x = atom.GetIdx(), atom.GetNeighbors()[0].GetIdx()
            bond = pos[h] - pos[x]
            out[h] = pos[x] + bond * (1 - by / np.linalg.norm(bond))
    return out


def pairs_of(smiles: str, k: int, seed: int) -> Chem.Mol:
    """A refinement set's molecule as the pair builder stores it: k (ETKDG seed, target) conformer pairs with the
    ``pair`` and ``is_target`` properties; here the target is the seed with shortened X-H bonds."""
    raw = embed_conformers(smiles, k, seed=seed, mmff=False)
    out = Chem.Mol(raw)
    out.RemoveAllConformers()
    for j, conf in enumerate(raw.GetConformers()):
        for positions, is_target in ((conf.GetPositions(), 0), (shortened_hydrogens(raw, conf.GetId()), 1)):
            copy = Chem.Conformer(conf)
            copy.SetPositions(positions)
            copy.SetDoubleProp("pair", float(j))
            copy.SetDoubleProp("is_target", float(is_target))
            out.AddConformer(copy, assignId=True)
    return out


def rmsd(a: Chem.Mol, conf_a: int, b: Chem.Mol, conf_b: int) -> float:
    """All-atom RMSD without alignment (the refiner keeps the seed's frame)."""
    d = a.GetConformer(conf_a).GetPositions() - b.GetConformer(conf_b).GetPositions()
    return float(np.sqrt((d**2).sum(1).mean()))


def test_pairs_become_targets_with_their_seeds_as_sources():
    mol = pairs_of("CCO", 3, seed=1)
    dataset = ConformerDataset.from_molecules([mol])
    assert len(dataset) == 3 and len(dataset.sources) == 3
    item = dataset[1]
    assert np.allclose(item.source.numpy(), mol.GetConformer(2).GetPositions(), atol=1e-5)  # seed of pair 1
    assert np.allclose(item.pos.numpy(), mol.GetConformer(3).GetPositions(), atol=1e-5)  # its target
    far = mol.GetConformer(1).GetPositions()  # pair 0's target: its heavy atoms 0.5 Å away, another conformer
    far[[a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1], 0] += 0.5
    mol.GetConformer(1).SetPositions(far)
    assert len(ConformerDataset.from_molecules([mol], max_pair_rmsd=0.3)) == 2  # pairs 1 and 2 (no heavy atom moved)
    plain = embed_conformers("CCO", 2, seed=1)
    with pytest.raises(ValueError, match="cannot be mixed"):
        ConformerDataset.from_molecules([mol, plain])


def test_a_refiner_learns_to_move_seeds_to_their_targets(tmp_path, one_thread):
    """Trained through the core's loop on one molecule's pairs (a zero-initialised head starts as the identity),
    the refiner moves held-out seeds to within half their distance to the targets, keeping every conformer's stereo
    (a 150-step run: 0.109 -> 0.045 Å measured)."""
    smiles = "C[C@@H](O)/C=C/C(=O)N"
    dataset = ConformerDataset.from_molecules([pairs_of(smiles, 8, seed=1)])
    dataset.conformers, dataset.sources = dataset.conformers * 4, dataset.sources * 4  # many times per step
    diffusion = build_diffusion(FLOW)
    torch.manual_seed(0)
    model = build_model(dict(num_scalars=8, num_vectors=4, num_tensors=0, num_layers=2, num_rbf=16, time_dim=16,
                             edge_dim=16, zero_init_head=True))
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=150, lr=3e-3, warmup_steps=10, ema_max_decay=0.9,
                      log_every=50, checkpoint_every=10**6, progress=False, tensorboard=False)
    result = train(model, dataset, partial(conformer_loss, diffusion), cfg, collate_fn=_collate,
                   batch_plan=partial(node_balanced_batches, dataset.num_nodes(), 10**6, 0))
    held_out = pairs_of(smiles, 4, seed=100)
    seeds = Chem.Mol(held_out)
    for conf in list(seeds.GetConformers())[1::2]:
        seeds.RemoveConformer(conf.GetId())  # keep the seeds (even ids), refine them
    refined = refine_conformers([seeds], result.ema_model, diffusion, build_sampler({"name": "euler", "steps": 2}))[0]
    before = [rmsd(held_out, c, held_out, c + 1) for c in range(0, 8, 2)]
    after = [rmsd(refined, c, held_out, c + 1) for c in range(0, 8, 2)]
    assert [c.GetId() for c in refined.GetConformers()] == [0, 2, 4, 6]
    assert np.mean(after) < 0.5 * np.mean(before), (before, after)
    assert all(report.ok for report in check_conformers(refined))


CHIRAL_AND_EZ = ["N[C@@H](C)C(=O)O", "C[C@H](O)[C@@H](N)C(=O)O", "C/C=C/C(=O)O", "C/C=C\\C#N", "O[C@H]1CC[C@@H](C)O1",
                 "C#C[C@@H]1CC1(C=O)C=O", "CC(=O)Oc1ccccc1C(=O)O", "F/C=C/[C@@H](Cl)C"]
STRAINED = "C[C@@]12CC1CO2"  # a 2.0 Å cross-ring C...C distance: a small move makes it a bond when re-perceived


def test_the_bundled_refiner_keeps_graph_and_stereo(one_thread):
    """Raw refiner output (no mirror, no resampling) on chiral, E/Z, ring-stereo and strained molecules: every
    conformer keeps the input's stereo and its bonds as RDKit re-perceives them from 3D."""
    from scidiff.mol.chem import mol_from_smiles
    from scidiff.mol.evaluate import graph_preservation
    from scidiff.mol.generate import bundled_weights, load_model
    from scidiff.mol.pipeline import etkdg_mmff_generator

    model = load_model(bundled_weights("qm9_refine"))
    assert model.seeds == "etkdg_mmff" and model.diffusion.process.name == "flow"
    inputs = [mol_from_smiles(s) for s in CHIRAL_AND_EZ]
    seeds = etkdg_mmff_generator(inputs, 4, seed=0)
    refined = refine_conformers(seeds, model.net, model.diffusion, model.sampler)
    assert [m.GetNumConformers() for m in refined] == [m.GetNumConformers() for m in seeds]
    for mol, source in zip(refined, inputs):
        assert all(report.ok for report in check_conformers(mol, source)), Chem.MolToSmiles(source)
    assert graph_preservation(refined, inputs) == {"conformer_rate": 1.0, "wrong": []}


def test_written_conformers_keep_their_bonds_even_for_strained_cages(tmp_path):
    """The pipeline re-perceives bonds from 3D and drops (then resamples) a conformer that would read back as
    another molecule, as it does for wrong stereo."""
    from scidiff.mol.chem import bonds_from_3d_match
    from scidiff.mol.pipeline import generate_mols

    [mol] = generate_mols([STRAINED], n=4, method="scidiff", seed=0)
    assert mol.GetNumConformers() >= 1
    assert all(bonds_from_3d_match(mol, c.GetId()) for c in mol.GetConformers())


CAGE = "N#C[C@]12CC[C@H]1O2"  # gdb_3120 of the QM9 DFT test split: ETKDG gave it no conformer before the cage fallback


def test_a_strained_cage_etkdg_cannot_embed_gets_stereo_correct_seeds_from_random_coordinates(one_thread):
    """ETKDGv3 (eigenvalue and random-coordinate starts) fails on this bicyclo[2.1.0]-like cage; the fallback in
    etkdg_embed gives all n conformers with the input's stereo, labelled with the path that made them, and the scidiff
    method refines those seeds instead of asking the de novo model."""
    from rdkit import rdBase
    from rdkit.Chem import AllChem

    from scidiff.mol.chem import bonds_from_3d_match, mol_from_smiles
    from scidiff.mol.forcefield import etkdg_conformers
    from scidiff.mol.pipeline import scidiff_generator

    mol = mol_from_smiles(CAGE, "gdb_3120")
    params = AllChem.ETKDGv3()
    params.randomSeed, params.useRandomCoords = 0, True
    with rdBase.BlockLogs():
        assert len(AllChem.EmbedMultipleConfs(Chem.Mol(mol), numConfs=2, params=params)) == 0  # what used to fail
    seeds = etkdg_conformers(mol, 4, seed=0, mmff=True)
    assert seeds.GetNumConformers() == 4
    assert {c.GetProp("embedding") for c in seeds.GetConformers()} == {"random_coords_cage"}
    assert all(report.ok for report in check_conformers(seeds, mol))
    assert all(bonds_from_3d_match(seeds, c.GetId()) for c in seeds.GetConformers())
    [refined] = scidiff_generator([mol], 2, seed=0)
    assert refined.GetNumConformers() == 2
    assert {(c.GetProp("seed_method"), c.GetProp("embedding")) for c in refined.GetConformers()} == {
        ("etkdg_mmff", "random_coords_cage")}


def test_embedding_equals_one_rdkit_call_when_the_probe_passes_and_caps_attempts_on_a_cage(monkeypatch):
    """etkdg_embed probes the first conformer with PROBE_ATTEMPTS: a molecule that passes gets exactly the conformers of
    one ETKDGv3 call for all n at RDKit's default attempts; a cage that fails it runs the rest of the cascade with that
    budget instead of RDKit's 10 x atoms per conformer."""
    from rdkit import rdBase
    from rdkit.Chem import AllChem

    from scidiff.mol import forcefield
    from scidiff.mol.chem import mol_from_smiles

    mol = mol_from_smiles("C[C@H](N)C(=O)N[C@@H](Cc1ccccc1)C(=O)O", "dipeptide")
    params = AllChem.ETKDGv3()
    params.randomSeed, params.enableSequentialRandomSeeds, params.numThreads = 3, True, 1
    expected = Chem.Mol(mol)
    with rdBase.BlockLogs():
        assert len(AllChem.EmbedMultipleConfs(expected, numConfs=4, params=params)) == 4
    budgets: list[tuple[int, bool]] = []
    embed = AllChem.EmbedMultipleConfs

    def recording(m, numConfs, params):  # noqa: N803 - RDKit's keyword names
        budgets.append((params.maxIterations, params.useRandomCoords))
        return embed(m, numConfs=numConfs, params=params)

    monkeypatch.setattr(forcefield.AllChem, "EmbedMultipleConfs", recording)
    got = Chem.Mol(mol)
    assert forcefield.etkdg_embed(got, 4, seed=3) == [0, 1, 2, 3]
    for a, b in zip(expected.GetConformers(), got.GetConformers()):
        np.testing.assert_allclose(a.GetPositions(), b.GetPositions(), atol=1e-9)
    assert budgets == [(forcefield.PROBE_ATTEMPTS, False), (0, False)]
    budgets.clear()
    cage = mol_from_smiles(CAGE, "gdb_3120")
    assert len(forcefield.etkdg_embed(cage, 2, seed=0)) == 2
    assert budgets[:2] == [(forcefield.PROBE_ATTEMPTS, False), (forcefield.PROBE_ATTEMPTS, True)]
    assert all(budget == forcefield.CAGE_MAX_ITERATIONS for budget, _ in budgets[2:])


def test_refiner_domain_names_why_a_molecule_lies_outside():
    from scidiff.mol.chem import mol_from_smiles
    from scidiff.mol.generate import RefinerDomain

    domain = RefinerDomain.from_config({"max_heavy_atoms": 9, "elements": ["H", "C", "N", "O", "F"]})
    assert domain.outside(mol_from_smiles("C[C@@H](O)/C=C/C(=O)N")) is None  # 8 heavy atoms, hydrogens not counted
    assert domain.outside(mol_from_smiles("CC(=O)Nc1ccc(O)cc1")) == "11 heavy atoms > 9"
    assert domain.outside(mol_from_smiles("CS(=O)C")) == "elements S not in C, F, H, N, O"
    assert RefinerDomain.from_config(None) is None
    with pytest.raises(ValueError, match=r"data.domain: unknown keys \['max_atoms'\]"):
        RefinerDomain.from_config({"max_atoms": 9})


def test_the_bundled_refiner_leaves_molecules_outside_its_domain_at_their_seeds(one_thread):
    """The QM9 refiner moves a QM9-sized molecule and leaves a drug-sized one exactly at its ETKDG + MMFF94 seeds,
    saying why, unless told to refine it too; the bundled weights carry the domain the training config states."""
    from omegaconf import OmegaConf

    from scidiff.mol.chem import mol_from_smiles
    from scidiff.mol.generate import RefinerDomain, bundled_weights, load_model
    from scidiff.mol.pipeline import etkdg_mmff_generator, scidiff_generator

    config = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[2] / "conf/data/qm9_pairs.yaml"))
    assert load_model(bundled_weights("qm9_refine")).domain == RefinerDomain.from_config(config["domain"])
    small, drug = mol_from_smiles("C[C@@H](O)/C=C/C(=O)N"), mol_from_smiles("CC(=O)Nc1ccc(O)cc1")
    seeds = etkdg_mmff_generator([small, drug], 3, seed=0)
    default = scidiff_generator([small, drug], 3, seed=0)
    forced = scidiff_generator([small, drug], 3, seed=0, refine_outside_domain=True)
    for out, moved in ((default, [True, False]), (forced, [True, True])):
        for mol, seed_mol, should_move in zip(out, seeds, moved):
            assert mol.GetNumConformers() == 3
            for conf, seed_conf in zip(mol.GetConformers(), seed_mol.GetConformers()):
                shift = np.abs(conf.GetPositions() - seed_conf.GetPositions()).max()
                assert (shift > 1e-3) == should_move and conf.GetIntProp("refined") == int(should_move)
    assert all(c.GetProp("refine_skipped") == "outside the refiner's training molecules: 11 heavy atoms > 9"
               for c in default[1].GetConformers())
    assert not any(c.HasProp("refine_skipped") for c in default[0].GetConformers())

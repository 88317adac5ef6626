"""Conformer builders and the QM9 reader: distinct stereo-true conformers, named skips, geometry round trips."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolTransforms

from scidiff.data import data_path
from scidiff.mol.datasets import Skipped, build_conformers, embed_conformers, mol_from_xyz, read_qm9
from scidiff.mol.featurize import MoleculeError, featurize

IBUPROFEN = "CC(C)Cc1ccc(cc1)[C@H](C)C(=O)O"


def stereo_smiles_from_3d(mol: Chem.Mol, conf_id: int) -> str:
    copy = Chem.Mol(mol, confId=conf_id)
    Chem.AssignStereochemistryFrom3D(copy)
    return Chem.MolToSmiles(Chem.RemoveHs(copy))


def test_embed_conformers_gives_distinct_minimised_stereo_true_conformers():
    mol = embed_conformers(IBUPROFEN, num_conformers=4, seed=0, name="S-ibuprofen")
    assert mol.GetProp("_Name") == "S-ibuprofen" and mol.GetNumConformers() == 4
    heavy = Chem.RemoveHs(mol)
    ids = [c.GetId() for c in mol.GetConformers()]
    # Seed 0 without sequential seeds makes RDKit return one conformer four times.
    assert min(AllChem.GetConformerRMS(heavy, ids[0], j) for j in ids[1:]) > 0.05
    energies = [c.GetDoubleProp("energy") for c in mol.GetConformers()]
    assert all(np.isfinite(energies)) and max(energies) - min(energies) < 20  # kcal/mol, MMFF minima
    reference = Chem.MolToSmiles(Chem.MolFromSmiles(IBUPROFEN))
    assert all(stereo_smiles_from_3d(mol, c) == reference for c in ids)


def test_unspecified_stereocentres_are_free_and_specified_ones_kept():
    """Most ZINC SMILES leave centres unspecified: every embedding is valid for them (the first drug-like build
    dropped 62 % of molecules by comparing full isomeric SMILES); a specified centre is still enforced."""
    racemic = embed_conformers("COc1ccc(C(C)OCS(=O)(=O)c2ccccc2)cc1", num_conformers=6, seed=0)
    assert racemic.GetNumConformers() == 6
    mixed = embed_conformers("C[C@@H](O)C(C)CC", num_conformers=8, seed=0)  # one specified, one free centre
    expected = dict(Chem.FindMolChiralCenters(Chem.MolFromSmiles("C[C@@H](O)C(C)CC")))[1]
    found_free = set()
    for conf in mixed.GetConformers():
        perceived = Chem.Mol(mixed, confId=conf.GetId())
        Chem.AssignStereochemistryFrom3D(perceived)
        centres = dict(Chem.FindMolChiralCenters(perceived))
        assert centres[1] == expected
        found_free.add(centres[3])
    assert mixed.GetNumConformers() == 8 and found_free == {"R", "S"}  # the free centre comes out both ways


def test_build_conformers_skips_failures_by_name_and_parallel_matches_serial(caplog):
    items = [("alanine", "N[C@@H](C)C(=O)O"), ("tin", "CC[Sn](C)(C)C"), "C1CC", ("crotonic", "C/C=C/C(=O)O")]
    with caplog.at_level(logging.WARNING, logger="scidiff.mol.datasets"):
        serial = build_conformers(items, num_conformers=2, seed=3, processes=1)
    assert [m.GetProp("_Name") for m in serial.molecules] == ["alanine", "crotonic"]
    assert serial.skipped == [
        Skipped("tin", "unsupported element Sn (atom 2); supported: H, B, C, N, O, F, Si, P, S, Cl, Br, I"),
        Skipped("C1CC", "could not parse SMILES (SMILES Parse Error: unclosed ring for input: 'C1CC')"),
    ]
    assert "skipped tin: unsupported element Sn" in caplog.text and serial.summary() == "2 built, 2 skipped"
    parallel = build_conformers(items, num_conformers=2, seed=3, processes=2)
    assert parallel.skipped == serial.skipped
    for a, b in zip(serial.molecules, parallel.molecules):
        assert a.GetProp("_Name") == b.GetProp("_Name") and a.GetNumConformers() == b.GetNumConformers() == 2
        for ca, cb in zip(a.GetConformers(), b.GetConformers()):
            assert np.allclose(ca.GetPositions(), cb.GetPositions(), atol=1e-6)
            assert ca.GetDoubleProp("energy") == pytest.approx(cb.GetDoubleProp("energy"))


def test_mol_from_xyz_recovers_stereo_and_cis_trans_flags(embed):
    """Only elements and coordinates go in; chirality, E/Z and the featurised cis/trans flags must come back."""
    smiles = "C/C=C/[C@H](N)C(=O)O"
    source = embed(smiles)
    atoms = [a.GetAtomicNum() for a in source.GetAtoms()]
    mol = mol_from_xyz(atoms, source.GetConformer().GetPositions(), name="from-xyz")
    assert Chem.MolToSmiles(Chem.RemoveHs(mol)) == Chem.MolToSmiles(Chem.MolFromSmiles(smiles))
    data = featurize(mol, mol.GetConformer().GetPositions())
    assert data.name == "from-xyz" and data.chirality.abs().sum() == 1
    cis_trans = data.edge_attr[:, -6:-4]
    flagged = cis_trans.sum(1).nonzero().flatten()
    assert len(flagged) == 8
    for e in flagged.tolist():
        s, d = data.edge_index[:, e].tolist()
        angle = abs(rdMolTransforms.GetDihedralDeg(mol.GetConformer(), *Chem.GetShortestPath(mol, s, d)))
        assert (angle < 30) if cis_trans[e, 0] else (angle > 150)


def test_mol_from_xyz_names_the_failure(embed):
    with pytest.raises(MoleculeError, match=r"molecule 'two atoms': bond perception from 3D failed: "):
        mol_from_xyz([6, 6], np.array([[0.0, 0, 0], [9.0, 0, 0]]), name="two atoms")
    methane = embed("C")
    pos = methane.GetConformer().GetPositions()
    with pytest.raises(MoleculeError, match=r"molecule 'two methanes': 2 disconnected fragments \(C.C\)"):
        mol_from_xyz([a.GetAtomicNum() for a in methane.GetAtoms()] * 2,
                     np.concatenate([pos, pos + 10.0]), name="two methanes")


@pytest.fixture
def qm9_train():
    try:
        return data_path("qm9/qm9_dft_train.npz")
    except FileNotFoundError as exc:
        pytest.skip(f"QM9 DFT split not available: {exc}")


def test_read_qm9_keeps_dft_geometry_and_reports_skips(qm9_train):
    built = read_qm9("train", limit=300)
    assert len(built.molecules) + len(built.skipped) == 300
    assert len(built.skipped) < 0.1 * 300 and all(s.name.startswith("gdb_") and s.reason for s in built.skipped)
    with np.load(qm9_train) as arrays:
        position = {int(g): (p[:n], z[:n]) for g, p, z, n in
                    zip(arrays["index"][:300], arrays["positions"][:300], arrays["charges"][:300], arrays["num_atoms"][:300])}
    for mol in built.molecules[:50]:
        pos, z = position[mol.GetIntProp("gdb_id")]
        assert mol.GetProp("_Name") == f"gdb_{mol.GetIntProp('gdb_id')}"
        assert [a.GetAtomicNum() for a in mol.GetAtoms()] == z.tolist()
        assert np.allclose(mol.GetConformer().GetPositions(), pos, atol=1e-5)
        featurize(mol, mol.GetConformer().GetPositions())


def test_read_qm9_without_data_names_the_expected_path(monkeypatch, tmp_path):
    monkeypatch.setenv("SCIDIFF_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="qm9_dft_test.npz"):
        read_qm9("test")
    with pytest.raises(ValueError, match="split must be one of train, test"):
        read_qm9("valid")


def test_mmff_keeps_the_input_graph_aromatic():
    """MMFF set-up kekulises 2-pyridone in place; the minimised conformers must keep the SMILES graph's features."""
    from scidiff.mol.datasets import embed_conformers
    from scidiff.mol.featurize import mol_from_smiles

    smiles = "O=c1cccc[nH]1"
    mol = embed_conformers(smiles, num_conformers=2, seed=0)
    reference = mol_from_smiles(smiles)
    assert [a.GetIsAromatic() for a in mol.GetAtoms()] == [a.GetIsAromatic() for a in reference.GetAtoms()]
    assert any(a.GetIsAromatic() for a in mol.GetAtoms())
    assert [b.GetBondType() for b in mol.GetBonds()] == [b.GetBondType() for b in reference.GetBonds()]
    assert all(conf.HasProp("energy") for conf in mol.GetConformers())

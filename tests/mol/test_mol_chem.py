"""RDKit primitives: molecules from 3D coordinates (bond and stereo perception), the failure record, preparing once."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import rdMolTransforms

from scidiff.mol.chem import Failure, MoleculeError, mol_from_xyz, prepare_mol
from scidiff.mol.featurize import featurize


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

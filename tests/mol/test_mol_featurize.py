"""Featurisation: shapes, stereo encodings checked against 3D geometry, atom-order invariance, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import rdMolTransforms
from torch_geometric.data import Batch

from scidiff.mol.chem import MoleculeError, mol_from_smiles, prepare_mol
from scidiff.mol.featurize import EDGE_DIM, MAX_HOPS, NODE_DIM, featurize, remove_mean

# Column offsets inside edge_attr, derived from the documented layout: hops, bond type(4), conj, ring, E/Z, cis, trans, slot(4).
HOP = slice(0, MAX_HOPS)
CIS, TRANS = EDGE_DIM - 6, EDGE_DIM - 5
SLOT = slice(EDGE_DIM - 4, EDGE_DIM)


def edge_table(data) -> dict[tuple[int, int], tuple[float, ...]]:
    return {(int(s), int(d)): tuple(a.tolist()) for (s, d), a in zip(data.edge_index.T, data.edge_attr)}


def test_shapes_hydrogens_and_hop_edges():
    mol = mol_from_smiles("N[C@@H](C)C(=O)O", name="L-alanine")
    data = featurize(mol)
    assert mol.GetNumAtoms() == 13  # C3H7NO2 with explicit hydrogens
    assert data.x.shape == (13, NODE_DIM) and data.edge_attr.shape[1] == EDGE_DIM
    assert data.name == "L-alanine" and data.smiles == "C[C@H](N)C(=O)O" and data.pos is None
    edges = edge_table(data)
    assert all((d, s) in edges for s, d in edges)  # both directions present
    hops = Chem.GetDistanceMatrix(mol)
    for (s, d), attr in edges.items():
        assert attr[int(hops[s, d]) - 1] == 1.0 and sum(attr[HOP]) == 1.0
    assert sum(a[0] for a in edges.values()) == 2 * mol.GetNumBonds()
    assert len(edges) == int(((hops >= 1) & (hops <= MAX_HOPS)).sum())


def test_chirality_tag_does_not_depend_on_atom_order():
    """Same L-alanine written two ways: RDKit's raw tags differ (@@ vs @), the featurised graphs must not."""
    a, b = (featurize(mol_from_smiles(s)) for s in ("N[C@@H](C)C(=O)O", "N[C@H](C(=O)O)C"))
    ma, mb = mol_from_smiles("N[C@@H](C)C(=O)O"), mol_from_smiles("N[C@H](C(=O)O)C")
    assert ma.GetAtomWithIdx(1).GetChiralTag() != mb.GetAtomWithIdx(1).GetChiralTag()
    match = mb.GetSubstructMatch(ma, useChirality=True)  # atom k of a is atom match[k] of b
    assert len(match) == ma.GetNumAtoms()
    idx = torch.tensor(match)
    assert torch.equal(a.x, b.x[idx]) and torch.equal(a.chirality, b.chirality[idx])
    inv = {m: k for k, m in enumerate(match)}
    assert edge_table(a) == {(inv[s], inv[d]): v for (s, d), v in edge_table(b).items()}
    d_ala = featurize(mol_from_smiles("N[C@H](C)C(=O)O"))
    assert torch.equal(d_ala.chirality, -a.chirality) and a.chirality.abs().sum() == 1


def test_renumbered_molecule_gives_permuted_graph():
    mol = mol_from_smiles("CC(C)[C@@H]1CC[C@@H](C)C[C@H]1O", name="menthol")
    perm = np.random.default_rng(0).permutation(mol.GetNumAtoms()).tolist()
    a, b = featurize(mol), featurize(Chem.RenumberAtoms(mol, perm))  # atom k of b is atom perm[k] of a
    idx = torch.tensor(perm)
    assert torch.equal(b.x, a.x[idx]) and torch.equal(b.chirality, a.chirality[idx])
    assert int(a.chirality.abs().sum()) == 3
    assert edge_table(b) == {(perm.index(s), perm.index(d)): v for (s, d), v in edge_table(a).items()}


def signed_volume(pos: np.ndarray, atoms: list[int]) -> float:
    p0, p1, p2, p3 = (pos[k] for k in atoms)
    return float(np.dot(p1 - p0, np.cross(p2 - p0, p3 - p0)))


@pytest.mark.parametrize("smiles", ["N[C@@H](C)C(=O)O", "N[C@H](C(=O)O)C", "C[C@@H](O)[C@H](N)C(=O)O",
                                    "CC(C)[C@@H]1CC[C@@H](C)C[C@H]1O", "[H][C@](F)(Cl)Br", "F[C@](Cl)(Br)I"])
def test_chirality_sign_matches_3d_handedness(embed, smiles):
    """+1 / -1 must be the sign of the volume spanned by the rank-ordered neighbours in a conformer built from the SMILES."""
    mol = embed(smiles)
    data = featurize(mol)
    pos = mol.GetConformer().GetPositions()
    slots = data.edge_attr[:, SLOT]
    centres = data.chirality.nonzero().flatten().tolist()
    assert centres
    for c in centres:
        into = (data.edge_index[1] == c) & (slots.sum(1) == 1)
        ordered = [int(s) for _, s in sorted(zip(slots[into].argmax(1).tolist(), data.edge_index[0, into].tolist()))]
        assert len(ordered) == 4
        assert np.sign(signed_volume(pos, ordered)) == data.chirality[c].item()
    assert data.stereo_index[0].tolist() == centres
    for column in data.stereo_index.T.tolist():
        assert np.sign(signed_volume(pos, column[1:])) == data.chirality[column[0]].item()


def test_relative_stereo_is_flagged_without_a_sign():
    """cis-4-methylcyclohexanol: both centres are stereo only relative to each other (mirror-invariant), so no 0o sign."""
    data = featurize(mol_from_smiles("O[C@@H]1CC[C@H](C)CC1"))
    assert data.chirality.abs().sum() == 0
    assert data.x[:, -1].sum() == 2 and data.x[:, -2].sum() == 0


@pytest.mark.parametrize("smiles", ["C/C=C/C(=O)O", "C/C=C\\C(=O)O", "C/C(F)=C/CBr", "Cl/C(Br)=C(/I)F"])
def test_cis_trans_flags_match_dihedrals(embed, smiles):
    mol = embed(smiles)
    data = featurize(mol)
    conf = mol.GetConformer()
    flagged = 0
    for (s, d), attr in edge_table(data).items():
        if attr[CIS] or attr[TRANS]:
            flagged += 1
            path = Chem.GetShortestPath(mol, s, d)
            assert len(path) == 4
            angle = abs(rdMolTransforms.GetDihedralDeg(conf, *path))
            assert (angle < 30) if attr[CIS] else (angle > 150)
    assert flagged == 8  # 2 x 2 substituent pairs, both directions


def test_e_and_z_isomers_differ_only_in_cis_trans_flags():
    e, z = (featurize(mol_from_smiles(s)) for s in ("C/C=C/C(=O)O", "C/C=C\\C(=O)O"))
    assert torch.equal(e.x, z.x) and torch.equal(e.edge_index, z.edge_index)
    changed = (e.edge_attr != z.edge_attr).any(1)
    assert changed.sum() == 8 and torch.equal(e.edge_attr[changed][:, CIS], z.edge_attr[changed][:, TRANS])


@pytest.mark.parametrize("smiles, fragment", [
    ("[Sn]", "unsupported element Sn (atom 0)"),
    ("CC[Sn](C)(C)C", "unsupported element Sn (atom 2)"),
    ("[CH3]", "radical: 1 unpaired electron(s) on C (atom 0)"),
    ("CCO.O", "2 disconnected fragments (CCO.O)"),
    ("C1CC", "could not parse SMILES (SMILES Parse Error: unclosed ring"),
    ("CN(C)(C)(C)C", "sanitisation failed: Explicit valence for atom # 1 N"),
    ("C[C+3]C", "formal charge +3 on C (atom 1)"),
])
def test_unrepresentable_molecules_raise_named_errors(smiles, fragment):
    with pytest.raises(MoleculeError) as info:
        mol_from_smiles(smiles, name="mol-7")
    assert isinstance(info.value, ValueError)
    assert fragment in str(info.value) and str(info.value).startswith("molecule 'mol-7': ")
    assert info.value.molecule == "mol-7" and fragment in info.value.reason


def test_sdf_molecule_keeps_coordinates_and_stereo(embed):
    source = embed("N[C@@H](C)C(=O)O", name="L-alanine")
    block = Chem.MolToMolBlock(source)
    mol = Chem.MolFromMolBlock(block, removeHs=False)
    data = featurize(mol, mol.GetConformer().GetPositions())
    reference = featurize(source)
    assert data.name == "L-alanine" and torch.equal(data.chirality, reference.chirality)
    assert data.pos.shape == (13, 3)
    heavy = Chem.MolFromMolBlock(block)  # hydrogens stripped: preparing adds them back, in 3D
    with pytest.raises(MoleculeError, match=r"implicit hydrogens on atoms \[0, 1, 2, 5\]: prepare the molecule first"):
        featurize(heavy)
    assert featurize(prepare_mol(heavy)).num_nodes == 13
    with pytest.raises(MoleculeError, match=r"coords have shape \(6, 3\) but the molecule has 13 atoms"):
        featurize(prepare_mol(heavy), heavy.GetConformer().GetPositions())


def test_remove_mean_zeroes_each_graph_centre():
    a, b = (featurize(mol_from_smiles(s), torch.randn(n, 3) + 5) for s, n in (("CO", 6), ("CCO", 9)))
    batch = Batch.from_data_list([a, b])
    centred = remove_mean(batch.pos, batch.batch)
    for g in range(2):
        assert centred[batch.batch == g].mean(0).abs().max() < 1e-5
    assert torch.allclose(centred[:6], remove_mean(a.pos), atol=1e-6)
    assert torch.allclose(remove_mean(centred, batch.batch), centred, atol=1e-6)

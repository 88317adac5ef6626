"""Torsions on real molecules: which bonds rotate, exact dihedral changes of the smaller side, geometry and stereo
kept, and conformer matching lowering the RMSD to a reference."""

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import rdMolTransforms

from scidiff.mol.build import aligned_rmsd, embed_conformers
from scidiff.mol.stereo import signature_from_3d
from scidiff.mol.torsion import (apply_torsion_changes, dihedral, match_torsions, rotatable_bonds, rotating_sides,
                                 set_torsions, torsion_atoms)

MOLECULES = {
    "S-ibuprofen": "CC(C)Cc1ccc(cc1)[C@H](C)C(=O)O",
    "ethyl E-4-methoxycinnamate": "CCOC(=O)/C=C/c1ccc(OC)cc1",  # an E double bond between two rotors
    "(-)-menthol": "CC(C)[C@@H]1CC[C@@H](C)C[C@H]1O",  # three ring stereocentres
    "lisinopril-like": "NCCCC[C@H](N[C@@H](CCc1ccccc1)C(=O)O)C(=O)N1CCC[C@H]1C(=O)O",  # many rotors, three centres
}
_CACHE: dict[tuple[str, int], Chem.Mol] = {}


def conformer(name: str, seed: int = 7) -> Chem.Mol:
    if (name, seed) not in _CACHE:
        _CACHE[name, seed] = embed_conformers(MOLECULES[name], num_conformers=1, seed=seed, mmff=False, name=name)
    return _CACHE[name, seed]


def random_deltas(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-np.pi, np.pi, n)


def bond_geometry(mol: Chem.Mol, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All bond lengths and all bond angles (i-j-k with i-j and j-k bonded)."""
    lengths = np.array([np.linalg.norm(pos[b.GetBeginAtomIdx()] - pos[b.GetEndAtomIdx()]) for b in mol.GetBonds()])
    angles = []
    for atom in mol.GetAtoms():
        j = atom.GetIdx()
        neighbours = [n.GetIdx() for n in atom.GetNeighbors()]
        for a in range(len(neighbours)):
            for b in range(a + 1, len(neighbours)):
                u, v = pos[neighbours[a]] - pos[j], pos[neighbours[b]] - pos[j]
                angles.append(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1)))
    return lengths, np.array(angles)


def test_rotatable_bonds_of_ibuprofen():
    mol = conformer("S-ibuprofen")
    symbols = [sorted((mol.GetAtomWithIdx(i).GetSymbol(), mol.GetAtomWithIdx(j).GetSymbol())) for i, j in rotatable_bonds(mol)]
    # isobutyl CH-CH2, CH2-ring, ring-CH(Me), CH-COOH; C-CH3, C-OH and C=O are terminal, ring bonds never rotate.
    assert rotatable_bonds(mol) == [(1, 3), (3, 4), (7, 10), (10, 12)]
    assert symbols == [["C", "C"]] * 4


@pytest.mark.parametrize("name", MOLECULES)
def test_rotatable_bonds_rule(name):
    mol = conformer(name)
    chosen = set(rotatable_bonds(mol))
    for bond in mol.GetBonds():
        pair = tuple(sorted((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx())))
        ends = (bond.GetBeginAtom(), bond.GetEndAtom())
        inner = all(sum(n.GetAtomicNum() > 1 for n in a.GetNeighbors()) >= 2 for a in ends)
        heavy = all(a.GetAtomicNum() > 1 for a in ends)
        expected = bond.GetBondType() == Chem.BondType.SINGLE and not bond.IsInRing() and heavy and inner
        assert (pair in chosen) == expected, (pair, bond.GetBondType(), bond.IsInRing())
        if bond.GetStereo() != Chem.BondStereo.STEREONONE or bond.IsInRing():
            assert pair not in chosen  # E/Z and ring bonds never rotate


def test_symmetric_end_groups():
    mol = embed_conformers("CC(C)(C)c1ccc(cc1)CC(F)(F)F", num_conformers=1, seed=0, mmff=False)
    bonds = rotatable_bonds(mol)
    kept = rotatable_bonds(mol, skip_symmetric=True)
    assert len(bonds) == 3  # tBu-ring, ring-CH2, CH2-CF3
    assert len(kept) == 1  # ring-CH2 only: tBu and CF3 map onto themselves by 2 pi / 3
    assert set(kept) < set(bonds)


@pytest.mark.parametrize("name", MOLECULES)
def test_dihedral_matches_rdkit(name):
    mol = conformer(name)
    quads = np.array([torsion_atoms(mol, bond) for bond in rotatable_bonds(mol)])
    expected = [rdMolTransforms.GetDihedralRad(mol.GetConformer(), *map(int, q)) for q in quads]
    assert np.allclose(dihedral(mol.GetConformer().GetPositions(), quads), expected, atol=1e-12)


@pytest.mark.parametrize("name", MOLECULES)
def test_torsion_change_is_exact_and_reversible(name):
    mol = conformer(name)
    pos = mol.GetConformer().GetPositions()
    bonds = rotatable_bonds(mol)
    deltas = random_deltas(len(bonds), 0)
    moved = apply_torsion_changes(pos, mol, bonds, deltas)
    # every dihedral x-i-j-y about each rotated bond changes by exactly its delta (mod 2 pi)
    for (i, j), delta in zip(bonds, deltas):
        for x in (n.GetIdx() for n in mol.GetAtomWithIdx(i).GetNeighbors() if n.GetIdx() != j):
            for y in (n.GetIdx() for n in mol.GetAtomWithIdx(j).GetNeighbors() if n.GetIdx() != i):
                change = dihedral(moved, [x, i, j, y]) - dihedral(pos, [x, i, j, y])
                assert abs(np.angle(np.exp(1j * (change - delta)))) < 1e-9
    # -delta undoes it; bond lengths and bond angles never change
    assert np.allclose(apply_torsion_changes(moved, mol, bonds, -deltas), pos, atol=1e-10)
    for before, after in zip(bond_geometry(mol, pos), bond_geometry(mol, moved)):
        assert np.allclose(before, after, atol=1e-10)
    # an edge list serves as well as the molecule
    edges = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()]
    assert np.allclose(apply_torsion_changes(pos, edges, bonds, deltas), moved, atol=1e-12)


@pytest.mark.parametrize("name", MOLECULES)
def test_smaller_side_moves(name):
    mol = conformer(name)
    pos = mol.GetConformer().GetPositions()
    bonds = rotatable_bonds(mol)
    masks, _ = rotating_sides(mol, bonds, len(pos))
    for t, bond in enumerate(bonds):
        deltas = np.zeros(len(bonds))
        deltas[t] = 1.0
        moved = np.linalg.norm(apply_torsion_changes(pos, mol, bonds, deltas) - pos, axis=1) > 1e-9
        assert 2 * masks[t].sum() <= len(pos)
        assert not moved[~masks[t]].any(), f"bond {bond}: an atom of the larger side moved"
        assert moved[masks[t]].sum() >= 1


@pytest.mark.parametrize("name", MOLECULES)
def test_stereo_kept_under_random_torsions(name):
    """CIP labels, chiral tags and E/Z geometry recomputed from 3D are those of the unchanged conformer."""
    mol = conformer(name)
    pos = mol.GetConformer().GetPositions()
    bonds = rotatable_bonds(mol)
    reference = signature_from_3d(mol)
    assert reference.centres or reference.bonds  # the molecule has stereo to keep
    for seed in range(5):
        copy = Chem.Mol(mol)
        copy.GetConformer().SetPositions(apply_torsion_changes(pos, mol, bonds, random_deltas(len(bonds), seed)))
        signature = signature_from_3d(copy)
        assert (signature.centres, signature.cip, signature.bonds) == (reference.centres, reference.cip, reference.bonds)


def test_set_torsions_and_ring_bonds():
    mol = conformer("S-ibuprofen")
    pos = mol.GetConformer().GetPositions()
    bonds = rotatable_bonds(mol)
    targets = np.array([0.5, -2.0, np.pi, 1.0])
    quads = [torsion_atoms(mol, bond) for bond in bonds]
    assert np.allclose(np.exp(1j * dihedral(set_torsions(pos, mol, bonds, targets), quads)), np.exp(1j * targets))
    ring_bond = next(b for b in mol.GetBonds() if b.IsInRing())
    with pytest.raises(ValueError, match="ring"):
        apply_torsion_changes(pos, mol, [(ring_bond.GetBeginAtomIdx(), ring_bond.GetEndAtomIdx())], [0.1])


@pytest.mark.parametrize("name,at_most", [("S-ibuprofen", 0.35), ("ethyl E-4-methoxycinnamate", 0.2)])
def test_matching_lowers_rmsd(name, at_most):
    """Another ETKDG conformer's torsions matched to a reference: heavy-atom RMSD 1.68 -> 0.31 Å (ibuprofen) and
    0.79 -> 0.14 Å (cinnamate), no worse than copying the reference's torsions, deterministic for a seed."""
    mol, reference = conformer(name, seed=2), conformer(name, seed=1)
    local_pos, ref_pos = mol.GetConformer().GetPositions(), reference.GetConformer().GetPositions()
    bonds = rotatable_bonds(mol)
    match = match_torsions(local_pos, ref_pos, mol, bonds, seed=0)
    assert match.rmsd_before > 0.7 and match.rmsd_after < at_most and match.rmsd_after < 0.5 * match.rmsd_before
    heavy = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
    quads = [torsion_atoms(mol, bond) for bond in bonds]
    copied = set_torsions(local_pos, mol, bonds, dihedral(ref_pos, quads))
    assert match.rmsd_after <= aligned_rmsd(copied[heavy], ref_pos[heavy]) + 1e-6
    # the example: the local structure with its torsions changed, and the target torsions it now has
    assert np.allclose(match.positions, apply_torsion_changes(local_pos, mol, bonds, match.deltas))
    assert np.allclose(match.torsions, dihedral(match.positions, quads))
    assert abs(aligned_rmsd(match.positions[heavy], ref_pos[heavy]) - match.rmsd_after) < 1e-12
    if name == "S-ibuprofen":
        assert np.array_equal(match_torsions(local_pos, ref_pos, mol, bonds, seed=0).deltas, match.deltas)

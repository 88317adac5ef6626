"""Stereo guarantee: inverted centres and flipped E/Z are detected, the mirror fix applies only to full inversions."""

from __future__ import annotations

from rdkit import Chem

from scidiff.mol.chem import mol_from_smiles
from scidiff.mol.forcefield import etkdg_conformers
from scidiff.mol.stereo import (check_conformers, check_stereo, conformers_to_resample, fix_stereo, stereo_signature)

# Same atom order in each pair: only the stereo marks differ.
ALANINE, D_ALANINE = "N[C@@H](C)C(=O)O", "N[C@H](C)C(=O)O"
E_CROTONIC, Z_CROTONIC = "C/C=C/C(=O)O", "C/C=C\\C(=O)O"
THREONINE = "C[C@@H](O)[C@H](N)C(=O)O"          # (2S,3R)
ALLO_ONE_FLIPPED = "C[C@H](O)[C@H](N)C(=O)O"    # one centre inverted (a diastereomer)
ENANTIOMER = "C[C@H](O)[C@@H](N)C(=O)O"         # both centres inverted


def with_coordinates_of(smiles: str, coords_from: str, n: int = 2) -> Chem.Mol:
    """The molecule ``smiles`` carrying conformers embedded for ``coords_from`` (same graph, other stereo)."""
    target = mol_from_smiles(smiles)
    source = etkdg_conformers(mol_from_smiles(coords_from), n, seed=3)
    assert [a.GetAtomicNum() for a in target.GetAtoms()] == [a.GetAtomicNum() for a in source.GetAtoms()]
    for conf in source.GetConformers():
        target.AddConformer(Chem.Conformer(conf), assignId=True)
    return target


def test_correct_conformers_pass():
    for smiles in (ALANINE, E_CROTONIC, THREONINE, "C[C@H]1CC[C@@H](C)CC1"):
        mol = etkdg_conformers(mol_from_smiles(smiles), 3, seed=0)
        assert all(r.ok for r in check_conformers(mol)), smiles


def test_inverted_centre_is_detected_and_mirrored():
    mol = with_coordinates_of(ALANINE, D_ALANINE)
    report = check_stereo(mol, 0, stereo_signature(mol))
    assert not report.ok and report.inverted_centres == (1,) and report.mirrorable
    fixed = fix_stereo(mol, 0, mol)
    assert fixed.ok and fixed.mirrored
    assert check_stereo(mol, 0, mol).ok  # the conformer itself was mirrored in place


def test_flipped_double_bond_is_detected_and_not_mirrored():
    mol = with_coordinates_of(E_CROTONIC, Z_CROTONIC)
    report = check_stereo(mol, 0, mol)
    assert not report.ok and report.flipped_bonds and not report.mirrorable
    assert "flipped E/Z" in report.describe()
    assert not fix_stereo(mol, 0, mol).ok  # a mirror keeps cis/trans: unfixable, must be resampled


def test_mirror_fix_applies_when_all_centres_inverted():
    mol = with_coordinates_of(THREONINE, ENANTIOMER)
    report = check_stereo(mol, 0, mol)
    assert set(report.inverted_centres) == {1, 3} and report.mirrorable
    assert fix_stereo(mol, 0, mol).ok


def test_mirror_fix_refused_when_only_some_centres_inverted():
    mol = with_coordinates_of(THREONINE, ALLO_ONE_FLIPPED)
    before = mol.GetConformer(0).GetPositions()
    report = fix_stereo(mol, 0, mol)
    assert not report.ok and not report.mirrored and report.inverted_centres == (1,)
    assert (mol.GetConformer(0).GetPositions() == before).all()  # untouched
    assert conformers_to_resample(check_conformers(mol)) == [0, 1]

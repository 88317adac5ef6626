"""Shared fixtures for the molecule tests: float64 mode, a few real molecules with ETKDG conformers."""

from __future__ import annotations

import pytest
import torch
from rdkit import Chem

from scidiff.mol.build import embed_conformers
from scidiff.mol.featurize import featurize

# Real molecules with hydrogens: an amino acid stereocentre, a ring system with a stereocentre, an E double bond.
MOLECULES = {
    "L-alanine": "N[C@@H](C)C(=O)O",
    "S-ibuprofen": "CC(C)Cc1ccc(cc1)[C@H](C)C(=O)O",
    "E-crotonic acid": "C/C=C/C(=O)O",
}
CHIRAL = ("L-alanine", "S-ibuprofen")


@pytest.fixture
def one_thread():
    """One intra-op thread: the CPU is shared, and tiny tensor ops get slower with more threads under contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def float64(one_thread):
    """Run the test in float64, restoring the default dtype afterwards."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


def embedded(smiles: str, name: str | None = None, seed: int = 7) -> Chem.Mol:
    """The prepared molecule with one ETKDG conformer."""
    return embed_conformers(smiles, num_conformers=1, seed=seed, mmff=False, name=name)


def graph_of(name: str):
    """Featurised graph with ETKDG coordinates as pos (in the current default dtype)."""
    mol = embedded(MOLECULES[name], name)
    return featurize(mol, mol.GetConformer().GetPositions())


@pytest.fixture(params=list(MOLECULES))
def molecule(request) -> str:
    """Each test molecule's name in turn."""
    return request.param


@pytest.fixture(params=CHIRAL)
def chiral_molecule(request) -> str:
    """Each test molecule with a tetrahedral stereocentre in turn."""
    return request.param


@pytest.fixture
def embed():
    """The ETKDG embedding helper, for tests that build their own molecules."""
    return embedded


@pytest.fixture
def graphs(float64):
    """The MOLECULES featurised with float64 ETKDG coordinates."""
    return {name: graph_of(name) for name in MOLECULES}

"""Constrained conformers for a congeneric series: atoms matching a reference core keep its coordinates."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem

from scidiff.mol.chem import mol_from_smiles
from scidiff.mol.forcefield import core_conformers, core_match, etkdg_conformers
from scidiff.mol.io import ConformerRecord, write_conformers
from scidiff.mol.pipeline import generate
from scidiff.mol.stereo import check_conformers

SCAFFOLD = "c1ccc2c(c1)CC[C@@H](N)C2"  # a chiral aminotetralin
SERIES = ["Cc1ccc2c(c1)CC[C@@H](NC(=O)C)C2", "Fc1ccc2c(c1)CC[C@@H](NCCO)C2", "c1ccc2c(c1)CC[C@@H](N(C)C)C2"]


@pytest.fixture
def core_sdf(tmp_path):
    ref = etkdg_conformers(mol_from_smiles(SCAFFOLD, "scaffold"), 1, seed=3, mmff=True)
    path = tmp_path / "core.sdf"
    write_conformers(path, [ConformerRecord(0, "scaffold", ref)])
    return path, ref


def core_rmsd(mol, conf_id, ref) -> float:
    pairs = core_match(mol, ref)
    got = mol.GetConformer(conf_id).GetPositions()[[i for i, _ in pairs]]
    want = ref.GetConformer().GetPositions()[[j for _, j in pairs]]
    return float(np.sqrt(((got - want) ** 2).sum(1).mean()))


def test_core_conformers_sit_on_the_core_and_keep_stereo(core_sdf):
    _, ref = core_sdf
    for smiles in SERIES:
        mol = core_conformers(mol_from_smiles(smiles), ref, 4, seed=0)
        assert mol.GetNumConformers() == 4
        assert max(core_rmsd(mol, c.GetId(), ref) for c in mol.GetConformers()) < 1e-6
        assert all(r.ok for r in check_conformers(mol))
    with pytest.raises(ValueError, match="is not a substructure"):
        core_match(mol_from_smiles("CCO", "ethanol"), ref)


@pytest.mark.parametrize("method", ["etkdg_mmff", "scidiff"])
def test_generate_holds_the_core_within_0_05_A_and_writes_valid_rest(tmp_path, core_sdf, method, one_thread):
    path, ref = core_sdf
    out = tmp_path / "series.sdf"
    summary = generate(SERIES + ["CCO"], out, n=3, method=method, core=str(path))
    assert summary.succeeded == 3 and "not a substructure" in summary.failed[0].reason  # ethanol has no core
    records = list(Chem.SDMolSupplier(str(out), removeHs=False))
    assert len(records) == 9 and all(r.GetProp("core") == str(path) for r in records)
    assert max(r.GetDoubleProp("core_rmsd") for r in records) < 0.05
    # Held exactly, not merely close: without the pin hook the refiner moves this core 0.026-0.032 Å (measured),
    # which the 0.05 Å bar alone would not notice.
    assert max(r.GetDoubleProp("core_rmsd") for r in records) < 1e-4
    for record in records:  # the rest is a valid molecule with the input's stereo, re-perceived from 3D
        mol = Chem.Mol(record)
        assert all(report.ok for report in check_conformers(mol, mol_from_smiles(record.GetProp("smiles"))))

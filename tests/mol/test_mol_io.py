"""Every file format: input parsing (SMILES, .smi, .csv, .sdf) with line-numbered failures, the conformer SDF dialect
(written incrementally, read back grouped), the QM9 npz reader."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem

from scidiff.data import data_path
from scidiff.mol.chem import mol_from_smiles
from scidiff.mol.featurize import featurize
from scidiff.mol.forcefield import etkdg_conformers
from scidiff.mol.io import (ConformerRecord, ConformerWriter, iter_inputs, read_conformers, read_inputs, read_qm9,
                            write_conformers)
from scidiff.mol.stereo import check_conformers, stereo_signature

MIXED_CSV = """\
SMILES,name
N[C@@H](C)C(=O)O,L-alanine

C1CC,broken ring
# a comment line
CC[Sn](C)(C)C,tin
C/C=C/C(=O)O,crotonic
"""


def test_csv_with_header_keeps_going_past_bad_lines(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text(MIXED_CSV)
    records = read_inputs(path)
    assert [(r.index, r.name, r.ok, r.line) for r in records] == [
        (0, "L-alanine", True, 2), (1, "broken ring", False, 4), (2, "tin", False, 6), (3, "crotonic", True, 7)]
    assert records[1].failure.reason == "line 4: bad SMILES 'C1CC' (unclosed ring)"
    assert records[2].failure.reason.startswith("line 6: unsupported element Sn (atom 2)")
    assert records[0].mol.GetNumAtoms() == 13  # explicit hydrogens


@pytest.mark.parametrize("sep", [" ", "\t", ","])
def test_smi_without_header_any_separator(tmp_path, sep):
    path = tmp_path / "in.smi.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(f"CCO{sep}ethanol\nC(C\nc1ccccc1{sep}benzene\nCCN\n")
    records = read_inputs(path)
    assert [r.name for r in records] == ["ethanol", "C(C", "benzene", "CCN"]  # no id: the SMILES names it
    assert records[1].failure.reason.startswith("line 2: bad SMILES 'C(C'")


def test_smiles_argument_and_missing_file():
    [record] = read_inputs("N[C@@H](C)C(=O)O")
    assert record.ok and record.index == 0 and record.line is None
    [bad] = read_inputs("C1CC")
    assert bad.failure.reason == "SMILES argument: bad SMILES 'C1CC' (unclosed ring)"
    with pytest.raises(FileNotFoundError, match="no input file"):
        read_inputs("missing.smi")


def generated(smiles: str, name: str, index: int, n: int = 2) -> ConformerRecord:
    return ConformerRecord(index, name, etkdg_conformers(mol_from_smiles(smiles, name=name), n, seed=1))


def test_sdf_round_trip_keeps_identity_and_stereo(tmp_path):
    records = [generated("N[C@@H](C)C(=O)O", "L-alanine", 0), generated("C/C=C/C(=O)O", "crotonic", 2, n=3)]
    path = tmp_path / "out" / "conformers.sdf"
    report = write_conformers(path, records, {"sampler": "ddim", "steps": 20, "seed": 7, "relaxation": "none"})
    assert report.conformers == 5 and report.molecules == 2 and not report.rejected
    assert not path.with_name("conformers.sdf.partial").exists()
    supplier = list(Chem.SDMolSupplier(str(path), removeHs=False))
    assert [(m.GetProp("_Name"), m.GetIntProp("input_index"), m.GetIntProp("conf_id")) for m in supplier] == [
        ("L-alanine", 0, 0), ("L-alanine", 0, 1), ("crotonic", 2, 0), ("crotonic", 2, 1), ("crotonic", 2, 2)]
    first = supplier[0]
    assert first.GetProp("sampler") == "ddim" and first.GetIntProp("steps") == 20 and first.GetProp("scidiff_version")
    assert first.GetNumAtoms() == 13 and sum(a.GetAtomicNum() == 1 for a in first.GetAtoms()) == 7  # explicit H
    # read back as multi-conformer mols and as generation input: the same stereo as the original inputs
    for original, back in zip(records, read_conformers(path)):
        assert back.GetNumConformers() == original.mol.GetNumConformers()
        assert all(r.ok for r in check_conformers(back, original.mol))
    for original, record in zip([records[0]] * 2 + [records[1]] * 3, iter_inputs(path)):
        assert stereo_signature(record.mol).smiles == stereo_signature(original.mol).smiles


def test_writer_keeps_partial_output_on_failure(tmp_path):
    """Stereo is the pipeline's check (test_mol_evaluate); the writer's promise is never a truncated OUT."""
    good = generated("N[C@@H](C)C(=O)O", "L-alanine", 0)
    crotonic = generated("C/C=C/C(=O)O", "crotonic", 1)
    path = tmp_path / "out.sdf"

    def records():
        yield good
        yield crotonic
        raise RuntimeError("generator crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        with ConformerWriter(path, {"seed": 0}) as writer:
            for record in records():
                writer.write(record)
    assert not path.exists()  # never a truncated OUT
    kept = list(Chem.SDMolSupplier(str(tmp_path / "out.sdf.partial"), removeHs=False))
    assert [m.GetProp("_Name") for m in kept] == ["L-alanine"] * 2 + ["crotonic"] * 2
    assert writer.report.conformers == 4 and not writer.report.rejected


def test_writer_refuses_implicit_hydrogens(tmp_path):
    record = generated("CCO", "ethanol", 0)
    record.mol = Chem.RemoveHs(record.mol)
    report = write_conformers(tmp_path / "x.sdf", [record])
    assert report.conformers == 0 and "explicit hydrogens" in report.rejected[0].reason


def test_sdf_input_names_lines_of_bad_records(tmp_path):
    good = Chem.MolToMolBlock(etkdg_conformers(mol_from_smiles("CCO", "ethanol"), 1, seed=0))
    tin = Chem.MolToMolBlock(Chem.MolFromSmiles("C[Sn](C)(C)C"))
    path = tmp_path / "in.sdf"
    path.write_text(good + "$$$$\n" + tin + "$$$$\n" + good + "$$$$\n")
    records = read_inputs(path)
    assert [r.ok for r in records] == [True, False, True]
    tin_line = good.count("\n") + 2
    assert records[1].failure.reason.startswith(f"line {tin_line}: unsupported element Sn")
    assert records[0].name == "ethanol" and records[1].name == "mol1"


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


def test_written_conf_ids_count_0_to_n_minus_1_whatever_ids_resampling_left(tmp_path):
    record = generated("N[C@@H](C)C(=O)O", "L-alanine", 0)
    mol = Chem.Mol(record.mol)
    confs = [Chem.Conformer(c) for c in mol.GetConformers()]
    mol.RemoveAllConformers()
    for new_id, conf in zip((0, 3, 7), confs + confs):  # ids after dropping 1, 2 and resampling two more
        conf.SetId(new_id)
        mol.AddConformer(conf, assignId=False)
    path = tmp_path / "ids.sdf"
    write_conformers(path, [ConformerRecord(0, "L-alanine", mol)])
    assert [r.GetIntProp("conf_id") for r in Chem.SDMolSupplier(str(path), removeHs=False)] == [0, 1, 2]


def test_unassigned_stereo_is_named_per_molecule_and_the_user_chooses(tmp_path):
    from scidiff.mol.io import resolve_unassigned

    source = tmp_path / "s.smi"
    source.write_text("CC(N)C(=O)O ala\nN[C@@H](C)C(=O)O l-ala\nCC=CC(Cl)F both\n")
    records = read_inputs(source)
    assert [r.unassigned_stereo for r in records] == [("atom 1 (C)",), (), ("atom 3 (C)", "bond 1=2")]
    assert records[0].stereo_warning().describe() == \
        "input 0 (ala): line 1: unassigned stereo at atom 1 (C): its conformers take any configuration there"
    refused = list(resolve_unassigned(records, "refuse"))
    assert [r.ok for r in refused] == [False, True, False]
    assert "line 3: unassigned stereo at atom 3 (C), bond 1=2: refused" in refused[2].failure.reason
    enumerated = list(resolve_unassigned(records, "enumerate"))
    assert [r.name for r in enumerated] == ["ala_stereo1", "ala_stereo2", "l-ala"] + [f"both_stereo{k}" for k in (1, 2, 3, 4)]
    assert [r.index for r in enumerated] == list(range(7)) and not any(r.unassigned_stereo for r in enumerated)
    assert len({r.smiles for r in enumerated}) == 7
    with pytest.raises(ValueError, match="--unassigned-stereo"):
        resolve_unassigned(records, "guess")


def test_an_sdf_with_all_zero_coordinates_is_read_as_2d_and_says_so(tmp_path):
    mol = etkdg_conformers(mol_from_smiles("N[C@@H](C)C(=O)O"), 1, 0)
    conf = mol.GetConformer()
    for i in range(mol.GetNumAtoms()):
        conf.SetAtomPosition(i, (0.0, 0.0, 0.0))
    mol.SetProp("_Name", "flat")
    path = tmp_path / "flat.sdf"
    with Chem.SDWriter(str(path)) as writer:
        writer.write(mol)
    (record,) = read_inputs(path)
    assert record.ok and record.flat and record.mol.GetNumConformers() == 0
    assert "unassigned stereo at atom 1 (C) (all coordinates are zero: read as 2D" in record.stereo_warning().reason

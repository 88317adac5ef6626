"""Input parsing (SMILES, .smi, .csv, .sdf) with line-numbered errors, and the stereo-checked SDF writer."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from rdkit import Chem

from scidiff.mol.chem import mol_from_smiles
from scidiff.mol.evaluate import etkdg_conformers
from scidiff.mol.io import ConformerRecord, ConformerWriter, iter_inputs, read_conformers, read_inputs, write_conformers
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
    assert records[1].error == "line 4: bad SMILES 'C1CC' (unclosed ring)"
    assert records[2].error.startswith("line 6: unsupported element Sn (atom 2)")
    assert records[0].mol.GetNumAtoms() == 13  # explicit hydrogens


@pytest.mark.parametrize("sep", [" ", "\t", ","])
def test_smi_without_header_any_separator(tmp_path, sep):
    path = tmp_path / "in.smi.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(f"CCO{sep}ethanol\nC(C\nc1ccccc1{sep}benzene\nCCN\n")
    records = read_inputs(path)
    assert [r.name for r in records] == ["ethanol", "C(C", "benzene", "CCN"]  # no id: the SMILES names it
    assert records[1].error.startswith("line 2: bad SMILES 'C(C'")


def test_smiles_argument_and_missing_file():
    [record] = read_inputs("N[C@@H](C)C(=O)O")
    assert record.ok and record.index == 0 and record.line is None
    [bad] = read_inputs("C1CC")
    assert bad.error == "SMILES argument: bad SMILES 'C1CC' (unclosed ring)"
    with pytest.raises(FileNotFoundError, match="no input file"):
        read_inputs("missing.smi")


def generated(smiles: str, name: str, index: int, n: int = 2) -> ConformerRecord:
    mol = mol_from_smiles(smiles, name=name)
    return ConformerRecord(index, name, etkdg_conformers(mol, n, seed=1), mol)


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
        assert all(r.ok for r in check_conformers(back, original.reference))
    for original, record in zip([records[0]] * 2 + [records[1]] * 3, iter_inputs(path)):
        assert stereo_signature(record.mol).smiles == stereo_signature(original.reference).smiles


def test_writer_refuses_wrong_stereo_and_keeps_partial_output_on_failure(tmp_path):
    good = generated("N[C@@H](C)C(=O)O", "L-alanine", 0)
    d_alanine = generated("N[C@H](C)C(=O)O", "D-alanine", 1)
    wrong = ConformerRecord(1, "claims L", d_alanine.mol, good.reference)  # D coordinates, L input
    path = tmp_path / "out.sdf"

    def records():
        yield good
        yield wrong
        raise RuntimeError("generator crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        with ConformerWriter(path, {"seed": 0}) as writer:
            for record in records():
                writer.write(record)
    assert not path.exists()  # never a truncated OUT
    kept = list(Chem.SDMolSupplier(str(tmp_path / "out.sdf.partial"), removeHs=False))
    assert [m.GetProp("_Name") for m in kept] == ["L-alanine", "L-alanine"]  # the wrong-stereo conformers refused
    assert [(r.name, r.conf_id) for r in writer.report.rejected] == [("claims L", 0), ("claims L", 1)]
    assert "inverted centres" in writer.report.rejected[0].reason


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
    assert records[1].error.startswith(f"line {tin_line}: unsupported element Sn")
    assert records[0].name == "ethanol" and records[1].name == "mol1"

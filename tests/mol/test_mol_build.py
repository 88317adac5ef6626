"""Training-set builders: leakage-free item lists on the real data, resumable shards, SDF round trips, SMILES files."""

from __future__ import annotations

import csv
import gzip

import numpy as np
import pytest
from rdkit import Chem

from scidiff.data import data_path
from scidiff.mol.build import (
    build_shards,
    canonical_nostereo,
    drugs_training_items,
    geom_test_smiles,
    largest_fragment,
    qm9_test_gdb_ids,
    qm9_training_items,
    read_smiles_file,
)
from scidiff.mol.datasets import Skipped, read_sdf_conformers, write_sdf_conformers


def _need(relative: str):
    try:
        return data_path(relative)
    except FileNotFoundError as exc:
        pytest.skip(f"data not available: {exc}")


@pytest.fixture
def qm9_files():
    return [_need(p) for p in ("qm9/qm9_smiles.csv", "qm9/qm9_dft_test.npz", "geom/QM9_test_smiles.csv")]


@pytest.fixture
def drugs_files():
    return [_need(p) for p in ("druglike/znp.50k.smi.gz", "geom/DRUGS_test_smiles.csv")]


def _csv_smiles(path) -> list[str]:
    with open(path, newline="") as f:
        return [row["smiles"] for row in csv.DictReader(f)]


def _nostereo_rewrite(smiles: str) -> str:
    """The same molecule written differently: stereo dropped, atoms in another order (rooted at the last atom)."""
    mol = Chem.MolFromSmiles(smiles)
    return Chem.MolToSmiles(mol, isomericSmiles=False, canonical=False, rootedAtAtom=mol.GetNumAtoms() - 1)


def test_canonical_key_ignores_stereo_and_atom_order():
    assert canonical_nostereo("N[C@@H](C)C(=O)O") == canonical_nostereo("OC(=O)[C@H](N)C") == canonical_nostereo("CC(N)C(O)=O")
    assert canonical_nostereo("C/C=C/C") == canonical_nostereo("C/C=C\\C") != canonical_nostereo("CC=CCC")
    assert canonical_nostereo("C1CC") is None
    assert largest_fragment("Br.CC(N)Cc1ccc(O)cc1") == "CC(N)Cc1ccc(O)cc1"


def test_qm9_items_drop_dft_test_ids_and_geom_test_molecules(qm9_files):
    """Adversarial input: every DFT-test row of qm9_smiles.csv, every GEOM-QM9 test molecule rewritten without
    stereo under a training-looking name, and two clean molecules. Only the clean ones may survive."""
    test_ids = qm9_test_gdb_ids()
    assert len(test_ids) == 2000
    rows = read_smiles_file(qm9_files[0])
    by_id = {int(name.removeprefix("gdb_")): smi for name, smi in rows}
    test_rows = [(f"gdb_{i}", by_id[i]) for i in sorted(test_ids)]
    geom = [smi for smi in _csv_smiles(qm9_files[2]) if canonical_nostereo(smi) is not None]  # a few do not kekulize
    assert len(geom) > 950
    disguised = [(f"gdb_{10**7 + k}", _nostereo_rewrite(smi)) for k, smi in enumerate(geom)]
    geom_keys = geom_test_smiles("QM9")
    clean_ids = [i for i in sorted(by_id)[:100] if i not in test_ids and canonical_nostereo(by_id[i]) not in geom_keys][:2]
    clean = [(f"gdb_{i}", by_id[i]) for i in clean_ids]
    kept, dropped = qm9_training_items(items=test_rows + disguised + clean)
    assert kept == clean
    assert dropped["dft_test_ids"] == 2000 and dropped["excluded"] == len(geom) and dropped["unparsable"] == 0


def test_drugs_items_drop_geom_test_molecules_and_salts(drugs_files):
    geom = [smi for smi in _csv_smiles(drugs_files[1]) if canonical_nostereo(smi) is not None]
    disguised = [(f"disguised_{k}", largest_fragment(_nostereo_rewrite(smi))) for k, smi in enumerate(geom[:100])]
    zinc = read_smiles_file(drugs_files[0])[:50]
    kept, dropped = drugs_training_items(items=disguised + zinc)
    keys = {canonical_nostereo(s) for _, s in kept}
    assert not keys & geom_test_smiles("DRUGS")
    assert not any(name.startswith("disguised") for name, _ in kept)
    assert dropped["excluded"] + dropped["over_60_heavy_atoms"] + dropped["duplicate"] == 100 + 50 - len(kept)
    assert len(kept) >= 45 and all(name.startswith("ZINC") for name, _ in kept)


@pytest.mark.slow
def test_full_training_lists_exclude_every_test_molecule(qm9_files, drugs_files):
    """The lists `scidiff mol build qm9|drugs` really uses (~35 s and ~70 s on a busy CPU core)."""
    kept, dropped = qm9_training_items()
    test_ids = qm9_test_gdb_ids()
    assert not {int(n.removeprefix("gdb_")) for n, _ in kept} & test_ids
    assert not {canonical_nostereo(s) for _, s in kept} & geom_test_smiles("QM9")
    assert len(kept) > 125_000 and dropped["dft_test_ids"] == 2000 and dropped["excluded"] > 800
    kept, _ = drugs_training_items()
    assert not {canonical_nostereo(s) for _, s in kept} & geom_test_smiles("DRUGS")
    assert len(kept) > 40_000


def test_read_smiles_file_formats(tmp_path):
    (tmp_path / "a.csv").write_text("smiles,id\nCCO,ethanol\nc1ccccc1,\n")
    with gzip.open(tmp_path / "b.smi.gz", "wt") as f:
        f.write("CCN amine\nCCCl\n\n")
    assert read_smiles_file(tmp_path / "a.csv") == [("ethanol", "CCO"), ("a:1", "c1ccccc1")]
    assert read_smiles_file(tmp_path / "b.smi.gz") == [("amine", "CCN"), ("b:1", "CCCl")]
    (tmp_path / "c.csv").write_text("SMILES\nCCO\n")
    with pytest.raises(ValueError, match="no 'smiles' column"):
        read_smiles_file(tmp_path / "c.csv")


ITEMS = [("alanine", "N[C@@H](C)C(=O)O"), ("tin", "CC[Sn](C)(C)C"), ("crotonic", "C/C=C/C(=O)O"), ("ethanol", "CCO")]


def test_build_shards_writes_logs_failures_and_resumes(tmp_path):
    out = tmp_path / "set"
    report = build_shards(ITEMS, out, num_conformers=2, shard_size=2, processes=1, progress=None)
    assert (report.written, report.reused, report.molecules, report.skipped) == (2, 0, 3, 1)
    assert sorted(p.name for p in out.glob("shard_*")) == [
        "shard_00000.sdf", "shard_00000.skipped.tsv", "shard_00001.sdf", "shard_00001.skipped.tsv"]
    assert (out / "shard_00000.skipped.tsv").read_text().startswith("tin\tunsupported element Sn")
    first = (out / "shard_00001.sdf").read_text()

    # A killed run leaves a shard without its skip list (written last): only that shard is rebuilt, identically.
    (out / "shard_00001.skipped.tsv").unlink()
    report = build_shards(ITEMS, out, num_conformers=2, shard_size=2, processes=1, progress=None)
    assert (report.written, report.reused) == (1, 1)
    assert (out / "shard_00001.sdf").read_text() == first
    assert not list(out.glob(".*.tmp"))
    with pytest.raises(ValueError, match="different molecules or settings"):
        build_shards(ITEMS[:3], out, num_conformers=2, shard_size=2, processes=1, progress=None)
    with pytest.raises(ValueError, match="different molecules or settings"):
        build_shards(ITEMS, out, num_conformers=3, shard_size=2, processes=1, progress=None)

    built = read_sdf_conformers(out)
    assert [m.GetProp("_Name") for m in built.molecules] == ["alanine", "crotonic", "ethanol"]
    assert all(m.GetNumConformers() == 2 for m in built.molecules)


def test_sdf_conformers_round_trip_positions_energies_and_stereo(tmp_path, embed):
    from scidiff.mol.datasets import embed_conformers

    mols = [embed_conformers("N[C@@H](C)C(=O)O", 3, seed=1, name="ala"), embed_conformers("C/C=C/C(=O)O", 2, seed=1, name="cro")]
    write_sdf_conformers(tmp_path / "x.sdf", mols)
    pentavalent = Chem.MolFromSmiles("C(F)(F)(F)(F)F", sanitize=False)  # written fine, rejected on reading
    (tmp_path / "bad.sdf").write_text(Chem.MolToMolBlock(pentavalent, kekulize=False) + "$$$$\n")
    built = read_sdf_conformers(tmp_path / "x.sdf")
    assert built.skipped == []
    for source, back in zip(mols, built.molecules):
        assert back.GetProp("_Name") == source.GetProp("_Name") and back.GetNumConformers() == source.GetNumConformers()
        assert Chem.MolToSmiles(Chem.RemoveHs(back)) == Chem.MolToSmiles(Chem.RemoveHs(source))
        for a, b in zip(source.GetConformers(), back.GetConformers()):
            assert np.allclose(a.GetPositions(), b.GetPositions(), atol=1e-4)
            assert b.GetDoubleProp("energy") == pytest.approx(a.GetDoubleProp("energy"), abs=1e-3)
    folder = read_sdf_conformers(tmp_path)  # a folder reads every .sdf, reporting unreadable records
    assert len(folder.molecules) == 2 and folder.skipped == [Skipped("bad.sdf#0", "RDKit could not read the SDF record")]
    with pytest.raises(FileNotFoundError, match="no SDF file or folder"):
        read_sdf_conformers(tmp_path / "missing.sdf")

"""Training-set builders: stereo-true ETKDG + MMFF ensembles, leakage-free item lists on the real data, resumable
shards, SDF round trips, SMILES files."""

from __future__ import annotations

import csv
import gzip
import logging

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from scidiff.data import data_path
from scidiff.mol.build import (
    build_conformers,
    build_shards,
    canonical_nostereo,
    drugs_training_items,
    embed_conformers,
    geom_test_smiles,
    largest_fragment,
    qm9_test_gdb_ids,
    qm9_training_items,
    read_smiles_file,
)
from scidiff.mol.chem import Failure, mol_from_smiles
from scidiff.mol.io import ConformerRecord, read_conformers, write_conformers


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
    with caplog.at_level(logging.WARNING, logger="scidiff.mol.build"):
        serial = build_conformers(items, num_conformers=2, seed=3, processes=1)
    assert [m.GetProp("_Name") for m in serial.molecules] == ["alanine", "crotonic"]
    assert serial.skipped == [
        Failure("tin", "unsupported element Sn (atom 2); supported: H, B, C, N, O, F, Si, P, S, Cl, Br, I"),
        Failure("C1CC", "could not parse SMILES (SMILES Parse Error: unclosed ring for input: 'C1CC')"),
    ]
    assert "skipped tin: unsupported element Sn" in caplog.text and serial.summary() == "2 built, 2 skipped"
    parallel = build_conformers(items, num_conformers=2, seed=3, processes=2)
    assert parallel.skipped == serial.skipped
    for a, b in zip(serial.molecules, parallel.molecules):
        assert a.GetProp("_Name") == b.GetProp("_Name") and a.GetNumConformers() == b.GetNumConformers() == 2
        for ca, cb in zip(a.GetConformers(), b.GetConformers()):
            assert np.allclose(ca.GetPositions(), cb.GetPositions(), atol=1e-6)
            assert ca.GetDoubleProp("energy") == pytest.approx(cb.GetDoubleProp("energy"))


def test_mmff_keeps_the_input_graph_aromatic():
    """MMFF set-up kekulises 2-pyridone in place; the minimised conformers must keep the SMILES graph's features."""
    smiles = "O=c1cccc[nH]1"
    mol = embed_conformers(smiles, num_conformers=2, seed=0)
    reference = mol_from_smiles(smiles)
    assert [a.GetIsAromatic() for a in mol.GetAtoms()] == [a.GetIsAromatic() for a in reference.GetAtoms()]
    assert any(a.GetIsAromatic() for a in mol.GetAtoms())
    assert [b.GetBondType() for b in mol.GetBonds()] == [b.GetBondType() for b in reference.GetBonds()]
    assert all(conf.HasProp("energy") for conf in mol.GetConformers())


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
    (tmp_path / "c.csv").write_text("SMILES,gdb_id\nCCO,7\n")  # io's one column rule: any case, known id columns
    assert read_smiles_file(tmp_path / "c.csv") == [("7", "CCO")]


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

    built = read_conformers(out)
    assert [m.GetProp("_Name") for m in built] == ["alanine", "crotonic", "ethanol"]
    assert [m.GetIntProp("input_index") for m in built] == [0, 2, 3]  # place in the item list
    assert all(m.GetNumConformers() == 2 for m in built)


def test_sdf_conformers_round_trip_positions_energies_and_stereo(tmp_path):
    mols = [embed_conformers("N[C@@H](C)C(=O)O", 3, seed=1, name="ala"), embed_conformers("C/C=C/C(=O)O", 2, seed=1, name="cro")]
    write_conformers(tmp_path / "x.sdf", [ConformerRecord(i, m.GetProp("_Name"), m) for i, m in enumerate(mols)])
    pentavalent = Chem.MolFromSmiles("C(F)(F)(F)(F)F", sanitize=False)  # written fine, rejected on reading
    (tmp_path / "bad.sdf").write_text(Chem.MolToMolBlock(pentavalent, kekulize=False) + "$$$$\n")
    skipped = []
    back_mols = read_conformers(tmp_path / "x.sdf", skipped=skipped)
    assert skipped == []
    for source, back in zip(mols, back_mols):
        assert back.GetProp("_Name") == source.GetProp("_Name") and back.GetNumConformers() == source.GetNumConformers()
        assert Chem.MolToSmiles(Chem.RemoveHs(back)) == Chem.MolToSmiles(Chem.RemoveHs(source))
        for a, b in zip(source.GetConformers(), back.GetConformers()):
            assert np.allclose(a.GetPositions(), b.GetPositions(), atol=1e-4)
            assert b.GetDoubleProp("energy") == pytest.approx(a.GetDoubleProp("energy"), abs=1e-3)
    folder = read_conformers(tmp_path, skipped=skipped)  # a folder reads every .sdf, reporting unreadable records
    assert len(folder) == 2 and skipped == [Failure("bad.sdf#0", "RDKit could not read the SDF record")]
    with pytest.raises(ValueError, match="could not read"):
        read_conformers(tmp_path / "bad.sdf")
    with pytest.raises(FileNotFoundError, match="no SDF file or folder"):
        read_conformers(tmp_path / "missing.sdf")


def test_sdf_of_other_tools_groups_consecutive_records(tmp_path):
    """SDFs without the dialect's input_index (older shards, other tools): consecutive same-name records are one molecule."""
    mols = [embed_conformers("CCO", 2, seed=1, name="eth"), embed_conformers("CCO", 1, seed=2, name="eth2")]
    with Chem.SDWriter(str(tmp_path / "plain.sdf")) as writer:
        for mol in mols:
            for conf in mol.GetConformers():
                writer.write(mol, confId=conf.GetId())
    assert [(m.GetProp("_Name"), m.GetNumConformers()) for m in read_conformers(tmp_path / "plain.sdf")] == [
        ("eth", 2), ("eth2", 1)]

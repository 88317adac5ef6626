"""`scidiff mol build torsion-pairs`: MMFF94 ensembles with matched local structures, GEOM-DRUGS test molecules
excluded, resumable shards, and examples whose target torsions reproduce the matched positions."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from scidiff.data import data_path
from scidiff.mol.build import aligned_rmsd
from scidiff.mol.cli import main
from scidiff.mol.io import read_conformers
from scidiff.mol.torsion import rotatable_bonds, set_torsions
from scidiff.mol.torsion_data import (LEVEL_OF_THEORY, LOCAL, MATCHED, REFERENCE, build_torsion_pairs,
                                      example_torsions, examples_of, reference_set)

ITEMS = [("ibuprofen", "CC(C)Cc1ccc(cc1)[C@H](C)C(=O)O"), ("cinnamate", "CCOC(=O)/C=C/c1ccc(OC)cc1"),
         ("benzene", "c1ccccc1")]  # no rotatable bond: dropped from the item list


def _geom_test_molecule() -> str:
    try:
        path = data_path("geom/DRUGS_test_smiles.csv")
    except FileNotFoundError as exc:
        pytest.skip(f"GEOM-DRUGS test list not available: {exc}")
    with open(path, newline="") as f:
        return next(csv.DictReader(f))["smiles"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("torsions")
    items = [*ITEMS, ("geom_test", _geom_test_molecule())]
    reports, dropped = build_torsion_pairs(out, items=items, validation=1, num_conformers=8, max_references=3,
                                           shard_size=1, processes=1, progress=None)
    return out, items, reports, dropped


def test_geom_test_molecules_and_molecules_without_rotatable_bonds_are_dropped(built):
    out, _, reports, dropped = built
    assert dropped["excluded"] == 1 and dropped["no_rotatable_bond"] == 1
    names = {line.split("\t")[0] for split in ("train", "validation") for line in (out / split / "items.tsv").read_text().splitlines()}
    assert names == {"ibuprofen", "cinnamate"}  # the held-out split is drawn from the same clean list
    assert reports["train"].molecules == reports["validation"].molecules == 1


def test_examples_have_references_local_structures_and_matched_torsions(built):
    out = built[0]
    mols = read_conformers(out / "train") + read_conformers(out / "validation")
    for mol in mols:
        assert mol.GetProp("level_of_theory") == LEVEL_OF_THEORY
        refs, local, matched = (examples_of(mol, role) for role in (REFERENCE, LOCAL, MATCHED))
        assert 1 <= len(refs) <= 3 and refs.keys() == local.keys() == matched.keys()
        energies = [c.GetDoubleProp("rel_energy") for c in refs.values()]
        assert min(energies) == pytest.approx(0.0, abs=1e-6) and max(energies) <= 6.0
        bonds = rotatable_bonds(mol)
        heavy = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
        for pair, conf in matched.items():
            targets = example_torsions(mol, conf.GetPositions(), bonds)
            rebuilt = set_torsions(local[pair].GetPositions(), mol, bonds, targets)
            assert np.abs(rebuilt - conf.GetPositions()).max() < 2e-3  # the SDF keeps 4 decimals
            match_rmsd = aligned_rmsd(conf.GetPositions()[heavy], refs[pair].GetPositions()[heavy])
            assert match_rmsd == pytest.approx(conf.GetDoubleProp("match_rmsd"), abs=2e-3)
            assert conf.GetDoubleProp("match_rmsd") <= conf.GetDoubleProp("rmsd_before") + 1e-6


def test_a_rerun_reuses_the_shards_and_other_settings_are_refused(built):
    out, items = built[0], built[1]
    reports, _ = build_torsion_pairs(out, items=items, validation=1, num_conformers=8, max_references=3, shard_size=1,
                                     processes=1, progress=None)
    assert reports["train"].written == reports["validation"].written == 0
    assert reports["train"].reused == reports["validation"].reused == 1
    with pytest.raises(ValueError, match="different molecules or settings"):
        build_torsion_pairs(out, items=items, validation=1, num_conformers=9, max_references=3, shard_size=1,
                            processes=1, progress=None)


def test_held_out_split_is_a_reference_set(built):
    data = reference_set(built[0] / "validation")
    assert len(data["inputs"]) == len(data["references"]) == 1 and "MMFF94" in data["label"]
    assert all(c.GetDoubleProp("example_role") == REFERENCE for c in data["references"][0].GetConformers())


def test_cli_builds_from_a_smiles_file_and_refuses_mixed_sources(tmp_path, capsys):
    smi = tmp_path / "in.smi"
    smi.write_text("CCOC(=O)/C=C/c1ccc(OC)cc1 cinnamate\n")
    assert main(["build", "torsion-pairs", str(smi), "--out", str(tmp_path / "out"), "--conformers", "4",
                 "--max-references", "2", "--processes", "1"]) == 0
    assert "1 molecules" in capsys.readouterr().out
    assert main(["build", "torsion-pairs", "drugs", "--out", str(tmp_path / "x")]) == 2
    assert "torsion-pairs comes first" in capsys.readouterr().err

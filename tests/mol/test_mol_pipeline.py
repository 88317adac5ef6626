"""The conformer pipeline: registered generators, stereo check / mirror / resample, the SDF it writes, the Python API
and ``scidiff mol generate``."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem

from scidiff.mol import chem
from scidiff.mol.chem import Failure, mol_from_smiles
from scidiff.mol.cli import main
from scidiff.mol.evaluate import rmsd_matrix
from scidiff.mol.pipeline import (GENERATORS, METHODS, etkdg_generator, etkdg_mmff_generator, generate, generate_mols,
                                  get_generator)
from scidiff.mol.stereo import signature_from_3d, stereo_signature


def test_baseline_is_deterministic_per_seed_and_keeps_atom_order():
    mol = mol_from_smiles("CC(C)Cc1ccc(cc1)[C@H](C)C(=O)O", "S-ibuprofen")
    a, b = etkdg_generator([mol], 3, seed=5)[0], etkdg_generator([mol], 3, seed=5)[0]
    c = etkdg_generator([mol], 3, seed=6)[0]
    assert a.GetNumConformers() == 3
    assert all(np.array_equal(x.GetPositions(), y.GetPositions()) for x, y in zip(a.GetConformers(), b.GetConformers()))
    assert not np.allclose(a.GetConformer(0).GetPositions(), c.GetConformer(0).GetPositions())
    assert [x.GetAtomicNum() for x in a.GetAtoms()] == [x.GetAtomicNum() for x in mol.GetAtoms()]


def test_mmff_baseline_keeps_the_input_graph_flags():
    # MMFF's own aromaticity model would turn 2-pyridone's ring bonds non-aromatic in place and break RMSD matching
    mol = mol_from_smiles("O=c1cccc[nH]1")
    relaxed = etkdg_mmff_generator([mol], 2, seed=0)[0]
    assert [b.GetIsAromatic() for b in relaxed.GetBonds()] == [b.GetIsAromatic() for b in mol.GetBonds()]
    assert relaxed.GetConformer(0).HasProp("mmff_energy")
    assert np.isfinite(rmsd_matrix(etkdg_generator([mol], 1, seed=1)[0], relaxed)).all()


def wrong_first_generator():
    """A fake backend whose first draw has one centre inverted (unfixable) and whose resamples are right."""
    calls = []

    def generate_fn(mols, n, seed=0, **options):
        calls.append((len(mols), n, seed, options))
        out = etkdg_generator(mols, n, seed)
        if len(calls) == 1:  # threonine coordinates of the allo diastereomer: partial inversion
            allo = etkdg_generator([mol_from_smiles("C[C@H](O)[C@H](N)C(=O)O")], n, seed)[0]
            out[0].RemoveAllConformers()
            for conf in allo.GetConformers():
                out[0].AddConformer(Chem.Conformer(conf), assignId=True)
        return out

    return generate_fn, calls


def test_generate_mirrors_full_inversions_and_reports_unfixable_stereo(tmp_path):
    def coordinates_of(smiles):  # a backend that always returns the coordinates of another stereoisomer
        return lambda mols, n, seed=0, **_: [etkdg_generator([mol_from_smiles(smiles)], n, seed)[0] for _ in mols]

    mirrored = generate("N[C@@H](C)C(=O)O", tmp_path / "a.sdf", n=2, generate_fn=coordinates_of("N[C@H](C)C(=O)O"))
    assert mirrored.written.conformers == 2 and not mirrored.stereo_dropped  # D coordinates mirrored into L
    flipped = generate("C/C=C\\C(=O)O", tmp_path / "b.sdf", n=2, generate_fn=coordinates_of("C/C=C/C(=O)O"),
                       max_resample=1)
    assert flipped.succeeded == 0 and [(f.index, f.name) for f in flipped.stereo_dropped] == [(0, "C/C=C\\C(=O)O")]
    assert flipped.stereo_dropped[0].reason.startswith("2 conformers still had wrong stereo after 1 resampling rounds")
    assert "wrong stereo" in flipped.failed[0].reason


def test_generate_resamples_wrong_stereo_and_reports_bad_inputs(tmp_path):
    source = tmp_path / "in.smi"
    source.write_text("C[C@@H](O)[C@H](N)C(=O)O thr\nC1CC broken\nCCO\n")
    fn, calls = wrong_first_generator()
    summary = generate(source, tmp_path / "out.sdf", n=2, generate_fn=fn, seed=3, sampler="ddim", steps=5)
    assert summary.line() == f"2/3 molecules succeeded (4 conformers written to {tmp_path / 'out.sdf'})"
    assert summary.failed == [Failure("broken", "line 2: bad SMILES 'C1CC' (unclosed ring)", 1, 2)]
    assert summary.failed[0].describe() == "input 1 (broken): line 2: bad SMILES 'C1CC' (unclosed ring)"
    assert calls[0][3] == {"sampler": "ddim", "steps": 5} and calls[1][:2] == (1, 2)  # one resample of both
    assert summary.stereo_dropped == []
    written = list(Chem.SDMolSupplier(str(tmp_path / "out.sdf"), removeHs=False))
    assert [(m.GetProp("_Name"), m.GetIntProp("input_index")) for m in written] == [("thr", 0)] * 2 + [("CCO", 2)] * 2
    assert written[0].GetIntProp("steps") == 5 and written[0].GetProp("relaxation") == "none"


def test_python_api_returns_stereo_checked_molecules_in_input_order(tmp_path):
    """Molecules or SMILES in, RDKit molecules with conformers out; a bad input is None, the rest complete."""
    lactic = Chem.MolFromSmiles("C[C@@H](O)C(=O)O")
    lactic.SetProp("_Name", "L-lactic")
    out = generate_mols([lactic, "C1CC", "C/C=C/Cl"], n=3, generate_fn=etkdg_generator, seed=1)
    assert out[1] is None and [m.GetNumConformers() for m in (out[0], out[2])] == [3, 3]
    assert out[0].GetProp("_Name") == "L-lactic" and out[0].GetNumAtoms() == 12  # explicit hydrogens added
    for mol, smiles in ((out[0], "C[C@@H](O)C(=O)O"), (out[2], "C/C=C/Cl")):
        reference = stereo_signature(mol_from_smiles(smiles))
        for conf in mol.GetConformers():
            assert signature_from_3d(mol, conf.GetId()) == reference
    again = generate_mols([lactic, "C1CC", "C/C=C/Cl"], n=3, generate_fn=etkdg_generator, seed=1)
    assert np.array_equal(again[0].GetConformer(0).GetPositions(), out[0].GetConformer(0).GetPositions())


def test_cli_exit_status_determinism_and_model_generation(tmp_path, capsys):
    outs = [tmp_path / f"{i}.sdf" for i in range(4)]
    assert main(["generate", "N[C@@H](C)C(=O)O", "-n", "3", "-o", str(outs[0]), "--relax", "mmff", "--no-progress"]) == 0
    assert "1/1 molecules succeeded" in capsys.readouterr().out
    main(["generate", "N[C@@H](C)C(=O)O", "-n", "3", "-o", str(outs[1]), "--relax", "mmff", "--no-progress"])
    assert outs[0].read_text() == outs[1].read_text()  # same seed, same file
    assert main(["generate", "C1CC", "-o", str(outs[2]), "--no-progress"]) == 1  # nothing generated
    missing = str(tmp_path / "missing.safetensors")
    assert main(["generate", "CCO", "-o", str(outs[3]), "--method", "scidiff", "--checkpoint", missing,
                    "--no-progress"]) == 2
    assert "no inference weights at" in capsys.readouterr().err
    assert not outs[3].exists() and not (tmp_path / "3.sdf.partial").exists()
    # The bundled model generates (quality is benchmarked elsewhere); every written record passed the stereo check.
    assert main(["generate", "N[C@@H](C)C(=O)O", "-n", "2", "-o", str(outs[3]), "--method", "scidiff",
                    "--no-progress"]) == 0
    assert "1/1 molecules succeeded" in capsys.readouterr().out
    records = list(Chem.SDMolSupplier(str(outs[3]), removeHs=False))
    assert [(r.GetProp("sampler"), r.GetIntProp("steps"), r.GetProp("weights"), r.GetProp("seed_method")) for r in records] \
        == [("euler", 2, "bundled", "etkdg_mmff")] * 2  # what made each conformer


def test_one_registry_names_every_generator():
    assert METHODS == tuple(GENERATORS) == ("etkdg", "etkdg_mmff", "etkdg_mmff_xtb", "scidiff", "scidiff_denovo")
    assert get_generator("etkdg_mmff") is etkdg_mmff_generator
    with pytest.raises(ValueError, match="unknown method 'rdkit'; choose one of etkdg, etkdg_mmff, etkdg_mmff_xtb, scidiff"):
        get_generator("rdkit")


@pytest.mark.parametrize("method", ["etkdg", "scidiff"])
def test_each_molecule_is_prepared_once(monkeypatch, method, one_thread):
    """Inputs are prepared where they enter; generators, featuriser and writer reuse them (it ran 3 times before)."""
    calls = []
    check = chem._check_sanitised  # called by prepare_mol alone
    monkeypatch.setattr(chem, "_check_sanitised", lambda mol, label: (calls.append(label), check(mol, label)))
    out = generate_mols(["CCO", "N[C@@H](C)C(=O)O", "C1CC"], n=2, method=method, max_resample=0)
    assert [m is None for m in out] == [False, False, True]
    assert len(calls) == 2  # the two parsable inputs, once each (C1CC fails before validation)


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "steps (--steps) must be an integer >= 1, got 0"),
    (["--sampler", "fast"], "sampler (--sampler): unknown 'fast'"),
    (["--batch-size", "0"], "batch_size (--batch-size) must be an integer >= 1, got 0"),
    (["--max-resample", "-1"], "max_resample (--max-resample) must be an integer >= 0, got -1"),
    (["-n", "0"], "n (-n/--num-conformers) must be an integer >= 1, got 0"),
])
def test_invalid_settings_exit_2_naming_them_before_anything_is_written(tmp_path, capsys, flags, message):
    from scidiff.cli import main as scidiff_main

    out = tmp_path / "x.sdf"
    assert scidiff_main(["mol", "generate", "CCO", "-o", str(out), "--method", "scidiff", "--no-progress", *flags]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_output_paths_that_would_lose_files_are_refused(tmp_path, capsys):
    from scidiff.cli import main as scidiff_main

    precious = tmp_path / "precious.sdf"
    precious.write_text("keep me\n")
    source = tmp_path / "in.smi"
    source.write_text("C1CC broken\n")
    # a run where nothing succeeds leaves an existing output as it was
    assert scidiff_main(["mol", "generate", str(source), "-o", str(precious), "--no-progress"]) == 1
    assert precious.read_text() == "keep me\n" and not list(tmp_path.glob("*.partial"))
    for target, message in ((source, "conformers are written as SDF"), (tmp_path, "is a folder"),
                            (tmp_path / "out.mol2", "give a .sdf or .sd path"), (precious / "x.sdf", "is a file, not a folder")):
        assert scidiff_main(["mol", "generate", "CCO", "-o", str(target), "--no-progress"]) == 2
        assert message in capsys.readouterr().err
    same = tmp_path / "in.sdf"
    main(["generate", "CCO", "-o", str(same), "--no-progress"])
    before = same.read_bytes()
    assert scidiff_main(["mol", "generate", str(same), "-o", str(same), "--no-progress"]) == 2
    assert "is the input file" in capsys.readouterr().err and same.read_bytes() == before


def test_an_undecodable_byte_fails_only_its_line(tmp_path, capsys):
    source = tmp_path / "a.smi"
    source.write_bytes(b"CCO eth\xffanol\nCCN x\n")
    summary = generate(source, tmp_path / "out.sdf", n=1)
    assert summary.succeeded == 1 and summary.failed[0].reason == "line 1: not UTF-8 text (byte 0xff)"

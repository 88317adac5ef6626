"""Evaluation: coverage on hand-made RMSDs, ground state, PoseBusters, strain, reference sets and ``scidiff mol evaluate``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from rdkit import Chem

from scidiff.mol.chem import mol_from_smiles
from scidiff.mol.cli import main
from scidiff.mol.evaluate import (compare_table, coverage_metrics, evaluate_coverage, evaluate_ground_state,
                                  evaluate_method, posebusters_checks, relaxed_generator, rmsd_matrix, save_results,
                                  xtb_strain)
from scidiff.mol.io import read_qm9
from scidiff.mol.pipeline import etkdg_generator, etkdg_mmff_generator

ASYMMETRIC = "NCC(O)CCl"  # no heavy-atom automorphism: the best match is the identity


def test_coverage_metrics_on_known_matrix():
    rmsd = np.array([[0.1, 0.9, 2.0],
                     [0.6, 0.4, 1.5]])  # K = 2 references x L = 3 generated
    m = coverage_metrics(rmsd, deltas=(0.3, 0.5, 1.0))
    assert m["cov_r"] == [0.5, 1.0, 1.0] and m["amr_r"] == pytest.approx((0.1 + 0.4) / 2)
    assert m["cov_p"] == pytest.approx([1 / 3, 2 / 3, 2 / 3]) and m["amr_p"] == pytest.approx((0.1 + 0.4 + 1.5) / 3)
    empty = coverage_metrics(np.zeros((2, 0)), deltas=(0.5,))
    assert empty["cov_r"] == [0.0] and math.isnan(empty["amr_r"])


def scaled_copies(mol: Chem.Mol, factors: list[float]) -> Chem.Mol:
    """Conformers scaled about the heavy-atom centroid: aligned heavy RMSD = |f - 1| * rms radius (identity match)."""
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    base = mol.GetConformer().GetPositions()
    heavy = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
    centre = base[heavy].mean(axis=0)
    for f in factors:
        conf = Chem.Conformer(mol.GetConformer())
        for i, p in enumerate(centre + f * (base - centre)):
            conf.SetAtomPosition(i, p.tolist())
        out.AddConformer(conf, assignId=True)
    return out


def test_rmsd_matrix_and_coverage_on_hand_made_conformers():
    mol = etkdg_generator([mol_from_smiles(ASYMMETRIC)], 1, seed=0)[0]
    pos = mol.GetConformer().GetPositions()[[a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]]
    radius = np.sqrt(((pos - pos.mean(axis=0)) ** 2).sum(axis=1).mean())
    refs = scaled_copies(mol, [1.0, 1.2])
    gens = scaled_copies(mol, [1.0, 1.0, 0.5])
    expected = np.abs(np.array([[1.0], [1.2]]) - np.array([[1.0, 1.0, 0.5]])) * radius
    assert np.allclose(rmsd_matrix(refs, gens), expected, atol=1e-3)
    result = evaluate_coverage([refs, refs], [gens, None], deltas=(0.1,))
    assert result["missing"] == [ASYMMETRIC]  # named by the reference, not dropped
    assert result["cov_r"]["0.1"]["mean"] == pytest.approx(0.25)  # 1/2 covered, then 0 for the missing molecule
    assert result["amr_r"]["n"] == 1


def test_ground_state_counts_missing_as_not_recovered():
    dft = etkdg_generator([mol_from_smiles(ASYMMETRIC, "m")], 1, seed=0)[0]
    near = scaled_copies(dft, [1.05, 1.5])
    result = evaluate_ground_state([dft, dft], [near, None])
    assert result["missing"] == ["m"] and result["fraction_below"]["0.25"] == 0.5
    assert result["median"] == math.inf


def test_evaluate_method_posebusters_and_table(tmp_path):
    pytest.importorskip("posebusters", reason="posebusters not installed (optional evaluation dependency)")
    inputs = [mol_from_smiles(s, n) for s, n in (("N[C@@H](C)C(=O)O", "ala"), ("C/C=C/C(=O)O", "crot"))]
    result = evaluate_method("etkdg", etkdg_generator, inputs, 2, seed=0, dft=[etkdg_generator([m], 1, 9)[0] for m in inputs])
    assert result["conformers"] == 4 and result["stereo"]["conformer_rate"] == 1.0
    assert result["posebusters"]["n_conformers"] == 4 and result["posebusters"]["pass_rate"] == 1.0
    table = compare_table([result, result])
    assert table.count("| etkdg |") == 2 and "GS median A" in table
    save_results(tmp_path / "r.json", result)
    assert (tmp_path / "r.json").read_text().startswith("{")


def test_posebusters_flags_a_crushed_conformer():
    pytest.importorskip("posebusters", reason="posebusters not installed (optional evaluation dependency)")
    mol = etkdg_generator([mol_from_smiles("CCCCO")], 1, seed=0)[0]
    crushed = scaled_copies(mol, [0.6])
    assert posebusters_checks([crushed])["pass_rate"] == 0.0


@pytest.mark.slow
def test_xtb_strain_of_raw_etkdg_is_positive():
    pytest.importorskip("tblite", reason="tblite not installed (optional GFN2-xTB dependency)")
    mol = mol_from_smiles("CCCCO")
    raw = etkdg_generator([mol], 1, seed=0)[0]
    strain = xtb_strain([raw], steps=60)
    assert strain["n_conformers"] == 1 and strain["median"] > 0


def test_ground_state_on_qm9_dft():
    try:
        built = read_qm9("test", limit=5)
    except FileNotFoundError as exc:
        pytest.skip(f"QM9 DFT data absent: {exc}")
    result = evaluate_method("etkdg_mmff", etkdg_mmff_generator, built.molecules, 3, dft=built.molecules, posebusters=False)
    assert result["ground_state"]["n_molecules"] == len(built.molecules) and result["ground_state"]["median"] < 0.5


def test_evaluate_on_a_smiles_table_scores_validity_and_names_bad_lines(tmp_path, capsys):
    table = tmp_path / "mine.csv"
    table.write_text("smiles,id\nC[C@H](N)C(=O)O,L-ala\nC1CC,broken\nOC(=O)/C=C/C(=O)O,fumaric\n")
    out = tmp_path / "result.json"
    assert main(["evaluate", "--reference", str(table), "--method", "etkdg", "-n", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 molecules, 1 skipped" in printed and "GS median" not in printed  # no reference geometry: no RMSD columns
    result = json.loads(out.read_text())["results"][0]
    assert result["conformers"] == 4 and result["stereo"]["conformer_rate"] == 1.0
    assert result["posebusters"]["pass_rate"] == 1.0
    assert len(result["skipped_inputs"]) == 1 and "line 3 (broken)" in result["skipped_inputs"][0]
    assert "unclosed ring" in result["skipped_inputs"][0]


def test_graph_preservation_re_perceives_bonds_from_3d():
    from scidiff.mol.evaluate import graph_preservation, local_geometry_errors

    mols = [mol_from_smiles(s, n) for s, n in (("CCO", "ethanol"), ("C[C@@H](N)C(=O)O", "ala"))]
    generated = etkdg_generator(mols, 2, seed=0)
    assert graph_preservation(generated, mols) == {"conformer_rate": 1.0, "wrong": []}
    conf = generated[0].GetConformer(0)
    xyz = conf.GetPositions()
    xyz[0] += 5.0  # a carbon pulled out of the molecule: its bonds are gone when re-perceived
    conf.SetPositions(xyz)
    assert graph_preservation(generated, mols) == {"conformer_rate": 0.75, "wrong": ["ethanol:0"]}
    # local geometry against a "DFT" that is the conformer itself: zero errors
    exact = local_geometry_errors([generated[1]], [generated[1]])
    assert exact["bond_median_A"] == pytest.approx(0.0, abs=1e-9) and exact["angle_median_deg"] == pytest.approx(0.0, abs=1e-6)


def test_evaluate_method_counts_inputs_short_of_n_and_names_each_seed_path():
    """``all_n_rate`` is the fraction of inputs that got every conformer asked for; a generator that returns fewer
    for one input and none for another is scored 1/3, the short one is listed, and PoseBusters (without its
    energy check) runs on the first molecules only when limited."""

    def partial(mols, n, seed=0, **_):
        out = etkdg_generator(mols, n, seed)
        out[1].RemoveConformer(out[1].GetConformers()[0].GetId())  # one short
        out[2].RemoveAllConformers()  # none
        return out

    inputs = [mol_from_smiles(s, name) for s, name in (("CCO", "a"), ("CCN", "b"), ("CCC", "c"))]
    pb = pytest.importorskip("posebusters", reason="posebusters not installed") is not None
    result = evaluate_method("partial", partial, inputs, 2, seed=0, posebusters=pb, posebusters_limit=1,
                             posebusters_energy=False)
    assert result["all_n_rate"] == pytest.approx(1 / 3) and result["short"] == ["b: 1/2"] and result["no_output"] == ["c"]
    assert result["embedding_paths"] == {"etkdg": 3}
    assert result["summary"]["all n"] == pytest.approx(1 / 3)
    assert result["posebusters"]["n_molecules"] == 1 and result["posebusters"]["n_conformers"] == 2
    assert not result["posebusters"]["energy_check"] and "internal_energy" not in result["posebusters"]["per_check"]


@pytest.mark.parametrize("deltas, headline", [("DRUGS", "0.75"), ("QM9", "0.5")])
def test_the_table_headlines_coverage_at_the_standard_delta(deltas, headline):
    """0.75 Å for GEOM-DRUGS, 0.5 Å for QM9 (molecules.md), although the DRUGS sweep also holds 0.5 Å."""
    from scidiff.mol import evaluate

    sweep = getattr(evaluate, f"DELTAS_{deltas}")
    stat = {"mean": 0.5, "median": 0.5, "n": 1}
    coverage = {"deltas": list(sweep), "cov_r": {str(d): stat for d in sweep}, "cov_p": {str(d): stat for d in sweep},
                "amr_r": stat, "amr_p": stat}
    result = {"method": "m", "n_molecules": 1, "conformers": 2, "no_output": [], "all_n_rate": 1.0,
              "coverage": coverage, "stereo": {"conformer_rate": 1.0}, "graph": {"conformer_rate": 1.0},
              "conformers_per_s": 1.0, "conformers_per_cpu_s": 1.0}
    row = evaluate._summary(result)
    assert f"COV-R@{headline} mean/med" in row and f"COV-P@{headline} mean/med" in row
    assert sum(key.startswith("COV-R@") for key in row) == 1


def test_relaxed_generator_is_the_generator_then_mmff94():
    # ETKDG then MMFF94 relaxation is ETKDG + MMFF94 from the same seeds, conformer for conformer.
    mol = mol_from_smiles(ASYMMETRIC)
    relaxed = relaxed_generator(etkdg_generator, "mmff")([mol], 3, seed=5)[0]
    direct = etkdg_mmff_generator([mol], 3, seed=5)[0]
    raw = etkdg_generator([mol], 3, seed=5)[0]
    assert relaxed.GetNumConformers() == direct.GetNumConformers() == 3
    for got, want, before in zip(relaxed.GetConformers(), direct.GetConformers(), raw.GetConformers()):
        assert np.allclose(got.GetPositions(), want.GetPositions(), atol=1e-4)
        assert got.GetDoubleProp("mmff_energy") == pytest.approx(want.GetDoubleProp("mmff_energy"), abs=1e-4)
        assert not np.allclose(got.GetPositions(), before.GetPositions(), atol=1e-2)  # relaxation moved it
    with pytest.raises(ValueError, match="relax must be one of"):
        relaxed_generator(etkdg_generator, "uff")

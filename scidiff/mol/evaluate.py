"""Conformer-generation evaluation of any registered generator: metrics and the reference sets they are scored on.

Metrics (functions take RDKit mols with conformers, so scidiff and RDKit run through the same code):
- COV/AMR recall and precision over a delta sweep (GeoMol, Ganea et al. 2021; Torsional Diffusion, Jing et al.
  2022): K x L heavy-atom symmetry-aware aligned RMSDs (``rdMolAlign.GetBestRMS`` on ``RemoveHs`` copies);
- ground-state recovery: min heavy-atom RMSD of a generated set to the QM9 DFT geometry;
- PoseBusters ``mol`` checks (Buttenschoen et al. 2024), stereo preservation, optional GFN2-xTB strain, speed.
A molecule without output counts as 0 coverage / not recovered and is listed, never dropped. Generators are those of
``pipeline.GENERATORS`` (RDKit's baselines too), scored on their raw output, plus conformers read from a generated SDF.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import rdMolAlign

from scidiff.data import data_path

from .chem import Failure, MoleculeError, bonds_from_3d_match, display_name as _name, mol_from_smiles
from .forcefield import RELAXATIONS, relax_conformers, xtb_energy, xtb_relax
from .io import SDF_SUFFIXES, format_suffix, iter_inputs, read_conformers, read_qm9
from .pipeline import GenerateFn, run_generator
from .stereo import check_conformers

__all__ = [
    "clustered_generator",
    "relaxed_generator",
    "DELTAS_QM9",
    "DELTAS_DRUGS",
    "REFERENCE_SETS",
    "GEOM_DRUGS_TEST_SMILES",
    "rmsd_matrix",
    "coverage_metrics",
    "evaluate_coverage",
    "ground_state_rmsd",
    "evaluate_ground_state",
    "local_geometry_errors",
    "posebusters_checks",
    "stereo_preservation",
    "graph_preservation",
    "xtb_strain",
    "load_reference_set",
    "file_generator",
    "evaluate_method",
    "compare_table",
    "save_results",
]

log = logging.getLogger(__name__)

DELTAS_QM9 = (0.1, 0.25, 0.5, 0.75, 1.0, 1.25)  # Jing et al. 2022 sweep; 0.5 A is the headline for QM9
DELTAS_DRUGS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)  # 0.75 A is the headline for DRUGS
GROUND_STATE_THRESHOLDS = (0.05, 0.1, 0.25, 0.5)
# name -> (data-root relative file, RMSD thresholds); qm9-dft is ground-state recovery on the DFT test split
REFERENCE_SETS = {
    "qm9-dft": ("qm9/qm9_dft_test.npz", DELTAS_QM9),
    "geom-qm9": ("reference/geom_qm9_ref.sdf", DELTAS_QM9),
    "geom-drugs": ("reference/geom_drugs_ref.sdf", DELTAS_DRUGS),
}
# GeoMol's DRUGS test molecules (data-root relative; SMILES in column corrected_smiles): inputs of the drug benchmarks
GEOM_DRUGS_TEST_SMILES = "geom/DRUGS_test_smiles_corrected.csv"


# ----------------------------------------------------------------------------------------------- RMSD metrics


def _heavy(mol: Chem.Mol) -> Chem.Mol:
    """Heavy-atom copy for RMSD (GeoMol / Torsional Diffusion protocol)."""
    return Chem.RemoveHs(mol, sanitize=False)


def _best_rms(probe: Chem.Mol, ref: Chem.Mol, probe_id: int, ref_id: int) -> float:
    """Symmetry-aware aligned RMSD; NaN when the graphs do not match. Aligns a copy, never the caller's conformer."""
    try:
        return float(rdMolAlign.GetBestRMS(Chem.Mol(probe, confId=probe_id), ref, -1, ref_id))
    except RuntimeError as exc:  # "No sub-structure match found": a different molecule
        log.warning("RMSD failed (%s): %s", ref.GetProp("_Name") if ref.HasProp("_Name") else "?", exc)
        return float("nan")


def rmsd_matrix(references: Chem.Mol, generated: Chem.Mol) -> np.ndarray:
    """K x L heavy-atom symmetry-aware aligned RMSDs between reference and generated conformers (Ganea et al. 2021)."""
    refs, gens = _heavy(references), _heavy(generated)
    ref_ids = [c.GetId() for c in refs.GetConformers()]
    gen_ids = [c.GetId() for c in gens.GetConformers()]
    return np.array([[_best_rms(gens, refs, g, r) for g in gen_ids] for r in ref_ids], dtype=float).reshape(len(ref_ids), len(gen_ids))


def coverage_metrics(rmsd: np.ndarray, deltas: Sequence[float]) -> dict[str, Any]:
    """COV-R/AMR-R (over references) and COV-P/AMR-P (over generated) of one molecule's K x L matrix (Jing et al. 2022).

    No generated conformers: COV-R 0 at every delta and AMR-R NaN (precision undefined: NaN).
    """
    k, l = rmsd.shape
    rmsd = np.where(np.isnan(rmsd), np.inf, rmsd)  # a failed alignment covers nothing
    if l == 0 or k == 0:
        return {"cov_r": [0.0] * len(deltas), "amr_r": math.nan, "cov_p": [math.nan] * len(deltas), "amr_p": math.nan}
    min_r, min_p = rmsd.min(axis=1), rmsd.min(axis=0)
    finite_mean = lambda x: float(np.mean(x)) if np.isfinite(x).all() else math.nan  # noqa: E731
    return {
        "cov_r": [float(np.mean(min_r < d)) for d in deltas],
        "amr_r": finite_mean(min_r),
        "cov_p": [float(np.mean(min_p < d)) for d in deltas],
        "amr_p": finite_mean(min_p),
    }


def _stats(values: Sequence[float]) -> dict[str, float]:
    """Mean and median over molecules, ignoring NaN (AMR of a molecule without output); the count used is kept."""
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if not len(arr):
        return {"mean": math.nan, "median": math.nan, "n": 0}
    return {"mean": float(arr.mean()), "median": float(np.median(arr)), "n": int(len(arr))}


def _has_conformers(mol: Chem.Mol | None) -> bool:
    return mol is not None and mol.GetNumConformers() > 0


def evaluate_coverage(references: Sequence[Chem.Mol], generated: Sequence[Chem.Mol | None],
                      deltas: Sequence[float] = DELTAS_QM9) -> dict[str, Any]:
    """COV/AMR recall and precision over molecules (mean and median) with a delta sweep; missing outputs count as 0 coverage."""
    if len(references) != len(generated):
        raise ValueError(f"{len(references)} reference molecules but {len(generated)} generated entries")
    per_molecule = []
    for i, (ref, gen) in enumerate(zip(references, generated)):
        matrix = rmsd_matrix(ref, gen) if _has_conformers(gen) else np.zeros((ref.GetNumConformers(), 0))
        per_molecule.append({"name": _name(ref, i), "k": matrix.shape[0], "l": matrix.shape[1], **coverage_metrics(matrix, deltas)})
    result: dict[str, Any] = {"deltas": list(deltas), "n_molecules": len(per_molecule),
                              "missing": [m["name"] for m in per_molecule if m["l"] == 0]}
    for key in ("cov_r", "cov_p"):
        result[key] = {str(d): _stats([m[key][j] for m in per_molecule]) for j, d in enumerate(deltas)}
    for key in ("amr_r", "amr_p"):
        result[key] = _stats([m[key] for m in per_molecule])
    result["per_molecule"] = per_molecule
    return result


def ground_state_rmsd(dft: Chem.Mol, generated: Chem.Mol | None) -> float:
    """Min heavy-atom aligned RMSD between any generated conformer and the DFT ground state (inf without output)."""
    if not _has_conformers(generated):
        return math.inf
    matrix = rmsd_matrix(dft, generated)
    return float(np.nanmin(matrix)) if np.isfinite(matrix).any() else math.inf


def _bond_lengths_and_angles(mol: Chem.Mol, conf_id: int, heavy_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every bond length (Å) and bond angle (degrees) of one conformer, in the molecule's order; of heavy atoms only
    when ``heavy_only`` (the atoms the RMSD metrics score)."""
    pos = mol.GetConformer(conf_id).GetPositions()
    keep = (lambda *atoms: all(a.GetAtomicNum() > 1 for a in atoms)) if heavy_only else (lambda *atoms: True)
    bonds = np.array([[b.GetBeginAtomIdx(), b.GetEndAtomIdx()] for b in mol.GetBonds()
                      if keep(b.GetBeginAtom(), b.GetEndAtom())], dtype=int).reshape(-1, 2)
    angles = np.array([[a.GetIdx(), j.GetIdx(), k.GetIdx()] for j in mol.GetAtoms() for a in j.GetNeighbors()
                       for k in j.GetNeighbors() if a.GetIdx() < k.GetIdx() and keep(a, j, k)], dtype=int).reshape(-1, 3)
    lengths = np.linalg.norm(pos[bonds[:, 0]] - pos[bonds[:, 1]], axis=1)
    u, v = pos[angles[:, 0]] - pos[angles[:, 1]], pos[angles[:, 2]] - pos[angles[:, 1]]
    cos = (u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
    return lengths, np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def local_geometry_errors(dft: Sequence[Chem.Mol], generated: Sequence[Chem.Mol | None]) -> dict[str, Any]:
    """Median absolute bond-length (Å) and bond-angle (degrees) errors against DFT over every bond and angle of each
    molecule's conformer nearest the DFT geometry (local geometry, whichever conformer it is): heavy atoms (``bond``,
    ``angle``, as the RMSD metrics) and all atoms (``*_all``, hydrogens included)."""
    errors: dict[str, list[np.ndarray]] = {"bond": [], "angle": [], "bond_all": [], "angle_all": []}
    for ref, gen in zip(dft, generated):
        if not _has_conformers(gen):
            continue
        rmsds = rmsd_matrix(ref, gen)[0]
        if not np.isfinite(rmsds).any():
            continue
        best = [c.GetId() for c in gen.GetConformers()][int(np.nanargmin(rmsds))]
        for suffix, heavy_only in (("", True), ("_all", False)):
            (l_ref, a_ref) = _bond_lengths_and_angles(ref, ref.GetConformer().GetId(), heavy_only)
            (l_gen, a_gen) = _bond_lengths_and_angles(gen, best, heavy_only)
            errors["bond" + suffix].append(np.abs(l_gen - l_ref))
            errors["angle" + suffix].append(np.abs(a_gen - a_ref))
    median = lambda parts: float(np.median(np.concatenate(parts))) if parts and sum(map(len, parts)) else math.nan  # noqa: E731
    return {"bond_median_A": median(errors["bond"]), "angle_median_deg": median(errors["angle"]),
            "bond_all_median_A": median(errors["bond_all"]), "angle_all_median_deg": median(errors["angle_all"]),
            "n_molecules": len(errors["bond"])}


def evaluate_ground_state(dft: Sequence[Chem.Mol], generated: Sequence[Chem.Mol | None],
                          thresholds: Sequence[float] = GROUND_STATE_THRESHOLDS) -> dict[str, Any]:
    """Ground-state recovery on QM9 DFT geometries: median min RMSD and fraction below each threshold (missing = not recovered)."""
    if len(dft) != len(generated):
        raise ValueError(f"{len(dft)} DFT molecules but {len(generated)} generated entries")
    rmsds = [ground_state_rmsd(d, g) for d, g in zip(dft, generated)]
    arr = np.asarray(rmsds, dtype=float)
    return {
        "n_molecules": len(rmsds),
        "median": float(np.median(arr)) if len(arr) else math.nan,  # inf for missing ones: they rank last
        "mean_finite": float(arr[np.isfinite(arr)].mean()) if np.isfinite(arr).any() else math.nan,
        "fraction_below": {str(t): float(np.mean(arr < t)) if len(arr) else math.nan for t in thresholds},
        "missing": [_name(d, i) for i, d in enumerate(dft) if not math.isfinite(rmsds[i])],
        "per_molecule": {_name(d, i): rmsds[i] for i, d in enumerate(dft)},
    }


# ------------------------------------------------------------------------------------------ validity and energy


def _posebusters_config(energy: bool = True) -> dict[str, Any]:
    """PoseBusters' ``mol`` config with single-threaded energy-ratio ensembles (shared CPU, reproducible); without the
    energy-ratio module when not ``energy`` (its own ETKDG ensemble cannot be embedded for strained cages, and
    trying costs seconds per conformer)."""
    import yaml
    from posebusters import posebusters as pb_module

    with open(Path(pb_module.__file__).parent / "config" / "mol.yml", encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    for module in config["modules"]:
        if module["function"] == "energy_ratio":
            module.setdefault("parameters", {})["num_threads"] = 1
    if not energy:
        config["modules"] = [m for m in config["modules"] if m["function"] != "energy_ratio"]
    return config


def _single_conformers(mols: Sequence[Chem.Mol | None]) -> list[Chem.Mol]:
    """One single-conformer mol per generated conformer (PoseBusters checks the first conformer of each mol)."""
    out = []
    for i, mol in enumerate(mols):
        for conf in (mol.GetConformers() if mol is not None else ()):
            single = Chem.Mol(mol, confId=conf.GetId())
            single.GetConformer().SetId(0)  # PoseBusters' energy check asks for conformer 0
            single.SetProp("_Name", f"{_name(mol, i)}:{conf.GetId()}")
            out.append(single)
    return out


def posebusters_checks(generated: Sequence[Chem.Mol | None], energy: bool = True) -> dict[str, Any]:
    """PoseBusters ``mol`` checks on every conformer (Buttenschoen et al. 2024): pass rate (all checks) and per-check rates.

    A check that cannot run (NaN, e.g. no UFF parameters) counts as failed.
    """
    try:
        from posebusters import PoseBusters
    except ImportError as exc:
        raise ImportError("PoseBusters checks need the posebusters package: pip install posebusters") from exc

    singles = _single_conformers(generated)
    if not singles:
        return {"n_conformers": 0, "pass_rate": math.nan, "per_check": {}}
    with rdBase.BlockLogs():
        table = PoseBusters(config=_posebusters_config(energy), max_workers=0).bust(singles)
    checks = table.astype("boolean")
    passed = checks.fillna(False).astype(bool)
    # internal_energy is NaN when PoseBusters' own ETKDG ensemble cannot be embedded (strained cages): a check that
    # could not run, reported apart from one that failed
    lenient = checks.fillna({"internal_energy": True}).fillna(False).astype(bool) if "internal_energy" in checks \
        else passed
    return {"n_conformers": len(singles), "energy_check": energy, "pass_rate": float(passed.all(axis=1).mean()),
            "pass_rate_energy_unrunnable_ok": float(lenient.all(axis=1).mean()),
            "energy_unrunnable": int(checks["internal_energy"].isna().sum()) if "internal_energy" in checks else 0,
            "per_check": {column: float(passed[column].mean()) for column in passed.columns}}


def stereo_preservation(generated: Sequence[Chem.Mol | None], inputs: Sequence[Chem.Mol]) -> dict[str, Any]:
    """Fraction of conformers whose 3D-perceived centres and E/Z bonds match the input's, and of molecules with all right."""
    per_conf, per_mol, wrong = [], [], []
    for i, (gen, ref) in enumerate(zip(generated, inputs)):
        if not _has_conformers(gen):
            continue
        reports = check_conformers(gen, ref)
        per_conf += [r.ok for r in reports]
        per_mol.append(all(r.ok for r in reports))
        wrong += [f"{_name(ref, i)}: {r.describe()}" for r in reports if not r.ok]
    return {"conformer_rate": float(np.mean(per_conf)) if per_conf else math.nan,
            "molecule_rate": float(np.mean(per_mol)) if per_mol else math.nan, "wrong": wrong}


def graph_preservation(generated: Sequence[Chem.Mol | None], inputs: Sequence[Chem.Mol]) -> dict[str, Any]:
    """Fraction of conformers whose bonds re-perceived from 3D are exactly the input's (``chem.bonds_from_3d_match``)."""
    ok, wrong = [], []
    for i, gen in enumerate(generated):
        for conf in (gen.GetConformers() if _has_conformers(gen) else ()):
            ok.append(bonds_from_3d_match(gen, conf.GetId()))
            if not ok[-1]:
                wrong.append(f"{_name(inputs[i], i)}:{conf.GetId()}")
    return {"conformer_rate": float(np.mean(ok)) if ok else math.nan, "wrong": wrong}


def xtb_strain(generated: Sequence[Chem.Mol | None], steps: int = 100, max_conformers: int | None = None) -> dict[str, Any]:
    """GFN2-xTB strain E(conformer) - E(relaxed) in kcal/mol over conformers (relaxed on copies); mean and median."""
    strains = []
    for mol in generated:
        for conf in list(mol.GetConformers() if _has_conformers(mol) else ())[:max_conformers]:
            single = Chem.Mol(mol, confId=conf.GetId())
            before = xtb_energy(single)
            strains.append(before - xtb_relax(single, steps=steps))
    return {"n_conformers": len(strains), **_stats(strains)}


# ------------------------------------------------------------------------------------------- reference sets


def load_reference_set(reference: str, limit: int | None = None, smiles_column: str | None = None) -> dict[str, Any]:
    """Inputs and references of an evaluation set: {inputs, dft | references (neither for a SMILES table), deltas,
    skipped, label}."""
    if reference == "qm9-dft":
        built = read_qm9("test", limit=limit)
        return {"inputs": built.molecules, "dft": built.molecules, "deltas": DELTAS_QM9, "skipped": built.skipped,
                "label": "QM9 DFT test split (ground-state recovery)"}
    relative, deltas = REFERENCE_SETS.get(reference, (None, DELTAS_DRUGS if "drugs" in reference.lower() else DELTAS_QM9))
    path = data_path(relative) if relative else Path(reference)
    if not path.is_file():
        raise FileNotFoundError(f"no reference file at {path}")
    if format_suffix(path) not in SDF_SUFFIXES:  # a SMILES table: inputs only, scored for validity, stereo and speed
        records = list(itertools.islice(iter_inputs(path, smiles_column), limit))  # parse only the lines used
        return {"inputs": [r.mol for r in records if r.ok], "deltas": deltas,
                "skipped": [Failure(f"line {r.line} ({r.name})", r.failure.reason) for r in records if not r.ok],
                "label": f"{path.name} (SMILES only: validity, stereo and speed, no reference geometry)"}
    refs = read_conformers(path, group_by="mol_id")[:limit]
    inputs, kept, skipped = [], [], []
    for ref in refs:
        name = f"mol_id {ref.GetProp('mol_id')}" if ref.HasProp("mol_id") else ref.GetProp("_Name")
        try:
            inputs.append(mol_from_smiles(ref.GetProp("smiles"), name=name))
            kept.append(ref)
        except (MoleculeError, KeyError) as exc:
            skipped.append(Failure(name, str(exc)))
    return {"inputs": inputs, "references": kept, "deltas": deltas, "skipped": skipped,
            "label": f"{path.name} (xTB-refined RDKit ensembles, not GEOM/CREST)"}


def relaxed_generator(generate_fn: GenerateFn, relax: str) -> GenerateFn:
    """``generate_fn``'s conformers relaxed in place (``forcefield.relax_conformers``: 'mmff' or 'xtb'), as
    ``scidiff mol generate --relax`` does: scores a generator together with the force-field step a user adds."""
    if relax not in RELAXATIONS:
        raise ValueError(f"relax must be one of {', '.join(RELAXATIONS)}, got {relax!r}")

    def generate(mols: Sequence[Chem.Mol], n: int, seed: int = 0, **options: Any) -> list[Chem.Mol]:
        out = generate_fn(mols, n, seed, **options)
        for mol in out:
            if mol is not None:
                relax_conformers(mol, relax)
        return out

    return generate


def clustered_generator(generate_fn: GenerateFn, factor: int = 10) -> GenerateFn:
    """``generate_fn`` asked for ``factor`` x n conformers, clustered down to n: k-centre clustering by farthest-point
    selection (Gonzalez 1985) on heavy-atom aligned RMSD (RDKit's GetConformerRMSMatrix, not symmetry-aware: it is
    ~100 x cheaper than GetBestRMS and only picks the centres), started at the lowest ``mmff_energy`` conformer (the
    first when there is none). The "oversample, then prune" baseline of conformer benchmarks."""
    from rdkit.Chem import AllChem

    def generate(mols: Sequence[Chem.Mol], n: int, seed: int = 0, **options: Any) -> list[Chem.Mol]:
        out = []
        for mol in generate_fn(mols, factor * n, seed, **options):
            confs = list(mol.GetConformers())
            if len(confs) <= n:
                out.append(mol)
                continue
            heavy = _heavy(mol)
            condensed = AllChem.GetConformerRMSMatrix(heavy, prealigned=False)  # aligns the copy's conformers only
            size = len(confs)
            matrix = np.zeros((size, size))
            matrix[np.tril_indices(size, -1)] = condensed
            matrix = matrix + matrix.T
            energies = [c.GetDoubleProp("mmff_energy") if c.HasProp("mmff_energy") else 0.0 for c in confs]
            chosen = [int(np.argmin(energies))]
            nearest = matrix[chosen[0]].copy()
            while len(chosen) < n:
                chosen.append(int(np.argmax(nearest)))
                nearest = np.minimum(nearest, matrix[chosen[-1]])
            keep = {confs[i].GetId() for i in chosen}
            for conf in confs:
                if conf.GetId() not in keep:
                    mol.RemoveConformer(conf.GetId())
            out.append(mol)
        return out

    generate.__doc__ = f"{factor} x n conformers, clustered to n (k-centre on heavy-atom RMSD)"
    return generate


def file_generator(path: Path) -> GenerateFn:
    """A generator that serves conformers from a generated SDF, matched by canonical SMILES, in the input's atom order."""
    by_smiles: dict[str, Chem.Mol] = {}
    for mol in read_conformers(path, group_by="input_index"):
        key = mol.GetProp("smiles") if mol.HasProp("smiles") else Chem.MolToSmiles(Chem.RemoveHs(mol))
        by_smiles.setdefault(key, mol)

    def serve(mols: Sequence[Chem.Mol], n: int, seed: int = 0, **_: Any) -> list[Chem.Mol]:
        out = []
        for mol in mols:
            found = by_smiles.get(Chem.MolToSmiles(Chem.RemoveHs(mol)))
            match = found.GetSubstructMatch(mol) if found is not None else ()
            if not match:
                empty = Chem.Mol(mol)
                empty.RemoveAllConformers()
                out.append(empty)
                continue
            out.append(Chem.RenumberAtoms(found, list(match)))  # input atom order, for the stereo comparison
        return out

    return serve


# ------------------------------------------------------------------------------------------------- run + report


def evaluate_method(method: str, generate_fn: GenerateFn, inputs: Sequence[Chem.Mol], n: int | Sequence[int],
                    seed: int = 0, dft: Sequence[Chem.Mol] | None = None, references: Sequence[Chem.Mol] | None = None,
                    deltas: Sequence[float] = DELTAS_QM9, posebusters: bool = True, strain_steps: int = 0,
                    batch_size: int = 32, skipped: Sequence[Failure] = (), posebusters_limit: int | None = None,
                    strain_limit: int | None = None, strain_conformers: int | None = None,
                    posebusters_energy: bool = True, **options: Any) -> dict[str, Any]:
    """Generate for ``inputs`` and score: ground state (``dft``), coverage (``references``), PoseBusters, stereo, speed, strain.

    PoseBusters and strain (the slow checks) can be restricted to the first ``posebusters_limit`` / ``strain_limit``
    molecules (and ``strain_conformers`` conformers of each); the result records how many they covered."""
    timed = run_generator(generate_fn, inputs, n, seed, batch_size, **options)
    counts = [n] * len(inputs) if isinstance(n, int) else list(n)
    got = [m.GetNumConformers() if m is not None else 0 for m in timed.mols]
    result: dict[str, Any] = {
        "method": method, "seed": seed, "n_molecules": len(inputs),
        "conformers": timed.conformers, "wall_s": timed.wall_s, "cpu_s": timed.cpu_s,
        "conformers_per_s": timed.conformers / timed.wall_s if timed.wall_s else math.nan,
        "conformers_per_cpu_s": timed.conformers / timed.cpu_s if timed.cpu_s else math.nan,
        "no_output": [_name(m, i) for i, m in enumerate(inputs) if not _has_conformers(timed.mols[i])],
        # inputs that got every conformer asked for (the ">= 99 % of embeddable inputs get all n")
        "all_n_rate": float(np.mean([g >= c for g, c in zip(got, counts)])) if len(inputs) else math.nan,
        "short": [f"{_name(m, i)}: {got[i]}/{counts[i]}" for i, m in enumerate(inputs) if 0 < got[i] < counts[i]],
        "embedding_paths": _embedding_paths(timed.mols),
        "skipped_inputs": [f"{s.name}: {s.reason}" for s in skipped],
        "stereo": stereo_preservation(timed.mols, inputs),
        "graph": graph_preservation(timed.mols, inputs),
    }
    if dft is not None:
        result["ground_state"] = evaluate_ground_state(dft, timed.mols)
        result["local_geometry"] = local_geometry_errors(dft, timed.mols)
    if references is not None:
        result["coverage"] = evaluate_coverage(references, timed.mols, deltas)
    if posebusters:
        result["posebusters"] = {**posebusters_checks(timed.mols[:posebusters_limit], energy=posebusters_energy),
                                 "n_molecules": len(timed.mols[:posebusters_limit])}
    if strain_steps:
        result["xtb_strain"] = {**xtb_strain(timed.mols[:strain_limit], steps=strain_steps,
                                             max_conformers=strain_conformers),
                                "n_molecules": len(timed.mols[:strain_limit]), "steps": strain_steps}
    result["summary"] = _summary(result)
    return result


def _embedding_paths(mols: Sequence[Chem.Mol | None]) -> dict[str, int]:
    """How many conformers each seed path made (conformer properties ``embedding`` and ``seed_method``)."""
    paths: dict[str, int] = {}
    for mol in mols:
        for conf in (mol.GetConformers() if _has_conformers(mol) else ()):
            parts = [conf.GetProp(k) for k in ("seed_method", "embedding") if conf.HasProp(k)]
            key = "/".join(parts) or "model"
            paths[key] = paths.get(key, 0) + 1
    return paths


def _summary(result: Mapping[str, Any]) -> dict[str, float | int | str]:
    """The flat row that compare_table prints."""
    row: dict[str, Any] = {"method": result["method"], "mols": result["n_molecules"],
                           "confs": result["conformers"], "no output": len(result["no_output"]),
                           "all n": result["all_n_rate"]}
    if "ground_state" in result:
        gs = result["ground_state"]
        row["GS median A"] = gs["median"]
        row.update({f"GS <{t}": v for t, v in gs["fraction_below"].items()})
        row["bond err A"] = result["local_geometry"]["bond_median_A"]  # heavy atoms, as the RMSD
        row["angle err deg"] = result["local_geometry"]["angle_median_deg"]
        row["bond err (all) A"] = result["local_geometry"]["bond_all_median_A"]
    if "coverage" in result:
        cov = result["coverage"]
        # 0.75 Å for a DRUGS sweep (DELTAS_DRUGS holds 0.5 too, but not QM9's 0.1), 0.5 Å otherwise
        headline = str(0.75 if 0.75 in cov["deltas"] and 0.1 not in cov["deltas"] else 0.5)
        if headline in cov["cov_r"]:
            row[f"COV-R@{headline} mean/med"] = f"{cov['cov_r'][headline]['mean']:.3f}/{cov['cov_r'][headline]['median']:.3f}"
            row[f"COV-P@{headline} mean/med"] = f"{cov['cov_p'][headline]['mean']:.3f}/{cov['cov_p'][headline]['median']:.3f}"
        row["AMR-R mean/med"] = f"{cov['amr_r']['mean']:.3f}/{cov['amr_r']['median']:.3f}"
        row["AMR-P mean/med"] = f"{cov['amr_p']['mean']:.3f}/{cov['amr_p']['median']:.3f}"
    if "posebusters" in result:
        row["PB pass" if result["posebusters"].get("energy_check", True) else "PB pass (no energy)"] = \
            result["posebusters"]["pass_rate"]
        if result["posebusters"].get("energy_unrunnable"):
            row["PB pass (energy n/a ok)"] = result["posebusters"]["pass_rate_energy_unrunnable_ok"]
    row["stereo ok"] = result["stereo"]["conformer_rate"]
    row["graph ok"] = result["graph"]["conformer_rate"]
    if "xtb_strain" in result:
        row["xTB strain med"] = result["xtb_strain"]["median"]
    row["conf/s"] = result["conformers_per_s"]
    row["conf/cpu-s"] = result["conformers_per_cpu_s"]
    return row


def compare_table(results: Sequence[Mapping[str, Any]]) -> str:
    """One markdown table of the results' summary rows, side by side (columns: the union, in first-seen order)."""
    rows = [r["summary"] if "summary" in r else r for r in results]
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def save_results(path: str | Path, results: Any) -> Path:
    """Write results as JSON atomically (non-finite floats as null)."""
    from scidiff.commands import atomic_write

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    text = json.dumps(clean(results), indent=1)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))

"""Embedding and relaxation, the one place for both: ETKDGv3 conformers, MMFF94 and GFN2-xTB minimisation, xTB energies.

Torch-free, so conformer-building worker processes start fast. Every function works on an RDKit molecule's
conformers in place or on a copy it returns; coordinates are in Å, energies in kcal/mol.
"""

from __future__ import annotations

import logging

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import AllChem, rdMolAlign
from rdkit.Geometry import Point3D

__all__ = ["RELAXATIONS", "HARTREE_TO_KCAL", "EMBEDDING_PROP", "etkdg_embed", "etkdg_conformers", "core_match", "core_conformers",
           "mmff_relax", "xtb_energy", "xtb_relax", "relax_conformers"]

log = logging.getLogger(__name__)

RELAXATIONS = ("none", "mmff", "xtb")
HARTREE_TO_KCAL = 627.509474
BOHR_PER_ANGSTROM = 1.0 / 0.52917721092


EMBEDDING_PROP = "embedding"  # conformer property: which embedding path made it
# Embedding attempts for a molecule's first conformer before it counts as hard. RDKit's default is 10 x atoms per
# conformer, and on strained QM9 cages, where no attempt passes ETKDG's checks, that costs seconds per molecule. A
# molecule that passes the probe is embedded exactly as by one call for all n; one that fails it runs the rest of the
# cascade with this budget (seeding 2.82x faster on QM9 training molecules: benchmarks/mol_embedding_budget.py).
PROBE_ATTEMPTS = 30
# Embedding attempts per conformer in the strained-cage fallback. 2,000 placed 8 more conformers on 2 of the 1,895 QM9
# test molecules (gdb_67719: 4 conformers in 50 s of CPU) for 1.9x the fallback's time (132 vs 70 s on the 147 hard
# ones); on 2,858 QM9 training molecules the two differ in one molecule.
CAGE_MAX_ITERATIONS = 500
CAGE_ROUNDS = 3  # fallback attempts, each for the conformers still missing, with fresh seeds


def _etkdg_params(seed: int, coord_map: dict[int, Point3D] | None, max_attempts: int = 0,
                  random_coords: bool = False) -> AllChem.EmbedParameters:
    """ETKDGv3 parameters; ``max_attempts`` per conformer (0: RDKit's default, 10 x atoms)."""
    params = AllChem.ETKDGv3()
    if coord_map:
        params.SetCoordMap(coord_map)
    params.randomSeed = seed
    params.maxIterations = max_attempts
    params.useRandomCoords = random_coords
    # Conformer i gets seed + i: reproducible, and with a plain seed of 0 RDKit repeats one conformer N times.
    params.enableSequentialRandomSeeds = True
    params.numThreads = 1
    return params


def _label_embedding(mol: Chem.Mol, ids: list[int], path: str) -> None:
    for i in ids:
        mol.GetConformer(i).SetProp(EMBEDDING_PROP, path)


def _embed_cages(mol: Chem.Mol, missing: int, seed: int, coord_map: dict[int, Point3D] | None) -> list[int]:
    """Up to ``missing`` more conformers for a strained cage (bicyclo[1.1.0], fused 3- and 4-rings) that ETKDG cannot
    embed: random-coordinate starts with ``CAGE_MAX_ITERATIONS`` and without RDKit's tetrahedral-volume check, which
    rejects these centres' strongly distorted tetrahedra. Chirality still enters through the distance bounds, so each
    conformer's stereo is re-perceived from 3D against the input's tags: a fully inverted one is mirrored, any other
    wrong one dropped (and retried with new seeds, ``CAGE_ROUNDS`` attempts after a one-conformer probe that
    gives up on a molecule no start can place). Conformers are added to mol."""
    from .stereo import conformers_to_resample, fix_conformers, stereo_signature

    reference = stereo_signature(mol)
    kept: list[int] = []
    for round_ in range(CAGE_ROUNDS + 1):
        # Round 0 probes with one conformer: a molecule that cannot be placed at all costs one attempt, not n.
        want = 1 if round_ == 0 else missing - len(kept)
        if want <= 0:
            break
        work = Chem.Mol(mol)
        work.RemoveAllConformers()
        params = _etkdg_params(seed + 7919 * (round_ + 1), coord_map, CAGE_MAX_ITERATIONS, random_coords=True)
        params.enforceChirality = False
        params.ignoreSmoothingFailures = True
        if not list(AllChem.EmbedMultipleConfs(work, numConfs=want, params=params)):
            if round_ == 0:
                break
            continue
        bad = set(conformers_to_resample(fix_conformers(work, reference)))
        for conf in work.GetConformers():
            if conf.GetId() in bad:
                continue
            copy = Chem.Conformer(conf)
            copy.SetId(max((c.GetId() for c in mol.GetConformers()), default=-1) + 1)
            kept.append(mol.AddConformer(copy, assignId=False))
    return kept


def etkdg_embed(mol: Chem.Mol, n: int, seed: int = 0, coord_map: dict[int, Point3D] | None = None) -> list[int]:
    """Embed n ETKDGv3 conformers into mol in place (Riniker & Landrum 2015; Wang et al. 2020); returns their ids.

    ``coord_map`` (atom -> position) keeps those atoms' distances to each other as given (RDKit's coordinate map).
    When ETKDG's eigenvalue embedding gives fewer than n, random-coordinate starts are tried (with ``PROBE_ATTEMPTS``
    per conformer when the first conformer already failed that many); when those fall short
    too (strained cages), the ``_embed_cages`` fallback fills the rest. Each conformer's ``embedding`` property
    says which path made it: ``etkdg``, ``etkdg_random_coords`` or ``random_coords_cage``."""
    with rdBase.BlockLogs():
        ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=1, params=_etkdg_params(seed, coord_map, PROBE_ATTEMPTS)))
        budget = 0 if ids else PROBE_ATTEMPTS  # attempts per conformer for the rest of the cascade
        if ids and n > 1:  # conformer i has seed + i, so these n - 1 complete what one call for n would have made
            rest = _etkdg_params(seed + 1, coord_map)
            rest.clearConfs = False
            ids += list(AllChem.EmbedMultipleConfs(mol, numConfs=n - 1, params=rest))
        path = "etkdg"
        if len(ids) < n:  # random-coordinate starts rescue molecules where eigenvalue embedding fails
            first = Chem.Mol(mol)
            params = _etkdg_params(seed, coord_map, budget, random_coords=True)
            retry = list(AllChem.EmbedMultipleConfs(mol, numConfs=n, params=params))
            if len(retry) >= len(ids):
                ids, path = retry, "etkdg_random_coords"
            else:  # keep the eigenvalue embedding's conformers when it made more
                mol.RemoveAllConformers()
                for conf in first.GetConformers():
                    mol.AddConformer(Chem.Conformer(conf), assignId=False)
        _label_embedding(mol, ids, path)
        if len(ids) < n:
            cage = _embed_cages(mol, n - len(ids), seed, coord_map)
            _label_embedding(mol, cage, "random_coords_cage")
            ids += cage
    return ids


def mmff_relax(mol: Chem.Mol, max_iters: int = 2000, energy_prop: str = "mmff_energy") -> list[tuple[int, float]] | None:
    """MMFF94-minimise every conformer (Halgren 1996), energies (kcal/mol) in ``energy_prop``; None if unparameterised.

    Returns RDKit's (not_converged, energy) per conformer.
    """
    # MMFF set-up re-perceives aromaticity in place with its own model (2-pyridone loses its aromatic flags), which
    # would change the graph's features and break substructure matching: minimise a copy, copy coordinates back.
    work = Chem.Mol(mol)
    if work.GetNumConformers() == 0 or not AllChem.MMFFHasAllMoleculeParams(work):
        return None
    results = AllChem.MMFFOptimizeMoleculeConfs(work, maxIters=max_iters, numThreads=1)
    for conf, minimised, (_, energy) in zip(mol.GetConformers(), work.GetConformers(), results):
        conf.SetPositions(minimised.GetPositions())
        conf.SetDoubleProp(energy_prop, float(energy))
    return results


def etkdg_conformers(mol: Chem.Mol, n: int, seed: int = 0, mmff: bool = False, mmff_iters: int = 2000,
                     energy_prop: str = "mmff_energy") -> Chem.Mol:
    """n ETKDGv3 conformers of a prepared mol in a copy (same atom order), MMFF94-minimised when ``mmff``.

    Conformer i uses seed + i, so the result depends only on (mol, n, seed). A failure gives zero conformers and a
    ``generation_error`` property instead of an exception; unparameterised MMFF leaves the ETKDG geometries without
    ``energy_prop``.
    """
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    if not etkdg_embed(out, n, seed):
        out.SetProp("generation_error", "ETKDG could not embed any conformer")
        return out
    if mmff:
        mmff_relax(out, max_iters=mmff_iters, energy_prop=energy_prop)
    return out


def core_match(mol: Chem.Mol, core: Chem.Mol) -> list[tuple[int, int]]:
    """(atom of ``mol``, atom of ``core``) for the core's heavy atoms matched in mol (chirality respected); ValueError
    naming the molecule when the core is not a substructure of it."""
    query = Chem.RemoveHs(core)
    heavy = [a.GetIdx() for a in core.GetAtoms() if a.GetAtomicNum() > 1]  # RemoveHs keeps the heavy atoms' order
    match = mol.GetSubstructMatch(query, useChirality=True)
    if not match:
        name = mol.GetProp("_Name") if mol.HasProp("_Name") else Chem.MolToSmiles(Chem.RemoveHs(mol))
        raise ValueError(f"{name}: the core {Chem.MolToSmiles(query)} is not a substructure of it")
    return [(int(m), heavy[q]) for q, m in enumerate(match)]


def core_conformers(mol: Chem.Mol, core: Chem.Mol, n: int, seed: int = 0, mmff: bool = True,
                    mmff_iters: int = 2000) -> Chem.Mol:
    """n conformers of a prepared mol whose atoms matching ``core`` sit at the core's coordinates: ETKDGv3 with RDKit's
    coordinate map, each conformer superposed on the core by those atoms and the core placed exactly, then MMFF94
    with the core held fixed (a congeneric series' shared scaffold, as medicinal chemists align one).

    The matched atom ids go to the ``core_atoms`` property (comma-separated); a failure gives zero conformers and a
    ``generation_error`` property, as etkdg_conformers does."""
    pairs = core_match(mol, core)
    positions = core.GetConformer().GetPositions()
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    out.SetProp("core_atoms", ",".join(str(i) for i, _ in pairs))
    if not etkdg_embed(out, n, seed, {i: Point3D(*positions[j]) for i, j in pairs}):
        out.SetProp("generation_error", "ETKDG could not embed any conformer with the core's coordinates")
        return out
    core_atoms, core_positions = [i for i, _ in pairs], positions[[j for _, j in pairs]]
    for conf in out.GetConformers():
        rdMolAlign.AlignMol(out, core, prbCid=conf.GetId(), atomMap=pairs)
        xyz = conf.GetPositions()  # the embedding kept the core's shape to ~0.05 Å; put it exactly where the core is
        xyz[core_atoms] = core_positions
        conf.SetPositions(xyz)
    if mmff and AllChem.MMFFHasAllMoleculeParams(out):
        work = Chem.Mol(out)  # MMFF set-up re-perceives aromaticity in place (see mmff_relax)
        properties = AllChem.MMFFGetMoleculeProperties(work)
        for conf, minimised in zip(out.GetConformers(), work.GetConformers()):
            field = AllChem.MMFFGetMoleculeForceField(work, properties, confId=minimised.GetId())
            for i in core_atoms:
                field.AddFixedPoint(i)
            field.Minimize(maxIts=mmff_iters)
            conf.SetPositions(minimised.GetPositions())
            conf.SetDoubleProp("mmff_energy", float(field.CalcEnergy()))
    return out


def _xtb_calculator(mol: Chem.Mol, positions: np.ndarray):
    """A silent GFN2-xTB calculator (Bannwarth et al. 2019) from tblite; positions in Angstrom."""
    try:
        from tblite.interface import Calculator
    except ImportError as exc:
        raise ImportError("GFN2-xTB energies need the tblite package: pip install tblite") from exc

    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    calc = Calculator("GFN2-xTB", numbers, positions * BOHR_PER_ANGSTROM, charge=float(Chem.GetFormalCharge(mol)))
    calc.set("verbosity", 0)
    return calc


def xtb_energy(mol: Chem.Mol, conf_id: int = -1) -> float:
    """GFN2-xTB total energy of one conformer, kcal/mol."""
    calc = _xtb_calculator(mol, mol.GetConformer(conf_id).GetPositions())
    return float(calc.singlepoint().get("energy")) * HARTREE_TO_KCAL


def xtb_relax(mol: Chem.Mol, conf_id: int = -1, steps: int = 100, gtol: float = 5e-4) -> float:
    """L-BFGS minimisation of one conformer on the GFN2-xTB surface, in place; returns the final energy (kcal/mol).

    ``gtol`` in Hartree/Bohr; ``steps`` bounds the cost (a few steps already remove most strain).
    """
    from scipy.optimize import minimize

    conf = mol.GetConformer(conf_id)
    start = conf.GetPositions() * BOHR_PER_ANGSTROM
    calc = _xtb_calculator(mol, conf.GetPositions())

    def energy_and_gradient(x: np.ndarray) -> tuple[float, np.ndarray]:
        calc.update(positions=x.reshape(-1, 3))
        result = calc.singlepoint()
        return float(result.get("energy")), np.asarray(result.get("gradient")).ravel()

    fit = minimize(energy_and_gradient, start.ravel(), jac=True, method="L-BFGS-B",
                   options={"maxiter": steps, "gtol": gtol})
    for i, p in enumerate(fit.x.reshape(-1, 3) / BOHR_PER_ANGSTROM):
        conf.SetAtomPosition(i, p.tolist())
    return float(fit.fun) * HARTREE_TO_KCAL


def relax_conformers(mol: Chem.Mol, relax: str, xtb_steps: int = 200) -> None:
    """Relax every conformer in place: 'none', 'mmff' (MMFF94, skipped with a warning when unparameterised) or 'xtb'."""
    if relax not in RELAXATIONS:
        raise ValueError(f"relax must be one of {', '.join(RELAXATIONS)}, got {relax!r}")
    if relax == "none" or mol.GetNumConformers() == 0:
        return
    if relax == "mmff":
        if mmff_relax(mol) is None:
            log.warning("%s: no MMFF94 parameters, conformers left unrelaxed", mol.GetProp("_Name"))
    else:
        for conf in mol.GetConformers():
            conf.SetDoubleProp("xtb_energy", xtb_relax(mol, conf.GetId(), steps=xtb_steps))

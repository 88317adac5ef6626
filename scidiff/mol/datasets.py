"""Conformer data: ETKDG + MMFF ensembles built from SMILES, and QM9 DFT geometries read from the shared npz split.

Every builder returns the molecules it could make together with the ones it skipped and why; one bad
molecule never stops a batch.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import AllChem, rdDetermineBonds

from scidiff.data import data_path

from .chem import MoleculeError, mol_from_smiles, prepare_mol
from .stereo import check_stereo, stereo_signature

__all__ = ["Skipped", "Built", "embed_conformers", "build_conformers", "mol_from_xyz", "read_qm9",
           "write_sdf_conformers", "read_sdf_conformers"]

log = logging.getLogger(__name__)

QM9_SPLITS = ("train", "test")


@dataclass(frozen=True)
class Skipped:
    """A molecule a builder could not make, with the reason."""

    name: str
    reason: str


@dataclass
class Built:
    """Molecules (RDKit, explicit H, one or more conformers, ``_Name`` set) and the ones skipped."""

    molecules: list[Chem.Mol] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.molecules)} built, {len(self.skipped)} skipped"


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


def etkdg_embed(mol: Chem.Mol, n: int, seed: int = 0) -> list[int]:
    """Embed n ETKDGv3 conformers into mol in place (Riniker & Landrum 2015; Wang et al. 2020); returns their ids."""
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    # Conformer i gets seed + i: reproducible, and with a plain seed of 0 RDKit repeats one conformer N times.
    params.enableSequentialRandomSeeds = True
    params.numThreads = 1
    with rdBase.BlockLogs():
        ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=n, params=params))
        if len(ids) < n:  # random-coordinate starts rescue molecules where eigenvalue embedding fails
            mol.RemoveAllConformers()
            params.useRandomCoords = True
            ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=n, params=params))
    return ids


def embed_conformers(smiles: str, num_conformers: int = 5, seed: int = 0, mmff: bool = True,
                     name: str | None = None, mmff_iters: int = 2000) -> Chem.Mol:
    """ETKDGv3 conformers (Riniker & Landrum 2015; Wang et al. 2020), MMFF94-minimised (Halgren 1996), stereo-checked.

    Energies (kcal/mol) go to the conformer property ``energy``; conformers whose 3D stereo no longer matches
    the SMILES's specified centres and double bonds are dropped (unspecified ones are left as embedded).
    Raises MoleculeError when nothing usable is left.
    """
    if num_conformers < 1:
        raise ValueError(f"num_conformers must be >= 1, got {num_conformers}")
    mol = mol_from_smiles(smiles, name=name)
    label = mol.GetProp("_Name")
    reference = stereo_signature(mol)  # only specified centres/bonds: unspecified ones may come out either way
    ids = etkdg_embed(mol, num_conformers, seed)
    if not ids:
        raise MoleculeError(label, "ETKDG could not embed any conformer")
    if mmff:
        results = mmff_relax(mol, mmff_iters, energy_prop="energy")
        if results is None:
            raise MoleculeError(label, "MMFF94 has no parameters for some atom types (pass mmff=False to keep ETKDG geometries)")
        unconverged = sum(not_converged for not_converged, _ in results)
        if unconverged:
            log.debug("%s: %d conformers did not converge in %d MMFF iterations", label, unconverged, mmff_iters)
    else:
        for conf_id in ids:
            mol.GetConformer(conf_id).SetDoubleProp("energy", float("nan"))
    for conf_id in [c for c in ids if not check_stereo(mol, c, reference).ok]:
        mol.RemoveConformer(conf_id)
    if mol.GetNumConformers() == 0:
        raise MoleculeError(label, "every conformer lost the input stereo during embedding or minimisation")
    if mol.GetNumConformers() < len(ids):
        log.info("%s: dropped %d conformers whose 3D stereo differs from the input", label, len(ids) - mol.GetNumConformers())
    return mol


def _embed_job(job: tuple[str, str, int, int, bool]) -> tuple[str, Chem.Mol | None, list[float], str]:
    name, smiles, num_conformers, seed, mmff = job
    try:
        mol = embed_conformers(smiles, num_conformers, seed, mmff, name=name)
    except MoleculeError as exc:
        return name, None, [], exc.reason
    # Pickling drops properties (names, energies): send the energies alongside, the parent puts both back.
    return name, mol, [conf.GetDoubleProp("energy") for conf in mol.GetConformers()], ""


def _named(items: Iterable[str | tuple[str, str]]) -> list[tuple[str, str]]:
    return [(item, item) if isinstance(item, str) else (item[0], item[1]) for item in items]


def build_conformers(smiles: Sequence[str | tuple[str, str]], num_conformers: int = 5, seed: int = 0, mmff: bool = True,
                     processes: int | None = None) -> Built:
    """Conformer ensembles for many SMILES (or (name, SMILES) pairs) over a process pool; failures are logged and skipped."""
    jobs = [(name, smi, num_conformers, seed, mmff) for name, smi in _named(smiles)]
    processes = min(processes or os.cpu_count() or 1, max(len(jobs), 1))
    if processes == 1:
        results = [_embed_job(job) for job in jobs]
    else:
        # spawn: workers import only RDKit-side modules (fast) and never inherit torch's thread pools;
        # an executor, unlike Pool, fails loudly instead of respawning workers that die on start-up.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(processes, mp_context=context) as pool:
            results = list(pool.map(_embed_job, jobs, chunksize=max(1, len(jobs) // (4 * processes))))
    built = Built()
    for name, mol, energies, reason in results:
        if mol is None:
            log.warning("skipped %s: %s", name, reason)
            built.skipped.append(Skipped(name, reason))
            continue
        mol.SetProp("_Name", name)
        for conf, energy in zip(mol.GetConformers(), energies):
            conf.SetDoubleProp("energy", energy)
        built.molecules.append(mol)
    log.info("conformers: %s", built.summary())
    return built


def mol_from_xyz(atomic_numbers: Sequence[int], positions: np.ndarray, charge: int = 0, name: str | None = None) -> Chem.Mol:
    """Molecule from elements and 3D coordinates: bonds by xyz2mol (Kim & Kim 2015) via RDKit, stereo from 3D; raises MoleculeError."""
    label = name or "xyz molecule"
    positions = np.asarray(positions, dtype=np.float64)
    editable = Chem.RWMol()
    for z in atomic_numbers:
        editable.AddAtom(Chem.Atom(int(z)))
    conformer = Chem.Conformer(len(atomic_numbers))
    for i, p in enumerate(positions):
        conformer.SetAtomPosition(i, p.tolist())
    conformer.Set3D(True)
    editable.AddConformer(conformer, assignId=True)
    mol = editable.GetMol()
    mol.SetProp("_Name", label)
    try:
        with rdBase.BlockLogs():
            rdDetermineBonds.DetermineBonds(mol, charge=charge)
    except (ValueError, RuntimeError) as exc:
        raise MoleculeError(label, f"bond perception from 3D failed: {exc}") from None
    Chem.AssignStereochemistryFrom3D(mol)
    return prepare_mol(mol, name=label)


def read_qm9(split: str = "train", limit: int | None = None) -> Built:
    """QM9 DFT ground-state geometries (Ramakrishnan et al. 2014; EDM split) as RDKit molecules named gdb_<id>.

    Molecules whose bonds or charges cannot be perceived from the geometry (about 5 %, mostly zwitterions)
    are reported in ``skipped``. Raises FileNotFoundError naming the expected path when the data is absent.
    """
    if split not in QM9_SPLITS:
        raise ValueError(f"split must be one of {', '.join(QM9_SPLITS)}, got {split!r}")
    with np.load(data_path(f"qm9/qm9_dft_{split}.npz")) as arrays:
        num_atoms, charges, positions, index = (arrays[k] for k in ("num_atoms", "charges", "positions", "index"))
    count = len(num_atoms) if limit is None else min(limit, len(num_atoms))
    built = Built()
    for i in range(count):
        n, name = int(num_atoms[i]), f"gdb_{int(index[i])}"
        try:
            mol = mol_from_xyz(charges[i, :n], positions[i, :n], charge=0, name=name)
        except MoleculeError as exc:
            built.skipped.append(Skipped(name, exc.reason))
            continue
        mol.SetIntProp("gdb_id", int(index[i]))
        built.molecules.append(mol)
    log.info("qm9 %s: %s", split, built.summary())
    return built


def write_sdf_conformers(path: str | Path, molecules: Iterable[Chem.Mol]) -> Path:
    """Write every conformer as one SDF record (name, ``energy`` kept), atomically: a killed run leaves no partial file."""
    from scidiff.core.checkpoint import atomic_write  # torch-free module-level imports stay torch-free

    def write(tmp: str) -> None:
        with Chem.SDWriter(tmp) as writer:
            for mol in molecules:
                for conf in mol.GetConformers():
                    if conf.HasProp("energy"):
                        mol.SetDoubleProp("energy", conf.GetDoubleProp("energy"))
                    writer.write(mol, confId=conf.GetId())
    return atomic_write(path, write)


def _sdf_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.sdf"))
        if not files:
            raise FileNotFoundError(f"no .sdf files in {path}")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"no SDF file or folder at {path}")
    return [path]


def read_sdf_conformers(path: str | Path) -> Built:
    """Conformer sets from an SDF file or a folder of SDF shards: consecutive records with the same name and atoms become
    one molecule with several conformers. Hydrogens are kept; unreadable records are reported in ``skipped``."""
    built = Built()
    for file in _sdf_files(Path(path)):
        with rdBase.BlockLogs():
            records = list(Chem.SDMolSupplier(str(file), removeHs=False))
        previous_key = None
        for number, record in enumerate(records):
            if record is None:
                built.skipped.append(Skipped(f"{file.name}#{number}", "RDKit could not read the SDF record"))
                continue
            conf = record.GetConformer()
            if record.HasProp("energy"):
                conf.SetDoubleProp("energy", record.GetDoubleProp("energy"))
            key = (record.GetProp("_Name") if record.HasProp("_Name") else "", Chem.MolToSmiles(record))
            if key == previous_key:
                built.molecules[-1].AddConformer(conf, assignId=True)
                continue
            if not conf.Is3D():
                built.skipped.append(Skipped(key[0] or f"{file.name}#{number}", "the record has 2D coordinates"))
                continue
            Chem.AssignStereochemistryFrom3D(record)
            built.molecules.append(record)
            previous_key = key
    log.info("sdf %s: %s", path, built.summary())
    return built

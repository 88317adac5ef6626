"""Refinement pairs from all of QM9 (qm9pack): the leakage-free id lists on the real files, the symmetry-aware
seed -> DFT target mapping, pairs of real molecules and the sharded, resumable pair build."""

from __future__ import annotations

import importlib.metadata
import pickle

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import rdMolAlign

from scidiff.data import data_path
from scidiff.mol.build import (
    _collect,
    _pair_job,
    aligned_rmsd,
    automorphisms,
    build_pair_shards,
    canonical_nostereo,
    embed_conformers,
    geom_test_smiles,
    kabsch,
    make_pairs,
    qm9_pair_ids,
    qm9_reserved_gdb_ids,
    qm9_test_gdb_ids,
    symmetric_target,
)
from scidiff.mol.io import qm9pack_files, read_conformers, read_qm9pack, read_qm9pack_smiles
from scidiff.mol.stereo import check_stereo, stereo_signature

# Real QM9 molecules outside the reserved ids, with symmetric groups (a spiro ring pair, a bicyclic amine, a
# gem-dimethyl next to two stereocentres); 2002 is one of the ~5 % whose bonds cannot be perceived from the geometry.
SYMMETRIC_IDS = [2004, 2014, 2021, 2047]
UNPERCEIVABLE_ID = 2002


def _need_data(*relative: str) -> None:
    for path in relative:
        try:
            data_path(path)
        except FileNotFoundError as exc:
            pytest.skip(f"data not available: {exc}")


def _need_qm9pack() -> None:
    try:
        qm9pack_files()
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(str(exc))


def _rows(ids: list[int]) -> list:
    _need_qm9pack()
    rows = list(read_qm9pack(ids=ids))
    assert [r[0] for r in rows] == sorted(ids)
    return rows


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _pairwise(pos: np.ndarray) -> np.ndarray:
    return np.sort(np.linalg.norm(pos[:, None] - pos[None], axis=-1).ravel())


# ----------------------------------------------------------------------------------------- the atom mapping


def test_kabsch_recovers_a_rigid_motion_and_never_reflects():
    rng = np.random.default_rng(0)
    P = rng.normal(size=(7, 3))
    R, t = _rotation(rng), rng.normal(size=3)
    R_fit, t_fit = kabsch(P, P @ R.T + t)
    assert np.allclose(R_fit, R) and np.allclose(t_fit, t)
    R_mirror, _ = kabsch(P, P * np.array([-1.0, 1.0, 1.0]))  # the best proper rotation, not the mirror
    assert np.linalg.det(R_mirror) == pytest.approx(1.0)


# isobutyric acid (two methyls), toluene (ring flip, methyl), methane and propyne (heavy atoms on a line)
@pytest.mark.parametrize("smiles", ["CC(C)C(=O)O", "Cc1ccccc1", "C", "CC#C"])
def test_symmetric_target_undoes_an_automorphism_rotation_and_noise(smiles):
    rng = np.random.default_rng(1)
    mol = embed_conformers(smiles, num_conformers=1, seed=3, mmff=False)
    seed = mol.GetConformer().GetPositions()
    # A relabelling that no rotation undoes, moving heavy atoms (where there are symmetric ones) and hydrogens.
    heavy = np.array([a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1])
    hydrogens = np.setdiff1d(np.arange(mol.GetNumAtoms()), heavy)
    heavy_symmetric = len(automorphisms(mol)) > 1
    sigma = next(s for s in automorphisms(mol, hydrogens=True)
                 if (np.any(s[heavy] != heavy) or not heavy_symmetric) and np.any(s[hydrogens] != hydrogens)
                 and aligned_rmsd(seed[s], seed) > 0.3)
    target = np.empty_like(seed)
    target[sigma] = seed @ _rotation(rng).T + rng.normal(size=3) * 5  # atom sigma[i] of the target sits where i is
    target += rng.normal(scale=0.01 / np.sqrt(3), size=target.shape)  # 0.01 Å per atom
    assert aligned_rmsd(target, seed) > 0.3  # the identity mapping
    aligned = symmetric_target(mol, seed, target)
    assert np.sqrt(np.mean(np.sum((aligned - seed) ** 2, axis=1))) < 0.02  # in the seed's labels, on the seed
    assert np.allclose(_pairwise(aligned), _pairwise(target))  # a relabelling and a rigid motion only


# ----------------------------------------------------------------------------------------- pairs of real molecules


def test_make_pairs_targets_are_the_dft_geometry_aligned_with_the_best_symmetric_rmsd():
    relabelled = hydrogens = 0  # pairs whose heavy atoms / only whose hydrogens needed a non-identity mapping
    for gdb_id, numbers, positions in _rows(SYMMETRIC_IDS):
        mol = make_pairs(gdb_id, numbers, positions, k=2, seed=5)
        assert mol.GetProp("_Name") == f"gdb_{gdb_id}" and mol.GetIntProp("gdb_id") == gdb_id
        assert mol.GetNumConformers() in (2, 4) and len(automorphisms(mol)) > 1
        heavy = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
        reference = stereo_signature(mol)
        skeleton = Chem.RemoveAllHs(mol)
        for j in range(mol.GetNumConformers() // 2):
            seed, target = mol.GetConformer(2 * j), mol.GetConformer(2 * j + 1)
            assert (seed.GetDoubleProp("pair"), seed.GetDoubleProp("is_target")) == (j, 0)
            assert (target.GetDoubleProp("pair"), target.GetDoubleProp("is_target")) == (j, 1)
            assert np.isfinite(seed.GetDoubleProp("mmff_energy")) and not target.HasProp("mmff_energy")
            s, t = seed.GetPositions(), target.GetPositions()
            assert np.abs(_pairwise(t) - _pairwise(positions)).max() < 1e-4  # the DFT geometry, relabelled and moved
            best = rdMolAlign.GetBestRMS(Chem.Mol(skeleton, confId=2 * j), Chem.Mol(skeleton, confId=2 * j + 1))
            assert aligned_rmsd(t[heavy], s[heavy]) == pytest.approx(best, abs=1e-3)
            identity_heavy, identity_all = aligned_rmsd(positions[heavy], s[heavy]), aligned_rmsd(positions, s)
            assert aligned_rmsd(t, s) <= identity_all + 1e-6
            relabelled += identity_heavy > best + 0.5
            hydrogens += identity_heavy < best + 1e-6 and identity_all > aligned_rmsd(t, s) + 0.3
            assert check_stereo(mol, 2 * j, reference).ok and check_stereo(mol, 2 * j + 1, reference).ok
    assert relabelled >= 2 and hydrogens >= 2


# --------------------------------------------------------------------------------------- leakage-free id lists


@pytest.fixture(scope="module")
def pair_ids():
    _need_data("qm9/qm9_reserved_gdb_ids.txt", "qm9/qm9_dft_test.npz", "geom/QM9_test_smiles.csv")
    _need_qm9pack()
    return qm9_pair_ids()  # ~10 s: every qm9pack SMILES is parsed once


def test_reserved_ids_hold_every_dft_test_id():
    _need_data("qm9/qm9_reserved_gdb_ids.txt", "qm9/qm9_dft_test.npz")
    reserved = qm9_reserved_gdb_ids()
    assert len(reserved) == 10_000 and qm9_test_gdb_ids() <= reserved


def test_pair_ids_exclude_reserved_test_and_geom_molecules(pair_ids):
    training, validation, dropped = pair_ids
    excluded = qm9_reserved_gdb_ids() | qm9_test_gdb_ids()
    assert len(validation) == 300 and len(training) > 115_000
    assert not set(training) & excluded and not set(validation) & excluded and not set(training) & set(validation)
    assert training == sorted(training) and dropped["reserved_ids"] == 10_000 and dropped["geom_test"] > 800
    smiles = read_qm9pack_smiles()
    assert len(smiles) == 130_831 and sum(dropped.values()) + len(training) == len(smiles)
    # Stereo-free keys (the GEOM exclusion) of every validation id and of the first 5,000 training ids.
    keys = {i: canonical_nostereo(smiles[i]) for i in validation + training[:5000]}
    assert not set(keys.values()) & geom_test_smiles("QM9")
    assert not {keys[i] for i in validation} & {keys[i] for i in training[:5000]}


def test_qm9pack_coordinates_equal_the_npz_split():
    _need_data("qm9/qm9_dft_train.npz")
    with np.load(data_path("qm9/qm9_dft_train.npz")) as arrays:
        index, num_atoms, charges, positions = (arrays[k][:100] for k in ("index", "num_atoms", "charges", "positions"))
    rows = {g: (z, p) for g, z, p in _rows([int(i) for i in index])}
    for i, gdb_id in enumerate(index):
        numbers, pos = rows[int(gdb_id)]
        n = int(num_atoms[i])
        assert numbers == charges[i, :n].tolist()
        assert np.abs(pos - positions[i, :n]).max() < 1e-6  # the npz holds them in float32


def test_missing_qm9pack_and_reserved_file_name_the_fix(monkeypatch, tmp_path):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    with monkeypatch.context() as patch:
        patch.setattr(importlib.metadata, "distribution", not_installed)
        with pytest.raises(ImportError, match=r"pip install qm9pack \(or pip install scidiff\[qm9\]\)"):
            next(read_qm9pack())
    monkeypatch.setenv("SCIDIFF_DATA", str(tmp_path))
    qm9_reserved_gdb_ids.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="qm9_reserved_gdb_ids.txt"):
            qm9_reserved_gdb_ids()
    finally:
        qm9_reserved_gdb_ids.cache_clear()


# ------------------------------------------------------------------------------------------------ the build


def test_pair_shards_write_skip_resume_and_read_back(tmp_path):
    _need_data("geom/QM9_test_smiles.csv")
    rows = _rows([2000, 2001, UNPERCEIVABLE_ID] + SYMMETRIC_IDS[:3])
    out = tmp_path / "pairs"
    build = lambda rows, **kw: build_pair_shards(rows, out, num_conformers=2, shard_size=3, processes=1,  # noqa: E731
                                                 progress=None, **kw)
    report = build(rows, extra_files={"validation_ids.txt": "7\n"})
    assert (report.written, report.reused, report.molecules, report.skipped) == (2, 0, 5, 1)
    assert (out / "shard_00000.skipped.tsv").read_text().startswith(f"gdb_{UNPERCEIVABLE_ID}\tbond perception")
    assert (out / "items.tsv").read_text().splitlines()[0] == "gdb_2000\tC5H10O2"
    first = (out / "shard_00001.sdf").read_bytes()

    # A killed run leaves a shard without its skip list (written last): only that shard is rebuilt, identically.
    (out / "shard_00001.skipped.tsv").unlink()
    report = build(rows, extra_files={"validation_ids.txt": "7\n"})
    assert (report.written, report.reused) == (1, 1) and (out / "shard_00001.sdf").read_bytes() == first
    for changed in ({"rows": rows[:5]}, {"rows": rows, "extra_files": {"validation_ids.txt": "8\n"}}):
        with pytest.raises(ValueError, match="different molecules or settings"):
            build(changed.pop("rows"), **changed)

    molecules = read_conformers(out)
    assert [m.GetProp("_Name") for m in molecules] == [f"gdb_{g}" for g, _, _ in rows if g != UNPERCEIVABLE_ID]
    assert [m.GetIntProp("input_index") for m in molecules] == [0, 1, 3, 4, 5]  # place in the row list
    for mol in molecules:
        confs = list(mol.GetConformers())
        assert len(confs) in (2, 4)
        assert [(c.GetDoubleProp("pair"), c.GetDoubleProp("is_target")) for c in confs] == [
            (j // 2, j % 2) for j in range(len(confs))]
        assert all(c.HasProp("mmff_energy") for c in confs[::2])


def test_pair_props_survive_the_trip_from_a_worker():
    """Pickling (what a worker's result goes through) drops every RDKit property; the builder sends them beside."""
    _need_data("geom/QM9_test_smiles.csv")
    (gdb_id, numbers, positions), = _rows(SYMMETRIC_IDS[:1])
    local = _pair_job((gdb_id, numbers, positions, 2, 5))[1]
    built = _collect([pickle.loads(pickle.dumps(_pair_job((gdb_id, numbers, positions, 2, 5))))])
    (mol,) = built.molecules
    assert mol.GetProp("_Name") == f"gdb_{gdb_id}" and mol.GetIntProp("input_index") == 0
    for a, b in zip(local.GetConformers(), mol.GetConformers(), strict=True):
        assert a.GetPropsAsDict() == pytest.approx(b.GetPropsAsDict())
        assert np.allclose(a.GetPositions(), b.GetPositions(), atol=1e-5)

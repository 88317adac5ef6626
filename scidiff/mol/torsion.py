"""Torsion angles of a molecule: which bonds rotate, their dihedrals, rigid rotations of one side, and conformer
matching (Jing et al. 2022, Torsional Diffusion).

A torsion move rotates the atoms on one side of a bond rigidly about the bond axis, so bond lengths, bond angles,
ring geometry and every stereocentre (its neighbours move by a proper rotation about an axis through it) are kept;
only acyclic single bonds rotate, so E/Z double bonds keep their geometry too. Numpy only (torch-free, like chem).

Rotatable bonds are the acyclic single bonds whose two atoms each have a heavy-atom neighbour besides the other:
bonds to terminal atoms (CH3, OH, NH2, halogens, =O) only move hydrogens or nothing and are left out. Bonds to a
symmetric end group (CF3, CCl3, tert-butyl: turning it by 2 pi / n maps its heavy atoms onto themselves, so the torsion
is defined only modulo 2 pi / n) are kept by default, since they still move heavy atoms; ``skip_symmetric`` leaves
them out.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from rdkit import Chem

from .align import aligned_rmsd

__all__ = ["Bond", "rotatable_bonds", "torsion_atoms", "dihedral", "rotating_sides", "rotate_sides",
           "apply_torsion_changes", "set_torsions", "TorsionMatch", "match_torsions"]

Bond = tuple[int, int]
Graph = Chem.Mol | Sequence[Bond] | np.ndarray
"""A molecule, or its bonds as (i, j) atom pairs: what is needed to find each side of a bond."""


def _heavy_neighbours(atom: Chem.Atom, other: int) -> list[int]:
    return sorted(n.GetIdx() for n in atom.GetNeighbors() if n.GetAtomicNum() > 1 and n.GetIdx() != other)


def _symmetric_rotor(ranks: Sequence[int], pivot: Chem.Atom, other: int) -> bool:
    """Whether the pivot's substituents other than ``other`` are 2 or more equivalent terminal heavy atoms (F of CF3,
    CH3 of tert-butyl): turning them by 2 pi / n about the bond maps the heavy atoms onto themselves."""
    substituents = [n for n in pivot.GetNeighbors() if n.GetIdx() != other]
    terminal = all(n.GetAtomicNum() > 1 and not _heavy_neighbours(n, pivot.GetIdx()) for n in substituents)
    return len(substituents) >= 2 and terminal and len({ranks[n.GetIdx()] for n in substituents}) == 1


def rotatable_bonds(mol: Chem.Mol, skip_symmetric: bool = False) -> list[Bond]:
    """Acyclic single bonds (i, j), i < j, between heavy atoms that each have another heavy neighbour, in bond order.

    Double, triple and aromatic bonds never rotate (E/Z is kept); ring bonds cannot rotate without breaking the ring.
    With ``skip_symmetric`` also bonds to a symmetric end group of equivalent terminal heavy atoms (CF3, C(CH3)3).
    """
    ranks = list(Chem.CanonicalRankAtoms(mol, breakTies=False)) if skip_symmetric else []
    bonds = []
    for bond in mol.GetBonds():
        a, b = bond.GetBeginAtom(), bond.GetEndAtom()
        if bond.GetBondType() != Chem.BondType.SINGLE or bond.IsInRing():
            continue
        if a.GetAtomicNum() == 1 or b.GetAtomicNum() == 1:
            continue
        if not _heavy_neighbours(a, b.GetIdx()) or not _heavy_neighbours(b, a.GetIdx()):
            continue
        if skip_symmetric and (_symmetric_rotor(ranks, a, b.GetIdx()) or _symmetric_rotor(ranks, b, a.GetIdx())):
            continue
        bonds.append(tuple(sorted((a.GetIdx(), b.GetIdx()))))
    return bonds


def torsion_atoms(mol: Chem.Mol, bond: Bond) -> tuple[int, int, int, int]:
    """The dihedral (a, i, j, b) of bond (i, j): a and b the lowest-index heavy neighbours of i and j besides each
    other (any neighbour when there is no heavy one), so the choice depends only on the atom order."""
    i, j = bond
    ends = []
    for centre, other in ((i, j), (j, i)):
        atom = mol.GetAtomWithIdx(centre)
        candidates = _heavy_neighbours(atom, other) or sorted(n.GetIdx() for n in atom.GetNeighbors() if n.GetIdx() != other)
        if not candidates:
            raise ValueError(f"bond {bond}: atom {centre} has no neighbour besides atom {other}, so no dihedral")
        ends.append(candidates[0])
    return ends[0], i, j, ends[1]


def dihedral(pos: np.ndarray, quads: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    """Dihedral angles in (-pi, pi] of atom quadruples (T, 4) (or one (4,) quadruple), IUPAC sign as RDKit's
    GetDihedralRad: atan2(|b2| b1 . (b2 x b3), (b1 x b2) . (b2 x b3)) with b_k = p_k - p_(k-1)."""
    pos = np.asarray(pos, dtype=np.float64)
    q = np.asarray(quads, dtype=np.int64)
    p0, p1, p2, p3 = (pos[q[..., k]] for k in range(4))
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    y = np.linalg.norm(b2, axis=-1) * np.einsum("...k,...k->...", b1, n2)
    x = np.einsum("...k,...k->...", n1, n2)
    angle = np.arctan2(y, x)
    return np.where(angle <= -np.pi, angle + 2 * np.pi, angle)


def _edges(graph: Graph) -> np.ndarray:
    if isinstance(graph, Chem.Mol):
        return np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in graph.GetBonds()], dtype=np.int64).reshape(-1, 2)
    return np.asarray(graph, dtype=np.int64).reshape(-1, 2)


def rotating_sides(graph: Graph, bonds: Sequence[Bond], num_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """For each bond (i, j): a (T, num_atoms) mask of the atoms on its smaller side (hydrogens counted; on a tie the
    side of j), and the bond oriented (fixed end, moving end). Raises ValueError for a bond in a ring."""
    neighbours: list[list[int]] = [[] for _ in range(num_atoms)]
    for u, v in _edges(graph).tolist():
        neighbours[u].append(v)
        neighbours[v].append(u)
    masks = np.zeros((len(bonds), num_atoms), dtype=bool)
    axes = np.zeros((len(bonds), 2), dtype=np.int64)
    for t, (i, j) in enumerate(bonds):
        side = np.zeros(num_atoms, dtype=bool)  # the atoms reached from j without crossing (i, j)
        side[j] = True
        queue = deque([j])
        while queue:
            u = queue.popleft()
            for v in neighbours[u]:
                if u == j and v == i:
                    continue
                if v == i:
                    raise ValueError(f"bond ({i}, {j}) is in a ring: rotating about it would break the ring")
                if not side[v]:
                    side[v] = True
                    queue.append(v)
        if 2 * side.sum() <= num_atoms:
            masks[t], axes[t] = side, (i, j)
        else:
            masks[t], axes[t] = ~side, (j, i)
    return masks, axes


def rotate_sides(pos: np.ndarray, masks: np.ndarray, axes: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotate each mask's atoms about its axis (fixed -> moving end, current coordinates) by its angle (Rodrigues).

    Bonds are taken in turn; the result does not depend on the order, because a rotation about one bond moves the
    four atoms of another bond's dihedral rigidly (two of them lie on its axis when it is one of the dihedral's bonds).
    """
    pos = np.array(pos, dtype=np.float64, copy=True)
    for mask, (u, v), angle in zip(masks, axes, np.asarray(angles, dtype=np.float64)):
        origin = pos[u]
        k = pos[v] - origin
        k = k / np.linalg.norm(k)
        r = pos[mask] - origin
        cos, sin = np.cos(angle), np.sin(angle)
        # Rotation by the right-hand rule about u -> v; with a moving end v this raises dihedral (a, u, v, b) by angle.
        pos[mask] = origin + r * cos + np.cross(k, r) * sin + np.outer(r @ k, k) * (1 - cos)
    return pos


def apply_torsion_changes(pos: np.ndarray, graph: Graph, bonds: Sequence[Bond], deltas: Sequence[float]) -> np.ndarray:
    """New coordinates with the dihedral of each bond (i, j) raised by its delta (radians): the smaller side of the
    bond is rotated about the bond axis. Every dihedral (x, i, j, y) of the bond changes by exactly delta."""
    pos = np.asarray(pos, dtype=np.float64)
    deltas = np.asarray(deltas, dtype=np.float64)
    if deltas.shape != (len(bonds),):
        raise ValueError(f"apply_torsion_changes: {len(bonds)} bonds but deltas of shape {deltas.shape}")
    masks, axes = rotating_sides(graph, bonds, len(pos))
    # A dihedral seen along j -> i runs the other way: a side of i rotating about j -> i raises (x, i, j, y) by delta.
    return rotate_sides(pos, masks, axes, deltas)


def set_torsions(pos: np.ndarray, mol: Chem.Mol, bonds: Sequence[Bond], torsions: Sequence[float]) -> np.ndarray:
    """New coordinates whose dihedrals ``torsion_atoms(mol, bond)`` equal ``torsions`` (radians)."""
    quads = np.array([torsion_atoms(mol, bond) for bond in bonds], dtype=np.int64).reshape(-1, 4)
    change = np.asarray(torsions, dtype=np.float64) - dihedral(pos, quads)
    return apply_torsion_changes(pos, mol, bonds, np.angle(np.exp(1j * change)))


@dataclass(frozen=True)
class TorsionMatch:
    """A local structure with its torsions set to match a reference: the training example of torsional diffusion."""

    positions: np.ndarray  # (N, 3) the local structure after the torsion changes, all atoms
    torsions: np.ndarray  # (T,) dihedrals torsion_atoms(mol, bond) of the matched structure: the target torsions
    deltas: np.ndarray  # (T,) the changes applied to the local structure
    rmsd_before: float  # heavy-atom RMSD to the reference after alignment, before matching
    rmsd_after: float


def match_torsions(local_pos: np.ndarray, ref_pos: np.ndarray, mol: Chem.Mol, bonds: Sequence[Bond] | None = None, *,
                   seed: int = 0, popsize: int = 15, maxiter: int = 300, tol: float = 1e-6) -> TorsionMatch:
    """Conformer matching (Jing et al. 2022): torsion changes of the local structure (an ETKDG conformer) minimising
    the heavy-atom RMSD after Kabsch alignment to the reference, by differential evolution over the torus with an
    L-BFGS-B polish (scipy), started with the unchanged structure among its population. Deterministic for a seed.
    ``bonds`` defaults to ``rotatable_bonds(mol)``."""
    from scipy.optimize import differential_evolution  # only conformer matching needs scipy

    bonds = rotatable_bonds(mol) if bonds is None else list(bonds)
    local_pos, ref_pos = np.asarray(local_pos, dtype=np.float64), np.asarray(ref_pos, dtype=np.float64)
    heavy = np.array([a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1])
    before = aligned_rmsd(local_pos[heavy], ref_pos[heavy])
    quads = np.array([torsion_atoms(mol, bond) for bond in bonds], dtype=np.int64).reshape(-1, 4)
    if not bonds:
        return TorsionMatch(local_pos.copy(), np.zeros(0), np.zeros(0), before, before)
    masks, axes = rotating_sides(mol, bonds, len(local_pos))
    # Hydrogens do not enter the RMSD: optimise on the heavy atoms only (bond ends are heavy, so the axes survive).
    index_in_heavy = -np.ones(len(local_pos), dtype=np.int64)
    index_in_heavy[heavy] = np.arange(len(heavy))
    heavy_masks, heavy_axes = masks[:, heavy], index_in_heavy[axes]
    local_heavy, ref_heavy = local_pos[heavy], ref_pos[heavy]

    def rmsd(deltas: np.ndarray) -> float:
        return aligned_rmsd(rotate_sides(local_heavy, heavy_masks, heavy_axes, deltas), ref_heavy)

    result = differential_evolution(rmsd, [(-np.pi, np.pi)] * len(bonds), seed=seed, popsize=popsize, maxiter=maxiter,
                                    tol=tol, polish=True, x0=np.zeros(len(bonds)), updating="immediate", workers=1)
    deltas = np.angle(np.exp(1j * result.x)) if result.fun < before else np.zeros(len(bonds))
    matched = rotate_sides(local_pos, masks, axes, deltas)
    return TorsionMatch(matched, dihedral(matched, quads), deltas, before, aligned_rmsd(matched[heavy], ref_heavy))

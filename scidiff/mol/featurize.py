"""RDKit molecule -> graph for the conformer denoiser: atom and bond features, stereo encodings, hop-typed edges.

Stereo is encoded so that it means the same thing whatever the atom order of the input:
- tetrahedral centres: RDKit's CW/CCW tag is relative to the order of the atom's bonds, which a permutation-
  invariant network cannot see (``N[C@@H](C)C(=O)O`` and ``N[C@H](C(=O)O)C`` are the same L-alanine with
  opposite tags). The tag is therefore re-expressed relative to the neighbours sorted by their canonical
  (topological) rank, stored as a signed ``chirality`` (+1 CW, -1 CCW, 0 none), and every bond edge into a
  centre carries the rank slot of its sender, so the network knows which neighbour is which; ``stereo_index``
  lists each centre with its rank-ordered neighbours for the model's signed-volume feature. Centres whose
  neighbours tie in rank (ring cis/trans, pseudo-asymmetric centres) are flagged as relative stereo, unsigned;
- double bonds: every pair of substituents across an E/Z bond gets a cis or trans flag on its 3-hop edge.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike
from rdkit import Chem
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import scatter

from .chem import FORMAL_CHARGES, SUPPORTED_ELEMENTS, MoleculeError, check_elements, implicit_hydrogen_atoms
from .stereo import CIS, TETRAHEDRAL, TRANS, substituent_relation

__all__ = ["NODE_DIM", "EDGE_DIM", "MAX_HOPS", "featurize", "remove_mean"]

_HYB = Chem.rdchem.HybridizationType
HYBRIDISATIONS = (_HYB.S, _HYB.SP, _HYB.SP2, _HYB.SP3, _HYB.SP3D, _HYB.SP3D2)  # + one slot for anything else
RING_SIZES = (3, 4, 5, 6, 7, 8)
MAX_DEGREE = 6
MAX_HYDROGENS = 4
MAX_HOPS = 3  # bond, 2-hop (angle) and 3-hop (torsion) edges
_BT = Chem.rdchem.BondType
BOND_TYPES = (_BT.SINGLE, _BT.DOUBLE, _BT.TRIPLE, _BT.AROMATIC)
MAX_STEREO_NEIGHBOURS = 4

# element, charge, aromatic, hybridisation (+other), in ring, ring sizes, degree 0..6, H count 0..4, stereo flags
NODE_DIM = (len(SUPPORTED_ELEMENTS) + len(FORMAL_CHARGES) + 1 + len(HYBRIDISATIONS) + 1 + 1 + len(RING_SIZES)
            + MAX_DEGREE + 1 + MAX_HYDROGENS + 1 + 2)
# hop one-hot, bond type, conjugated, in ring, E/Z specified, cis pair, trans pair, sender's rank slot at a centre
EDGE_DIM = MAX_HOPS + len(BOND_TYPES) + 1 + 1 + 1 + 2 + MAX_STEREO_NEIGHBOURS


def _one_hot(value, choices, other: bool = False) -> list[float]:
    """One-hot of value over choices, with a trailing catch-all slot when ``other``."""
    hot = [float(value == c) for c in choices]
    return hot + [float(value not in choices)] if other else hot


def _permutation_parity(order: list[int]) -> int:
    """0 for an even permutation, 1 for an odd one (counts inversions; lists here have at most 6 entries)."""
    return sum(order[a] > order[b] for a in range(len(order)) for b in range(a + 1, len(order))) % 2


def _tetrahedral_stereo(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray, dict[tuple[int, int], int]]:
    """Per atom: the chirality sign relative to rank-sorted neighbours, a relative-stereo flag; per (centre, neighbour): rank slot."""
    n = mol.GetNumAtoms()
    sign, relative = np.zeros(n), np.zeros(n)
    slot: dict[tuple[int, int], int] = {}
    ranks = list(Chem.CanonicalRankAtoms(mol, breakTies=False, includeChirality=False))
    for atom in mol.GetAtoms():
        tag = atom.GetChiralTag()
        if tag == Chem.ChiralType.CHI_UNSPECIFIED:
            continue
        i = atom.GetIdx()
        # RDKit's tag refers to the neighbours in the order of the atom's bonds.
        neighbours = [bond.GetOtherAtomIdx(i) for bond in atom.GetBonds()]
        neighbour_ranks = [ranks[j] for j in neighbours]
        if tag not in TETRAHEDRAL or len(set(neighbour_ranks)) < len(neighbours) or not 3 <= len(neighbours) <= 4:
            relative[i] = 1.0
            continue
        order = sorted(range(len(neighbours)), key=neighbour_ranks.__getitem__)
        handed = 1.0 if tag == Chem.ChiralType.CHI_TETRAHEDRAL_CW else -1.0
        sign[i] = handed * (-1.0) ** _permutation_parity(order)
        for position, k in enumerate(order):
            slot[(i, neighbours[k])] = position
    return sign, relative, slot


def _stereo_index(sign: np.ndarray, slot: dict[tuple[int, int], int]) -> np.ndarray:
    """(5, C) rows centre, a, b, c, d per signed centre: the rank-ordered neighbours, or (centre, n0, n1, n2) for three.

    The model reads the handedness of the current geometry from the signed volume (b - a) . ((c - a) x (d - a)).
    """
    columns = []
    for centre in np.nonzero(sign)[0].tolist():
        ordered = sorted((k for c, k in slot if c == centre), key=lambda k: slot[(centre, k)])
        columns.append([centre] + ([centre] if len(ordered) == 3 else []) + ordered)
    return np.array(columns, dtype=np.int64).reshape(-1, 5).T


def _double_bond_pairs(mol: Chem.Mol) -> dict[tuple[int, int], int]:
    """For each stereo double bond b=c: +1 (cis) or -1 (trans) for every substituent pair (a on b, d on c), both directions."""
    pairs: dict[tuple[int, int], int] = {}
    for bond in mol.GetBonds():
        b, c = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        for a in (x.GetIdx() for x in bond.GetBeginAtom().GetNeighbors() if x.GetIdx() != c):
            for d in (x.GetIdx() for x in bond.GetEndAtom().GetNeighbors() if x.GetIdx() != b):
                if (relation := substituent_relation(bond, a, d)) is not None:
                    pairs[(a, d)] = pairs[(d, a)] = relation
    return pairs


def _atom_features(atom: Chem.Atom, relative_stereo: float, signed: bool) -> list[float]:
    ring = [float(atom.IsInRingSize(k)) for k in RING_SIZES]
    return (
        _one_hot(atom.GetSymbol(), SUPPORTED_ELEMENTS)
        + _one_hot(atom.GetFormalCharge(), FORMAL_CHARGES)
        + [float(atom.GetIsAromatic())]
        + _one_hot(atom.GetHybridization(), HYBRIDISATIONS, other=True)
        + [float(atom.IsInRing())] + ring
        + _one_hot(min(atom.GetDegree(), MAX_DEGREE), range(MAX_DEGREE + 1))
        + _one_hot(min(atom.GetTotalNumHs(includeNeighbors=True), MAX_HYDROGENS), range(MAX_HYDROGENS + 1))
        + [float(signed), relative_stereo]
    )


def _edge_features(mol: Chem.Mol, src: int, dst: int, hops: int, cis_trans: dict, slot: dict) -> list[float]:
    """Features of the directed edge src -> dst (dst receives the message)."""
    bond = mol.GetBondBetweenAtoms(src, dst) if hops == 1 else None
    bond_part = [0.0] * (len(BOND_TYPES) + 3)
    if bond is not None:
        bond_part = (_one_hot(bond.GetBondType(), BOND_TYPES)
                     + [float(bond.GetIsConjugated()), float(bond.IsInRing()), float(bond.GetStereo() in CIS + TRANS)])
    relation = cis_trans.get((src, dst), 0)
    rank_slot = slot.get((dst, src), -1)
    return (_one_hot(hops, range(1, MAX_HOPS + 1)) + bond_part + [float(relation == 1), float(relation == -1)]
            + _one_hot(rank_slot, range(MAX_STEREO_NEIGHBOURS)))


def featurize(mol: Chem.Mol, coords: ArrayLike | Tensor | None = None, name: str | None = None) -> Data:
    """Graph of a prepared molecule (``chem.prepare_mol``: sanitised, every H an atom, stereo perceived): x (N, NODE_DIM),
    chirality (N,), stereo_index (5, C), z, bond/2-hop/3-hop edges with edge_attr (E, EDGE_DIM), and pos (N, 3) when
    coords are given. Molecules are prepared once, where they enter (io's readers, the training sources)."""
    label = name or (mol.GetProp("_Name") if mol.HasProp("_Name") else Chem.MolToSmiles(mol))
    check_elements(mol, label)  # cheap, and an unknown element would otherwise get an all-zero one-hot
    implicit = implicit_hydrogen_atoms(mol)
    if implicit:
        raise MoleculeError(label, f"implicit hydrogens on atoms {implicit[:5]}: prepare the molecule first "
                                   "(scidiff.mol.chem.prepare_mol adds them as atoms)")
    n = mol.GetNumAtoms()
    sign, relative, slot = _tetrahedral_stereo(mol)
    cis_trans = _double_bond_pairs(mol)
    x = [_atom_features(atom, relative[atom.GetIdx()], sign[atom.GetIdx()] != 0) for atom in mol.GetAtoms()]
    hops = Chem.GetDistanceMatrix(mol)
    src, dst = np.nonzero((hops >= 1) & (hops <= MAX_HOPS))
    edge_attr = [_edge_features(mol, int(s), int(d), int(hops[s, d]), cis_trans, slot) for s, d in zip(src, dst)]
    data = Data(
        x=torch.tensor(x, dtype=torch.float32).reshape(n, NODE_DIM),
        chirality=torch.tensor(sign, dtype=torch.float32),
        z=torch.tensor([atom.GetAtomicNum() for atom in mol.GetAtoms()], dtype=torch.long),
        edge_index=torch.tensor(np.stack([src, dst]), dtype=torch.long).reshape(2, -1),
        edge_attr=torch.tensor(edge_attr, dtype=torch.float32).reshape(-1, EDGE_DIM),
        stereo_index=torch.from_numpy(_stereo_index(sign, slot)),
        num_nodes=n,
        name=label,
        smiles=Chem.MolToSmiles(Chem.RemoveHs(mol)),
    )
    if coords is not None:
        pos = torch.as_tensor(coords, dtype=torch.get_default_dtype())
        if pos.shape != (n, 3):
            raise MoleculeError(
                label, f"coords have shape {tuple(pos.shape)} but the molecule has {n} atoms with hydrogens (need ({n}, 3))"
            )
        data.pos = pos
    return data


def remove_mean(x: Tensor, batch: Tensor | None = None) -> Tensor:
    """Subtract each graph's centre of mass (unweighted mean over its nodes); the samplers' zero-CoM ``project`` hook."""
    if batch is None:
        return x - x.mean(dim=0, keepdim=True)
    return x - scatter(x, batch, dim=0, reduce="mean")[batch]

"""Stereo guarantee: re-perceive tetrahedral centres and E/Z double bonds from 3D and compare them with the input's.

A generated conformer must keep every stereocentre and double-bond geometry of the input graph (PoseBusters
checks; ET-Flow's post-hoc chirality flip, which fails when only some centres are inverted). The checks work on
the same RDKit molecule (same atom and bond order) as the input, so that:
- a tetrahedral centre is compared by its chiral tag (CW/CCW relative to the atom's bond order), which also
  covers ring cis/trans centres that have no CIP label; the CIP label is kept for the human-readable report;
- a double bond is compared as cis/trans of two canonical substituents (the lowest-index neighbour at each
  end), because RDKit labels bonds either E/Z (CIP ranks) or CIS/TRANS (relative to its stereo atoms).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from rdkit import Chem

__all__ = [
    "TETRAHEDRAL",
    "CIS",
    "TRANS",
    "substituent_relation",
    "StereoSignature",
    "StereoReport",
    "stereo_signature",
    "as_signature",
    "signature_from_3d",
    "check_stereo",
    "check_conformers",
    "is_achiral",
    "mirror_positions",
    "mirror_conformer",
    "fix_stereo",
    "fix_conformers",
    "conformers_to_resample",
    "remove_conformers",
]

TETRAHEDRAL = (Chem.ChiralType.CHI_TETRAHEDRAL_CW, Chem.ChiralType.CHI_TETRAHEDRAL_CCW)
CIS = (Chem.BondStereo.STEREOZ, Chem.BondStereo.STEREOCIS)
TRANS = (Chem.BondStereo.STEREOE, Chem.BondStereo.STEREOTRANS)


def substituent_relation(bond: Chem.Bond, a: int, d: int) -> int | None:
    """+1 when substituent ``a`` of the bond's begin atom and ``d`` of its end atom are cis, -1 when trans; None when
    the bond has no specified E/Z.

    Legacy perception sets E/Z relative to the stereo atoms (the CIP-highest substituents), and CIS/TRANS are
    relative to them too; each substituent that is not its end's stereo atom swaps cis and trans.
    """
    stereo = bond.GetStereo()
    atoms = list(bond.GetStereoAtoms())
    if stereo not in CIS + TRANS or len(atoms) != 2:
        return None
    ref_b, ref_c = atoms
    if bond.GetOwningMol().GetBondBetweenAtoms(ref_b, bond.GetBeginAtomIdx()) is None:
        ref_b, ref_c = ref_c, ref_b
    return (1 if stereo in CIS else -1) * (1 if a == ref_b else -1) * (1 if d == ref_c else -1)


@dataclass(frozen=True)
class StereoSignature:
    """Specified stereo of a molecule: centre atom -> chiral tag, double bond -> 'cis'/'trans' of canonical substituents."""

    centres: dict[int, str] = field(default_factory=dict)
    bonds: dict[int, str] = field(default_factory=dict)
    cip: dict[int, str] = field(default_factory=dict)  # R/S where RDKit assigns one, for reports only
    smiles: str = ""  # canonical isomeric SMILES without H: settles symmetry-equivalent labellings (meso, ring stereo)

    @property
    def empty(self) -> bool:
        return not self.centres and not self.bonds


@dataclass(frozen=True)
class StereoReport:
    """Which specified centres / double bonds of the reference a conformer gets wrong."""

    conf_id: int
    n_centres: int
    n_bonds: int
    inverted_centres: tuple[int, ...] = ()
    lost_centres: tuple[int, ...] = ()  # no tetrahedral geometry perceived (e.g. a flattened centre)
    flipped_bonds: tuple[int, ...] = ()
    lost_bonds: tuple[int, ...] = ()
    mirrored: bool = False  # the conformer was mirrored by fix_stereo before this check

    @property
    def ok(self) -> bool:
        return not (self.inverted_centres or self.lost_centres or self.flipped_bonds or self.lost_bonds)

    @property
    def mirrorable(self) -> bool:
        """Every centre inverted and every double bond right: the mirror image is the right stereoisomer."""
        return (self.n_centres > 0 and len(self.inverted_centres) == self.n_centres
                and not (self.lost_centres or self.flipped_bonds or self.lost_bonds))

    def describe(self) -> str:
        """One line for logs and skip reports."""
        if self.ok:
            return f"conformer {self.conf_id}: stereo ok" + (" (mirrored)" if self.mirrored else "")
        parts = [f"{label} {list(items)}" for label, items in (
            ("inverted centres (atoms)", self.inverted_centres), ("lost centres (atoms)", self.lost_centres),
            ("flipped E/Z bonds", self.flipped_bonds), ("lost E/Z bonds", self.lost_bonds)) if items]
        return f"conformer {self.conf_id}: wrong stereo: " + "; ".join(parts)


def _canonical_substituent(bond: Chem.Bond, end: Chem.Atom) -> int:
    """The lowest-index neighbour of ``end`` other than the bond partner: a label-independent reference atom."""
    partner = bond.GetOtherAtomIdx(end.GetIdx())
    return min(n.GetIdx() for n in end.GetNeighbors() if n.GetIdx() != partner)


def _bond_geometry(bond: Chem.Bond) -> str | None:
    """'cis'/'trans' of the two canonical substituents, from the bond's stereo label and stereo atoms."""
    begin, end = bond.GetBeginAtom(), bond.GetEndAtom()
    if begin.GetDegree() < 2 or end.GetDegree() < 2:
        return None
    relation = substituent_relation(bond, _canonical_substituent(bond, begin), _canonical_substituent(bond, end))
    return None if relation is None else "cis" if relation == 1 else "trans"


def stereo_signature(mol: Chem.Mol) -> StereoSignature:
    """The specified stereo of ``mol`` as given by its tags (the input's stereo), after RDKit's clean-up."""
    copy = Chem.Mol(mol)
    Chem.AssignStereochemistry(copy, cleanIt=True, force=True)
    return _read_signature(copy)


def signature_from_3d(mol: Chem.Mol, conf_id: int = -1) -> StereoSignature:
    """The stereo perceived from one conformer's coordinates (``AssignStereochemistryFrom3D`` on a copy)."""
    copy = Chem.Mol(mol, confId=conf_id)
    Chem.AssignStereochemistryFrom3D(copy, confId=-1, replaceExistingTags=True)
    return _read_signature(copy)


def _read_signature(mol: Chem.Mol) -> StereoSignature:
    centres = {a.GetIdx(): str(a.GetChiralTag()) for a in mol.GetAtoms() if a.GetChiralTag() in TETRAHEDRAL}
    cip = {a.GetIdx(): a.GetProp("_CIPCode") for a in mol.GetAtoms() if a.HasProp("_CIPCode")}
    bonds = {b.GetIdx(): geometry for b in mol.GetBonds() if (geometry := _bond_geometry(b)) is not None}
    return StereoSignature(centres, bonds, cip, Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False)))


def as_signature(reference: Chem.Mol | StereoSignature) -> StereoSignature:
    """A signature as is, or the stereo signature of a reference mol's tags."""
    return reference if isinstance(reference, StereoSignature) else stereo_signature(reference)


def check_stereo(mol: Chem.Mol, conf_id: int, reference: Chem.Mol | StereoSignature, mirrored: bool = False) -> StereoReport:
    """Compare conformer ``conf_id``'s 3D stereo with the reference's (same atom order): which centres/bonds mismatch."""
    ref = as_signature(reference)
    found = signature_from_3d(mol, conf_id)
    inverted = tuple(i for i, tag in ref.centres.items() if i in found.centres and found.centres[i] != tag)
    lost = tuple(i for i in ref.centres if i not in found.centres)
    flipped = tuple(i for i, g in ref.bonds.items() if i in found.bonds and found.bonds[i] != g)
    lost_bonds = tuple(i for i in ref.bonds if i not in found.bonds)
    if (inverted or lost or flipped or lost_bonds) and found.smiles == ref.smiles:
        # Same stereoisomer under another labelling: an automorphism (e.g. of a meso or ring-stereo molecule)
        # maps the conformer's tags onto the reference's, so nothing is wrong.
        inverted, lost, flipped, lost_bonds = (), (), (), ()
    return StereoReport(mol.GetConformer(conf_id).GetId(), len(ref.centres), len(ref.bonds),
                        inverted, lost, flipped, lost_bonds, mirrored)


def check_conformers(mol: Chem.Mol, reference: Chem.Mol | StereoSignature | None = None) -> list[StereoReport]:
    """A StereoReport for every conformer of ``mol`` (reference: the mol's own tags when None)."""
    ref = as_signature(mol if reference is None else reference)
    return [check_stereo(mol, conf.GetId(), ref) for conf in mol.GetConformers()]


def is_achiral(mol: Chem.Mol) -> bool:
    """No tetrahedral stereocentre, specified or potential (ring cis/trans included): the mirror image of any
    conformer is then a conformer of the same molecule, with the same atom labels and every E/Z kept."""
    return not any(info.type == Chem.StereoType.Atom_Tetrahedral for info in Chem.FindPotentialStereo(Chem.Mol(mol)))


def mirror_positions(positions: np.ndarray) -> np.ndarray:
    """Reflected coordinates (N, 3) through the yz plane (x -> -x): inverts every centre, keeps every E/Z."""
    return positions * np.array([-1.0, 1.0, 1.0])


def mirror_conformer(mol: Chem.Mol, conf_id: int) -> None:
    """Reflect a conformer in place (``mirror_positions``)."""
    conf = mol.GetConformer(conf_id)
    for i, p in enumerate(mirror_positions(conf.GetPositions())):
        conf.SetAtomPosition(i, p.tolist())


def fix_stereo(mol: Chem.Mol, conf_id: int, reference: Chem.Mol | StereoSignature) -> StereoReport:
    """Mirror the conformer when ALL centres are inverted and no E/Z bond is wrong, then recheck; else report as is.

    The ET-Flow post-hoc flip: the mirror image is the right stereoisomer only in that case; partial inversions
    are unfixable here and must be resampled (``conformers_to_resample``).
    """
    ref = as_signature(reference)
    report = check_stereo(mol, conf_id, ref)
    if report.ok or not report.mirrorable:
        return report
    mirror_conformer(mol, conf_id)
    return check_stereo(mol, conf_id, ref, mirrored=True)


def fix_conformers(mol: Chem.Mol, reference: Chem.Mol | StereoSignature | None = None) -> list[StereoReport]:
    """``fix_stereo`` on every conformer of ``mol`` (in place); the reports say which are still wrong."""
    ref = as_signature(mol if reference is None else reference)
    return [fix_stereo(mol, conf.GetId(), ref) for conf in mol.GetConformers()]


def conformers_to_resample(reports: Iterable[StereoReport]) -> list[int]:
    """Conformer ids whose stereo is still wrong (after any fix): the generator resamples these within its bound."""
    return [r.conf_id for r in reports if not r.ok]


def remove_conformers(mol: Chem.Mol, conf_ids: Sequence[int]) -> None:
    """Drop the given conformers from ``mol`` in place."""
    for conf_id in conf_ids:
        mol.RemoveConformer(int(conf_id))

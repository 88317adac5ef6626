"""RDKit primitives of the molecule pipeline: parse, sanitise, validate, add hydrogens, perceive stereo, perceive
bonds from 3D; and the one record of a failure (no torch here, so conformer-building worker processes start fast)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import rdDetermineBonds

__all__ = ["MoleculeError", "Failure", "Built", "SUPPORTED_ELEMENTS", "FORMAL_CHARGES", "mol_from_smiles",
           "prepare_mol", "check_elements", "implicit_hydrogen_atoms", "bonds_from_3d_match", "display_name",
           "mol_from_xyz"]

SUPPORTED_ELEMENTS = ("H", "B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "Br", "I")
FORMAL_CHARGES = (-2, -1, 0, 1, 2)


class MoleculeError(ValueError):
    """A molecule the featuriser cannot represent; names the molecule and the reason."""

    def __init__(self, molecule: str, reason: str):
        super().__init__(f"molecule {molecule!r}: {reason}")
        self.molecule = molecule
        self.reason = reason


@dataclass(frozen=True)
class Failure:
    """Why an input, or one conformer of it, gave nothing: its name, the reason and where it was.

    The one failure record of scidiff.mol: bad input lines, molecules a builder skipped, generation failures and
    conformers left out all use it. Reasons about input lines start with their location ("line 5: ...").
    """

    name: str
    reason: str
    index: int | None = None  # 0-based position in the input
    line: int | None = None  # 1-based file line (first line of an SDF record)
    conf_id: int | None = None  # the conformer, when only one conformer failed

    def describe(self) -> str:
        """One line for logs and reports: 'input 4 (bad): line 5: bad SMILES ...'."""
        where = f"input {self.index} ({self.name})" if self.index is not None else self.name
        conformer = "" if self.conf_id is None else f" conformer {self.conf_id}"
        return f"{where}{conformer}: {self.reason}"


@dataclass
class Built:
    """Molecules (RDKit, explicit H, one or more conformers, ``_Name`` set) and the ones that failed."""

    molecules: list[Chem.Mol] = field(default_factory=list)
    skipped: list[Failure] = field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.molecules)} built, {len(self.skipped)} skipped"


def _label(mol: Chem.Mol, name: str | None) -> str:
    if name:
        return name
    if mol.HasProp("_Name") and mol.GetProp("_Name").strip():
        return mol.GetProp("_Name").strip()
    try:
        return Chem.MolToSmiles(mol) if mol.GetNumAtoms() else "<empty>"
    except RuntimeError:
        return "<unnamed molecule>"


def _log_reason(messages: str) -> str:
    """The first RDKit log line without its timestamp."""
    for line in messages.splitlines():
        text = line.split("] ", 1)[-1].strip()
        if text:
            return text
    return "no reason given by RDKit"


def mol_from_smiles(smiles: str, name: str | None = None) -> Chem.Mol:
    """Parse, sanitise and validate a SMILES, add explicit hydrogens and perceive stereo; raises MoleculeError."""
    label = name or smiles
    with rdBase.BlockLogs(), rdBase.CaptureErrorLog() as log:
        mol = Chem.MolFromSmiles(smiles, sanitize=False)
    if mol is None:
        raise MoleculeError(label, f"could not parse SMILES ({_log_reason(log.messages)})")
    return prepare_mol(mol, name=label)


def check_elements(mol: Chem.Mol, label: str) -> None:
    """Raise MoleculeError for an empty molecule or an element the featuriser has no slot for."""
    if mol.GetNumAtoms() == 0:
        raise MoleculeError(label, "no atoms")
    for atom in mol.GetAtoms():
        if atom.GetSymbol() not in SUPPORTED_ELEMENTS:
            raise MoleculeError(
                label, f"unsupported element {atom.GetSymbol()} (atom {atom.GetIdx()}); supported: {', '.join(SUPPORTED_ELEMENTS)}"
            )


def _check_sanitised(mol: Chem.Mol, label: str) -> None:
    for atom in mol.GetAtoms():
        if atom.GetFormalCharge() not in FORMAL_CHARGES:
            raise MoleculeError(
                label, f"formal charge {atom.GetFormalCharge():+d} on {atom.GetSymbol()} (atom {atom.GetIdx()}) outside -2..+2"
            )
    for atom in mol.GetAtoms():
        if atom.GetNumRadicalElectrons():
            raise MoleculeError(
                label, f"radical: {atom.GetNumRadicalElectrons()} unpaired electron(s) on {atom.GetSymbol()} (atom {atom.GetIdx()})"
            )
    fragments = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    if len(fragments) > 1:
        smiles = ".".join(Chem.MolToSmiles(Chem.RemoveHs(f, sanitize=False)) for f in fragments)
        raise MoleculeError(label, f"{len(fragments)} disconnected fragments ({smiles}); pass one molecule, e.g. the largest fragment")


def prepare_mol(mol: Chem.Mol, name: str | None = None) -> Chem.Mol:
    """A sanitised, validated copy with explicit hydrogens (placed in 3D when it has a conformer), stereo perceived, _Name set."""
    label = _label(mol, name)
    check_elements(mol, label)
    mol = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(mol)
    except Chem.rdchem.MolSanitizeException as exc:
        raise MoleculeError(label, f"sanitisation failed: {exc}") from None
    _check_sanitised(mol, label)
    if any(atom.GetTotalNumHs() for atom in mol.GetAtoms()):
        mol = Chem.AddHs(mol, addCoords=mol.GetNumConformers() > 0)
        Chem.SanitizeMol(mol)  # perceive the new H atoms too (hybridisation S): the graph features read them
    Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
    mol.SetProp("_Name", label)
    return mol


def implicit_hydrogen_atoms(mol: Chem.Mol) -> list[int]:
    """Atoms that carry hydrogens not present as atoms: conformers and graphs need every H as an atom."""
    return [a.GetIdx() for a in mol.GetAtoms() if a.GetTotalNumHs(includeNeighbors=False)]


def bonds_from_3d_match(mol: Chem.Mol, conf_id: int = -1) -> bool:
    """Whether the bonds perceived from one conformer's coordinates by covalent radii (RDKit's
    ``DetermineConnectivity``, as a user re-reading an XYZ file gets them) are exactly the molecule's bonds."""
    bonds = {frozenset((b.GetBeginAtomIdx(), b.GetEndAtomIdx())) for b in mol.GetBonds()}
    xyz = Chem.RWMol(Chem.Mol(mol, confId=conf_id))
    for bond in list(xyz.GetBonds()):
        xyz.RemoveBond(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx())
    rdDetermineBonds.DetermineConnectivity(xyz)
    return {frozenset((b.GetBeginAtomIdx(), b.GetEndAtomIdx())) for b in xyz.GetBonds()} == bonds


def display_name(mol: Chem.Mol | None, index: int) -> str:
    """A molecule's ``_Name``, else mol<index> (for reports)."""
    return mol.GetProp("_Name") if mol is not None and mol.HasProp("_Name") else f"mol{index}"


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

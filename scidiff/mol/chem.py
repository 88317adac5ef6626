"""RDKit side of the molecule pipeline: parse, sanitise, validate, add hydrogens, perceive stereo (no torch here,
so conformer-building worker processes start fast)."""

from __future__ import annotations

from rdkit import Chem, rdBase

__all__ = ["MoleculeError", "SUPPORTED_ELEMENTS", "FORMAL_CHARGES", "mol_from_smiles", "prepare_mol"]

SUPPORTED_ELEMENTS = ("H", "B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "Br", "I")
FORMAL_CHARGES = (-2, -1, 0, 1, 2)


class MoleculeError(ValueError):
    """A molecule the featuriser cannot represent; names the molecule and the reason."""

    def __init__(self, molecule: str, reason: str):
        super().__init__(f"molecule {molecule!r}: {reason}")
        self.molecule = molecule
        self.reason = reason


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


def _check_elements(mol: Chem.Mol, label: str) -> None:
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
    _check_elements(mol, label)
    mol = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(mol)
    except Chem.rdchem.MolSanitizeException as exc:
        raise MoleculeError(label, f"sanitisation failed: {exc}") from None
    _check_sanitised(mol, label)
    if any(atom.GetTotalNumHs() for atom in mol.GetAtoms()):
        mol = Chem.AddHs(mol, addCoords=mol.GetNumConformers() > 0)
    Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
    mol.SetProp("_Name", label)
    return mol

"""Conformer-generation input and output: SMILES / .smi / .csv / .sdf records in, one SDF record per conformer out.

Inputs become ``InputRecord``s in input order; a bad line is a record with an error message naming its 1-based file
line and the reason, so one bad molecule never stops a run. Output is written incrementally to ``OUT.partial``
(flushed after each molecule) and renamed onto ``OUT`` only when complete: readers never see a truncated ``OUT``,
memory stays flat on large inputs, and a run that dies half-way leaves every conformer it had generated in
``OUT.partial``. Every conformer is stereo-checked against its input before it is written; wrong ones are refused.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from rdkit import Chem, rdBase

from .chem import MoleculeError, mol_from_smiles, prepare_mol
from .stereo import StereoSignature, as_signature, check_stereo

__all__ = [
    "InputRecord",
    "ConformerRecord",
    "Rejected",
    "WriteReport",
    "ConformerWriter",
    "SMILES_COLUMNS",
    "ID_COLUMNS",
    "read_inputs",
    "iter_inputs",
    "record_from_smiles",
    "record_from_mol",
    "write_conformers",
    "read_conformers",
    "format_suffix",
    "SDF_SUFFIXES",
]

log = logging.getLogger(__name__)

SMILES_COLUMNS = ("smiles", "smi", "canonical_smiles", "isomeric_smiles", "corrected_smiles")
ID_COLUMNS = ("id", "name", "title", "identifier", "mol_id", "molecule_id", "compound_id", "gdb_id", "chembl_id", "zinc_id")
SMILES_SUFFIXES = (".smi", ".smiles", ".txt", ".csv", ".tsv")
SDF_SUFFIXES = (".sdf", ".sd", ".mol")


@dataclass(frozen=True)
class InputRecord:
    """One input molecule: 0-based position in the input, identifier, prepared mol (explicit H) or the error."""

    index: int
    name: str
    mol: Chem.Mol | None
    error: str | None = None
    line: int | None = None  # 1-based file line (the first line of an SDF record); None for a SMILES argument
    smiles: str | None = None  # the SMILES as written in the input, when there was one

    @property
    def ok(self) -> bool:
        return self.mol is not None


@dataclass
class ConformerRecord:
    """Generated conformers of one input: its index and name, the mol (input atom order) and the stereo reference."""

    index: int
    name: str
    mol: Chem.Mol
    reference: Chem.Mol | StereoSignature | None = None  # the input mol; None: the mol's own stereo tags


@dataclass(frozen=True)
class Rejected:
    """A conformer (or a whole molecule when conf_id is None) the writer refused, with the reason."""

    index: int
    name: str
    conf_id: int | None
    reason: str


@dataclass
class WriteReport:
    """What a writer wrote: conformers and molecules written, and everything it refused."""

    conformers: int = 0
    molecules: int = 0
    rejected: list[Rejected] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------- input


def _parse_reason(reason: str, smiles: str) -> str:
    """MoleculeError reason -> the user-facing form: "bad SMILES 'C1CC' (unclosed ring)"."""
    match = re.match(r"could not parse SMILES \((.*)\)$", reason, re.S)
    if not match:
        return reason
    detail = re.sub(r"^SMILES Parse Error:\s*", "", match.group(1))
    detail = re.sub(r"\s+(for input|while parsing):.*$", "", detail, flags=re.S).strip()
    return f"bad SMILES {smiles!r} ({detail or 'syntax error'})"


def record_from_smiles(index: int, smiles: str, name: str | None, where: str, line: int | None) -> InputRecord:
    """The input record of one SMILES; a parse or validation failure becomes the record's error, prefixed by ``where``."""
    label = name or smiles
    try:
        with rdBase.BlockLogs():  # the reason goes into the record; RDKit's own log lines would only repeat it
            mol = mol_from_smiles(smiles, name=label)
    except MoleculeError as exc:
        return InputRecord(index, label, None, f"{where}: {_parse_reason(exc.reason, smiles)}", line, smiles)
    return InputRecord(index, label, mol, None, line, smiles)


def _open_text(path: Path) -> io.TextIOBase:
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path, newline="")


def format_suffix(path: Path) -> str:
    """The format suffix, looking through a trailing .gz."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _split(line: str, delimiter: str | None, maxsplit: int = -1) -> list[str]:
    """Fields of a line: csv quoting for comma/tab, whitespace runs otherwise."""
    if delimiter is None:
        return [f.strip() for f in line.strip().split(None, maxsplit)]
    return [f.strip() for f in next(csv.reader([line], delimiter=delimiter))]


def _delimiter(first_line: str, suffix: str) -> str | None:
    """Tab, comma or whitespace, from the first data line; SMILES never contain any of them."""
    if "\t" in first_line or suffix == ".tsv":
        return "\t"
    if "," in first_line:
        return ","
    return None


def _header_columns(fields: list[str], smiles_column: str | None, id_column: str | None) -> tuple[int, int | None] | None:
    """(smiles, id) column positions when ``fields`` is a header row, else None."""
    lowered = [f.lower() for f in fields]
    wanted = [smiles_column.lower()] if smiles_column else list(SMILES_COLUMNS)
    smiles_at = next((lowered.index(c) for c in wanted if c in lowered), None)
    if smiles_at is None:
        return None
    ids = [id_column.lower()] if id_column else list(ID_COLUMNS)
    id_at = next((lowered.index(c) for c in ids if c in lowered), None)
    if id_at is None and id_column:
        raise ValueError(f"id column {id_column!r} not in header {fields}")
    return smiles_at, id_at


def _iter_smiles_file(path: Path, smiles_column: str | None, id_column: str | None) -> Iterator[InputRecord]:
    """Records of a SMILES table: 'SMILES [id]' per line (space, tab or comma), optional header, '#' comments."""
    suffix = format_suffix(path)
    index, delimiter, columns = 0, None, None
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if columns is None:
                delimiter = _delimiter(line, suffix)
                header = _header_columns(_split(line, delimiter), smiles_column, id_column)
                if header is not None:
                    columns = header
                    continue
                if smiles_column or id_column:
                    raise ValueError(f"{path}: --smiles-column/--id-column given but line {line_no} is not a header")
                columns = (0, 1)
            smiles_at, id_at = columns
            # 'SMILES name with spaces' in a headerless .smi: everything after the SMILES is the id
            fields = _split(line, delimiter, 1 if (delimiter is None and columns == (0, 1)) else -1)
            smiles = fields[smiles_at] if smiles_at < len(fields) else ""
            name = fields[id_at] if id_at is not None and id_at < len(fields) and fields[id_at] else None
            if not smiles:
                yield InputRecord(index, name or f"line {line_no}", None, f"line {line_no}: no SMILES in column {smiles_at + 1}", line_no)
            else:
                yield record_from_smiles(index, smiles, name, f"line {line_no}", line_no)
            index += 1


def _sdf_record_lines(path: Path) -> list[int]:
    """1-based first line of every SDF record (records end with a '$$$$' line)."""
    starts, start = [], 1
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if line.rstrip("\r\n") == "$$$$":
                starts.append(start)
                start = line_no + 1
    return starts


def _iter_sdf(path: Path) -> Iterator[InputRecord]:
    """Records of an SDF: the title line (else mol<i>) as id; 3D stereo read from the coordinates by RDKit."""
    starts = _sdf_record_lines(path)
    with rdBase.BlockLogs(), rdBase.CaptureErrorLog() as log_capture:
        supplier = Chem.ForwardSDMolSupplier(_open_binary(path), sanitize=False, removeHs=False)
        for index, raw in enumerate(supplier):
            line = starts[index] if index < len(starts) else None
            where = f"line {line}" if line else f"record {index + 1}"
            if raw is None:
                reason = log_capture.messages.strip().splitlines()[-1:] or ["unreadable record"]
                yield InputRecord(index, f"mol{index}", None, f"{where}: unreadable SDF record ({reason[0].split('] ', 1)[-1]})", line)
                continue
            yield record_from_mol(index, raw, where, line)


def record_from_mol(index: int, mol: Chem.Mol, where: str | None = None, line: int | None = None) -> InputRecord:
    """The input record of an RDKit molecule (title as id, else mol<index>); a validation failure becomes its error."""
    title = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
    name = title or f"mol{index}"
    try:
        prepared = prepare_mol(mol, name=name)
    except MoleculeError as exc:
        return InputRecord(index, name, None, f"{where or f'input {index}'}: {exc.reason}", line)
    return InputRecord(index, name, prepared, None, line)


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def iter_inputs(source: str | Path, smiles_column: str | None = None, id_column: str | None = None) -> Iterator[InputRecord]:
    """Input records from a SMILES string, a .smi/.csv/.tsv/.txt table (optionally .gz) or an .sdf file, in input order."""
    path = Path(source)
    suffix = format_suffix(path)
    looks_like_file = suffix in SMILES_SUFFIXES + SDF_SUFFIXES
    if isinstance(source, Path) or looks_like_file or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"no input file {path}")
        if suffix in SDF_SUFFIXES:
            yield from _iter_sdf(path)
        else:
            yield from _iter_smiles_file(path, smiles_column, id_column)
        return
    yield record_from_smiles(0, str(source).strip(), None, "SMILES argument", None)


def read_inputs(source: str | Path, smiles_column: str | None = None, id_column: str | None = None) -> list[InputRecord]:
    """``iter_inputs`` as a list."""
    return list(iter_inputs(source, smiles_column, id_column))


# ---------------------------------------------------------------------------------------------------- output


def _check_explicit_hydrogens(mol: Chem.Mol) -> str | None:
    """Why a molecule cannot be written as all-atom conformers, or None."""
    implicit = [a.GetIdx() for a in mol.GetAtoms() if a.GetTotalNumHs(includeNeighbors=False)]
    if implicit:
        return f"implicit hydrogens on atoms {implicit[:5]}: conformers must carry explicit hydrogens (Chem.AddHs)"
    return None


def _set_prop(mol: Chem.Mol, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        mol.SetProp(key, str(value))
    elif isinstance(value, int):
        mol.SetIntProp(key, value)
    else:
        mol.SetDoubleProp(key, value)


class ConformerWriter:
    """Incremental, stereo-checked SDF writer: ``with ConformerWriter(path, settings) as w: w.write(record)``.

    Writes to ``path + '.partial'`` (flushed after each molecule) and renames it onto ``path`` on a clean exit;
    on an exception the partial file stays, holding every molecule written so far, and ``path`` is untouched.
    """

    def __init__(self, path: str | Path, settings: Mapping[str, Any] | None = None):
        from scidiff import __version__

        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.settings = {"scidiff_version": __version__, **dict(settings or {})}
        self.report = WriteReport()
        self._handle = None
        self._writer = None

    def __enter__(self) -> "ConformerWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.partial, "w")
        self._writer = Chem.SDWriter(self._handle)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._writer.close()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        if exc_type is None:
            os.replace(self.partial, self.path)
        elif self.report.conformers == 0:
            self.partial.unlink()  # nothing generated, nothing to keep
        else:
            log.error("stopped early: %d conformers of %d molecules kept in %s", self.report.conformers,
                      self.report.molecules, self.partial)

    def _reject(self, record: ConformerRecord, conf_id: int | None, reason: str) -> None:
        log.info("not written: input %d (%s)%s: %s", record.index, record.name,
                    "" if conf_id is None else f" conformer {conf_id}", reason)
        self.report.rejected.append(Rejected(record.index, record.name, conf_id, reason))

    def write(self, record: ConformerRecord) -> int:
        """Write the record's stereo-correct conformers (one SDF record each); returns how many were written."""
        mol = record.mol
        problem = "no conformers" if mol.GetNumConformers() == 0 else _check_explicit_hydrogens(mol)
        if problem:
            self._reject(record, None, problem)
            return 0
        reference = as_signature(mol if record.reference is None else record.reference)
        written = 0
        for conf in mol.GetConformers():
            report = check_stereo(mol, conf.GetId(), reference)
            if not report.ok:  # never write wrong stereo silently
                self._reject(record, conf.GetId(), report.describe())
                continue
            self._writer.write(self._sd_record(record, conf, reference.smiles))
            written += 1
        self._writer.flush()
        self._handle.flush()
        self.report.conformers += written
        self.report.molecules += bool(written)
        return written

    def _sd_record(self, record: ConformerRecord, conf: Chem.Conformer, smiles: str) -> Chem.Mol:
        out = Chem.Mol(record.mol, confId=conf.GetId())
        for key in list(out.GetPropNames()):
            out.ClearProp(key)
        out.SetProp("_Name", record.name)
        out.SetIntProp("input_index", record.index)
        out.SetIntProp("conf_id", conf.GetId())
        out.SetProp("smiles", smiles)
        for key, value in conf.GetPropsAsDict(includePrivate=False, includeComputed=False).items():
            _set_prop(out, key, value)  # per-conformer values such as energy
        for key, value in self.settings.items():
            _set_prop(out, key, value)
        return out


def write_conformers(path: str | Path, records: Iterable[ConformerRecord], settings: Mapping[str, Any] | None = None) -> WriteReport:
    """Write every record's stereo-correct conformers to ``path`` (atomic rename; partial file kept on failure)."""
    with ConformerWriter(path, settings) as writer:
        for record in records:
            writer.write(record)
    return writer.report


def read_conformers(path: str | Path, group_by: str = "input_index", remove_hs: bool = False) -> list[Chem.Mol]:
    """SDF records grouped into multi-conformer mols by a property (``input_index``; ``mol_id`` for reference sets).

    Records of one group must be the same molecule in the same atom order; the group's first record gives the
    mol's properties and the conformers keep ``conf_id`` and any numeric per-record property as conformer props.
    """
    groups: dict[str, Chem.Mol] = {}
    with rdBase.BlockLogs():
        supplier = Chem.SDMolSupplier(str(path), removeHs=remove_hs)
        for position, mol in enumerate(supplier):
            if mol is None:
                raise ValueError(f"{path}: unreadable SDF record {position + 1}")
            key = mol.GetProp(group_by) if mol.HasProp(group_by) else f"record{position}"
            conf = Chem.Conformer(mol.GetConformer())
            for prop, value in mol.GetPropsAsDict(includePrivate=False, includeComputed=False).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    conf.SetDoubleProp(prop, float(value))
            if key not in groups:
                first = Chem.Mol(mol)
                first.RemoveAllConformers()
                groups[key] = first
            group = groups[key]
            if [a.GetAtomicNum() for a in group.GetAtoms()] != [a.GetAtomicNum() for a in mol.GetAtoms()]:
                raise ValueError(f"{path}: record {position + 1} has other atoms than the first record of {group_by}={key}")
            group.AddConformer(conf, assignId=True)
    return list(groups.values())


"""Every file format of scidiff.mol, read and written in one place.

- Inputs: a SMILES string, SMILES tables (.smi/.csv/.tsv/.txt, optionally .gz; one column rule) and SDF files become
  ``InputRecord``s in input order, each molecule prepared once (``chem.prepare_mol``); a bad line is a record with a
  ``Failure`` naming its 1-based file line and the reason, so one bad molecule never stops a run.
- Conformer SDF, one dialect for generated conformers, training shards and reference sets: one record per conformer
  with ``_Name``, ``input_index``, ``conf_id``, ``smiles`` and per-conformer values (energies) and settings.
  ``ConformerWriter`` writes it incrementally to ``OUT.partial`` (flushed after each molecule) and renames it onto
  ``OUT`` only when complete: readers never see a truncated ``OUT``, memory stays flat on large inputs, and a run
  that dies half-way leaves every conformer it had in ``OUT.partial``. ``read_conformers`` groups records back into
  multi-conformer molecules.
- QM9 DFT geometries of the shared npz split (``read_qm9``) and of all of QM9 from the qm9pack package
  (``read_qm9pack``, ``read_qm9pack_smiles``).
"""

from __future__ import annotations

import csv
import gzip
import importlib.metadata
import io
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from rdkit import Chem, rdBase

from scidiff.data import data_path

from .chem import Built, Failure, MoleculeError, implicit_hydrogen_atoms, mol_from_smiles, mol_from_xyz, prepare_mol

__all__ = [
    "count_inputs",
    "InputRecord",
    "SmilesRow",
    "ConformerRecord",
    "WriteReport",
    "ConformerWriter",
    "SMILES_COLUMNS",
    "ID_COLUMNS",
    "SDF_SUFFIXES",
    "format_suffix",
    "iter_smiles_rows",
    "iter_inputs",
    "read_inputs",
    "record_from_smiles",
    "record_from_mol",
    "UNASSIGNED_STEREO",
    "unassigned_stereo",
    "resolve_unassigned",
    "check_output_path",
    "write_conformers",
    "read_conformers",
    "read_qm9",
    "QM9PACK_FILES",
    "qm9pack_files",
    "read_qm9pack",
    "read_qm9pack_smiles",
]

log = logging.getLogger(__name__)

SMILES_COLUMNS = ("smiles", "smi", "canonical_smiles", "isomeric_smiles", "corrected_smiles")
ID_COLUMNS = ("id", "name", "title", "identifier", "mol_id", "molecule_id", "compound_id", "gdb_id", "chembl_id", "zinc_id")
SMILES_SUFFIXES = (".smi", ".smiles", ".txt", ".csv", ".tsv")
SDF_SUFFIXES = (".sdf", ".sd", ".mol")
QM9_SPLITS = ("train", "test")
QM9PACK_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")  # in gdb-id order; qm9_polarizability.csv is not QM9
_NUMBER = re.compile(r"[-+0-9.Ee]+")  # qm9pack writes "0." and "1.": Python floats, not JSON
_ELEMENT = re.compile(r"[A-Z][a-z]?")


@dataclass(frozen=True)
class InputRecord:
    """One input molecule: 0-based position in the input, identifier, prepared mol (explicit H) or why it failed."""

    index: int
    name: str
    mol: Chem.Mol | None
    failure: Failure | None = None
    line: int | None = None  # 1-based file line (the first line of an SDF record); None for a SMILES argument
    smiles: str | None = None  # the SMILES as written in the input, when there was one
    unassigned_stereo: tuple[str, ...] = ()  # stereocentres / stereo bonds the input leaves open (``unassigned_stereo``)
    flat: bool = False  # an SDF record whose coordinates are all zero: read as 2D, so it gives no 3D stereo

    @property
    def ok(self) -> bool:
        return self.mol is not None

    def stereo_warning(self, consequence: str = "its conformers take any configuration there") -> Failure | None:
        """What the input leaves open about stereo and what follows, as a Failure-shaped warning; None when nothing."""
        if not self.unassigned_stereo:
            return None
        flat = " (all coordinates are zero: read as 2D, without 3D stereo)" if self.flat else ""
        where = f"line {self.line}: " if self.line else ""
        return Failure(self.name, f"{where}unassigned stereo at {', '.join(self.unassigned_stereo)}{flat}: "
                                  f"{consequence}", self.index, self.line)


@dataclass(frozen=True)
class SmilesRow:
    """One data line of a SMILES table: its 1-based line, the SMILES ('' when the column is empty) and the id, if any."""

    line: int
    smiles: str
    name: str | None
    column: int  # 1-based SMILES column, for messages
    error: str | None = None  # why the line cannot be read at all (e.g. bytes that are not UTF-8)


@dataclass
class ConformerRecord:
    """Conformers of one input to write: its index and name, and the mol (input atom order, stereo already checked)."""

    index: int
    name: str
    mol: Chem.Mol


@dataclass
class WriteReport:
    """What a writer wrote: conformers and molecules written, and every molecule it refused."""

    conformers: int = 0
    molecules: int = 0
    rejected: list[Failure] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------- input


def _parse_reason(reason: str, smiles: str) -> str:
    """MoleculeError reason -> the user-facing form: "bad SMILES 'C1CC' (unclosed ring)"."""
    match = re.match(r"could not parse SMILES \((.*)\)$", reason, re.S)
    if not match:
        return reason
    detail = re.sub(r"^SMILES Parse Error:\s*", "", match.group(1))
    detail = re.sub(r"\s+(for input|while parsing):.*$", "", detail, flags=re.S).strip()
    return f"bad SMILES {smiles!r} ({detail or 'syntax error'})"


def _failed(index: int, name: str, reason: str, line: int | None, smiles: str | None = None) -> InputRecord:
    return InputRecord(index, name, None, Failure(name, reason, index, line), line, smiles)


UNASSIGNED_STEREO = ("keep-any", "enumerate", "refuse")  # what to do with stereo an input leaves open


def unassigned_stereo(mol: Chem.Mol) -> tuple[str, ...]:
    """Stereocentres and stereo double bonds whose configuration ``mol`` does not give, e.g. ('atom 1 (C)',
    'bond 3=4'), with 0-based atom indices as in RDKit: a generator would pick any configuration there."""
    found = []
    for info in Chem.FindPotentialStereo(mol):
        if info.specified == Chem.StereoSpecified.Specified:
            continue
        if info.type == Chem.StereoType.Atom_Tetrahedral:
            found.append(f"atom {info.centeredOn} ({mol.GetAtomWithIdx(info.centeredOn).GetSymbol()})")
        elif info.type == Chem.StereoType.Bond_Double:
            bond = mol.GetBondWithIdx(info.centeredOn)
            found.append(f"bond {bond.GetBeginAtomIdx()}={bond.GetEndAtomIdx()}")
        else:
            found.append(f"{info.type.name} at {info.centeredOn}")
    return tuple(found)


def _with_stereo(record: InputRecord) -> InputRecord:
    return record if record.mol is None else replace(record, unassigned_stereo=unassigned_stereo(record.mol))


def resolve_unassigned(records: Iterable[InputRecord], policy: str = "keep-any") -> Iterator[InputRecord]:
    """Apply ``policy`` to the stereo inputs leave open: 'keep-any' passes them on (each carries its
    ``stereo_warning``), 'refuse' fails them, 'enumerate' replaces each by its stereoisomers (RDKit's
    EnumerateStereoisomers over the open centres, at most 32), named NAME_stereoK, every record renumbered in order."""
    if policy not in UNASSIGNED_STEREO:
        raise ValueError(f"unassigned stereo (--unassigned-stereo) must be one of {', '.join(UNASSIGNED_STEREO)}, "
                         f"got {policy!r}")
    return _resolved(records, policy)


def _resolved(records: Iterable[InputRecord], policy: str) -> Iterator[InputRecord]:
    from rdkit.Chem.EnumerateStereoisomers import EnumerateStereoisomers, StereoEnumerationOptions

    index = 0
    for record in records:
        if not record.unassigned_stereo or policy == "keep-any":
            yield replace(record, index=index) if policy == "enumerate" else record
            index += 1
            continue
        if policy == "refuse":
            yield replace(record, mol=None, failure=record.stereo_warning(
                "refused (--unassigned-stereo refuse): give the configuration in the input"))
            index += 1
            continue
        options = StereoEnumerationOptions(onlyUnassigned=True, unique=True, maxIsomers=32)
        isomers = list(EnumerateStereoisomers(record.mol, options=options))
        for k, isomer in enumerate(isomers, start=1):
            Chem.AssignStereochemistry(isomer, cleanIt=True, force=True)
            name = f"{record.name}_stereo{k}"
            isomer.SetProp("_Name", name)
            yield replace(record, index=index, name=name, mol=isomer, unassigned_stereo=unassigned_stereo(isomer),
                          smiles=Chem.MolToSmiles(Chem.RemoveHs(isomer)))
            index += 1


def record_from_smiles(index: int, smiles: str, name: str | None, where: str, line: int | None) -> InputRecord:
    """The input record of one SMILES; a parse or validation failure becomes the record's failure, prefixed by ``where``."""
    label = name or smiles
    try:
        with rdBase.BlockLogs():  # the reason goes into the record; RDKit's own log lines would only repeat it
            mol = mol_from_smiles(smiles, name=label)
    except MoleculeError as exc:
        return _failed(index, label, f"{where}: {_parse_reason(exc.reason, smiles)}", line, smiles)
    return _with_stereo(InputRecord(index, label, mol, None, line, smiles))


def record_from_mol(index: int, mol: Chem.Mol, where: str | None = None, line: int | None = None) -> InputRecord:
    """The input record of an RDKit molecule (title as id, else mol<index>); a validation failure becomes its failure."""
    try:
        title = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
    except UnicodeDecodeError:  # an SDF title line with bytes that are not UTF-8
        return _failed(index, f"mol{index}", f"{where or f'input {index}'}: the title line is not UTF-8 text", line)
    name = title or f"mol{index}"
    # All-zero coordinates (a placeholder some tools write) say nothing about 3D stereo: read the record as 2D.
    flat = mol.GetNumConformers() > 0 and not mol.GetConformer().GetPositions().any()
    if flat:
        mol = Chem.Mol(mol)
        mol.RemoveAllConformers()
    try:
        prepared = prepare_mol(mol, name=name)
    except MoleculeError as exc:
        return _failed(index, name, f"{where or f'input {index}'}: {exc.reason}", line)
    return _with_stereo(InputRecord(index, name, prepared, None, line, flat=flat))


def _open_text(path: Path) -> io.TextIOBase:
    """UTF-8 text with undecodable bytes kept as surrogate escapes, so a bad byte fails its own line, not the file."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape")
    return open(path, newline="", encoding="utf-8", errors="surrogateescape")


def _undecodable(text: str) -> str | None:
    """The first byte of ``text`` that was not UTF-8 (a surrogate escape), as 0xNN, or None."""
    bad = next((ch for ch in text if "\udc80" <= ch <= "\udcff"), None)
    return None if bad is None else f"0x{ord(bad) - 0xDC00:02x}"


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


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


def iter_smiles_rows(path: str | Path, smiles_column: str | None = None, id_column: str | None = None) -> Iterator[SmilesRow]:
    """Data rows of a SMILES table: 'SMILES [id]' per line (space, tab or comma), optional header, '#' comments.

    The one column rule of every SMILES table: a first line naming a SMILES column (``SMILES_COLUMNS``, any case, or
    ``smiles_column``) is a header, and the id comes from the first of ``ID_COLUMNS`` (or ``id_column``) it has;
    without a header the SMILES is the first field and everything after it is the id.
    """
    path = Path(path)
    suffix = format_suffix(path)
    delimiter, columns = None, None
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
            if (byte := _undecodable(line)) is not None:
                yield SmilesRow(line_no, "", None, smiles_at + 1, f"not UTF-8 text (byte {byte})")
                continue
            # 'SMILES name with spaces' in a headerless .smi: everything after the SMILES is the id
            fields = _split(line, delimiter, 1 if (delimiter is None and columns == (0, 1)) else -1)
            smiles = fields[smiles_at] if smiles_at < len(fields) else ""
            name = fields[id_at] if id_at is not None and id_at < len(fields) and fields[id_at] else None
            yield SmilesRow(line_no, smiles, name, smiles_at + 1)


def _iter_smiles_file(path: Path, smiles_column: str | None, id_column: str | None, skip: int = 0) -> Iterator[InputRecord]:
    """Records of a SMILES table (``iter_smiles_rows``), in order, from record ``skip`` on."""
    for index, row in enumerate(iter_smiles_rows(path, smiles_column, id_column)):
        if index < skip:  # done by an earlier run: counted, never parsed
            continue
        if row.error:
            yield _failed(index, f"line {row.line}", f"line {row.line}: {row.error}", row.line)
        elif not row.smiles:
            yield _failed(index, row.name or f"line {row.line}", f"line {row.line}: no SMILES in column {row.column}", row.line)
        else:
            yield record_from_smiles(index, row.smiles, row.name, f"line {row.line}", row.line)


def _sdf_record_lines(path: Path) -> list[int]:
    """1-based first line of every SDF record (records end with a '$$$$' line)."""
    starts, start = [], 1
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if line.rstrip("\r\n") == "$$$$":
                starts.append(start)
                start = line_no + 1
    return starts


def _iter_sdf(path: Path, skip: int = 0) -> Iterator[InputRecord]:
    """Records of an SDF, from record ``skip`` on: the title line (else mol<i>) as id; 3D stereo read from the
    coordinates by RDKit."""
    starts = _sdf_record_lines(path)
    handle = _open_binary(path)
    passed = 0
    while passed < skip:  # records done by an earlier run: stepped over as text, never parsed
        line = handle.readline()
        if not line:
            break
        passed += line.rstrip(b"\r\n") == b"$$$$"
    with rdBase.BlockLogs(), rdBase.CaptureErrorLog() as log_capture:
        supplier = Chem.ForwardSDMolSupplier(handle, sanitize=False, removeHs=False)  # reads on from where skip left it
        for index, raw in enumerate(supplier, start=skip):
            line = starts[index] if index < len(starts) else None
            where = f"line {line}" if line else f"record {index + 1}"
            if raw is None:
                reason = log_capture.messages.strip().splitlines()[-1:] or ["unreadable record"]
                yield _failed(index, f"mol{index}", f"{where}: unreadable SDF record ({reason[0].split('] ', 1)[-1]})", line)
                continue
            yield record_from_mol(index, raw, where, line)


def iter_inputs(source: str | Path, smiles_column: str | None = None, id_column: str | None = None,
                skip: int = 0) -> Iterator[InputRecord]:
    """Input records from a SMILES string, a .smi/.csv/.tsv/.txt table (optionally .gz) or an .sdf file, in input order.

    ``skip``: start at record ``skip`` (indices still count from the start of the input); the records before it are
    stepped over without being parsed, so a resumed run pays nothing for the part already done."""
    path = Path(source)
    suffix = format_suffix(path)
    looks_like_file = suffix in SMILES_SUFFIXES + SDF_SUFFIXES
    if isinstance(source, Path) or looks_like_file or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"no input file {path}")
        if suffix in SDF_SUFFIXES:
            yield from _iter_sdf(path, skip)
        else:
            yield from _iter_smiles_file(path, smiles_column, id_column, skip)
        return
    if skip == 0:
        yield record_from_smiles(0, str(source).strip(), None, "SMILES argument", None)


def count_inputs(source: str | Path, smiles_column: str | None = None, id_column: str | None = None) -> int:
    """How many records ``iter_inputs`` yields, counted as text without parsing a molecule (a plan of shards needs it)."""
    path = Path(source)
    if not path.is_file():
        return sum(1 for _ in iter_inputs(source, smiles_column, id_column))  # a SMILES argument, or the missing-file error
    if format_suffix(path) not in SDF_SUFFIXES:
        return sum(1 for _ in iter_smiles_rows(path, smiles_column, id_column))
    records, open_record = 0, False
    with _open_text(path) as handle:
        for line in handle:
            if line.rstrip("\r\n") == "$$$$":
                records, open_record = records + 1, False
            elif line.strip():
                open_record = True
    return records + open_record  # ForwardSDMolSupplier also reads a last record that lacks its '$$$$'


def read_inputs(source: str | Path, smiles_column: str | None = None, id_column: str | None = None) -> list[InputRecord]:
    """``iter_inputs`` as a list."""
    return list(iter_inputs(source, smiles_column, id_column))


# ---------------------------------------------------------------------------------------------------- output


def _set_prop(mol: Chem.Mol, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        mol.SetProp(key, str(value))
    elif isinstance(value, int):
        mol.SetIntProp(key, value)
    else:
        mol.SetDoubleProp(key, value)


class ConformerWriter:
    """Incremental SDF writer of the conformer dialect: ``with ConformerWriter(path, settings) as w: w.write(record)``.

    Writes to ``path + '.partial'`` (flushed after each molecule) and renames it onto ``path`` on a clean exit that
    wrote something; on an exception the partial file stays, holding every molecule written so far, and ``path`` is
    untouched (so is a file already at ``path`` when nothing was written).
    Stereo is not checked here: the pipeline checks it once before a record reaches the writer.
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
        if exc_type is None and self.report.conformers:
            os.replace(self.partial, self.path)
        elif self.report.conformers == 0:
            self.partial.unlink()  # nothing generated: nothing to keep, and a file already at OUT stays as it was
        else:
            log.error("stopped early: %d conformers of %d molecules kept in %s", self.report.conformers,
                      self.report.molecules, self.partial)

    def write(self, record: ConformerRecord) -> int:
        """Write every conformer of the record (one SDF record each); returns how many were written."""
        mol = record.mol
        implicit = implicit_hydrogen_atoms(mol)
        problem = ("no conformers" if mol.GetNumConformers() == 0 else
                   f"implicit hydrogens on atoms {implicit[:5]}: conformers must carry explicit hydrogens (Chem.AddHs)"
                   if implicit else None)
        if problem:
            log.info("not written: input %d (%s): %s", record.index, record.name, problem)
            self.report.rejected.append(Failure(record.name, problem, record.index))
            return 0
        smiles = Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False))  # canonical isomeric, without H
        for number, conf in enumerate(mol.GetConformers()):
            self._writer.write(self._sd_record(record, conf, smiles, number))
        self._writer.flush()
        self._handle.flush()
        self.report.conformers += mol.GetNumConformers()
        self.report.molecules += 1
        return mol.GetNumConformers()

    def _sd_record(self, record: ConformerRecord, conf: Chem.Conformer, smiles: str, number: int) -> Chem.Mol:
        """One SDF record; ``conf_id`` is the conformer's position (0..n-1), whatever ids dropping and resampling left."""
        out = Chem.Mol(record.mol, confId=conf.GetId())
        for key in list(out.GetPropNames()):
            out.ClearProp(key)
        out.SetProp("_Name", record.name)
        out.SetIntProp("input_index", record.index)
        out.SetProp("smiles", smiles)
        for key, value in conf.GetPropsAsDict(includePrivate=False, includeComputed=False).items():
            _set_prop(out, key, value)  # per-conformer values such as energy
        out.SetIntProp("conf_id", number)  # after them: a conf_id read back from another file does not count
        for key, value in self.settings.items():
            _set_prop(out, key, value)
        return out


def check_output_path(path: str | Path, inputs: Iterable[str | Path] = (), option: str = "output") -> Path:
    """The output SDF path, refused before any work when it cannot be right (``scidiff.commands.check_output``):
    another format's suffix, a folder, a parent that is a file or read-only, or one of the inputs."""
    from scidiff.commands import check_output

    return check_output(path, option, suffixes=(".sdf", ".sd"), written_as="conformers are written as SDF",
                        inputs=inputs)


def write_conformers(path: str | Path, records: Iterable[ConformerRecord], settings: Mapping[str, Any] | None = None) -> WriteReport:
    """Write every record's conformers to ``path`` (atomic rename; partial file kept on failure)."""
    with ConformerWriter(path, settings) as writer:
        for record in records:
            writer.write(record)
    return writer.report


def _sdf_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.sdf"))
        if not files:
            raise FileNotFoundError(f"no .sdf files in {path}")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"no SDF file or folder at {path}")
    return [path]


def read_conformers(path: str | Path, group_by: str = "input_index", skipped: list[Failure] | None = None) -> list[Chem.Mol]:
    """SDF records of a file, or of every .sdf in a folder, grouped into multi-conformer mols, hydrogens kept.

    Records are grouped by the property ``group_by`` (``input_index`` of the conformer dialect; ``mol_id`` of the
    reference sets) where they carry it, else consecutive records with one name and SMILES form a molecule (SDFs of
    other tools). A group's first record gives the mol's properties and its stereo (perceived from 3D); every
    conformer keeps its record's numeric properties (``conf_id``, energies). Unreadable and 2D records go to
    ``skipped`` (a ValueError when it is None); a record with other atoms than its group is a ValueError.
    """
    groups: dict[tuple, Chem.Mol] = {}
    run, last_identity = 0, None
    for file in _sdf_files(Path(path)):
        with rdBase.BlockLogs():
            records = list(Chem.SDMolSupplier(str(file), removeHs=False))
        for number, record in enumerate(records):
            if record is None or not record.GetConformer().Is3D():
                reason = "RDKit could not read the SDF record" if record is None else "the record has 2D coordinates"
                if skipped is None:
                    raise ValueError(f"{file}: record {number + 1}: {reason}")
                skipped.append(Failure(f"{file.name}#{number}", reason))
                continue
            if record.HasProp(group_by):
                key = (file, record.GetProp(group_by))
            else:  # SDFs of other tools: consecutive records with one name and SMILES are one molecule
                identity = (file, record.GetProp("_Name") if record.HasProp("_Name") else "", Chem.MolToSmiles(record))
                run += identity != last_identity
                last_identity, key = identity, (file, run)
            conf = Chem.Conformer(record.GetConformer())
            for prop, value in record.GetPropsAsDict(includePrivate=False, includeComputed=False).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    conf.SetDoubleProp(prop, float(value))
            if key not in groups:
                Chem.AssignStereochemistryFrom3D(record)
                groups[key] = Chem.Mol(record)
                groups[key].RemoveAllConformers()
            group = groups[key]
            if [a.GetAtomicNum() for a in group.GetAtoms()] != [a.GetAtomicNum() for a in record.GetAtoms()]:
                raise ValueError(f"{file}: record {number + 1} has other atoms than the first record of its molecule")
            group.AddConformer(conf, assignId=True)
    return list(groups.values())


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
            built.skipped.append(Failure(name, exc.reason))
            continue
        mol.SetIntProp("gdb_id", int(index[i]))
        built.molecules.append(mol)
    log.info("qm9 %s: %s", split, built.summary())
    return built


def qm9pack_files() -> list[Path]:
    """The QM9 CSV files of the installed qm9pack package, found without importing it (its ``__init__`` imports the
    removed ``pkg_resources``); ImportError / FileNotFoundError with the install command when absent."""
    hint = "pip install qm9pack (or pip install scidiff[qm9])"
    try:
        folder = Path(importlib.metadata.distribution("qm9pack").locate_file("qm9pack/data"))
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"all of QM9 is read from the qm9pack package, which is not installed: {hint}") from None
    files = [folder / name for name in QM9PACK_FILES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"qm9pack is installed but lacks {', '.join(missing)}: reinstall it ({hint})")
    return files


def _qm9pack_rows(columns: Sequence[str]) -> Iterator[tuple[int, ...]]:
    """(gdb id, *columns as strings) of every qm9pack row, checking the files' gdb-id order."""
    last = 0
    for path in qm9pack_files():
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            at = [header.index(c) for c in ("Index", *columns)]
            for row in reader:
                gdb_id = int(row[at[0]])
                if gdb_id <= last:
                    raise ValueError(f"{path}: gdb id {gdb_id} after {last}: the qm9pack files are out of order")
                last = gdb_id
                yield (gdb_id, *(row[i] for i in at[1:]))


def read_qm9pack(exclude: Iterable[int] = frozenset(), ids: Iterable[int] | None = None
                 ) -> Iterator[tuple[int, list[int], np.ndarray]]:
    """(gdb id, atomic numbers, DFT positions in Å) of all of QM9 (Ramakrishnan et al. 2014; B3LYP/6-31G(2df,p),
    130,831 molecules) from the qm9pack package, in gdb-id order: only ``ids`` when given, never those in ``exclude``."""
    exclude = set(exclude)
    wanted = None if ids is None else set(ids) - exclude
    table = Chem.GetPeriodicTable()
    for gdb_id, n_atoms, elements, xyz in _qm9pack_rows(("N_atoms", "Elements", "XYZ_Ang")):
        if wanted is not None and not wanted:
            return  # every requested id found: the rest of the files need not be parsed
        if gdb_id in exclude or (wanted is not None and gdb_id not in wanted):
            continue
        if wanted is not None:
            wanted.discard(gdb_id)
        numbers = [table.GetAtomicNumber(symbol) for symbol in _ELEMENT.findall(elements)]
        positions = np.array([float(v) for v in _NUMBER.findall(xyz)], dtype=np.float64).reshape(-1, 3)
        if not len(numbers) == len(positions) == int(n_atoms):
            raise ValueError(f"qm9pack gdb id {gdb_id}: {n_atoms} atoms, {len(numbers)} elements, {len(positions)} positions")
        yield gdb_id, numbers, positions


def read_qm9pack_smiles() -> dict[int, str]:
    """gdb id -> the SMILES column of qm9pack (not isomeric), for every QM9 molecule, in gdb-id order."""
    return {gdb_id: smiles for gdb_id, smiles in _qm9pack_rows(("SMILES",))}

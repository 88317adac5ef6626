"""The conformer pipeline and its generators: the public Python API behind ``scidiff mol generate``.

Per input: read and prepare once (io) -> generate n conformers (a registered generator) -> relax (none / MMFF94 /
GFN2-xTB) -> check stereo against the input, mirror fully inverted conformers, resample the still-wrong ones
(bounded) -> write (io.ConformerWriter). Results come back in input order, one ``Outcome`` per input.

A generator is ``generate_fn(mols, n, seed, **options) -> list[mol]``: prepared molecules in, one molecule per
input out (same atom order, n conformers, or none with a ``generation_error`` property). ``GENERATORS`` names them
for the CLI, this API and the benchmarks alike.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from rdkit import Chem

from .chem import Failure, display_name
from .forcefield import RELAXATIONS, etkdg_conformers, relax_conformers
from .io import ConformerRecord, ConformerWriter, InputRecord, WriteReport, iter_inputs, record_from_mol, record_from_smiles
from .stereo import conformers_to_resample, fix_conformers, remove_conformers

__all__ = [
    "GenerateFn",
    "GenerationUnavailable",
    "GENERATORS",
    "METHODS",
    "get_generator",
    "etkdg_generator",
    "etkdg_mmff_generator",
    "scidiff_generator",
    "generate_batch",
    "Timed",
    "run_generator",
    "Outcome",
    "GenerateSummary",
    "generate_outcomes",
    "generate_mols",
    "generate",
]

log = logging.getLogger(__name__)

GenerateFn = Callable[..., list[Chem.Mol]]
RESAMPLE_SEED_STRIDE = 1_000_003  # resampling round r uses seed + r * stride: deterministic, away from the first draws


class GenerationUnavailable(RuntimeError):
    """A generation backend that cannot run at all (missing weights, an invalid setting), not a per-molecule failure."""


# ------------------------------------------------------------------------------------------------- generators


def etkdg_generator(mols: Sequence[Chem.Mol], n: int, seed: int = 0, **_: Any) -> list[Chem.Mol]:
    """RDKit ETKDGv3 (Riniker & Landrum 2015; Wang et al. 2020): the baseline."""
    return [etkdg_conformers(m, n, seed, mmff=False) for m in mols]


def etkdg_mmff_generator(mols: Sequence[Chem.Mol], n: int, seed: int = 0, **_: Any) -> list[Chem.Mol]:
    """RDKit ETKDGv3 + MMFF94 (Halgren 1996): the baseline users would otherwise run."""
    return [etkdg_conformers(m, n, seed, mmff=True) for m in mols]


@functools.lru_cache(maxsize=4)
def _cached_model(checkpoint: str | None, device: str):
    """Load the conformer model once per (weights, device): the bundled weights unless a checkpoint is given."""
    from .generate import bundled_weights, load_model

    try:
        return load_model(checkpoint or bundled_weights(), device)
    except FileNotFoundError as err:
        raise GenerationUnavailable(str(err)) from None


def scidiff_generator(mols: Sequence[Chem.Mol], n: int, seed: int = 0, *, sampler: str | None = None,
                      steps: int | None = None, device: str | None = None, checkpoint: str | None = None,
                      **_: Any) -> list[Chem.Mol]:
    """The trained scidiff model (its run's sampler unless ``sampler`` / ``steps`` override it)."""
    from .generate import model_generate_fn

    model, diffusion, spec = _cached_model(checkpoint, device or "cpu")
    try:
        spec = spec.with_overrides(sampler, steps)
    except ValueError as err:
        raise GenerationUnavailable(f"--sampler/--steps: {err}") from None
    return model_generate_fn(model, diffusion, spec)(mols, n, seed)


GENERATORS: dict[str, GenerateFn] = {
    "etkdg": etkdg_generator,
    "etkdg_mmff": etkdg_mmff_generator,
    "scidiff": scidiff_generator,
}
METHODS = tuple(GENERATORS)


def get_generator(method: str) -> GenerateFn:
    """The generator registered under a ``--method`` name."""
    if method not in GENERATORS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return GENERATORS[method]


def generate_batch(generate_fn: GenerateFn, mols: list[Chem.Mol], n: int, seed: int, **options: Any) -> list[Chem.Mol | None]:
    """Call generate_fn on a batch; when it raises, retry molecule by molecule so only the breaking one fails (None)."""
    try:
        out = list(generate_fn(mols, n, seed, **options))
        if len(out) != len(mols):
            raise ValueError(f"generator returned {len(out)} molecules for {len(mols)} inputs")
        return out
    except GenerationUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - isolate the molecule that breaks the batch
        if len(mols) == 1:
            log.warning("generation failed for %s: %s", display_name(mols[0], 0), exc)
            return [None]
        return [m for mol in mols for m in generate_batch(generate_fn, [mol], n, seed, **options)]


@dataclass
class Timed:
    """Generated mols (aligned with the inputs) and the time it took, wall and CPU."""

    mols: list[Chem.Mol | None]
    wall_s: float
    cpu_s: float

    @property
    def conformers(self) -> int:
        return sum(m.GetNumConformers() for m in self.mols if m is not None)


def run_generator(generate_fn: GenerateFn, mols: Sequence[Chem.Mol], n: int | Sequence[int], seed: int = 0,
                  batch_size: int = 32, **options: Any) -> Timed:
    """Raw generator output for consecutive batches of equal n, timed (what the benchmarks score)."""
    counts = [n] * len(mols) if isinstance(n, int) else list(n)
    out: list[Chem.Mol | None] = []
    wall, cpu = time.perf_counter(), time.process_time()
    start = 0
    while start < len(mols):
        stop = start + 1
        while stop < len(mols) and stop - start < batch_size and counts[stop] == counts[start]:
            stop += 1
        out += generate_batch(generate_fn, list(mols[start:stop]), counts[start], seed, **options)
        start = stop
    return Timed(out, time.perf_counter() - wall, time.process_time() - cpu)


# --------------------------------------------------------------------------------------------------- pipeline


def _finish(mol: Chem.Mol, reference: Chem.Mol, relax: str) -> list[int]:
    """Relax, stereo-fix (mirror) and drop the conformers still wrong; returns the dropped conformer ids."""
    relax_conformers(mol, relax)
    bad = conformers_to_resample(fix_conformers(mol, reference))
    remove_conformers(mol, bad)
    return bad


def _add_conformers(mol: Chem.Mol, extra: Chem.Mol) -> None:
    next_id = max((c.GetId() for c in mol.GetConformers()), default=-1) + 1
    for offset, conf in enumerate(extra.GetConformers()):
        copy = Chem.Conformer(conf)
        copy.SetId(next_id + offset)
        mol.AddConformer(copy, assignId=False)


def _complete(generate_fn: GenerateFn, record: InputRecord, mol: Chem.Mol | None, n: int, seed: int, relax: str,
              max_resample: int, options: dict[str, Any]) -> tuple[Chem.Mol | None, int]:
    """One molecule's stereo-correct conformers, wrong ones resampled up to ``max_resample`` rounds; and how many are still missing."""
    if mol is None:
        return None, 0
    missing = len(_finish(mol, record.mol, relax))
    for round_ in range(1, max_resample + 1):
        if not missing:
            break
        extra = generate_batch(generate_fn, [record.mol], missing, seed + round_ * RESAMPLE_SEED_STRIDE, **options)[0]
        if extra is None or extra.GetNumConformers() == 0:
            break
        missing -= extra.GetNumConformers() - len(_finish(extra, record.mol, relax))
        _add_conformers(mol, extra)
    return mol, missing


@dataclass
class Outcome:
    """One input after the pipeline: its record, the stereo-correct mol (None on failure), why it failed, and how
    many requested conformers are missing because their stereo could not be fixed."""

    record: InputRecord
    mol: Chem.Mol | None
    failure: Failure | None = None
    stereo_missing: int = 0


def _records(inputs: str | Path | Iterable[InputRecord | Chem.Mol | str], smiles_column: str | None,
             id_column: str | None) -> Iterator[InputRecord]:
    """Input records from a path or SMILES string (``iter_inputs``) or from an iterable of records, mols or SMILES."""
    if isinstance(inputs, (str, Path)):
        yield from iter_inputs(inputs, smiles_column, id_column)
        return
    for index, item in enumerate(inputs):
        if isinstance(item, InputRecord):
            yield item
        elif isinstance(item, str):
            yield record_from_smiles(index, item, None, f"input {index}", None)
        else:
            yield record_from_mol(index, item)


def _batches(records: Iterable[InputRecord], size: int) -> Iterator[list[InputRecord]]:
    batch: list[InputRecord] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def generate_outcomes(inputs: str | Path | Iterable[InputRecord | Chem.Mol | str], n: int = 10,
                      method: str = "etkdg", generate_fn: GenerateFn | None = None, seed: int = 0,
                      batch_size: int = 32, relax: str = "none", max_resample: int = 2,
                      smiles_column: str | None = None, id_column: str | None = None,
                      **options: Any) -> Iterator[Outcome]:
    """The generation pipeline, one Outcome per input in input order (lazily, batch by batch).

    Deterministic per (seed, batch_size): batch b gets seed + index of its first molecule. ``options`` (sampler,
    steps, device, checkpoint) go to the generator.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if relax not in RELAXATIONS:
        raise ValueError(f"relax must be one of {', '.join(RELAXATIONS)}, got {relax!r}")
    generate_fn = generate_fn or get_generator(method)
    for batch in _batches(_records(inputs, smiles_column, id_column), batch_size):
        batch_seed = seed + batch[0].index
        good = [r.mol for r in batch if r.ok]
        generated = iter(generate_batch(generate_fn, good, n, batch_seed, **options) if good else [])
        for record in batch:
            if not record.ok:
                yield Outcome(record, None, record.failure)
                continue
            mol, missing = _complete(generate_fn, record, next(generated), n, batch_seed, relax, max_resample, options)
            if mol is None or mol.GetNumConformers() == 0:
                reason = (mol.GetProp("generation_error") if mol is not None and mol.HasProp("generation_error")
                          else f"every conformer had wrong stereo after {max_resample} resampling rounds" if missing
                          else "no conformer generated")
                yield Outcome(record, None, Failure(record.name, reason, record.index, record.line), missing)
                continue
            mol.SetProp("_Name", record.name)
            yield Outcome(record, mol, None, missing)


def generate_mols(inputs: str | Path | Iterable[Chem.Mol | str], n: int = 10, method: str = "etkdg",
                  **options: Any) -> list[Chem.Mol | None]:
    """Molecules (or SMILES, or a path) in, RDKit molecules with n stereo-checked conformers out (None where an
    input failed; the reason is logged). Same options and behaviour as ``generate`` without the SDF."""
    out: list[Chem.Mol | None] = []
    for outcome in generate_outcomes(inputs, n, method, **options):
        if outcome.failure:
            log.warning("%s", outcome.failure.describe())
        out.append(outcome.mol)
    return out


@dataclass
class GenerateSummary:
    """Outcome of a generation run: inputs, successes, failed inputs, inputs short of conformers, the writer's report."""

    output: Path
    total: int = 0
    succeeded: int = 0
    failed: list[Failure] = field(default_factory=list)
    stereo_dropped: list[Failure] = field(default_factory=list)  # inputs written with fewer than n conformers
    written: WriteReport = field(default_factory=WriteReport)

    def line(self) -> str:
        return f"{self.succeeded}/{self.total} molecules succeeded ({self.written.conformers} conformers written to {self.output})"


def generate(inputs: str | Path | Iterable[InputRecord | Chem.Mol | str], output: str | Path, n: int = 10,
             method: str = "etkdg", generate_fn: GenerateFn | None = None, seed: int = 0, batch_size: int = 32,
             relax: str = "none", max_resample: int = 2, progress: bool = False, smiles_column: str | None = None,
             id_column: str | None = None, **options: Any) -> GenerateSummary:
    """Generate n conformers per input molecule and write them to an SDF; the Python face of ``scidiff mol generate``.

    Records are written as each batch finishes, so a crash keeps what was done; ``options`` and the other settings
    go into every SDF record.
    """
    settings = {"method": method, "seed": seed, "relaxation": relax, "batch_size": batch_size,
                **{k: v for k, v in options.items() if v is not None}}
    summary = GenerateSummary(Path(output))
    outcomes = generate_outcomes(inputs, n, method, generate_fn, seed, batch_size, relax, max_resample,
                                 smiles_column, id_column, **options)
    from tqdm import tqdm

    with ConformerWriter(output, settings) as writer, tqdm(disable=not progress, unit="mol", desc="generate") as bar:
        for outcome in outcomes:
            record = outcome.record
            summary.total += 1
            bar.update(1)
            if outcome.stereo_missing:
                summary.stereo_dropped.append(Failure(
                    record.name, f"{outcome.stereo_missing} conformers still had wrong stereo after {max_resample} "
                    "resampling rounds and were not written", record.index, record.line))
            if outcome.mol is None:
                summary.failed.append(outcome.failure)
                log.info("failed %s", outcome.failure.describe())
            elif writer.write(ConformerRecord(record.index, record.name, outcome.mol)):
                summary.succeeded += 1
            else:
                summary.failed.append(writer.report.rejected[-1])
    summary.written = writer.report
    return summary

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

import numpy as np
from rdkit import Chem

from scidiff.commands import check_int

from .chem import Failure, bonds_from_3d_match, display_name
from .forcefield import RELAXATIONS, core_conformers, core_match, etkdg_conformers, relax_conformers
from .io import (ConformerRecord, ConformerWriter, InputRecord, WriteReport, check_output_path, iter_inputs,
                 read_conformers, record_from_mol, record_from_smiles, resolve_unassigned)
from .stereo import conformers_to_resample, fix_conformers, remove_conformers

__all__ = [
    "GenerateFn",
    "GenerationUnavailable",
    "GENERATORS",
    "METHODS",
    "DEFAULT_METHOD",
    "get_generator",
    "etkdg_generator",
    "etkdg_mmff_generator",
    "etkdg_mmff_xtb_generator",
    "scidiff_generator",
    "scidiff_denovo_generator",
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


@functools.lru_cache(maxsize=8)
def load_core(path: str) -> Chem.Mol:
    """The first molecule of a reference SDF with its 3D coordinates (hydrogens kept): a core to hold in place."""
    mols = read_conformers(path)
    if not mols:
        raise GenerationUnavailable(f"--core {path}: no molecule in the file")
    return Chem.Mol(mols[0], confId=mols[0].GetConformers()[0].GetId())


def _embedded(mol: Chem.Mol, n: int, seed: int, mmff: bool, core: str | None) -> Chem.Mol:
    """ETKDG (+ MMFF94) conformers of one molecule, with its ``core`` (a reference SDF path) held when given; a core
    that does not match becomes the molecule's ``generation_error``."""
    if core is None:
        return etkdg_conformers(mol, n, seed, mmff=mmff)
    try:
        return core_conformers(mol, load_core(core), n, seed, mmff=mmff)
    except ValueError as err:
        out = Chem.Mol(mol)
        out.RemoveAllConformers()
        out.SetProp("generation_error", str(err))
        return out


def etkdg_generator(mols: Sequence[Chem.Mol], n: int, seed: int = 0, core: str | None = None, **_: Any) -> list[Chem.Mol]:
    """RDKit ETKDGv3 (Riniker & Landrum 2015; Wang et al. 2020): the baseline."""
    return [_embedded(m, n, seed, False, core) for m in mols]


def etkdg_mmff_generator(mols: Sequence[Chem.Mol], n: int, seed: int = 0, core: str | None = None,
                         **_: Any) -> list[Chem.Mol]:
    """RDKit ETKDGv3 + MMFF94 (Halgren 1996): the baseline users would otherwise run."""
    return [_embedded(m, n, seed, True, core) for m in mols]


def etkdg_mmff_xtb_generator(mols: Sequence[Chem.Mol], n: int, seed: int = 0, **_: Any) -> list[Chem.Mol]:
    """ETKDGv3 + MMFF94, then GFN2-xTB minimisation (Bannwarth et al. 2019): the quantum-chemistry reference, ~0.4 s a conformer."""
    out = etkdg_mmff_generator(mols, n, seed)
    for mol in out:
        relax_conformers(mol, "xtb")
    return out


@functools.lru_cache(maxsize=4)
def _cached_model(checkpoint: str | None, device: str, bundled: str | None, torsional: bool = False):
    """Load a conformer model once per (weights, device): the bundled ``bundled`` weights unless a checkpoint is given;
    ``torsional``: a torsion score model (``scidiff train experiment=mol_torsion``), never bundled."""
    from .generate import bundled_weights, load_model

    try:
        if torsional:
            from .torsion_generate import load_torsion_model

            return load_torsion_model(checkpoint, device)
        return load_model(checkpoint or bundled_weights(bundled), device)
    except (FileNotFoundError, ValueError) as err:  # missing, truncated or foreign weights: the whole run cannot go on
        raise GenerationUnavailable(f"{'--torsion-checkpoint: ' if torsional else ''}{err}") from None


def _label(mols: list[Chem.Mol], **props: Any) -> list[Chem.Mol]:
    """Record on every conformer what made it (seed_method, sampler, steps, weights); written into each SDF record."""
    for mol in mols:
        for conf in mol.GetConformers():
            for key, value in props.items():
                if isinstance(value, int):
                    conf.SetIntProp(key, value)
                else:
                    conf.SetProp(key, str(value))
    return mols


def _model_generator(bundled: str) -> GenerateFn:
    """A trained model as a generator: a refiner (its run names the generator of its seeds) or a de novo model."""

    def generate_fn(mols: Sequence[Chem.Mol], n: int, seed: int = 0, *, sampler: str | None = None,
                    steps: int | None = None, device: str | None = None, checkpoint: str | None = None,
                    core: str | None = None, torsion_checkpoint: str | None = None,
                    refine_outside_domain: bool | None = None, torsion_t_start: float | None = None,
                    **_: Any) -> list[Chem.Mol]:
        from .generate import generate_conformers, refine_conformers

        model = _cached_model(checkpoint, device or "cpu", bundled)
        try:
            spec = model.sampler.with_overrides(sampler, steps)
        except ValueError as err:
            raise GenerationUnavailable(f"--sampler/--steps: {err}") from None
        made_by = {"sampler": spec.name, "steps": spec.steps, "weights": checkpoint or "bundled"}
        if model.seeds is None:
            if core is not None:
                raise GenerationUnavailable("--core needs seeds to hold the core in: use a refiner or etkdg, etkdg_mmff")
            return _label(generate_conformers(mols, model.net, model.diffusion, spec, n, seed), **made_by)
        if torsion_checkpoint is not None:
            if core is not None:
                raise GenerationUnavailable("--core cannot be combined with --torsion-checkpoint: torsional sampling "
                                            "would move the held core; leave one of them out")
            seeds = _torsional_seeds(mols, n, seed, torsion_checkpoint, device or "cpu", model.seeds, torsion_t_start)
        else:
            seeds = _label(get_generator(model.seeds)(mols, n, seed, core=core), seed_method=model.seeds)
        unembedded = [i for i, mol in enumerate(seeds) if mol.GetNumConformers() == 0 and core is None]
        # Strained cages get random-coordinate seeds inside etkdg_embed (conformer property ``embedding``); only a
        # molecule that no embedding path can place at all is seeded by the de novo model, the last resort.
        if unembedded:
            denovo = _label(scidiff_denovo_generator([mols[i] for i in unembedded], n, seed, device=device),
                            seed_method="scidiff_denovo")
            for i, mol in zip(unembedded, denovo):
                seeds[i] = mol if mol.GetNumConformers() else seeds[i]
        # Molecules unlike the refiner's training molecules keep their seeds, each conformer saying why.
        skipped = {} if refine_outside_domain or model.domain is None else {
            i: reason for i, mol in enumerate(seeds) if (reason := model.domain.outside(mol)) is not None}
        inside = [i for i in range(len(seeds)) if i not in skipped]
        refined = refine_conformers([seeds[i] for i in inside], model.net, model.diffusion, spec, seed)
        for i, mol in zip(inside, _label(refined, refined=1, **made_by)):
            seeds[i] = mol
        for i, reason in skipped.items():
            _label([seeds[i]], refined=0, refine_skipped=f"outside the refiner's training molecules: {reason}")
        return seeds

    generate_fn.__doc__ = (f"The trained scidiff model (bundled: {bundled}), with its run's sampler unless overridden; "
                           "a refiner leaves molecules outside its training domain at their seeds unless "
                           "refine_outside_domain.")
    return generate_fn


def _torsional_seeds(mols: Sequence[Chem.Mol], n: int, seed: int, torsion_checkpoint: str, device: str,
                     refiner_seeds: str, t_start: float | None = None) -> list[Chem.Mol]:
    """The refiner's seeds with torsional diffusion (Jing et al. 2022): ETKDG + MMFF94 local structures whose rotatable
    bonds' torsions the torsion model samples; molecules without rotatable bonds keep their ETKDG + MMFF94 conformers,
    the refiner's usual seeds. Every conformer's ``method_used`` property says which path made it. ``t_start``: SDEdit
    from the local structures' own torsions at that sigma (``torsional_conformers``)."""
    from .torsion_generate import torsional_conformers

    torsion = _cached_model(torsion_checkpoint, device, None, torsional=True)
    if torsion.seeds != refiner_seeds:
        raise GenerationUnavailable(f"--torsion-checkpoint {torsion_checkpoint}: its local structures come from "
                                    f"{torsion.seeds!r}, the refiner's seeds from {refiner_seeds!r}; they must agree")
    seeds = torsional_conformers(mols, torsion, n, seed, t_start=t_start)
    for mol in seeds:
        for conf in mol.GetConformers():
            sampled = conf.GetIntProp("torsional")
            conf.SetProp("seed_method", f"{refiner_seeds}+torsional" if sampled else refiner_seeds)
            conf.SetProp("method_used", "scidiff_torsional" if sampled else "scidiff_refine")
            conf.SetProp("torsion_weights", torsion_checkpoint)
    return seeds


# The bundled refiner: ETKDG + MMFF94 seeds moved towards DFT geometries (trained on QM9 pairs).
scidiff_generator = _model_generator("qm9_refine")
# The bundled de novo model: conformers from Gaussian noise (the first, CPU-trained QM9 model).
scidiff_denovo_generator = _model_generator("qm9")

GENERATORS: dict[str, GenerateFn] = {
    "etkdg": etkdg_generator,
    "etkdg_mmff": etkdg_mmff_generator,
    "etkdg_mmff_xtb": etkdg_mmff_xtb_generator,
    "scidiff": scidiff_generator,
    "scidiff_denovo": scidiff_denovo_generator,
}
METHODS = tuple(GENERATORS)
# The refiner beats ETKDG + MMFF94 on QM9 ground states (median 0.087 vs 0.108 Å, n = 5, all 1,895 test molecules) and
# leaves other molecules at ETKDG + MMFF94 (its domain), so it is what a user gets unless they ask for another.
DEFAULT_METHOD = "scidiff"


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


def _finish(mol: Chem.Mol, reference: Chem.Mol, relax: str, core: str | None = None) -> list[int]:
    """Relax, stereo-fix (mirror) and drop the conformers still wrong (stereo, or bonds as re-perceived from 3D);
    with a core, record each conformer's RMSD
    to it (Å, no superposition: the core stays in its frame). Returns the dropped conformer ids."""
    relax_conformers(mol, relax)
    bad = conformers_to_resample(fix_conformers(mol, reference))
    # A conformer whose re-perceived bonds differ (atoms pushed within bonding distance) is dropped like wrong stereo.
    bad += [c.GetId() for c in mol.GetConformers() if c.GetId() not in bad and not bonds_from_3d_match(mol, c.GetId())]
    remove_conformers(mol, bad)
    if core is not None and mol.GetNumConformers():
        held = load_core(core)
        pairs = core_match(mol, held)
        want = held.GetConformer().GetPositions()[[j for _, j in pairs]]
        for conf in mol.GetConformers():
            got = conf.GetPositions()[[i for i, _ in pairs]]
            conf.SetDoubleProp("core_rmsd", float(np.sqrt(((got - want) ** 2).sum(1).mean())))
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
    core = options.get("core")
    missing = len(_finish(mol, record.mol, relax, core))
    for round_ in range(1, max_resample + 1):
        if not missing:
            break
        extra = generate_batch(generate_fn, [record.mol], missing, seed + round_ * RESAMPLE_SEED_STRIDE, **options)[0]
        if extra is None or extra.GetNumConformers() == 0:
            break
        missing -= extra.GetNumConformers() - len(_finish(extra, record.mol, relax, core))
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
                      method: str = DEFAULT_METHOD, generate_fn: GenerateFn | None = None, seed: int = 0,
                      batch_size: int = 32, relax: str = "none", max_resample: int = 2,
                      smiles_column: str | None = None, id_column: str | None = None,
                      unassigned_stereo: str = "keep-any", **options: Any) -> Iterator[Outcome]:
    """The generation pipeline, one Outcome per input in input order (lazily, batch by batch; settings are checked
    at once).

    Deterministic per (seed, batch_size): batch b gets seed + index of its first molecule. ``options`` (sampler,
    steps, device, checkpoint) go to the generator. ``unassigned_stereo`` (keep-any, enumerate, refuse): what to do
    with stereo an input leaves open (``io.resolve_unassigned``).
    """
    check_settings(n, batch_size, max_resample, relax, options)
    records = resolve_unassigned(_records(inputs, smiles_column, id_column), unassigned_stereo)
    return _outcomes(generate_fn or get_generator(method), records, n, seed, batch_size, relax, max_resample, options)


def check_settings(n: int, batch_size: int, max_resample: int, relax: str, options: dict[str, Any]) -> None:
    """Refuse an invalid setting before anything runs, naming it."""
    for name, value, low in (("n (-n/--num-conformers)", n, 1), ("batch_size (--batch-size)", batch_size, 1),
                             ("max_resample (--max-resample)", max_resample, 0)):
        check_int(name, value, low)
    if relax not in RELAXATIONS:
        raise ValueError(f"relax must be one of {', '.join(RELAXATIONS)}, got {relax!r}")
    sampler, steps = options.get("sampler"), options.get("steps")
    check_int("steps (--steps)", steps, 1, optional=True)
    if sampler is not None:
        from scidiff.core.samplers import SAMPLERS

        if sampler not in SAMPLERS:
            raise ValueError(f"sampler (--sampler): unknown {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def _outcomes(generate_fn: GenerateFn, records: Iterator[InputRecord], n: int, seed: int, batch_size: int, relax: str,
              max_resample: int, options: dict[str, Any]) -> Iterator[Outcome]:
    """generate_outcomes' loop, batch by batch: generate, then complete each molecule (relax, stereo, resample)."""
    for batch in _batches(records, batch_size):
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


def generate_mols(inputs: str | Path | Iterable[Chem.Mol | str], n: int = 10, method: str = DEFAULT_METHOD,
                  **options: Any) -> list[Chem.Mol | None]:
    """Molecules (or SMILES, or a path) in, RDKit molecules with n stereo-checked conformers out (None where an
    input failed; the reason is logged). Same options and behaviour as ``generate`` without the SDF."""
    out: list[Chem.Mol | None] = []
    for outcome in generate_outcomes(inputs, n, method, **options):
        if outcome.failure:
            log.warning("%s", outcome.failure.describe())
        elif (warning := outcome.record.stereo_warning()) is not None:
            log.warning("%s", warning.describe())
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
    unassigned: list[Failure] = field(default_factory=list)  # inputs written with stereo the input left open
    written: WriteReport = field(default_factory=WriteReport)

    def line(self) -> str:
        return f"{self.succeeded}/{self.total} molecules succeeded ({self.written.conformers} conformers written to {self.output})"


def generate(inputs: str | Path | Iterable[InputRecord | Chem.Mol | str], output: str | Path, n: int = 10,
             method: str = DEFAULT_METHOD, generate_fn: GenerateFn | None = None, seed: int = 0, batch_size: int = 32,
             relax: str = "none", max_resample: int = 2, progress: bool = False, smiles_column: str | None = None,
             id_column: str | None = None, unassigned_stereo: str = "keep-any",
             on_outcome: Callable[[Outcome, int], None] | None = None, **options: Any) -> GenerateSummary:
    """Generate n conformers per input molecule and write them to an SDF; the Python face of ``scidiff mol generate``.

    Records are written as each batch finishes, so a crash keeps what was done; ``options`` and the other settings
    go into every SDF record. ``on_outcome(outcome, conformers_written)`` is called after each input (the sharded
    run's manifest is built from it).
    """
    output = check_output_path(output, [inputs] if isinstance(inputs, (str, Path)) else [])
    settings = {"method": method, "seed": seed, "relaxation": relax, "batch_size": batch_size,
                **({} if unassigned_stereo == "keep-any" else {"unassigned_stereo": unassigned_stereo}),
                **{k: v for k, v in options.items() if v is not None}}
    summary = GenerateSummary(output)
    outcomes = generate_outcomes(inputs, n, method, generate_fn, seed, batch_size, relax, max_resample,
                                 smiles_column, id_column, unassigned_stereo, **options)
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
            written = 0
            if outcome.mol is None:
                summary.failed.append(outcome.failure)
                log.info("failed %s", outcome.failure.describe())
            elif written := writer.write(ConformerRecord(record.index, record.name, outcome.mol)):
                summary.succeeded += 1
                if (warning := record.stereo_warning()) is not None:
                    summary.unassigned.append(warning)
            else:
                summary.failed.append(writer.report.rejected[-1])
            if on_outcome is not None:
                on_outcome(outcome, written)
    summary.written = writer.report
    return summary

"""``scidiff mol generate`` and ``scidiff mol evaluate``: argparse builders, runners and the same behaviour as a Python API.

The generation backend is a parameter (``generate_fn(mols, n, seed, **options) -> list[mol with conformers]``,
see ``evaluate.GenerateFn``); ``--method`` picks RDKit ETKDG, ETKDG + MMFF, or the scidiff model.
Pipeline per molecule: generate -> relax (none / MMFF94 / GFN2-xTB) -> stereo check and mirror fix -> resample
the still-wrong conformers (bounded) -> stereo-checked incremental SDF write (io.ConformerWriter).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from rdkit import Chem

from .evaluate import (BASELINES, DELTAS_DRUGS, DELTAS_QM9, GenerateFn, GenerationUnavailable, compare_table,
                       evaluate_method, generate_batch, mmff_relax, save_results, xtb_relax)
from .io import (SDF_SUFFIXES, ConformerRecord, ConformerWriter, InputRecord, WriteReport, format_suffix, iter_inputs,
                 read_conformers, record_from_mol, record_from_smiles)
from .stereo import conformers_to_resample, fix_conformers, remove_conformers

__all__ = [
    "METHODS",
    "RELAXATIONS",
    "REFERENCE_SETS",
    "scidiff_generator",
    "get_generator",
    "relax_conformers",
    "GenerateSummary",
    "Outcome",
    "generate_outcomes",
    "generate_mols",
    "generate",
    "add_generate_command",
    "add_evaluate_command",
    "run_generate",
    "run_evaluate",
]

log = logging.getLogger(__name__)

METHODS = ("etkdg", "etkdg_mmff", "scidiff")
RELAXATIONS = ("none", "mmff", "xtb")
# name -> (data-root relative file, RMSD thresholds); qm9-dft is ground-state recovery on the DFT test split
REFERENCE_SETS = {
    "qm9-dft": ("qm9/qm9_dft_test.npz", DELTAS_QM9),
    "geom-qm9": ("reference/geom_qm9_ref.sdf", DELTAS_QM9),
    "geom-drugs": ("reference/geom_drugs_ref.sdf", DELTAS_DRUGS),
}
RESAMPLE_SEED_STRIDE = 1_000_003  # resampling round r uses seed + r * stride: deterministic, away from the first draws


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
    """The trained scidiff model as a generator (its run's sampler unless --sampler/--steps override it)."""
    from scidiff.core.config import SamplerSpec

    from .generate import model_generate_fn

    model, diffusion, spec = _cached_model(checkpoint, device or "cpu")
    if sampler is not None or steps is not None:
        spec = SamplerSpec(sampler or spec.name, steps or spec.steps,
                           spec.options if sampler in (None, spec.name) else {})
    return model_generate_fn(model, diffusion, spec)(mols, n, seed)


def get_generator(method: str) -> GenerateFn:
    """The generate_fn behind a ``--method`` name."""
    if method == "scidiff":
        return scidiff_generator
    if method not in BASELINES:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return BASELINES[method]


def relax_conformers(mol: Chem.Mol, relax: str, xtb_steps: int = 200) -> None:
    """Relax every conformer in place: 'none', 'mmff' (MMFF94, skipped with a warning when unparameterised) or 'xtb'."""
    if relax == "none" or mol.GetNumConformers() == 0:
        return
    if relax == "mmff":
        if not mmff_relax(mol):
            log.warning("%s: no MMFF94 parameters, conformers left unrelaxed", mol.GetProp("_Name"))
    elif relax == "xtb":
        for conf in mol.GetConformers():
            conf.SetDoubleProp("xtb_energy", xtb_relax(mol, conf.GetId(), steps=xtb_steps))
    else:
        raise ValueError(f"relax must be one of {', '.join(RELAXATIONS)}, got {relax!r}")


@dataclass
class GenerateSummary:
    """Outcome of a generation run: inputs, successes, failures (index, name, reason) and the writer's report."""

    output: Path
    total: int = 0
    succeeded: int = 0
    failed: list[tuple[int, str, str]] = field(default_factory=list)
    stereo_dropped: list[tuple[int, str, int]] = field(default_factory=list)  # (index, name, conformers not written)
    written: WriteReport = field(default_factory=WriteReport)

    def line(self) -> str:
        return f"{self.succeeded}/{self.total} molecules succeeded ({self.written.conformers} conformers written to {self.output})"


def _batches(records: Iterable[InputRecord], size: int) -> Iterator[list[InputRecord]]:
    batch: list[InputRecord] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


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
    error: str | None = None
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
        good = [r for r in batch if r.ok]
        mols = generate_batch(generate_fn, [r.mol for r in good], n, seed + batch[0].index, **options) if good else []
        results = dict(zip((r.index for r in good), mols))
        for record in batch:
            if not record.ok:
                yield Outcome(record, None, record.error or "unreadable input")
                continue
            mol, missing = _complete(generate_fn, record, results[record.index], n, seed + batch[0].index, relax,
                                     max_resample, options)
            if mol is None or mol.GetNumConformers() == 0:
                reason = (mol.GetProp("generation_error") if mol is not None and mol.HasProp("generation_error")
                          else f"every conformer had wrong stereo after {max_resample} resampling rounds" if missing
                          else "no conformer generated")
                yield Outcome(record, None, reason, missing)
                continue
            mol.SetProp("_Name", record.name)
            yield Outcome(record, mol, None, missing)


def generate_mols(inputs: str | Path | Iterable[Chem.Mol | str], n: int = 10, method: str = "etkdg",
                  **options: Any) -> list[Chem.Mol | None]:
    """Molecules (or SMILES, or a path) in, RDKit molecules with n stereo-checked conformers out (None where an
    input failed; the reason is logged). Same options and behaviour as ``generate`` without the SDF."""
    out: list[Chem.Mol | None] = []
    for outcome in generate_outcomes(inputs, n, method, **options):
        if outcome.error:
            log.warning("input %d (%s): %s", outcome.record.index, outcome.record.name, outcome.error)
        out.append(outcome.mol)
    return out


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
                summary.stereo_dropped.append((record.index, record.name, outcome.stereo_missing))
            if outcome.mol is None:
                summary.failed.append((record.index, record.name, outcome.error))
                log.info("failed input %d (%s): %s", record.index, record.name, outcome.error)
            elif writer.write(ConformerRecord(record.index, record.name, outcome.mol, record.mol)):
                summary.succeeded += 1
            else:
                summary.failed.append((record.index, record.name, "every conformer refused by the stereo check"))
    summary.written = writer.report
    return summary


# -------------------------------------------------------------------------------------------------------- CLI


def add_generate_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``generate`` (INPUT -n N -o OUT.sdf) to an argparse subparsers object."""
    p = subparsers.add_parser(
        "generate", help="generate 3D conformers (explicit H) for SMILES / .smi / .csv / .sdf input into an SDF",
        description="One SDF record per conformer, named by the input id, with input_index, conf_id and the settings "
                    "used. Stereo of every conformer is checked against the input (mirror fix, bounded resampling); "
                    "wrong ones are never written. Exit status 1 only when nothing could be generated.")
    p.add_argument("input", help="a SMILES string, or a .smi/.csv/.tsv/.txt (optionally .gz) or .sdf file")
    p.add_argument("-n", "--num-conformers", type=int, default=10, help="conformers per molecule (default 10)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .sdf (written atomically)")
    p.add_argument("--method", choices=METHODS, default="etkdg", help="generator (default etkdg)")
    p.add_argument("--sampler", default=None, help="scidiff sampler (model only), e.g. ddim, heun")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (model only)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed and batch size -> same output")
    p.add_argument("--batch-size", type=int, default=32, help="molecules per generator call (default 32)")
    p.add_argument("--device", default=None, help="torch device for the model, e.g. cpu, cuda")
    p.add_argument("--checkpoint", default=None, help="model weights for --method scidiff (default: the bundled ones)")
    p.add_argument("--relax", choices=RELAXATIONS, default="none", help="post-relaxation (default none)")
    p.add_argument("--max-resample", type=int, default=2, help="resampling rounds for conformers with wrong stereo")
    p.add_argument("--smiles-column", default=None, help="SMILES column name of a table with a header")
    p.add_argument("--id-column", default=None, help="id column name of a table with a header")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(mol_run=run_generate)
    return p


def run_generate(args: argparse.Namespace, generate_fn: GenerateFn | None = None) -> int:
    """Run ``generate`` from parsed arguments; prints failures and the 'N/M molecules succeeded' line."""
    try:
        summary = _generate_from_args(args, generate_fn)
    except GenerationUnavailable as exc:
        print(f"scidiff: error: {exc}", file=sys.stderr)
        return 2
    for index, name, reason in summary.failed:
        print(f"failed: input {index} ({name}): {reason}", file=sys.stderr)
    for index, name, missing in summary.stereo_dropped:
        print(f"stereo: input {index} ({name}): {missing} conformers still had wrong stereo after {args.max_resample} "
              "resampling rounds and were not written", file=sys.stderr)
    for rejected in summary.written.rejected:
        print(f"not written: input {rejected.index} ({rejected.name}) conformer {rejected.conf_id}: {rejected.reason}", file=sys.stderr)
    print(summary.line())
    return 0 if summary.succeeded else 1


def _generate_from_args(args: argparse.Namespace, generate_fn: GenerateFn | None) -> GenerateSummary:
    return generate(args.input, args.output, n=args.num_conformers, method=args.method, generate_fn=generate_fn,
                    seed=args.seed, batch_size=args.batch_size, relax=args.relax, max_resample=args.max_resample,
                    progress=not args.no_progress, smiles_column=args.smiles_column, id_column=args.id_column,
                    sampler=args.sampler, steps=args.steps, device=args.device, checkpoint=args.checkpoint)


def add_evaluate_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``evaluate`` (methods or a generated SDF against a reference set) to an argparse subparsers object."""
    p = subparsers.add_parser(
        "evaluate", help="score generators side by side: ground state vs QM9 DFT, COV/AMR vs reference ensembles",
        description="qm9-dft: min heavy-atom RMSD to the QM9 DFT geometry (test split), -n conformers each. "
                    "geom-qm9 / geom-drugs / PATH.sdf: COV/AMR recall and precision with 2K conformers for K "
                    "references (locally built xTB-refined RDKit ensembles, not GEOM/CREST). Plus PoseBusters, "
                    "stereo preservation, speed and optional GFN2-xTB strain.")
    p.add_argument("--reference", default="qm9-dft",
                   help=f"{', '.join(REFERENCE_SETS)}, a reference .sdf grouped by mol_id, or a SMILES table "
                        "(.smi/.csv: PoseBusters, stereo and speed only)")
    p.add_argument("--smiles-column", default=None, help="SMILES column of a --reference table with a header")
    p.add_argument("--method", nargs="+", choices=METHODS, default=["etkdg", "etkdg_mmff"], help="generators to compare")
    p.add_argument("--generated", type=Path, nargs="*", default=[], help="also score these generated SDFs (matched by SMILES)")
    p.add_argument("-n", "--num-conformers", type=int, default=None,
                   help="conformers per molecule (default: 5 for qm9-dft, 2K for ensembles)")
    p.add_argument("--limit", type=int, default=None, help="first N molecules of the reference set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--sampler", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--checkpoint", default=None, help="model weights for --method scidiff")
    p.add_argument("--no-posebusters", action="store_true", help="skip the PoseBusters checks")
    p.add_argument("--strain-steps", type=int, default=0, help="GFN2-xTB relaxation steps for strain (0: off; slow)")
    p.add_argument("--json", type=Path, default=None, help="write every result (per molecule too) here")
    p.set_defaults(mol_run=run_evaluate)
    return p


def load_reference_set(reference: str, limit: int | None = None, smiles_column: str | None = None) -> dict[str, Any]:
    """Inputs and references of an evaluation set: {inputs, dft | references (neither for a SMILES table), deltas,
    skipped, label}."""
    from scidiff.data import data_path

    from .chem import MoleculeError, mol_from_smiles
    from .datasets import Skipped, read_qm9

    if reference == "qm9-dft":
        built = read_qm9("test", limit=limit)
        return {"inputs": built.molecules, "dft": built.molecules, "deltas": DELTAS_QM9, "skipped": built.skipped,
                "label": "QM9 DFT test split (ground-state recovery)"}
    relative, deltas = REFERENCE_SETS.get(reference, (None, DELTAS_DRUGS if "drugs" in reference.lower() else DELTAS_QM9))
    path = data_path(relative) if relative else Path(reference)
    if not path.is_file():
        raise FileNotFoundError(f"no reference file at {path}")
    if format_suffix(path) not in SDF_SUFFIXES:  # a SMILES table: inputs only, scored for validity, stereo and speed
        records = list(itertools.islice(iter_inputs(path, smiles_column), limit))  # parse only the lines used
        return {"inputs": [r.mol for r in records if r.ok], "deltas": deltas,
                "skipped": [Skipped(f"line {r.line} ({r.name})", r.error) for r in records if not r.ok],
                "label": f"{path.name} (SMILES only: validity, stereo and speed, no reference geometry)"}
    refs = read_conformers(path, group_by="mol_id")[:limit]
    inputs, kept, skipped = [], [], []
    for ref in refs:
        name = f"mol_id {ref.GetProp('mol_id')}" if ref.HasProp("mol_id") else ref.GetProp("_Name")
        try:
            inputs.append(mol_from_smiles(ref.GetProp("smiles"), name=name))
            kept.append(ref)
        except (MoleculeError, KeyError) as exc:
            skipped.append(Skipped(name, str(exc)))
    return {"inputs": inputs, "references": kept, "deltas": deltas, "skipped": skipped,
            "label": f"{path.name} (xTB-refined RDKit ensembles, not GEOM/CREST)"}


def _file_generator(path: Path) -> GenerateFn:
    """A generate_fn that serves conformers from a generated SDF, matched by canonical SMILES, in the input's atom order."""
    by_smiles: dict[str, Chem.Mol] = {}
    for mol in read_conformers(path, group_by="input_index"):
        key = mol.GetProp("smiles") if mol.HasProp("smiles") else Chem.MolToSmiles(Chem.RemoveHs(mol))
        by_smiles.setdefault(key, mol)

    def serve(mols: Sequence[Chem.Mol], n: int, seed: int = 0, **_: Any) -> list[Chem.Mol]:
        out = []
        for mol in mols:
            found = by_smiles.get(Chem.MolToSmiles(Chem.RemoveHs(mol)))
            match = found.GetSubstructMatch(mol) if found is not None else ()
            if not match:
                empty = Chem.Mol(mol)
                empty.RemoveAllConformers()
                out.append(empty)
                continue
            out.append(Chem.RenumberAtoms(found, list(match)))  # input atom order, for the stereo comparison
        return out

    return serve


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``evaluate``: one result per method / file, a comparison table on stdout, optional JSON."""
    data = load_reference_set(args.reference, args.limit, args.smiles_column)
    if "references" in data:
        counts = [2 * ref.GetNumConformers() for ref in data["references"]] if args.num_conformers is None \
            else args.num_conformers
    else:
        counts = args.num_conformers or 5
    options = {k: v for k in ("sampler", "steps", "device", "checkpoint") if (v := getattr(args, k)) is not None}
    runs = [(m, get_generator(m)) for m in args.method] + [(str(p), _file_generator(p)) for p in args.generated]
    results = []
    for name, fn in runs:
        results.append(evaluate_method(name, fn, data["inputs"], counts, seed=args.seed, dft=data.get("dft"),
                                       references=data.get("references"), deltas=data["deltas"],
                                       posebusters=not args.no_posebusters, strain_steps=args.strain_steps,
                                       batch_size=args.batch_size, skipped=data["skipped"], **options))
    for result in results[len(args.method):]:  # read from a file: generation speed was not measured
        result["summary"]["conf/s"] = result["summary"]["conf/cpu-s"] = float("nan")
    print(f"reference: {data['label']}; {len(data['inputs'])} molecules, {len(data['skipped'])} skipped")
    print(compare_table(results))
    if args.json:
        save_results(args.json, {"reference": data["label"], "results": results})
    return 0

"""Sharded, resumable ``scidiff mol generate``: a large input into a folder of SDF shards that a rerun continues.

``OUT_DIR`` holds:

- ``settings.json``: the run's settings (method, n, seed, batch size, relaxation, sampler/steps/checkpoint, shard size
  and the input: its path, size and a hash of its first and last MiB). A rerun with other settings is refused,
  naming each difference, before anything is written: its shards would not continue the same run.
- ``shard_00000.sdf``, ``shard_00001.sdf``, ...: the conformers of inputs [k*N, (k+1)*N), each written by the
  one-file pipeline (``pipeline.generate``, so records are those of the one-file run) into a temporary file that
  ``atomic_write`` renames into place: a shard is whole or absent.
- ``manifest.jsonl``: one JSON line per finished shard, appended after its SDF is in place: ``shard``, ``file``,
  ``start``/``stop`` (its input indices), ``conformers``, ``done`` ([input index, conformers written] pairs),
  ``failed``, ``stereo_dropped`` and ``unassigned`` (``chem.Failure`` fields: name, reason, index, line).

A shard is finished when its manifest line is there; a rerun steps over the input records of finished shards without
parsing them (``io.iter_inputs(skip=...)``) and starts at the first unfinished one, so every input index ends up in
exactly one shard or failure list. Appending a line (fsynced) rather than rewriting the manifest keeps a run of 10^4
shards linear; a line torn by a kill is detected (no newline, or not JSON) and dropped on the next run, which then
redoes that shard.

Conformers equal the one-file run's when N is a multiple of --batch-size: each shard is its own sequence of batches,
and a batch's seed is the seed plus the index of its first molecule.

With ``ray`` (``--ray [ADDRESS]``, the ``scidiff[ray]`` extra) the same shards run through Ray Data on a cluster:
``map_batches`` over the unfinished shard numbers with a pool of ``ShardWorker`` actors, each of which reads its
shard's records from the input itself (the input must be readable at the same path on every node), writes the shard
with the same ``_write_shard`` and returns its manifest line. The model a method needs is loaded once per actor (the
pipeline's cache lives as long as the actor's process). Only the driver writes the manifest, in shard order: a shard
that finishes early waits in memory for the ones before it. Ray restarts a killed actor and retries its shard
(Ray Data's actor defaults: unlimited restarts and task retries); the shard's SDF is whole or absent, so the retry
rewrites it once and nothing is duplicated. Shards are the same bytes as those of a run without Ray.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from scidiff.commands import atomic_write, check_int, check_output, remove_stale_temps

from .chem import Failure
from .io import InputRecord, count_inputs, iter_inputs
from .pipeline import DEFAULT_METHOD, GenerateFn, GenerateSummary, Outcome, check_settings, generate

__all__ = ["MANIFEST", "SETTINGS", "shard_name", "run_settings", "read_manifest", "ShardedSummary", "RayOptions",
           "ShardWorker", "generate_shards"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
SETTINGS = "settings.json"
FINGERPRINT_BYTES = 1 << 20  # hashed at each end of the input: an edited or appended file is caught without reading it all

# setting -> how the user gives it, for the refusal message
OPTIONS = {"method": "--method", "n": "-n/--num-conformers", "seed": "--seed", "batch_size": "--batch-size",
           "relax": "--relax", "max_resample": "--max-resample", "sampler": "--sampler", "steps": "--steps",
           "checkpoint": "--checkpoint", "torsion_checkpoint": "--torsion-checkpoint", "core": "--core", "unassigned_stereo": "--unassigned-stereo",
           "refine_outside_domain": "--refine-outside-domain",
           "smiles_column": "--smiles-column", "id_column": "--id-column", "shard_size": "--shard-size",
           "input": "the input", "input_bytes": "the input's size", "input_sha256_ends": "the input's content"}


def shard_name(shard: int) -> str:
    return f"shard_{shard:05d}.sdf"


def _fingerprint(source: str | Path) -> dict[str, Any]:
    """The input as settings: a file by absolute path, size and a hash of its ends; a SMILES argument as itself."""
    path = Path(source)
    if not path.is_file():
        return {"input": str(source)}
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            handle.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            digest.update(handle.read())
    return {"input": str(path.resolve()), "input_bytes": size, "input_sha256_ends": digest.hexdigest()}


def run_settings(source: str | Path, shard_size: int, method: str, n: int, seed: int, batch_size: int, relax: str,
                 max_resample: int, unassigned_stereo: str, smiles_column: str | None, id_column: str | None,
                 options: dict[str, Any]) -> dict[str, Any]:
    """What a rerun must repeat to continue a run (the device is left out: it may change between runs)."""
    return {"method": method, "n": n, "seed": seed, "batch_size": batch_size, "relax": relax,
            "max_resample": max_resample, "unassigned_stereo": unassigned_stereo, "smiles_column": smiles_column,
            "id_column": id_column,
            **{k: options.get(k) for k in ("sampler", "steps", "checkpoint", "core")},
            **{k: v for k in ("torsion_checkpoint", "refine_outside_domain") if (v := options.get(k)) is not None},
            "shard_size": shard_size, **_fingerprint(source)}


def _check_rerun(out_dir: Path, settings: dict[str, Any]) -> bool:
    """True when ``out_dir`` continues a run of these settings, False when it starts one; a ValueError naming every
    difference when it holds shards of other settings, or shards without settings."""
    path = out_dir / SETTINGS
    finished = (out_dir / MANIFEST).exists() or any(out_dir.glob("shard_*.sdf"))
    if not path.exists():
        if finished:
            raise ValueError(f"{out_dir} holds shards but no {SETTINGS}: they are not from a sharded generate run; "
                             "give another -o/--output folder")
        return False
    stored = json.loads(path.read_text())
    current = json.loads(json.dumps(settings))
    if stored == current:
        return True
    if not finished:  # a run that stopped before its first shard (e.g. a wrong --checkpoint): nothing to continue
        return False
    keys = [*OPTIONS, *sorted((set(stored) | set(current)) - set(OPTIONS))]
    differ = [f"{key} ({OPTIONS.get(key, key)}): {stored.get(key)!r} before, {current.get(key)!r} now"
              for key in keys if stored.get(key) != current.get(key)]
    if differ:
        raise ValueError(f"{out_dir} was started with other settings, so a rerun cannot continue it; differing: "
                         f"{'; '.join(differ)}. Rerun with the settings of {path}, or give another -o/--output folder")
    return True


def read_manifest(out_dir: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """The manifest lines of the finished shards, in order; a last line torn by a kill is left out (and, with
    ``repair``, cut from the file so the next line appends cleanly). A ValueError when a listed shard is missing."""
    out_dir = Path(out_dir)
    path = out_dir / MANIFEST
    if not path.exists():
        return []
    text = path.read_text()
    entries, good = [], 0
    for line in text.splitlines(keepends=True):
        try:
            if not line.endswith("\n"):
                raise ValueError("no newline")
            entries.append(json.loads(line))
        except ValueError:
            if repair:
                log.warning("%s: dropping a line torn by a killed run; shard %d will be redone", path, len(entries))
            break
        good += len(line)
    if repair and good < len(text):
        atomic_write(path, lambda tmp: Path(tmp).write_text(text[:good]))
    for shard, entry in enumerate(entries):
        if entry.get("shard") != shard or not (out_dir / entry["file"]).is_file():
            raise ValueError(f"{path} line {shard + 1} lists {entry.get('file')!r} as shard {shard}, but "
                             f"{out_dir / shard_name(shard)} is missing or out of order: the folder was changed by "
                             "hand; give another -o/--output folder or delete this one to start over")
    return entries


def _append(path: Path, entry: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()
        os.fsync(handle.fileno())  # the line marks the shard done: it must not outlive a crash only in the page cache


def _failures(failures: list[Failure]) -> list[dict[str, Any]]:
    return [{k: v for k, v in dataclasses.asdict(f).items() if v is not None} for f in failures]


@dataclass
class ShardedSummary(GenerateSummary):
    """A sharded run's summary over every shard of the folder, those finished by earlier runs too."""

    shards: int = 0
    reused: int = 0  # shards finished by earlier runs

    def add(self, entry: dict[str, Any]) -> None:
        self.shards += 1
        self.total += entry["stop"] - entry["start"]
        self.succeeded += len(entry["done"])
        self.written.conformers += entry["conformers"]
        self.written.molecules += len(entry["done"])
        for key in ("failed", "stereo_dropped", "unassigned"):
            getattr(self, key).extend(Failure(**f) for f in entry[key])

    def line(self) -> str:
        return (f"{self.succeeded}/{self.total} molecules succeeded ({self.written.conformers} conformers in "
                f"{self.shards} shards in {self.output}; {self.reused} shards done by earlier runs)")


def _shard_records(first: InputRecord | None, records: Iterator[InputRecord], shard: int,
                   shard_size: int) -> Iterator[InputRecord]:
    """Shard ``shard``'s records: ``first`` and the next ones of ``records``; a RuntimeError when the input's indices
    and the shard arithmetic disagree, so that a wrong shard is never written."""
    if first is None or first.index != shard * shard_size:
        raise RuntimeError(f"shard {shard} would start at input {first.index if first else 'past the end'}, "
                           f"not {shard * shard_size}")
    return itertools.chain([first], itertools.islice(records, shard_size - 1))


def _write_shard(out_dir: Path, shard: int, start: int, records: Iterator[InputRecord], bar: Any | None,
                 options: dict[str, Any]) -> dict[str, Any]:
    """One shard through the one-file pipeline into its SDF (atomically); returns its manifest line."""
    done: list[list[int]] = []

    def observe(outcome: Outcome, written: int) -> None:
        if written:
            done.append([outcome.record.index, written])
        if bar is not None:
            bar.update(1)

    result: list[GenerateSummary] = []

    def write(tmp: str) -> None:
        try:
            result.append(generate(records, tmp, progress=False, on_outcome=observe, **options))
        except BaseException:
            # ConformerWriter keeps a partial file for a one-file run; here the rerun redoes the whole shard instead
            Path(tmp + ".partial").unlink(missing_ok=True)
            log.error("shard %d stopped; a rerun of the same command redoes it", shard)
            raise

    atomic_write(out_dir / shard_name(shard), write)
    summary = result[0]
    return {"shard": shard, "file": shard_name(shard), "start": start, "stop": start + summary.total,
            "conformers": summary.written.conformers, "done": done, "failed": _failures(summary.failed),
            "stereo_dropped": _failures(summary.stereo_dropped), "unassigned": _failures(summary.unassigned)}


def generate_shards(inputs: str | Path, out_dir: str | Path, shard_size: int, n: int = 10, method: str = DEFAULT_METHOD,
                    generate_fn: GenerateFn | None = None, seed: int = 0, batch_size: int = 32, relax: str = "none",
                    max_resample: int = 2, progress: bool = False, smiles_column: str | None = None,
                    id_column: str | None = None, unassigned_stereo: str = "keep-any", ray: "RayOptions | None" = None,
                    **options: Any) -> ShardedSummary:
    """``pipeline.generate`` into ``out_dir/shard_XXXXX.sdf`` of ``shard_size`` inputs each, resumable (module doc).

    The input is streamed: one shard's records at a time. ``ray``: run the unfinished shards on a Ray cluster instead
    of in this process (module doc). Returns the summary of every shard in the folder.
    """
    check_int("--shard-size", shard_size, 1)
    check_settings(n, batch_size, max_resample, relax, options)
    if unassigned_stereo == "enumerate":
        raise ValueError("--unassigned-stereo enumerate cannot be sharded: it turns one input into several numbered "
                         "records, so a shard's indices are only known after parsing every input before it; use "
                         "keep-any or refuse, or write one SDF without --shard-size")
    out_dir = Path(out_dir)
    if out_dir.suffix.lower() in (".sdf", ".sd"):
        raise ValueError(f"-o/--output {out_dir}: --shard-size writes a folder of shards; give a folder path, not an SDF")
    check_output(out_dir, "-o/--output", folder=True, inputs=[inputs])
    settings = run_settings(inputs, shard_size, method, n, seed, batch_size, relax, max_resample, unassigned_stereo,
                            smiles_column, id_column, options)
    resumed = _check_rerun(out_dir, settings)
    entries = read_manifest(out_dir) if resumed else []
    records = iter_inputs(inputs, smiles_column, id_column, skip=len(entries) * shard_size)
    first = next(records, None)  # a missing input or a bad column option fails here, before anything is written
    # From here on the folder is ours to write in.
    if resumed:
        entries = read_manifest(out_dir, repair=True)
    else:
        atomic_write(out_dir / SETTINGS, lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=1) + "\n"))
    shards = {p.name.split(".")[1] + ".sdf" for p in out_dir.glob(".shard_*.sdf.*.tmp*")}
    for name in (SETTINGS, MANIFEST, *sorted(shards)):
        remove_stale_temps(out_dir / name)  # a killed run's temporary files (atomic_write's, and their .partial)
    summary = ShardedSummary(out_dir, reused=len(entries))
    for entry in entries:
        summary.add(entry)
    pipeline_options = dict(n=n, method=method, generate_fn=generate_fn, seed=seed, batch_size=batch_size,
                            relax=relax, max_resample=max_resample, unassigned_stereo=unassigned_stereo, **options)
    from tqdm import tqdm

    with tqdm(disable=not progress, unit="mol", desc="generate", initial=len(entries) * shard_size) as bar:
        if ray is not None:
            if first is not None:
                _run_on_ray(ray, inputs, out_dir, shard_size, smiles_column, id_column, pipeline_options, len(entries),
                            summary, bar)
            return summary
        shard = len(entries)
        while first is not None:
            chunk = _shard_records(first, records, shard, shard_size)
            entry = _write_shard(out_dir, shard, first.index, chunk, bar, pipeline_options)
            _append(out_dir / MANIFEST, entry)
            summary.add(entry)
            shard += 1
            first = next(records, None)
    return summary


@dataclass(frozen=True)
class RayOptions:
    """Where and how ``--ray`` runs: the cluster (None: ``ray.init()``'s own choice, i.e. RAY_ADDRESS or a new local
    one; "auto", "HOST:6379" or "ray://HOST:10001"), how many actors (None: the cluster's CPUs over ``cpus``) and the
    CPUs / GPUs each one asks for."""

    address: str | None = None
    workers: int | None = None
    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        check_int("--ray-workers", self.workers, 1, optional=True)
        if not self.cpus > 0 or self.gpus < 0:
            raise ValueError(f"--ray-cpus must be > 0 and --ray-gpus >= 0, got {self.cpus} and {self.gpus}")


class ShardWorker:
    """A Ray Data actor that writes whole shards: ``{"shard": [k]}`` -> ``{"entry": [its manifest line as JSON]}``."""

    def __init__(self, inputs: str, out_dir: str, shard_size: int, smiles_column: str | None, id_column: str | None,
                 options: dict[str, Any], threads: int):
        from scidiff.commands import set_threads

        set_threads(threads)  # the CPUs Ray gave this actor, not the node's: actors must not oversubscribe their node
        self.inputs, self.out_dir, self.shard_size = inputs, Path(out_dir), shard_size
        self.columns, self.options = (smiles_column, id_column), options

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        lines = []
        for shard in (int(k) for k in batch["shard"]):
            start = shard * self.shard_size
            records = iter_inputs(self.inputs, *self.columns, skip=start)
            chunk = _shard_records(next(records, None), records, shard, self.shard_size)
            entry = _write_shard(self.out_dir, shard, start, chunk, None, self.options)
            lines.append(json.dumps(entry))
        return {"entry": lines}


def _run_on_ray(ray_options: RayOptions, inputs: str | Path, out_dir: Path, shard_size: int, smiles_column: str | None,
                id_column: str | None, pipeline_options: dict[str, Any], finished: int, summary: ShardedSummary,
                bar: Any) -> None:
    """Shards ``finished``.. of the input through Ray Data's actor pool; the driver appends their manifest lines in order."""
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray: pip install 'scidiff[ray]'") from None
    num_shards = -(-count_inputs(inputs, smiles_column, id_column) // shard_size)
    started = not ray.is_initialized()
    if started:
        ray.init(address=ray_options.address, include_dashboard=False, configure_logging=False)
    ray_data_log = logging.getLogger("ray.data")
    level = ray_data_log.level
    try:
        workers = ray_options.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // ray_options.cpus))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver's own bar counts molecules
        ray_data_log.setLevel(logging.ERROR)  # not the notes on disabled bars and a finished dataset; errors still show
        shards = ray.data.from_items([{"shard": k} for k in range(finished, num_shards)],
                                     override_num_blocks=num_shards - finished)  # one block per shard: one task each
        lines = shards.map_batches(
            ShardWorker, batch_size=1, concurrency=workers, num_cpus=ray_options.cpus, num_gpus=ray_options.gpus,
            fn_constructor_kwargs=dict(inputs=str(Path(inputs).resolve()) if Path(inputs).is_file() else str(inputs),
                                       out_dir=str(out_dir.resolve()), shard_size=shard_size,
                                       smiles_column=smiles_column, id_column=id_column, options=pipeline_options,
                                       threads=max(1, int(ray_options.cpus))))
        waiting: dict[int, dict[str, Any]] = {}
        next_shard = finished
        for row in lines.iter_rows():
            entry = json.loads(row["entry"])
            waiting[entry["shard"]] = entry
            bar.update(entry["stop"] - entry["start"])
            while next_shard in waiting:
                entry = waiting.pop(next_shard)
                _append(out_dir / MANIFEST, entry)
                summary.add(entry)
                next_shard += 1
    finally:
        ray_data_log.setLevel(level)
        if started:
            ray.shutdown()
    for shard in range(finished, num_shards):
        remove_stale_temps(out_dir / shard_name(shard))  # left by actors that Ray killed and retried

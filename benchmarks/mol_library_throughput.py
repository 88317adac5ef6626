"""Library-scale conformer generation: molecules/s of the plain CLI, the sharded CLI and Ray Data with 1 and 2
workers, on the same drug-like molecules, in one run (issue: conformers for a million-molecule library).

Every run is the command a user types, in its own process, timed from start to exit (Ray's start-up of a local
cluster included); runs alternate over ``--rounds``. The outputs are then compared: the sharded and Ray runs must hold
the same records as the plain run (shard size a multiple of --batch-size), and every input index exactly once.

    OMP_NUM_THREADS=1 python benchmarks/mol_library_throughput.py --limit 2000 --out runs/eval/library

Prints a table: wall time, molecules/s, the ratio to the sharded CLI (Ray's overhead at 1 worker) and the scaling
from 1 to 2 workers; plus molecules/hour per core, the figure behind the README's estimate for 10^7 molecules.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from scidiff.data import data_path


def _records(path: Path) -> bytes:
    """SDF text of a file or a folder of shards, without RDKit's per-file record counter in property headers."""
    files = sorted(path.glob("shard_*.sdf")) if path.is_dir() else [path]
    text = b"".join(p.read_bytes() for p in files)
    return re.sub(rb"^(>  <[^>]+>)  \(\d+\) *$", rb"\1", text, flags=re.M)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=None, help="SMILES table (default: druglike/znp.50k.smi.gz of the data root)")
    parser.add_argument("--limit", type=int, default=2000, help="first N molecules")
    parser.add_argument("--method", default="etkdg")
    parser.add_argument("-n", type=int, default=5, help="conformers per molecule")
    parser.add_argument("--shard-size", type=int, default=128, help="a multiple of the batch size (32)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/eval/library"))
    args = parser.parse_args()

    source = Path(args.input) if args.input else data_path("druglike/znp.50k.smi.gz")
    args.out.mkdir(parents=True, exist_ok=True)
    smi = args.out / "input.smi"
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt") as handle, open(smi, "w") as out:
        for _, line in zip(range(args.limit), handle):
            out.write(line)
    common = ["--method", args.method, "-n", str(args.n), "--no-progress", "--threads", "1"]
    runs = {
        "plain": lambda o: ["-o", str(o.with_suffix(".sdf"))],
        "sharded": lambda o: ["-o", str(o), "--shard-size", str(args.shard_size)],
        "ray, 1 worker": lambda o: ["-o", str(o), "--shard-size", str(args.shard_size), "--ray", "--ray-workers", "1"],
        "ray, 2 workers": lambda o: ["-o", str(o), "--shard-size", str(args.shard_size), "--ray", "--ray-workers", "2"],
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, Path] = {}
    for round_ in range(args.rounds):
        for k, (name, extra) in enumerate(runs.items()):
            target = args.out / f"run{k}"
            shutil.rmtree(target, ignore_errors=True)
            target.with_suffix(".sdf").unlink(missing_ok=True)
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "scidiff.cli", "mol", "generate", str(smi), *extra(target),
                                   *common], env=env, capture_output=True, text=True)
            times[name].append(time.perf_counter() - start)
            if done.returncode != 0:
                sys.exit(f"{name}: exit {done.returncode}\n{done.stderr[-3000:]}")
            outputs[name] = target.with_suffix(".sdf") if name == "plain" else target
            print(f"round {round_ + 1} {name}: {times[name][-1]:.1f} s  {done.stdout.strip().splitlines()[-1]}", flush=True)

    plain = _records(outputs["plain"])
    for name, path in outputs.items():
        same = _records(path) == plain
        print(f"{name}: records {'identical to' if same else 'DIFFERENT from'} the plain run")
        if path.is_dir():
            lines = [json.loads(line) for line in (path / "manifest.jsonl").read_text().splitlines()]
            indices = sorted([i for e in lines for i, _ in e["done"]] + [f["index"] for e in lines for f in e["failed"]])
            assert indices == list(range(args.limit)), f"{name}: inputs missing or duplicated"

    best = {name: min(t) for name, t in times.items()}
    print(f"\n{args.limit} molecules, --method {args.method} -n {args.n}, shard size {args.shard_size}, "
          f"{os.cpu_count()} CPUs, best of {args.rounds}\n")
    print("| run | wall s | molecules/s | vs sharded |")
    print("|---|---|---|---|")
    for name, t in best.items():
        print(f"| {name} | {t:.1f} | {args.limit / t:.2f} | {best['sharded'] / t:.2f}x |")
    print(f"\nRay overhead at 1 worker: {100 * (best['ray, 1 worker'] / best['sharded'] - 1):+.1f} % of the sharded run; "
          f"1 -> 2 workers: {best['ray, 1 worker'] / best['ray, 2 workers']:.2f}x")
    per_core = args.limit / best["sharded"] * 3600
    print(f"molecules/hour per core (sharded CLI, one thread): {per_core:,.0f}; 10^7 molecules: "
          f"{1e7 / per_core:,.0f} core-hours")
    (args.out / "throughput.json").write_text(json.dumps({"times": times, "limit": args.limit, "method": args.method,
                                                          "n": args.n, "shard_size": args.shard_size}, indent=1))


if __name__ == "__main__":
    main()

"""Training throughput (molecules/s) and peak memory of the conformer denoiser vs molecule size, on CPU.

For n-alkanes with about 10, 20, 40 and 80 atoms (C3H8 ... C26H54, ETKDG + MMFF conformers), one training step is
the full mol training path: a node-balanced batch of --max-nodes atoms, scidiff.mol.train.conformer_loss through
the core's diffusion_loss (EDM), backward and AdamW. Each size runs in a fresh process so that its peak resident
memory (resource.getrusage ru_maxrss, the whole process: Python + torch + RDKit) is its own. Times are this
process's CPU time per step (best of --repeats), so other load on a shared machine barely moves them; wall
time is printed too.

    OMP_NUM_THREADS=1 python benchmarks/mol_train_throughput.py --model conformer_small --max-nodes 384
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import time

ALKANE_CARBONS = {11: 3, 20: 6, 41: 13, 80: 26}  # atoms (with H) -> carbons of CnH2n+2


def _measure(atoms: int, model_name: str, max_nodes: int, repeats: int, queue) -> None:
    import torch

    torch.set_num_threads(1)
    from functools import partial

    from torch_geometric.data import Batch

    from scidiff.core import build_diffusion
    from scidiff.core.config import compose, to_container
    from scidiff.mol.build import embed_conformers
    from scidiff.mol.denoiser import build_model
    from scidiff.mol.train import ConformerDataset, conformer_loss

    cfg = to_container(compose(["experiment=mol_qm9", f"model={model_name}"]))
    mol = embed_conformers("C" * ALKANE_CARBONS[atoms], num_conformers=4, seed=0)
    dataset = ConformerDataset.from_molecules([mol])
    per_batch = max(1, max_nodes // mol.GetNumAtoms())
    batch = Batch.from_data_list([dataset[i % len(dataset)] for i in range(per_batch)], exclude_keys=["name", "smiles"])
    model = build_model(cfg["model"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = partial(conformer_loss, build_diffusion(cfg["process"]))
    generator = torch.Generator().manual_seed(0)
    cpu, wall = [], []
    for _ in range(repeats + 1):  # the first step warms up allocators and e3nn's code paths
        t_cpu, t_wall = time.process_time(), time.perf_counter()
        loss = loss_fn(model, batch, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        cpu.append(time.process_time() - t_cpu)
        wall.append(time.perf_counter() - t_wall)
    step = min(cpu[1:])
    queue.put({"atoms": mol.GetNumAtoms(), "molecules_per_batch": per_batch, "atoms_per_batch": batch.num_nodes,
               "cpu_s_per_step": step, "wall_s_per_step": min(wall[1:]), "molecules_per_cpu_s": per_batch / step,
               "atoms_per_cpu_s": batch.num_nodes / step, "parameters": sum(p.numel() for p in model.parameters()),
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="conformer_small", help="model config (conf/model/<name>.yaml)")
    parser.add_argument("--max-nodes", type=int, default=384, help="atoms per batch (as data.max_nodes)")
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(ALKANE_CARBONS), choices=sorted(ALKANE_CARBONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    rows = []
    print(f"model={args.model}, {args.max_nodes} atoms per batch, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print("| atoms | mols/batch | CPU s/step | wall s/step | molecules/CPU-s | atoms/CPU-s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for atoms in args.sizes:
        queue = context.Queue()
        process = context.Process(target=_measure, args=(atoms, args.model, args.max_nodes, args.repeats, queue))
        process.start()
        row = queue.get()
        process.join()
        rows.append(row)
        print(f"| {row['atoms']} | {row['molecules_per_batch']} | {row['cpu_s_per_step']:.3f} | {row['wall_s_per_step']:.3f} | "
              f"{row['molecules_per_cpu_s']:.1f} | {row['atoms_per_cpu_s']:.0f} | {row['peak_rss_mib']:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "max_nodes": args.max_nodes, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

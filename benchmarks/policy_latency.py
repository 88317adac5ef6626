"""Diffusion Policy speed on this machine: latency per action chunk (batch 1) per sampler, and training samples/s.

    OMP_NUM_THREADS=1 python benchmarks/policy_latency.py                      # bundled PushT policy, 1 thread
    OMP_NUM_THREADS=1 python benchmarks/policy_latency.py --down-dims 256 512 1024   # paper-size U-Net (random weights)

A chunk is one predict_action call: Tp = 16 actions from To = 2 observations, of which Ta = 8 are executed.
Latency is independent of the weights' values, so the paper-size row uses an untrained network of that size.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from scidiff.policy import DiffusionPolicy, load_policy
from scidiff.policy.cli import BUNDLED_WEIGHTS

SAMPLERS = (("ddpm", 100), ("ddim", 10), ("dpmpp_2m", 5), ("ddim", 1))


def chunk_latency_ms(policy: DiffusionPolicy, sampler: str, steps: int, repeats: int, batch: int = 1) -> float:
    """Median wall time (ms) of one predict_action call."""
    obs = torch.randn(batch, policy.n_obs_steps, policy.obs_dim)
    generator = torch.Generator().manual_seed(0)
    policy.predict_action(obs, sampler=sampler, steps=steps, generator=generator)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        policy.predict_action(obs, sampler=sampler, steps=steps, generator=generator)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def train_samples_per_s(policy: DiffusionPolicy, batch_size: int, iters: int) -> float:
    """Training throughput: loss, backward and an AdamW step on random windows of the policy's shapes."""
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    batch = {"obs": torch.randn(batch_size, policy.n_obs_steps, policy.obs_dim),
             "action": torch.randn(batch_size, policy.horizon, policy.action_dim)}
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        loss = policy(batch, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return batch_size * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(BUNDLED_WEIGHTS), help="policy file (default: bundled PushT)")
    parser.add_argument("--down-dims", type=int, nargs="+", default=None, help="time an untrained U-Net of these widths")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256, help="training batch size")
    parser.add_argument("--train-iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.down_dims:
        policy = DiffusionPolicy(20, 2, down_dims=args.down_dims).eval()
        source = f"untrained down_dims={args.down_dims}"
    else:
        policy, source = load_policy(args.checkpoint), args.checkpoint
    n_params = sum(p.numel() for p in policy.parameters())
    print(f"# {source}: {n_params / 1e6:.2f} M parameters, torch {torch.__version__}, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}")
    rows = []
    for sampler, steps in SAMPLERS:
        ms = chunk_latency_ms(policy, sampler, steps, args.repeats if steps < 50 else max(3, args.repeats // 5))
        rows.append({"sampler": sampler, "steps": steps, "chunk_latency_ms": round(ms, 2),
                     "actions_per_s_at_Ta": round(policy.n_action_steps / (ms / 1000), 1)})
        print(json.dumps(rows[-1]), flush=True)
    sps = train_samples_per_s(policy, args.batch_size, args.train_iters)
    print(json.dumps({"train_batch_size": args.batch_size, "train_samples_per_s": round(sps, 1),
                      "train_steps_per_s": round(sps / args.batch_size, 2)}))


if __name__ == "__main__":
    main()

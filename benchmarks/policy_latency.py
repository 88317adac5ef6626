"""Diffusion Policy speed on this machine: latency per action chunk (batch 1) per sampler, and training samples/s.

    OMP_NUM_THREADS=1 python benchmarks/policy_latency.py                      # bundled PushT policy, 1 thread
    OMP_NUM_THREADS=1 python benchmarks/policy_latency.py --down-dims 256 512 1024   # paper-size U-Net (random weights)
    OMP_NUM_THREADS=1 python benchmarks/policy_latency.py \
        --student scidiff/policy/weights/pusht_keypoints_consistency.safetensors    # + its 1- and 2-call rows
                                                                     # and 1 call warm-started at t = 40
    OMP_NUM_THREADS=1 python benchmarks/policy_latency.py --checkpoint scidiff/policy/weights/pusht_image.safetensors \
        --batch-size 64                                                        # bundled camera policy
    OMP_NUM_THREADS=1 python benchmarks/policy_latency.py --vision-width 64 --batch-size 64  # Chi et al.'s ResNet-18
    OMP_NUM_THREADS=1 python benchmarks/policy_latency.py --profile-train    # where a training step's time goes

For a camera policy the chunk latency includes encoding the To frames, and an "encoder" row times the encoder
alone (its share of every chunk, whatever the sampler).

A chunk is one predict_action call: Tp = 16 actions from To = 2 observations, of which Ta = 8 are executed.
Latency is independent of the weights' values, so the paper-size row uses an untrained network of that size.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch

from scidiff.policy import DiffusionPolicy, load_policy, shift_plan
from scidiff.policy.cli import BUNDLED_WEIGHTS

SAMPLERS = (("ddpm", 100), ("ddim", 10), ("dpmpp_2m", 5), ("ddim", 1))
# A distilled student's rows: (sampler, network calls per chunk, warm start time). A warm-started chunk starts from
# the previous plan noised to that time (rollout --warm-start), so its one call is at t = 40, not at t = 90.
STUDENT_SAMPLERS = (("consistency", 1, None), ("consistency", 2, None), ("consistency", 1, 40.0))


ENCODER = "encoder"  # a latency row that runs only the observation encoders (camera policies)


def random_inputs(policy: DiffusionPolicy, batch: int) -> dict[str, torch.Tensor | dict]:
    """predict_action's observation arguments for a batch: low-dim obs and, for a camera policy, uint8 frames."""
    inputs = {"obs_history": torch.randn(batch, policy.n_obs_steps, policy.obs_dim)}
    if policy.cameras:
        inputs["images"] = {name: torch.randint(0, 256, (batch, policy.n_obs_steps, *shape), dtype=torch.uint8)
                            for name, shape in policy.cameras.items()}
    return inputs


def chunk_latencies_ms(combos, repeats: int, batch: int = 1) -> list[float]:
    """Median wall time (ms) of one predict_action call for each (policy, sampler, steps, warm start time or None),
    measured interleaved: every round times each combination once, so load changes on a shared machine hit all of
    them alike. A sampler of ENCODER times only the observation encoding."""
    inputs = random_inputs(combos[0][0], batch)
    generator = torch.Generator().manual_seed(0)
    times: list[list[float]] = [[] for _ in combos]
    warm = [{} if warm_start is None else {  # a previous plan, shifted by Ta (as rollout does)
        "warm_start": shift_plan(torch.randn(batch, policy.horizon, policy.action_dim), policy.n_action_steps),
        "t_start": warm_start} for policy, _, _, warm_start in combos]
    for round_ in range(repeats + 1):
        for k, (policy, sampler, steps, _) in enumerate(combos):
            if round_ and steps >= 50 and (round_ - 1) % 5:  # DDPM-100 costs 10x: every fifth round only
                continue
            start = time.perf_counter()
            if sampler == ENCODER:
                with torch.no_grad():
                    policy._condition(inputs["obs_history"], inputs.get("images"))
            else:
                policy.predict_action(**inputs, sampler=sampler, steps=steps, generator=generator, **warm[k])
            if round_:  # round 0 is the warm-up
                times[k].append(time.perf_counter() - start)
    return [1000 * statistics.median(t) for t in times]


def train_samples_per_s(policy: DiffusionPolicy, batch_size: int, iters: int, bf16: bool = False,
                        fused: bool = True) -> float:
    """Training throughput: loss, backward and an AdamW step on random windows of the policy's shapes (fused AdamW
    as in the trainer, or the per-tensor one it used before; optionally under bf16 autocast, the trainer's
    precision=bf16)."""
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4, fused=fused)
    inputs = random_inputs(policy, batch_size)
    batch = {"obs": inputs["obs_history"], "action": torch.randn(batch_size, policy.horizon, policy.action_dim)}
    if "images" in inputs:
        batch["images"] = inputs["images"]
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
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
    parser.add_argument("--vision-width", type=int, default=None,
                        help="time an untrained PushT camera policy with this encoder width (64 = ResNet-18)")
    parser.add_argument("--student", nargs="+", default=(),
                        help="also time these consistency students at 1 and 2 calls")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256, help="training batch size")
    parser.add_argument("--train-iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-rounds", type=int, default=3, help="interleaved rounds of --train-variants")
    parser.add_argument("--train-variants", action="store_true",
                        help="also time training with model.compile() and with bf16 autocast, interleaved with eager fp32")
    parser.add_argument("--profile-train", action="store_true",
                        help="only profile training steps (torch.profiler, ops by self CPU time) and exit")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.vision_width:
        down_dims = args.down_dims or [32, 64, 128]
        policy = DiffusionPolicy(2, 2, down_dims=down_dims, step_embed_dim=128, cameras={"img": [96, 96, 3]},
                                 vision={"width": args.vision_width}).eval()
        source = f"untrained camera policy, encoder width {args.vision_width}, down_dims={down_dims}"
    elif args.down_dims:
        policy = DiffusionPolicy(20, 2, down_dims=args.down_dims).eval()
        source = f"untrained down_dims={args.down_dims}"
    else:
        policy, source = load_policy(args.checkpoint), args.checkpoint
    n_params = sum(p.numel() for p in policy.parameters())
    print(f"# {source}: {n_params / 1e6:.2f} M parameters, torch {torch.__version__}, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}")
    if args.profile_train:  # where a training step's time goes (the warm-up step is profiled too)
        with torch.profiler.profile() as prof:
            train_samples_per_s(policy, args.batch_size, 3)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        return
    combos = [(policy, sampler, steps, None) for sampler, steps in SAMPLERS]
    if policy.cameras:
        combos.append((policy, ENCODER, 0, None))
        encoder_params = sum(p.numel() for p in policy.image_encoders.parameters())
        print(f"# encoders: {encoder_params / 1e6:.2f} M parameters")
    labels = ["teacher"] * len(combos)  # one per combo: whose row it is
    for path in args.student:
        student = load_policy(path)
        combos += [(student, *row) for row in STUDENT_SAMPLERS]
        labels += [f"student {path}"] * len(STUDENT_SAMPLERS)
    latencies = chunk_latencies_ms(combos, args.repeats)
    encoder_ms = next((ms for (_, sampler, *_), ms in zip(combos, latencies) if sampler == ENCODER), None)
    ddim10_ms = latencies[combos.index((policy, "ddim", 10, None))]  # what the few-step rows are measured against
    for (p, sampler, steps, warm_start), label, ms in zip(combos, labels, latencies):
        if sampler == ENCODER:
            print(json.dumps({"encoder_ms": round(ms, 2)}), flush=True)
            continue
        row = {"policy": label, "parameters_m": round(sum(q.numel() for q in p.parameters()) / 1e6, 2),
               "sampler": sampler, "steps": steps, "warm_start": warm_start, "chunk_latency_ms": round(ms, 2),
               "vs_teacher_ddim10": round(ddim10_ms / ms, 1),
               "actions_per_s_at_Ta": round(p.n_action_steps / (ms / 1000), 1)}
        if encoder_ms is not None:
            row["encoder_share"] = round(encoder_ms / ms, 3)
        print(json.dumps(row), flush=True)
    if not args.train_variants:
        sps = train_samples_per_s(policy, args.batch_size, args.train_iters)
        print(json.dumps({"train_batch_size": args.batch_size, "train_samples_per_s": round(sps, 1),
                          "train_steps_per_s": round(sps / args.batch_size, 2)}))
        return
    compiled = copy.deepcopy(policy)
    compiled.compile()
    start = time.perf_counter()
    train_samples_per_s(compiled, args.batch_size, 1)
    train_samples_per_s(compiled, args.batch_size, 1, bf16=True)
    print(json.dumps({"compile_warmup_s": round(time.perf_counter() - start, 1)}))
    before = "eager fp32, per-tensor AdamW (before 2026-12-06)"  # the baseline every variant is reported against
    variants = {  # name: (policy, bf16 autocast, fused AdamW)
        before: (policy, False, False),
        "eager fp32": (policy, False, True),
        "compile fp32": (compiled, False, True),
        "eager bf16 autocast": (policy, True, True),
        "compile bf16 autocast": (compiled, True, True),
    }
    runs: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.train_rounds):  # interleaved rounds
        for name, (p, bf16, fused) in variants.items():
            runs[name].append(train_samples_per_s(p, args.batch_size, args.train_iters, bf16, fused))
    base = statistics.median(runs[before])
    for name, values in runs.items():
        sps = statistics.median(values)
        print(json.dumps({"train": name, "train_samples_per_s": round(sps, 1), "vs_before": round(sps / base, 2)}))


if __name__ == "__main__":
    main()

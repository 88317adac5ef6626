"""Overhead of the shared core: sampler arithmetic per step vs one denoiser call, and the training loop vs a bare step.

Usage: python benchmarks/core_overhead.py [--device cpu|cuda] [--threads N]
Sampler overhead is measured directly: the sampler run with a free denoiser (it returns a precomputed tensor),
per step, relative to one call of the real network. Training-loop overhead is (trainer step - bare AdamW
forward+backward step) / bare step. On CPU, times are this process's CPU time (best of several repeats), so
other load on the machine barely moves them; on CUDA they are wall-clock with synchronisation. The
"realistic" model is the policy U-Net at the small bundled size when available, else a residual MLP.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch import nn

from scidiff.core import SAMPLERS, VPDiscrete, alphas_cumprod_from_betas, cosine_betas, diffusion_loss, x0_denoiser
from scidiff.core.trainer import TrainConfig, train
from scidiff.toy import MLPDenoiser


class _ConditionedUnet(nn.Module):
    """The policy U-Net with a fixed observation conditioning, called as net(x, t) like every core network."""

    def __init__(self, batch: int, device):
        super().__init__()
        from scidiff.policy import ConditionalUnet1D

        self.unet = ConditionalUnet1D(action_dim=2, horizon=16, global_cond_dim=40, down_dims=(64, 128, 256))
        self.register_buffer("cond", torch.randn(batch, 40))
        self.to(device)

    def forward(self, x, t):
        return self.unet(x, t, self.cond)


def realistic_model(device) -> tuple[nn.Module, tuple[int, ...], str]:
    """(network, sample shape, label): the small policy U-Net (Chi et al. 2023) if importable, else an MLP."""
    try:
        return _ConditionedUnet(64, device), (64, 16, 2), "policy U-Net [64,128,256], batch 64"
    except ImportError:
        return MLPDenoiser(dim=2, hidden=512, depth=6).to(device), (4096, 2), "MLP 512x6, batch 4096"


def timed(fn, repeats: int, device, trials: int = 5) -> float:
    """Best-of-trials seconds per call: process CPU time on CPU, synchronised wall time on CUDA."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    fn()
    best = float("inf")
    for _ in range(trials):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (clock() - start) / repeats)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    net, shape, label = realistic_model(device)
    process = VPDiscrete(alphas_cumprod_from_betas(cosine_betas(100)))
    denoise = x0_denoiser(net, process, "epsilon", clip=1.0)
    x = torch.randn(shape, device=device)
    t = torch.full((shape[0],), 50.0, device=device)
    print(f"device {device}, threads {args.threads}, model: {label}")
    with torch.no_grad():
        call = timed(lambda: net(x, t), 20, device)
        print(f"one network call: {1000 * call:.2f} ms")
        print(f"{'sampler':<10}{'steps':>6}{'NFE':>5}{'sampler ms/step':>17}{'overhead per NFE':>18}")
        x0_fixed = denoise(x, t)

        def free_denoiser(x_t, t_rows):
            return x0_fixed

        for name, fn in SAMPLERS.items():
            ts = process.sampling_times(args.steps)
            nfe = fn(free_denoiser, x, ts, process, generator=torch.Generator(device)).nfe
            own = timed(lambda: fn(free_denoiser, x, ts, process, generator=torch.Generator(device)), 3, device)
            print(f"{name:<10}{args.steps:>6}{nfe:>5}{1000 * own / args.steps:>17.3f}{100 * own / nfe / call:>17.2f}%")

    data = torch.randn(shape[0] * 8, *shape[1:])
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def bare_step():
        loss = diffusion_loss(net, data[: shape[0]].to(device), process, "epsilon")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    bare = timed(bare_step, 10, device)
    steps = 60
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(out_dir=tmp, max_steps=steps, batch_size=shape[0], warmup_steps=10, checkpoint_every=10**6,
                          log_every=20, progress=False, tensorboard=False, device=str(device), precision="fp32")
        clock = time.perf_counter if device.type == "cuda" else time.process_time
        loop = float("inf")
        for trial in range(3):
            cfg.out_dir = f"{tmp}/{trial}"
            start = clock()
            train(net, data, lambda m, b, g: diffusion_loss(m, b, process, "epsilon", generator=g), cfg)
            loop = min(loop, (clock() - start) / steps)
    print(f"bare forward+backward+AdamW: {1000 * bare:.2f} ms/step; shared loop (EMA, clip, schedule, logging, "
          f"one checkpoint): {1000 * loop:.2f} ms/step; overhead {100 * (loop - bare) / bare:.1f}%")


if __name__ == "__main__":
    main()

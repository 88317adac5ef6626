"""The denoising loss shared by every domain."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .prediction import Denoiser, Network, append_dims, loss_weight, network_forward, prediction_target
from .process import NoiseProcess

__all__ = ["diffusion_loss", "consistency_distillation_loss"]


def _masked_mean(err: Tensor, loss_mask: Tensor | None) -> Tensor:
    """Mean of the squared errors over the entries ``loss_mask`` (broadcastable to err) keeps; all without one."""
    if loss_mask is None:
        return err.mean()
    mask = loss_mask.expand_as(err).to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


def train_times(process, x0: Tensor, generator: torch.Generator | None, batch: Tensor | None = None,
                num_graphs: int | None = None, caller: str = "loss") -> Tensor:
    """Training times for the rows of x0: one per row, or with ``batch`` (row -> graph index) one per graph that
    all its rows carry."""
    if batch is None:
        return process.sample_train_t(x0.shape[0], generator=generator, device=x0.device)
    if num_graphs is None:
        raise ValueError(f"{caller}: num_graphs is required with a batch index")
    return process.sample_train_t(num_graphs, generator=generator, device=x0.device)[batch]


def diffusion_loss(
    net: Network,
    x0: Tensor,
    process: NoiseProcess,
    prediction: str = "epsilon",
    weighting: str = "none",
    *,
    generator: torch.Generator | None = None,
    batch: Tensor | None = None,
    num_graphs: int | None = None,
    project: Callable[[Tensor], Tensor] | None = None,
    loss_mask: Tensor | None = None,
    min_snr_gamma: float = 5.0,
    source: Tensor | None = None,
    source_noise: float = 0.0,
) -> Tensor:
    """Denoising loss E_{t, eps} w(t) ||net(x_t, t) - target||^2 (Ho et al. 2020; Karras et al. 2022, eq. 2).

    Rows of x0 are samples (dense batch) or nodes; with ``batch`` (node -> graph index) and ``num_graphs``,
    one time is drawn per graph and every node carries it. ``project`` maps the noise to the data's
    subspace (e.g. zero centre of mass); ``loss_mask`` (broadcastable to x0) excludes entries from the mean.
    ``source`` stands in for the Gaussian eps, paired row by row with x0: the process then runs between a given
    sample and the data (an interpolant between two distributions, Albergo & Vanden-Eijnden 2023: e.g. from
    force-field conformers to DFT ones, trained on (seed, target) pairs); ``source_noise`` adds that much Gaussian noise to it, so the model
    also sees sources a little off the seed distribution.
    """
    t = train_times(process, x0, generator, batch, num_graphs, "diffusion_loss")
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if source is not None:
        if source.shape != x0.shape:
            raise ValueError(f"diffusion_loss: source has shape {tuple(source.shape)}, x0 {tuple(x0.shape)}")
        eps = source.to(x0.dtype) + source_noise * eps
    if project is not None:
        eps = project(eps)
    alpha, sigma = (append_dims(c, x0.ndim).to(x0.dtype) for c in process.alpha_sigma(t))
    x_t = alpha * x0 + sigma * eps
    raw = network_forward(net, x_t, t, process, prediction)
    target = prediction_target(x0, eps, t, process, prediction)
    weight = append_dims(loss_weight(process, t, prediction, weighting, min_snr_gamma), x0.ndim)
    err = weight * (raw.float() - target.float()) ** 2
    return _masked_mean(err, loss_mask)


def consistency_grid(steps: int, stride: int = 1) -> Tensor:
    """Indices into ``process.sampling_times(steps)`` of the times a consistency student learns: every ``stride``-th,
    from the noisiest (the rest are bridged by the teacher's DDIM steps)."""
    if steps % stride:
        raise ValueError(f"consistency distillation: stride={stride} must divide steps={steps}")
    return torch.arange(0, steps, stride)


def consistency_distillation_loss(
    student: Denoiser,
    teacher: Denoiser,
    x0: Tensor,
    process: NoiseProcess,
    steps: int,
    *,
    stride: int = 1,
    generator: torch.Generator | None = None,
    loss_mask: Tensor | None = None,
) -> Tensor:
    """Consistency distillation E_n ||f(x_{t_n+1}) - sg f(x^_{t_n})||^2, x^ deterministic DDIM steps of the teacher
    (Song et al. 2023, Alg. 2; stop-gradient target as in Song & Dhariwal 2023).

    ``student`` and ``teacher`` are (x_t, per-row t) -> x0 denoisers. The teacher walks the grid
    ``process.sampling_times(steps)``; the student learns every ``stride``-th time of it, each of its intervals
    bridged by ``stride`` teacher steps (stride = steps: one-step distillation of the whole DDIM run, no
    bootstrapping). At the clean end the target is the teacher's own result (the boundary condition f(x, clean) = x),
    so a student that minimises this loss maps each of its grid points x_t to the end of the teacher's
    DDIM-``steps`` trajectory through it, and sample_consistency(calls=k) on the same grid needs k network calls.
    """
    grid = consistency_grid(steps, stride).to(x0.device)
    ts = process.sampling_times(steps).to(x0.device)
    n = grid[torch.randint(0, len(grid), (x0.shape[0],), generator=generator, device=x0.device)]

    def coefficients(i: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        alpha, sigma = (append_dims(c, x0.ndim).to(x0.dtype) for c in process.alpha_sigma(ts[i]))
        return ts[i], alpha, sigma

    t_hi, a_hi, s_hi = coefficients(n)
    x_hi = a_hi * x0 + s_hi * torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    with torch.no_grad():
        x, (t, a, s) = x_hi, (t_hi, a_hi, s_hi)
        for k in range(1, stride + 1):
            t_next, a_next, s_next = coefficients(n + k)
            x0_teacher = teacher(x, t)
            x = a_next * x0_teacher + s_next * (x - a * x0_teacher) / s
            t, a, s = t_next, a_next, s_next
        target = torch.where(s == 0, x, student(x, t))
    err = (student(x_hi, t_hi).float() - target.float()) ** 2
    return _masked_mean(err, loss_mask)

"""The denoising loss shared by every domain."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .prediction import Network, append_dims, loss_weight, network_forward, prediction_target
from .process import NoiseProcess

__all__ = ["diffusion_loss"]


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
    if batch is None:
        t = process.sample_train_t(x0.shape[0], generator=generator, device=x0.device)
    else:
        if num_graphs is None:
            raise ValueError("diffusion_loss: num_graphs is required with a batch index")
        t = process.sample_train_t(num_graphs, generator=generator, device=x0.device)[batch]
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
    if loss_mask is None:
        return err.mean()
    mask = loss_mask.expand_as(err).to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)

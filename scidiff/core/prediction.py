"""What the network predicts, and the closed-form conversions between predictions.

Given x_t = alpha x0 + sigma eps, a network may predict
- ``epsilon``: eps (Ho et al. 2020);
- ``x0``: the clean sample;
- ``v``: alpha eps - sigma x0 (Salimans & Ho 2022);
- ``velocity``: dx_t/dt = alpha' x0 + sigma' eps, the flow-matching target (Lipman et al. 2023);
- ``edm``: the preconditioned EDM output F with D = c_skip x + c_out F (Karras et al. 2022).
All losses are mean squared errors on the network's own target, optionally re-weighted so that the
effective weight on ||x0_hat - x0||^2 is a chosen function of the noise level (min-SNR, EDM).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .process import EDM, Flow, NoiseProcess, VPDiscrete

__all__ = [
    "PREDICTIONS",
    "WEIGHTINGS",
    "check_prediction",
    "append_dims",
    "network_forward",
    "prediction_to_x0",
    "prediction_target",
    "loss_weight",
    "edm_scalings",
    "x0_denoiser",
]

PREDICTIONS = ("epsilon", "x0", "v", "velocity", "edm")
WEIGHTINGS = ("none", "min_snr", "edm")

Network = Callable[[Tensor, Tensor], Tensor]
"""A network called as ``net(x_in, network_time)``; conditioning is closed over by the caller."""
Denoiser = Callable[[Tensor, Tensor], Tensor]
"""(x_t, per-row t) -> x0 estimate: what samplers and distillation losses call (``x0_denoiser`` makes one)."""


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so a per-row value broadcasts over a (rows, ...) tensor."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def check_prediction(process: NoiseProcess, prediction: str, weighting: str = "none") -> None:
    """Raise a ValueError naming the field when a prediction/weighting cannot serve a process."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction: unknown {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting: unknown {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    if prediction == "epsilon" and isinstance(process, Flow):
        raise ValueError(
            "prediction: 'epsilon' cannot recover x0 where alpha(t) = 0, which process 'flow' reaches at t = 1; "
            "use 'velocity', 'v' or 'x0'"
        )
    if prediction == "edm" and not isinstance(process, EDM):
        raise ValueError(f"prediction: 'edm' preconditioning needs process 'edm' (alpha = 1), got {process.name!r}")
    if prediction == "velocity" and isinstance(process, VPDiscrete):
        raise ValueError(
            f"prediction: 'velocity' needs a continuous-time process ('flow' or 'edm'), got discrete {process.name!r}"
        )


def edm_scalings(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor]:
    """c_skip, c_out, c_in of EDM preconditioning (Karras et al. 2022, Table 1)."""
    s2, d2 = sigma**2, sigma_data**2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1 / (s2 + d2).sqrt()
    return c_skip, c_out, c_in


def network_forward(net: Network, x_t: Tensor, t: Tensor, process: NoiseProcess, prediction: str) -> Tensor:
    """Call the network on x_t at per-row times t, scaling the input where the parameterisation asks for it."""
    x_in = x_t
    if prediction == "edm":
        _, _, c_in = edm_scalings(process.sigma(t), process.sigma_data)
        x_in = x_t * append_dims(c_in, x_t.ndim).to(x_t.dtype)
    return net(x_in, process.network_time(t))


def _coefficients(process: NoiseProcess, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    alpha, sigma = process.alpha_sigma(t)
    return append_dims(alpha, x.ndim), append_dims(sigma, x.ndim)


def prediction_to_x0(raw: Tensor, x_t: Tensor, t: Tensor, process: NoiseProcess, prediction: str) -> Tensor:
    """Closed-form x0 estimate from the network output ``raw`` at per-row times t (computed in float64)."""
    x, r = x_t.to(torch.float64), raw.to(torch.float64)
    alpha, sigma = _coefficients(process, t, x)
    if prediction == "epsilon":
        x0 = (x - sigma * r) / alpha
    elif prediction == "x0":
        x0 = r
    elif prediction == "v":
        x0 = (alpha * x - sigma * r) / (alpha**2 + sigma**2)
    elif prediction == "velocity":
        d_alpha = append_dims(process.d_alpha(t), x.ndim)
        d_sigma = append_dims(process.d_sigma(t), x.ndim)
        x0 = (d_sigma * x - sigma * r) / (alpha * d_sigma - sigma * d_alpha)
    elif prediction == "edm":
        c_skip, c_out, _ = edm_scalings(sigma, process.sigma_data)
        x0 = c_skip * x + c_out * r
    else:
        raise ValueError(f"prediction: unknown {prediction!r}")
    return x0.to(x_t.dtype)


def prediction_target(x0: Tensor, eps: Tensor, t: Tensor, process: NoiseProcess, prediction: str) -> Tensor:
    """The regression target of each parameterisation for clean x0 and noise eps at per-row times t."""
    alpha, sigma = _coefficients(process, t, x0)
    x0d, epsd = x0.to(torch.float64), eps.to(torch.float64)
    if prediction == "epsilon":
        target = epsd
    elif prediction == "x0":
        target = x0d
    elif prediction == "v":
        target = alpha * epsd - sigma * x0d
    elif prediction == "velocity":
        target = append_dims(process.d_alpha(t), x0.ndim) * x0d + append_dims(process.d_sigma(t), x0.ndim) * epsd
    elif prediction == "edm":
        c_skip, c_out, _ = edm_scalings(sigma, process.sigma_data)
        x_t = alpha * x0d + sigma * epsd
        target = (x0d - c_skip * x_t) / c_out
    else:
        raise ValueError(f"prediction: unknown {prediction!r}")
    return target.to(x0.dtype)


def _x0_space_weight(process: NoiseProcess, t: Tensor, prediction: str) -> Tensor:
    """Weight on ||x0_hat - x0||^2 that plain MSE on this prediction's target implies."""
    alpha, sigma = process.alpha_sigma(t)
    if prediction == "epsilon":
        return (alpha / sigma) ** 2
    if prediction == "x0":
        return torch.ones_like(alpha)
    if prediction == "v":
        return ((alpha**2 + sigma**2) / sigma) ** 2
    if prediction == "velocity":
        return ((alpha * process.d_sigma(t) - sigma * process.d_alpha(t)) / sigma) ** 2
    c_out = edm_scalings(sigma, process.sigma_data)[1]
    return 1 / c_out**2


def loss_weight(process: NoiseProcess, t: Tensor, prediction: str, weighting: str, min_snr_gamma: float = 5.0) -> Tensor:
    """Per-row factor on the target-space MSE: 'none', 'min_snr' (Hang et al. 2023) or 'edm' (Karras et al. 2022).

    'min_snr' makes the effective x0-space weight min(SNR, gamma); 'edm' makes it
    (sigma~^2 + sigma_data^2) / (sigma~ sigma_data)^2 with sigma~ = sigma / alpha.
    """
    if weighting == "none":
        return torch.ones_like(t, dtype=torch.float32)
    alpha, sigma = process.alpha_sigma(t)
    if weighting == "min_snr":
        wanted = ((alpha / sigma) ** 2).clamp(max=min_snr_gamma)
    elif weighting == "edm":
        sigma_data = getattr(process, "sigma_data", 0.5)
        st = sigma / alpha
        wanted = (st**2 + sigma_data**2) / (st * sigma_data) ** 2
    else:
        raise ValueError(f"weighting: unknown {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    natural = _x0_space_weight(process, t, prediction)
    return torch.nan_to_num(wanted / natural, nan=0.0, posinf=0.0).to(torch.float32)


def x0_denoiser(net: Network, process: NoiseProcess, prediction: str, clip: float | None = None) -> Denoiser:
    """Wrap a network into the sampler's denoiser: (x_t, per-row t) -> x0 estimate, optionally clipped to [-clip, clip]."""
    check_prediction(process, prediction)

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        x0 = prediction_to_x0(network_forward(net, x_t, t, process, prediction), x_t, t, process, prediction)
        return x0.clamp(-clip, clip) if clip is not None else x0

    return denoise

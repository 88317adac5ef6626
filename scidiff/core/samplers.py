"""Samplers: small stateless functions over a denoiser (x_t, per-row t) -> x0 estimate.

Every sampler takes the starting sample x (at ts[0]), a grid ``ts`` of process times that ends at the clean
end, the process (for alpha, sigma and their derivatives) and two optional hooks: ``project`` (applied after
every update, e.g. zero centre of mass per molecule) and ``pin`` (entries held at known values, noised to
the current level, for inpainting or observation conditioning). Rows of x are samples of a dense batch
(B, ...) or nodes of a graph batch (N, 3): the denoiser receives one time per row, so for graphs every
node carries its graph's noise level. Each returns the final sample and the number of network evaluations.
Per-step coefficients are computed in float64 on the host; no sampler keeps state between calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .prediction import Denoiser
from .process import NoiseProcess

__all__ = [
    "Denoiser",
    "Pin",
    "SampleResult",
    "SAMPLERS",
    "sample_ddpm",
    "sample_ddim",
    "sample_dpmpp_2m",
    "sample_heun",
    "sample_euler",
    "sample_consistency",
    "sample",
    "check_sampler",
]

Projection = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Pin:
    """Entries of the sample held at known clean values (``mask`` True), noised to each step's level.

    The noise is a Gaussian draw kept for the whole run, or ``noise``: for a process from an informative source the
    pinned entries' own source values (for atoms whose seed already sits at the wanted place, the pin then holds them
    still)."""

    mask: Tensor
    value: Tensor
    noise: Tensor | None = None


@dataclass(frozen=True)
class SampleResult:
    x: Tensor
    nfe: int


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _rows(t: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)


class _Steps:
    """The grid's alpha, sigma (and derivatives) as host floats, plus the hooks applied after each update."""

    def __init__(self, ts: Tensor, process: NoiseProcess, x: Tensor, generator, project, pin):
        ts = ts.to(torch.float64).cpu()
        self.t = ts.tolist()
        self.alpha = process.alpha(ts).tolist()
        self.sigma = process.sigma(ts).tolist()
        self.process, self.project, self.pin = process, project, pin
        self.pin_noise = None if pin is None else pin.noise if pin.noise is not None else _randn_like(pin.value, generator)
        if len(self.t) < 2:
            raise ValueError("the sampling grid needs at least 2 times (steps >= 1)")
        if self.sigma[-1] != 0.0:
            raise ValueError(f"the sampling grid must end at the clean end (sigma = 0), got sigma = {self.sigma[-1]}")

    def __len__(self) -> int:
        return len(self.t) - 1

    def constrain(self, x: Tensor, alpha: float, sigma: float) -> Tensor:
        if self.project is not None:
            x = self.project(x)
        if self.pin is not None:
            known = alpha * self.pin.value + sigma * self.pin_noise
            x = torch.where(self.pin.mask, known.to(x.dtype), x)
        return x


def _velocity(denoise: Denoiser, x: Tensor, t: float, process: NoiseProcess) -> Tensor:
    """Probability-flow ODE dx/dt = alpha'(t) x0_hat + sigma'(t) eps_hat (Song et al. 2021; Karras et al. 2022, eq. 4)."""
    tt = torch.tensor([t], dtype=torch.float64)
    alpha, sigma = process.alpha(tt).item(), process.sigma(tt).item()
    d_alpha, d_sigma = process.d_alpha(tt).item(), process.d_sigma(tt).item()
    x0 = denoise(x, _rows(t, x))
    eps = (x - alpha * x0) / sigma
    return d_alpha * x0 + d_sigma * eps


def sample_ddim(denoise: Denoiser, x: Tensor, ts: Tensor, process: NoiseProcess, *, eta: float = 0.0,
                generator: torch.Generator | None = None, project: Projection | None = None,
                pin: Pin | None = None) -> SampleResult:
    """DDIM, x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z with c set by eta (Song et al. 2021, eq. 12 and 16)."""
    steps = _Steps(ts, process, x, generator, project, pin)
    x = steps.constrain(x, steps.alpha[0], steps.sigma[0])
    for i in range(len(steps)):
        a_t, s_t, a_s, s_s = steps.alpha[i], steps.sigma[i], steps.alpha[i + 1], steps.sigma[i + 1]
        x0 = denoise(x, _rows(steps.t[i], x))
        eps = (x - a_t * x0) / s_t
        c = eta * (s_s / s_t) * math.sqrt(max(s_t**2 - (a_t / a_s * s_s) ** 2, 0.0))
        x = a_s * x0 + math.sqrt(max(s_s**2 - c**2, 0.0)) * eps
        if c > 0:
            x = x + c * _randn_like(x, generator)
        x = steps.constrain(x, a_s, s_s)
    return SampleResult(x, len(steps))


def sample_ddpm(denoise: Denoiser, x: Tensor, ts: Tensor, process: NoiseProcess, *,
                generator: torch.Generator | None = None, project: Projection | None = None,
                pin: Pin | None = None) -> SampleResult:
    """DDPM ancestral sampling from the posterior q(x_s | x_t, x0_hat) (Ho et al. 2020, eq. 6-7); DDIM with eta = 1."""
    return sample_ddim(denoise, x, ts, process, eta=1.0, generator=generator, project=project, pin=pin)


def sample_dpmpp_2m(denoise: Denoiser, x: Tensor, ts: Tensor, process: NoiseProcess, *,
                    generator: torch.Generator | None = None, project: Projection | None = None,
                    pin: Pin | None = None) -> SampleResult:
    """DPM-Solver++(2M), second-order multistep in log-SNR, first order on the first and final steps (Lu et al. 2022, Alg. 2)."""
    steps = _Steps(ts, process, x, generator, project, pin)
    x = steps.constrain(x, steps.alpha[0], steps.sigma[0])
    lam = [math.log(a) - math.log(s) if a > 0 and s > 0 else (math.inf if s == 0 else -math.inf)
           for a, s in zip(steps.alpha, steps.sigma)]
    x0_prev, h_prev = None, math.inf
    for i in range(len(steps)):
        a_t, s_t, a_s, s_s = steps.alpha[i], steps.sigma[i], steps.alpha[i + 1], steps.sigma[i + 1]
        x0 = denoise(x, _rows(steps.t[i], x))
        h = lam[i + 1] - lam[i]
        # exp(-h) from alpha and sigma directly, so sigma_s = 0 (final) and alpha_t = 0 (flow start) stay finite.
        exp_neg_h = (a_t * s_s) / (a_s * s_t)
        if x0_prev is None or math.isinf(h_prev) or s_s == 0.0:
            d = x0
        else:
            half_inv_r = 0.5 * h / h_prev
            d = (1 + half_inv_r) * x0 - half_inv_r * x0_prev
        x = (s_s / s_t) * x - a_s * (exp_neg_h - 1) * d
        x = steps.constrain(x, a_s, s_s)
        x0_prev, h_prev = x0, h
    return SampleResult(x, len(steps))


def sample_heun(denoise: Denoiser, x: Tensor, ts: Tensor, process: NoiseProcess, *, churn: float = 0.0,
                churn_tmin: float = 0.0, churn_tmax: float = math.inf, noise_scale: float = 1.0,
                generator: torch.Generator | None = None, project: Projection | None = None,
                pin: Pin | None = None) -> SampleResult:
    """Heun's 2nd-order method on the probability-flow ODE with optional churn (Karras et al. 2022, Alg. 2); 2N-1 evaluations.

    ``churn`` is S_churn: each step first raises sigma/alpha by a factor 1 + min(S_churn/N, sqrt(2) - 1) when it lies
    in [churn_tmin, churn_tmax], adding fresh noise scaled by ``noise_scale`` (S_noise).
    """
    steps = _Steps(ts, process, x, generator, project, pin)
    x = steps.constrain(x, steps.alpha[0], steps.sigma[0])
    nfe = 0
    gamma_max = min(churn / len(steps), math.sqrt(2) - 1) if churn > 0 else 0.0
    for i in range(len(steps)):
        t, s = steps.t[i], steps.t[i + 1]
        a_t, s_t = steps.alpha[i], steps.sigma[i]
        if gamma_max > 0 and a_t > 0 and churn_tmin <= s_t / a_t <= churn_tmax:
            t_hat = process.t_from_sigma_tilde(torch.tensor([s_t / a_t * (1 + gamma_max)], dtype=torch.float64))
            a_h, s_h = process.alpha(t_hat).item(), process.sigma(t_hat).item()
            scale = a_h / a_t
            x = scale * x + math.sqrt(max(s_h**2 - (scale * s_t) ** 2, 0.0)) * noise_scale * _randn_like(x, generator)
            t = t_hat.item()
        d = _velocity(denoise, x, t, process)
        nfe += 1
        x_next = x + (s - t) * d
        if steps.sigma[i + 1] > 0:
            d_next = _velocity(denoise, x_next, s, process)
            nfe += 1
            x_next = x + (s - t) * 0.5 * (d + d_next)
        x = steps.constrain(x_next, steps.alpha[i + 1], steps.sigma[i + 1])
    return SampleResult(x, nfe)


def sample_euler(denoise: Denoiser, x: Tensor, ts: Tensor, process: NoiseProcess, *,
                 generator: torch.Generator | None = None, project: Projection | None = None,
                 pin: Pin | None = None) -> SampleResult:
    """Euler's method on the probability-flow ODE; for flow matching x_s = x_t + (s - t) v (Lipman et al. 2023)."""
    steps = _Steps(ts, process, x, generator, project, pin)
    x = steps.constrain(x, steps.alpha[0], steps.sigma[0])
    for i in range(len(steps)):
        t, s = steps.t[i], steps.t[i + 1]
        x = x + (s - t) * _velocity(denoise, x, t, process)
        x = steps.constrain(x, steps.alpha[i + 1], steps.sigma[i + 1])
    return SampleResult(x, len(steps))


def sample_consistency(denoise: Denoiser, x: Tensor, ts: Tensor, process: NoiseProcess, *, calls: int = 1,
                       generator: torch.Generator | None = None, project: Projection | None = None,
                       pin: Pin | None = None) -> SampleResult:
    """Multistep consistency sampling on ``calls`` evenly spaced times of the grid: jump to x0, re-noise, repeat
    (Song et al. 2023, Alg. 1).

    ``ts`` is the grid a consistency model was distilled on (consistency_distillation_loss with the same steps), so
    each call lands where the teacher's trajectory through that grid point ends; calls=1 is one network evaluation."""
    steps = _Steps(ts, process, x, generator, project, pin)
    if not isinstance(calls, int) or isinstance(calls, bool) or not 1 <= calls <= len(steps):
        raise ValueError(f"sampler.calls must be an integer in [1, steps={len(steps)}], got {calls!r}")
    at = [round(i * len(steps) / calls) for i in range(calls)] + [len(steps)]
    x = steps.constrain(x, steps.alpha[0], steps.sigma[0])
    for i, j in zip(at[:-1], at[1:]):
        x0 = denoise(x, _rows(steps.t[i], x))
        a_s, s_s = steps.alpha[j], steps.sigma[j]
        x = a_s * x0 + s_s * _randn_like(x, generator) if s_s > 0 else x0
        x = steps.constrain(x, a_s, s_s)
    return SampleResult(x, calls)


SAMPLERS: dict[str, Callable[..., SampleResult]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
    "heun": sample_heun,
    "euler": sample_euler,
    "consistency": sample_consistency,
}


def check_sampler(name: str, steps: int) -> None:
    """Raise a ValueError naming the field for an unknown sampler or a step count below 1."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler.name: unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"sampler.steps must be an integer >= 1, got {steps!r}")


def sample(denoise: Denoiser, shape: tuple[int, ...], process: NoiseProcess, sampler: str = "ddim", steps: int = 10, *,
           generator: torch.Generator | None = None, device: torch.device | str | None = None,
           dtype: torch.dtype = torch.float32, project: Projection | None = None, pin: Pin | None = None,
           t_start: float | None = None, x_start: Tensor | None = None, source: Tensor | None = None,
           **options) -> SampleResult:
    """Start at the noisiest grid time (or ``t_start``) with x = alpha x_start + sigma eps and run the named sampler
    to the clean end.

    eps is N(0, I), or ``source``: a given sample in the noise's place, for a process whose far end is an informative
    distribution (a bridge or flow from force-field conformers, a previous action plan) rather than Gaussian noise.
    ``x_start`` with ``t_start`` is SDEdit (Meng et al. 2022): a given sample noised part-way and denoised; without
    ``x_start`` the alpha term is left out, as for a pure-noise start.
    """
    check_sampler(sampler, steps)
    ts = process.sampling_times(steps, t_start)
    alpha0, sigma0 = process.alpha(ts[:1]).item(), process.sigma(ts[:1]).item()
    if source is not None:
        if tuple(source.shape) != tuple(shape):
            raise ValueError(f"source has shape {tuple(source.shape)}, the samples {tuple(shape)}")
        eps = source.to(device=device, dtype=dtype)
    else:
        eps = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    x = sigma0 * eps
    if x_start is not None:
        if tuple(x_start.shape) != tuple(shape):
            raise ValueError(f"x_start has shape {tuple(x_start.shape)}, the samples {tuple(shape)}")
        x = x + alpha0 * x_start.to(device=device, dtype=dtype)
    return SAMPLERS[sampler](denoise, x, ts, process, generator=generator, project=project, pin=pin, **options)

"""Diffusion on the torus (-pi, pi]^d: wrapped-normal noise on angles, its score, the score-matching weighting and a
variance-exploding process whose samplers are the core's own (Jing et al. 2022, Torsional Diffusion).

The forward process adds N(0, sigma^2) to every angle and wraps, so x_sigma | x0 ~ WN(x0, sigma^2), the wrapped normal
p(x) = sum_k N(x + 2 pi k; x0, sigma^2). Sampling needs no sampler of its own: for a variance-exploding process
(alpha = 1, sigma = t) a score model s(x, sigma) is the x0 denoiser D = x + sigma^2 s (Tweedie), the probability-flow
ODE dx/dsigma = -sigma s is then the EDM ODE dx/dsigma = (x - D) / sigma, and wrapping is the samplers' ``project``
hook. Every update of Euler, Heun (with or without churn), DDIM and DDPM is x plus a multiple of periodic scores, so
wrapping after each step changes nothing else; DPM-Solver++(2M) is not wrap-safe (it mixes the current x0 with the
previous step's, whose x was on the other side of a wrap).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import Tensor

from .loss import _masked_mean, train_times
from .prediction import Denoiser, append_dims
from .process import EDM

__all__ = ["TORUS_SAMPLERS", "TORUS_PREDICTION", "TORUS_WEIGHTING", "check_torus_sampler", "ScoreModel", "wrap",
           "wrapped_normal_log_prob", "wrapped_normal_score", "score_norm",
           "TorusProcess", "score_denoiser", "torus_score_loss"]

TWO_PI = 2 * math.pi
TORUS_SAMPLERS = ("euler", "heun", "ddim", "ddpm")  # the core samplers whose updates commute with wrapping
TORUS_PREDICTION, TORUS_WEIGHTING = "score", "score_norm"  # what a torus Diffusion's network gives, and its loss weight


def check_torus_sampler(name: str) -> None:
    """Refuse a sampler that is not wrap-safe on the torus, naming why (DPM-Solver++(2M) is the known failure)."""
    if name not in TORUS_SAMPLERS:
        why = (" mixes the previous step's absolute x0 into the update, and that x0 may lie on the other side of the "
               "+-pi wrap, so its samples are wrong" if name == "dpmpp_2m" else " is not among the wrap-safe ones")
        raise ValueError(f"sampler.name: {name!r} cannot sample the torus process: it{why}; choose one of "
                         f"{', '.join(TORUS_SAMPLERS)}")

ScoreModel = Callable[[Tensor, Tensor], Tensor]
"""(x_t wrapped angles, per-row sigma) -> score estimate of the noised density, same shape as x_t."""


def wrap(x: Tensor) -> Tensor:
    """Angles mapped to (-pi, pi]: the torus's chart, and the samplers' ``project`` hook."""
    y = math.pi - torch.remainder(math.pi - x, TWO_PI)
    # remainder of a tiny negative number can round up to exactly 2 pi, which would give -pi.
    return torch.where(y <= -math.pi, y + TWO_PI, y)


def _image_offsets(n_terms: int, x: Tensor) -> Tensor:
    """2 pi k for k = -n_terms..n_terms, on a new trailing axis."""
    return TWO_PI * torch.arange(-n_terms, n_terms + 1, dtype=torch.float64, device=x.device)


def wrapped_normal_log_prob(x: Tensor, sigma: Tensor | float, n_terms: int = 10) -> Tensor:
    """log sum_k N(x + 2 pi k; 0, sigma^2) elementwise (sigma broadcasts against x), by log-sum-exp over the images."""
    x64 = wrap(x.to(torch.float64))[..., None] + _image_offsets(n_terms, x)
    s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)[..., None]
    log_terms = -0.5 * (x64 / s) ** 2 - torch.log(s) - 0.5 * math.log(TWO_PI)
    return torch.logsumexp(log_terms, dim=-1).to(x.dtype)


def wrapped_normal_score(x: Tensor, sigma: Tensor | float, n_terms: int = 10) -> Tensor:
    """d/dx log sum_k N(x + 2 pi k; 0, sigma^2) elementwise: the image scores -(x + 2 pi k) / sigma^2 averaged with
    softmax weights, so no exp under- or overflows at small sigma. n_terms = 10 is exact to double precision for
    sigma <= 2 pi (the farthest image kept has weight exp(-(2 pi 10 - pi)^2 / (2 sigma^2)))."""
    x64 = wrap(x.to(torch.float64))[..., None] + _image_offsets(n_terms, x)
    s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)[..., None]
    weights = torch.softmax(-0.5 * (x64 / s) ** 2, dim=-1)
    return (-(weights * x64).sum(-1) / s[..., 0] ** 2).to(x.dtype)


# The tabulated range of score_norm: below it E|s|^2 = 1 / sigma^2 to within exp(-pi^2 / (2 sigma^2)) < 1e-20, the
# wrapped normal being a plain normal there; above it the loss has no use (training sigma stays <= pi).
_NORM_SIGMA_MIN, _NORM_SIGMA_MAX, _NORM_POINTS, _NORM_QUADRATURE = 0.1, TWO_PI, 512, 2048


@functools.lru_cache(maxsize=1)
def _score_norm_table() -> tuple[Tensor, Tensor]:
    """log sigma and log E|s|^2 on a log-spaced grid, by the periodic trapezoid rule (spectrally accurate, deterministic)."""
    log_sigma = torch.linspace(math.log(_NORM_SIGMA_MIN), math.log(_NORM_SIGMA_MAX), _NORM_POINTS, dtype=torch.float64)
    x = torch.linspace(-math.pi, math.pi, _NORM_QUADRATURE + 1, dtype=torch.float64)[1:]
    moments = []
    for sigma in log_sigma.exp()[:, None].split(32):  # 32 sigmas at a time: the images make (32, 2048, 21) arrays
        density = wrapped_normal_log_prob(x[None], sigma).exp()
        moments.append(TWO_PI * (density * wrapped_normal_score(x[None], sigma) ** 2).mean(-1))
    return log_sigma, torch.cat(moments).log()


def score_norm(sigma: Tensor | float) -> Tensor:
    """E_{x ~ WN(0, sigma^2)} |d/dx log p(x)|^2 for one angle: the loss weighting of Jing et al. 2022 (their
    loss is |s_theta - s|^2 / E|s|^2). Tabulated once by quadrature, interpolated in log-log; sigma <= 2 pi."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    if bool((s <= 0).any()) or bool((s > _NORM_SIGMA_MAX * (1 + 1e-9)).any()):
        raise ValueError(f"score_norm: sigma must lie in (0, 2 pi], got values in [{s.min().item():g}, {s.max().item():g}]")
    log_sigma, log_norm = (v.to(s.device) for v in _score_norm_table())
    u = ((s.log() - log_sigma[0]) / (log_sigma[1] - log_sigma[0])).clamp(0, _NORM_POINTS - 1)
    i = u.floor().long().clamp(max=_NORM_POINTS - 2)
    interpolated = (log_norm[i] + (u - i) * (log_norm[i + 1] - log_norm[i])).exp()
    return torch.where(s < _NORM_SIGMA_MIN, 1 / s**2, interpolated)


class TorusProcess(EDM):
    """Variance-exploding wrapped-normal process on angles, sigma log-uniform in [0.01 pi, pi] (Jing et al. 2022).

    An EDM process (alpha = 1, sigma = t), so the core's samplers and ``sample`` run it unchanged with
    ``project=wrap`` and a ``score_denoiser``; only the training and sampling noise levels differ from EDM's.
    """

    name = "torus"

    def __init__(self, sigma_min: float = 0.01 * math.pi, sigma_max: float = math.pi):
        if not 0 < sigma_min < sigma_max <= _NORM_SIGMA_MAX:
            raise ValueError(f"process.sigma_min/sigma_max must satisfy 0 < min < max <= 2 pi, got {sigma_min}, {sigma_max}")
        super().__init__(sigma_min=sigma_min, sigma_max=sigma_max)

    def sample_train_t(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """log sigma ~ U(log sigma_min, log sigma_max) (Jing et al. 2022)."""
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        return (self.sigma_min * (self.sigma_max / self.sigma_min) ** u).to(torch.float32)

    def sampling_times(self, steps: int, t_max: float | None = None) -> Tensor:
        """steps geometrically spaced sigmas from sigma_max (or ``t_max``) to sigma_min, then 0: uniform in the
        training variable log sigma (Jing et al. 2022's inference schedule)."""
        start = self._check_t_max(t_max, self.sigma_min, self.sigma_max)
        ramp = torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1)
        sigmas = start * (self.sigma_min / start) ** ramp
        return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])

    def network_time(self, t: Tensor) -> Tensor:
        """1000 (log sigma - log sigma_min) / (log sigma_max - log sigma_min): the training variable, in [0, 1000]."""
        span = math.log(self.sigma_max / self.sigma_min)
        return (1000.0 * (t.to(torch.float64).clamp_min(1e-20) / self.sigma_min).log() / span).to(torch.float32)

    def describe(self) -> dict:
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


def score_denoiser(score: ScoreModel, process: TorusProcess) -> Denoiser:
    """The samplers' x0 denoiser of a score model on a variance-exploding process: D(x, t) = x + sigma(t)^2 s(x, sigma(t))
    (Tweedie's formula; Jing et al. 2022 sample the same reverse SDE / probability-flow ODE written in scores)."""

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        sigma = process.sigma(t).to(x.dtype)
        return x + append_dims(sigma**2, x.ndim) * score(x, sigma)

    return denoise


def torus_score_loss(
    score: ScoreModel,
    x0: Tensor,
    process: TorusProcess,
    *,
    generator: torch.Generator | None = None,
    batch: Tensor | None = None,
    num_graphs: int | None = None,
    loss_mask: Tensor | None = None,
) -> Tensor:
    """Denoising score matching on the torus, E |s(x_sigma, sigma) - grad log WN(x_sigma - x0; sigma)|^2 / E|s|^2
    (Jing et al. 2022, with their score_norm weighting, so every noise level contributes about equally).

    Rows of x0 are angles (dense rows, or torsions of a graph batch); with ``batch`` (row -> graph index) and
    ``num_graphs`` one sigma is drawn per graph, as in Jing et al. where a molecule's torsions share one noise level.
    """
    t = train_times(process, x0, generator, batch, num_graphs, "torus_score_loss")
    sigma = process.sigma(t)
    noise = append_dims(sigma, x0.ndim) * torch.randn(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
    x_t = wrap(x0.to(torch.float64) + noise)
    target = wrapped_normal_score(noise, append_dims(sigma, x0.ndim))
    weight = append_dims(1 / score_norm(sigma), x0.ndim)
    predicted = score(x_t.to(x0.dtype), sigma.to(x0.dtype))
    err = weight.float() * (predicted.float() - target.float()) ** 2
    return _masked_mean(err, loss_mask)

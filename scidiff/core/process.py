"""Noise processes in one formulation: x_t = alpha(t) * x0 + sigma(t) * eps.

Every process exposes alpha(t), sigma(t) and their time derivatives, a sampling grid that runs from
noise to the clean end (where sigma = 0, alpha = 1), the distribution of training times, and the scalar
fed to the network. Samplers and losses only ever see these numbers, so one sampler serves all processes.

Schedule arithmetic is done in float64 and cast to the data's dtype at the very end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "NoiseProcess",
    "VPDiscrete",
    "EDM",
    "Flow",
    "linear_betas",
    "cosine_betas",
    "polynomial_alphas_cumprod",
    "alphas_cumprod_from_betas",
]


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> Tensor:
    """Linear beta schedule (Ho et al. 2020, DDPM)."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def cosine_betas(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine ('squaredcos_cap_v2') schedule, beta_t = min(1 - abar(t)/abar(t-1), max_beta) (Nichol & Dhariwal 2021)."""

    def abar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64)


def alphas_cumprod_from_betas(betas: Tensor) -> Tensor:
    """abar_t = prod_{s<=t} (1 - beta_s) (Ho et al. 2020, eq. 4)."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def polynomial_alphas_cumprod(num_steps: int = 1000, power: float = 2.0, precision: float = 1e-5) -> Tensor:
    """Polynomial schedule abar(t) = (1 - (t/T)^p)^2 with clipped steps (Hoogeboom et al. 2022, EDM for molecules).

    Returns abar for t = 1..T; the clean end t = 0 is the process's own clean point.
    """
    x = torch.linspace(0, num_steps, num_steps + 1, dtype=torch.float64)
    alphas2 = (1 - (x / num_steps) ** power) ** 2
    # Clip each step's ratio so no single step destroys more than 99.9% of the signal (their clip_noise_schedule).
    alphas2 = torch.cat([torch.ones(1, dtype=torch.float64), alphas2])
    steps = (alphas2[1:] / alphas2[:-1]).clamp(min=1e-3, max=1.0)
    alphas2 = torch.cumprod(steps, dim=0)
    alphas2 = (1 - 2 * precision) * alphas2 + precision
    return alphas2[1:]


class NoiseProcess:
    """Base class: x_t = alpha(t) x0 + sigma(t) eps, with t decreasing towards the clean end during sampling."""

    name: str = "process"
    continuous_time: bool = True

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        """d alpha / dt, used by the probability-flow ODE dx/dt = alpha'(t) x0 + sigma'(t) eps."""
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def t_from_sigma_tilde(self, sigma_tilde: Tensor) -> Tensor:
        """Inverse of t -> sigma(t)/alpha(t); used to raise the noise level (stochastic churn)."""
        raise NotImplementedError

    def sample_train_t(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Draw n training times."""
        raise NotImplementedError

    def sampling_times(self, steps: int, t_max: float | None = None) -> Tensor:
        """steps + 1 times from the noisiest (or from ``t_max``, to start part-way: SDEdit) to the clean end (float64, CPU)."""
        raise NotImplementedError

    def _check_t_max(self, t_max: float | None, lo: float, hi: float) -> float:
        """The start time of a grid: the process's noisiest time ``hi`` unless a valid ``t_max`` in (lo, hi] is given."""
        if t_max is None:
            return hi
        if not lo < t_max <= hi:
            raise ValueError(f"sampler t_start must lie in ({lo:g}, {hi:g}] for process {self.name!r}, got {t_max}")
        return float(t_max)

    def network_time(self, t: Tensor) -> Tensor:
        """The scalar fed to the network's noise-level embedding (roughly in [0, 1000] for every process)."""
        raise NotImplementedError

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self.alpha(t), self.sigma(t)

    def describe(self) -> dict:
        return {"name": self.name}


@dataclass(frozen=True)
class _Table:
    log_abar: Tensor  # (T + 1,) with log abar(-1) = 0 prepended


class VPDiscrete(NoiseProcess):
    """Variance-preserving process on a table of abar_t, t = 0..T-1 (Ho et al. 2020; Song et al. 2021, DDIM).

    Time t = -1 is the clean end (abar = 1, diffusers' ``set_alpha_to_one``). Between integer times log abar
    is interpolated linearly, which makes alpha, sigma continuous in t so that ODE samplers and stochastic
    churn also apply; at integer t the values equal the table exactly.
    """

    continuous_time = False

    def __init__(self, alphas_cumprod: Tensor, name: str = "vp", spacing: str = "leading"):
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if abar.ndim != 1 or len(abar) < 2:
            raise ValueError("process.alphas_cumprod must be a 1-D table with at least 2 entries")
        if not bool(((abar > 0) & (abar < 1)).all()) or not bool((abar[1:] <= abar[:-1]).all()):
            raise ValueError("process.alphas_cumprod must be decreasing and inside (0, 1)")
        if spacing not in ("leading", "trailing", "linspace"):
            raise ValueError(f"process.spacing must be 'leading', 'trailing' or 'linspace', got {spacing!r}")
        self.name = name
        self.spacing = spacing
        self.num_steps = len(abar)
        self.alphas_cumprod = abar
        self._log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), abar.log()])

    def _interp(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """log abar(t) and its slope, piecewise linear over t in [-1, T-1]."""
        table = self._log_abar.to(t.device)
        u = (t.to(torch.float64) + 1).clamp(0, self.num_steps)
        i = u.floor().long().clamp(max=self.num_steps - 1)
        slope = table[i + 1] - table[i]
        return table[i] + (u - i) * slope, slope

    def alpha(self, t: Tensor) -> Tensor:
        return (0.5 * self._interp(t)[0]).exp()

    def sigma(self, t: Tensor) -> Tensor:
        return (-torch.expm1(self._interp(t)[0])).clamp_min(0).sqrt()

    def d_alpha(self, t: Tensor) -> Tensor:
        log_abar, slope = self._interp(t)
        return 0.5 * slope * (0.5 * log_abar).exp()

    def d_sigma(self, t: Tensor) -> Tensor:
        log_abar, slope = self._interp(t)
        abar = log_abar.exp()
        return -0.5 * slope * abar / (1 - abar).clamp_min(1e-20).sqrt()

    def t_from_sigma_tilde(self, sigma_tilde: Tensor) -> Tensor:
        # log sigma_tilde^2 = log(1 - abar) - log(abar) increases with t: invert it on the integer knots.
        knots = torch.log(-torch.expm1(self._log_abar[1:])) - self._log_abar[1:]
        x = (2 * sigma_tilde.to(torch.float64).clamp_min(1e-20).log()).to(knots.device)
        x = x.clamp(knots[0], knots[-1])
        i = torch.searchsorted(knots, x).clamp(1, self.num_steps - 1)
        frac = (x - knots[i - 1]) / (knots[i] - knots[i - 1])
        return ((i - 1) + frac).to(sigma_tilde.device)

    def sample_train_t(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        return torch.randint(0, self.num_steps, (n,), generator=generator, device=device).to(torch.float32)

    def sampling_times(self, steps: int, t_max: float | None = None) -> Tensor:
        """Integer times by diffusers' spacing rule ('leading', 'trailing' or 'linspace'), then the clean end -1.

        From ``t_max``: ``steps`` evenly spaced integer times from t_max down to 0 (a part-way start has no
        diffusers convention to follow)."""
        T = self.num_steps
        if steps > T:
            raise ValueError(f"sampler.steps={steps} exceeds the process's {T} discrete steps")
        if t_max is not None:
            start = self._check_t_max(t_max, -1.0, T - 1.0)
            ts = torch.linspace(0, start, steps, dtype=torch.float64).round().flip(0) if steps > 1 else \
                torch.tensor([round(start)], dtype=torch.float64)
            return torch.cat([ts, torch.tensor([-1.0], dtype=torch.float64)])
        if self.spacing == "leading":
            ts = (torch.arange(steps, dtype=torch.float64) * (T // steps)).round().flip(0)
        elif self.spacing == "trailing":
            ts = (torch.arange(T, 0, -T / steps, dtype=torch.float64).round() - 1)[:steps]
        else:
            ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().flip(0)
        return torch.cat([ts, torch.tensor([-1.0], dtype=torch.float64)])

    def network_time(self, t: Tensor) -> Tensor:
        return t.to(torch.float32)

    def describe(self) -> dict:
        return {"name": self.name, "num_steps": self.num_steps, "spacing": self.spacing}


class EDM(NoiseProcess):
    """Variance-exploding sigma-space process with alpha = 1, sigma = t (Karras et al. 2022, EDM)."""

    name = "edm"

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
    ):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"process.sigma_min/sigma_max must satisfy 0 < min < max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t, dtype=torch.float64)

    def sigma(self, t: Tensor) -> Tensor:
        return t.to(torch.float64)

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t, dtype=torch.float64)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t, dtype=torch.float64)

    def t_from_sigma_tilde(self, sigma_tilde: Tensor) -> Tensor:
        return sigma_tilde.to(torch.float64)

    def sample_train_t(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """ln sigma ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1)."""
        z = torch.randn(n, generator=generator, device=device)
        return (self.p_mean + self.p_std * z).exp()

    def sampling_times(self, steps: int, t_max: float | None = None) -> Tensor:
        """sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, then 0 (Karras et al. 2022, eq. 5);
        smax = ``t_max`` for a part-way start."""
        i = torch.arange(steps, dtype=torch.float64)
        start = self._check_t_max(t_max, self.sigma_min, self.sigma_max)
        lo, hi = self.sigma_min ** (1 / self.rho), start ** (1 / self.rho)
        ramp = i / max(steps - 1, 1)
        sigmas = (hi + ramp * (lo - hi)) ** self.rho
        return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])

    def network_time(self, t: Tensor) -> Tensor:
        # c_noise = ln(sigma)/4 (Karras et al. 2022, Table 1), scaled to the [0, 1000]-ish range of the other processes.
        return 250.0 * t.to(torch.float32).clamp_min(1e-20).log()

    def describe(self) -> dict:
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "rho": self.rho,
                "sigma_data": self.sigma_data}


class Flow(NoiseProcess):
    """Rectified flow / flow matching path alpha = 1 - t, sigma = t (Liu et al. 2022; Lipman et al. 2023)."""

    name = "flow"

    def __init__(self, t_sampling: str = "uniform", shift: float = 1.0):
        if t_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"process.t_sampling must be 'uniform' or 'logit_normal', got {t_sampling!r}")
        if shift <= 0:
            raise ValueError(f"process.shift must be > 0, got {shift}")
        self.t_sampling, self.shift = t_sampling, shift

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - t.to(torch.float64)

    def sigma(self, t: Tensor) -> Tensor:
        return t.to(torch.float64)

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t, dtype=torch.float64)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t, dtype=torch.float64)

    def t_from_sigma_tilde(self, sigma_tilde: Tensor) -> Tensor:
        s = sigma_tilde.to(torch.float64)
        return s / (1 + s)

    def sample_train_t(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Uniform t, or logit-normal t (Esser et al. 2024, SD3)."""
        if self.t_sampling == "uniform":
            return torch.rand(n, generator=generator, device=device)
        return torch.sigmoid(torch.randn(n, generator=generator, device=device))

    def sampling_times(self, steps: int, t_max: float | None = None) -> Tensor:
        """Uniform grid from 1 (or ``t_max``) to 0, optionally shifted towards noise: t' = s t / (1 + (s - 1) t)
        (Esser et al. 2024)."""
        t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        shifted = self.shift * t / (1 + (self.shift - 1) * t)
        return shifted * self._check_t_max(t_max, 0.0, 1.0)

    def network_time(self, t: Tensor) -> Tensor:
        return 1000.0 * t.to(torch.float32)

    def describe(self) -> dict:
        return {"name": self.name, "t_sampling": self.t_sampling, "shift": self.shift}

"""A 2-D Gaussian-mixture problem with an exactly known denoiser: the core's demonstration and test bed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .core.nn import NoiseLevelEmbedding
from .core.process import NoiseProcess

__all__ = ["GaussianMixture", "ring_mixture", "MLPDenoiser", "mixture_report"]


@dataclass(frozen=True)
class GaussianMixture:
    """Isotropic Gaussian mixture sum_k w_k N(mu_k, s_k^2 I)."""

    weights: Tensor  # (K,)
    means: Tensor  # (K, D)
    stds: Tensor  # (K,)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples (float64)."""
        k = torch.multinomial(self.weights.double(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means.double()[k] + self.stds.double()[k, None] * z

    def x0_posterior_mean(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """E[x0 | x_t] for x_t = alpha x0 + sigma eps: the exact denoiser (Bayes' rule per component)."""
        x = x_t.double()
        a, s = alpha.double()[:, None], sigma.double()[:, None]
        mu, var, w = self.means.double(), self.stds.double() ** 2, self.weights.double()
        dim = x.shape[1]
        total_var = a**2 * var[None] + s**2  # (rows, K): Var(x_t | k) per dimension
        sq = ((x[:, None, :] - a[:, :, None] * mu[None]) ** 2).sum(-1)  # (rows, K)
        log_resp = w.log()[None] - 0.5 * sq / total_var - 0.5 * dim * total_var.log()
        resp = torch.softmax(log_resp, dim=1)
        gain = a * var[None] / total_var  # (rows, K)
        comp_mean = mu[None] + gain[:, :, None] * (x[:, None, :] - a[:, :, None] * mu[None])
        return (resp[:, :, None] * comp_mean).sum(1).to(x_t.dtype)

    def denoiser(self, process: NoiseProcess):
        """The exact x0-denoiser (x_t, per-row t) -> E[x0 | x_t] under ``process``."""

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            return self.x0_posterior_mean(x_t, process.alpha(t), process.sigma(t))

        return denoise


def ring_mixture(k: int = 8, radius: float = 1.0, std: float = 0.1, weights: list[float] | None = None) -> GaussianMixture:
    """k components evenly spaced on a circle (the classic 2-D diffusion test bed)."""
    angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    w = torch.tensor(weights if weights is not None else [1.0] * k, dtype=torch.float64)
    return GaussianMixture(w / w.sum(), means, torch.full((k,), std, dtype=torch.float64))


class MLPDenoiser(nn.Module):
    """A residual MLP over (x, noise-level embedding) for low-dimensional data."""

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, time_dim: int = 64):
        super().__init__()
        self.embed = NoiseLevelEmbedding(time_dim)
        self.inp = nn.Linear(dim + time_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth)
        )
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = self.inp(torch.cat([x, self.embed(t)], dim=-1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def mixture_report(samples: Tensor, mixture: GaussianMixture) -> dict[str, float]:
    """How well samples match a mixture: mode-weight total variation, fraction within 3 std of a mode, mean std error."""
    x = samples.double()
    d = torch.cdist(x, mixture.means.double())  # (n, K)
    nearest = d.argmin(1)
    dim = x.shape[1]
    within = d.gather(1, nearest[:, None]).squeeze(1) <= 3 * mixture.stds.double()[nearest] * math.sqrt(dim)
    counts = torch.bincount(nearest[within], minlength=len(mixture.weights)).double()
    frac = counts / counts.sum().clamp_min(1)
    tv = 0.5 * (frac - mixture.weights.double()).abs().sum()
    std_err = []
    for k in range(len(mixture.weights)):
        members = x[within & (nearest == k)]
        if len(members) > 10:
            std_err.append(abs(members.std(0).mean().item() / mixture.stds[k].item() - 1))
    return {
        "mode_weight_tv": tv.item(),
        "in_mode_fraction": within.double().mean().item(),
        "mode_std_rel_error": float(sum(std_err) / max(len(std_err), 1)),
    }


def mixture_from_config(cfg: dict) -> GaussianMixture:
    """The ``data`` section of the mixture2d experiment as a GaussianMixture."""
    return ring_mixture(int(cfg["components"]), float(cfg["radius"]), float(cfg["std"]), list(cfg["weights"]))


def train_from_config(cfg: dict):
    """Fit an MLP denoiser to samples of the configured mixture with the shared training loop."""
    from .core import TrainConfig, build_diffusion, train

    diffusion = build_diffusion(cfg["process"])
    trainer_cfg = TrainConfig.from_mapping(cfg["trainer"])
    mixture = mixture_from_config(cfg["data"])
    data = mixture.sample(int(cfg["data"]["num_samples"]), torch.Generator().manual_seed(trainer_cfg.seed)).float()
    model = MLPDenoiser(**cfg["model"])

    def loss_fn(net: nn.Module, batch: Tensor, generator: torch.Generator) -> Tensor:
        return diffusion.loss(net, batch, generator=generator)

    return train(model, data, loss_fn, trainer_cfg, run_config=cfg)


def load_toy_model(path: str) -> tuple[MLPDenoiser, dict]:
    """The EMA denoiser and run config from a toy run's model.safetensors."""
    from .core import load_run

    state, cfg = load_run(path, "toy")
    model = MLPDenoiser(**cfg["model"])
    model.load_state_dict(state)
    return model.eval(), cfg

"""Network building blocks shared by every domain's denoiser."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["sinusoidal_embedding", "NoiseLevelEmbedding"]


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer sinusoidal features of a scalar per row (Vaswani et al. 2017; Ho et al. 2020), shape (rows, dim)."""
    half = dim // 2
    dtype = t.dtype if t.is_floating_point() else torch.float32
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / half)
    args = t.to(dtype)[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], dim=-1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


class NoiseLevelEmbedding(nn.Module):
    """Sinusoidal features of the network time followed by a 2-layer Mish MLP (as in Chi et al. 2023's U-Net)."""

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or 4 * dim
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.Mish(), nn.Linear(hidden, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(t, self.dim))

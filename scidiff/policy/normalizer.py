"""Per-dimension min-max normaliser to [-1, 1], kept as buffers so it is saved inside the policy (Chi et al. 2023)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["MinMaxNormalizer", "minmax_affine"]


def minmax_affine(lo: Tensor, hi: Tensor, range_eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """Scale and offset with y = scale * x + offset mapping [lo, hi] to [-1, 1] (Chi et al. 2023, LinearNormalizer 'limits').

    A dimension whose range is below range_eps is only shifted (scale 1) so that its value maps to 0,
    instead of dividing by a near-zero range.
    """
    span = hi - lo
    constant = span < range_eps
    scale = torch.where(constant, torch.ones_like(span), 2.0 / torch.where(constant, torch.ones_like(span), span))
    offset = torch.where(constant, -lo, -1.0 - scale * lo)
    return scale, offset


class MinMaxNormalizer(nn.Module):
    """Affine map of the last axis to [-1, 1] from per-dimension data limits; identity until fitted."""

    def __init__(self, dim: int, range_eps: float = 1e-4):
        super().__init__()
        self.dim, self.range_eps = int(dim), float(range_eps)
        # The limits are the persistent state (readable in the checkpoint); scale/offset follow from them.
        self.register_buffer("lo", -torch.ones(self.dim))
        self.register_buffer("hi", torch.ones(self.dim))

    @torch.no_grad()
    def fit(self, data: Tensor | np.ndarray) -> "MinMaxNormalizer":
        """Set the limits to the per-dimension min and max of data (..., dim)."""
        x = (data if isinstance(data, Tensor) else torch.from_numpy(np.asarray(data))).to(torch.float32)
        if x.shape[-1] != self.dim or x.numel() == 0:
            raise ValueError(f"normalizer.fit expects non-empty data of shape (..., {self.dim}), got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("normalizer.fit: data contains NaN or infinite values")
        flat = x.reshape(-1, self.dim).to(self.lo.device)
        self.lo.copy_(flat.min(dim=0).values)
        self.hi.copy_(flat.max(dim=0).values)
        return self

    def _affine(self) -> tuple[Tensor, Tensor]:
        return minmax_affine(self.lo, self.hi, self.range_eps)

    def normalize(self, x: Tensor) -> Tensor:
        """Data units -> [-1, 1] on the last axis."""
        scale, offset = self._affine()
        return x * scale.to(x.dtype) + offset.to(x.dtype)

    def unnormalize(self, y: Tensor) -> Tensor:
        """[-1, 1] -> data units on the last axis (inverse of normalize)."""
        scale, offset = self._affine()
        return (y - offset.to(y.dtype)) / scale.to(y.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.normalize(x)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, range_eps={self.range_eps}"

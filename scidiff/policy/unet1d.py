"""ConditionalUnet1D: a 1D convolutional U-Net over the action horizon with FiLM conditioning (Chi et al. 2023).

The sample is (B, horizon, action_dim); action dims are the channels, time is the convolved axis. Every
residual block is modulated by a per-channel scale and bias computed from [sinusoidal step embedding -> MLP ‖
global conditioning] (FiLM, Perez et al. 2018). The forward pass has no data-dependent Python control flow,
so it traces with ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from scidiff.core.nn import NoiseLevelEmbedding

__all__ = ["ConditionalUnet1D", "check_horizon"]


def check_horizon(horizon: int, levels: int) -> None:
    """Raise a ValueError unless the horizon survives levels-1 stride-2 downsamplings (Chi et al. 2023)."""
    factor = 2 ** (levels - 1)
    if horizon < 1 or horizon % factor != 0:
        raise ValueError(f"horizon {horizon} does not fit {levels} levels: it must be divisible by {factor}")


class ConvBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish, length preserving (Chi et al. 2023, Conv1dBlock)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int):
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, c_out),
            nn.Mish(),
        )


class FiLMResidualBlock(nn.Module):
    """ConvBlock, FiLM (scale * h + bias from the conditioning vector), ConvBlock, plus a residual (Chi et al. 2023)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.conv1 = ConvBlock(c_in, c_out, kernel_size, n_groups)
        self.conv2 = ConvBlock(c_out, c_out, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.conv2(scale * self.conv1(x) + bias)
        return h + self.residual(x)


class _Level(nn.Module):
    """Two FiLM residual blocks and a resampling layer (stride-2 conv down, transposed conv up, or identity)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, n_groups: int, resample: nn.Module):
        super().__init__()
        self.block1 = FiLMResidualBlock(c_in, c_out, cond_dim, kernel_size, n_groups)
        self.block2 = FiLMResidualBlock(c_out, c_out, cond_dim, kernel_size, n_groups)
        self.resample = resample


class ConditionalUnet1D(nn.Module):
    """Noise-prediction network over action chunks, globally conditioned by FiLM (Chi et al. 2023, Sec. 3.3 and Fig. 2)."""

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        global_cond_dim: int = 0,
        down_dims: list[int] | tuple[int, ...] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        step_embed_dim: int = 256,
    ):
        super().__init__()
        down_dims = [int(d) for d in down_dims]
        if not down_dims:
            raise ValueError("down_dims must name at least one level")
        bad = [d for d in down_dims if d % n_groups]
        if bad:
            raise ValueError(f"down_dims {down_dims}: every width must be divisible by n_groups={n_groups} (GroupNorm)")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so convolutions preserve length, got {kernel_size}")
        check_horizon(horizon, len(down_dims))
        self.action_dim, self.horizon, self.global_cond_dim = action_dim, horizon, global_cond_dim

        if step_embed_dim < 2 or step_embed_dim % 2:
            raise ValueError(f"step_embed_dim must be an even number >= 2, got {step_embed_dim}")
        self.step_encoder = NoiseLevelEmbedding(step_embed_dim)
        cond_dim = step_embed_dim + global_cond_dim
        level = dict(cond_dim=cond_dim, kernel_size=kernel_size, n_groups=n_groups)

        widths = [action_dim, *down_dims]
        pairs = list(zip(widths[:-1], widths[1:]))
        last = len(pairs) - 1
        self.down = nn.ModuleList(
            _Level(c_in, c_out, resample=nn.Conv1d(c_out, c_out, 3, 2, 1) if i < last else nn.Identity(), **level)
            for i, (c_in, c_out) in enumerate(pairs)
        )
        mid = down_dims[-1]
        self.mid = nn.ModuleList(FiLMResidualBlock(mid, mid, **level) for _ in range(2))
        # Up path mirrors every level but the first; each input is the running features ‖ the matching skip.
        self.up = nn.ModuleList(
            _Level(2 * c_out, c_in, resample=nn.ConvTranspose1d(c_in, c_in, 4, 2, 1), **level)
            for c_in, c_out in reversed(pairs[1:])
        )
        self.final = nn.Sequential(
            ConvBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
            nn.Conv1d(down_dims[0], action_dim, 1),
        )

    def forward(self, sample: Tensor, t: Tensor, global_cond: Tensor | None = None) -> Tensor:
        """(B, horizon, action_dim) sample, (B,) or scalar time, (B, global_cond_dim) conditioning -> (B, horizon, action_dim)."""
        if sample.ndim != 3 or sample.shape[1] != self.horizon or sample.shape[2] != self.action_dim:
            raise ValueError(
                f"sample shape {tuple(sample.shape)} does not match (batch, horizon={self.horizon}, "
                f"action_dim={self.action_dim}) of this U-Net"
            )
        cond = self.step_encoder(torch.as_tensor(t, device=sample.device).reshape(-1).expand(sample.shape[0]))
        if self.global_cond_dim:
            if global_cond is None or global_cond.shape != (sample.shape[0], self.global_cond_dim):
                got = None if global_cond is None else tuple(global_cond.shape)
                raise ValueError(f"global_cond must have shape ({sample.shape[0]}, {self.global_cond_dim}), got {got}")
            cond = torch.cat([cond, global_cond.to(cond.dtype)], dim=-1)

        x = sample.transpose(1, 2)
        skips = []
        for lvl in self.down:
            x = lvl.block2(lvl.block1(x, cond), cond)
            skips.append(x)
            x = lvl.resample(x)
        for block in self.mid:
            x = block(x, cond)
        for lvl in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = lvl.resample(lvl.block2(lvl.block1(x, cond), cond))
        return self.final(x).transpose(1, 2)

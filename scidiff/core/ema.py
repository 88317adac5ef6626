"""Exponential moving average of model weights with warm-up decay."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ema_decay", "EMA"]


def ema_decay(step: int, power: float = 0.75, max_decay: float = 0.9999) -> float:
    """Warm-up decay 1 - (1 + step)^(-power), capped (Diffusion Policy, Chi et al. 2023; k-diffusion)."""
    return min(1.0 - (1.0 + step) ** (-power), max_decay)


class EMA:
    """A frozen copy of a module whose parameters track the live ones; buffers are copied as they are."""

    def __init__(self, model: nn.Module, power: float = 0.75, max_decay: float = 0.9999):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.max_decay = power, max_decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = ema_decay(self.updates, self.power, self.max_decay)
        ema_params = [p for p in self.module.parameters()]
        live_params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, live_params, 1.0 - decay)
        for ema_buf, buf in zip(self.module.buffers(), model.buffers()):
            ema_buf.copy_(buf)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

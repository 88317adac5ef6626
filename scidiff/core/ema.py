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
    """A frozen copy of a module whose parameters track the live ones; buffers are copied as they are.

    Parameters and buffers are paired by name: deep copies of some modules (e3nn's generated code) gain extra
    buffers, so positions do not line up.
    """

    def __init__(self, model: nn.Module, power: float = 0.75, max_decay: float = 0.9999):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.max_decay = power, max_decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = ema_decay(self.updates, self.power, self.max_decay)
        live = dict(model.named_parameters())
        pairs = [(p, live[name].detach()) for name, p in self.module.named_parameters()]
        torch._foreach_lerp_([p for p, _ in pairs], [q for _, q in pairs], 1.0 - decay)
        live_buffers = dict(model.named_buffers())
        for name, buf in self.module.named_buffers():
            if name in live_buffers:
                buf.copy_(live_buffers[name])
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

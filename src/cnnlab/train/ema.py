"""An exponential moving average of a model's weights (evaluated instead of the raw weights).

``ema = decay * ema + (1 - decay) * weights`` after every step, for parameters and float
buffers alike (batch-norm running statistics); integer buffers are copied. Early in
training the decay is lowered to ``(1 + n) / (10 + n)`` so the average is not dominated
by the random initialisation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps an averaged copy of ``model``."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_state = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if value.dtype.is_floating_point:
                target.lerp_(value.detach(), 1.0 - d)
            else:
                target.copy_(value)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

"""An exponential moving average of a model's weights, updated after every optimiser step.

Validation, model selection and ``best.pt`` then use the averaged weights, which move less from
one epoch to the next than the weights of the last step. BatchNorm's running statistics are
averaged the same way; integer buffers (the batch counters) are copied.
"""

from __future__ import annotations

import copy
from typing import Any, Generic, TypeVar

import torch

from aidnet.training.checkpoint import cpu_weights

M = TypeVar("M", bound=torch.nn.Module)


class WeightAverage(Generic[M]):
    """``shadow = d·shadow + (1 − d)·weights`` after each step, with ``d = min(decay, (1 + n) /
    (10 + n))`` at the n-th update, so that the first steps' random weights fade quickly."""

    def __init__(self, model: M, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie between 0 and 1, not {decay}")
        self.decay = decay
        self.updates = 0
        self.module: M = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        current = model.state_dict()
        for key, shadow in self.module.state_dict().items():
            value = current[key].detach()
            if shadow.dtype.is_floating_point:
                shadow.mul_(d).add_(value.to(shadow.dtype), alpha=1.0 - d)
            else:
                shadow.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "weights": cpu_weights(self.module)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])

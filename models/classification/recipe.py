"""The pieces of the classifier's training recipe that are more than one line: the learning-rate
schedules, the weight-decay split, the exponential moving average (EMA) of the weights.

Used by :mod:`models.classification.train` (one training step at a time) and by the tests.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

SCHEDULES = ("cosine", "onecycle")


def lr_at(step: int, total: int, warmup: int, peak: float, schedule: str = "cosine") -> float:
    """Learning rate of ``step`` (0-based) out of ``total``.

    ``cosine``: linear warm-up over ``warmup`` steps to ``peak``, then cosine decay to 0.
    ``onecycle``: the piecewise-linear one-cycle of the DAWNBench ResNet-9 (0 -> ``peak`` over
    ``warmup`` steps, then linearly back to 0 at ``total``).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak * (1.0 - progress)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two optimizer groups: weight decay on conv / linear weights only.

    Everything with at most one dimension is exempt: BatchNorm weights and biases, every bias,
    and scalar parameters such as the Poly-NL paper-scalar form's a and b. Decaying BN's scale
    only changes the effective learning rate of the layer before it, and decaying a or b would
    pull the block towards "off" (b -> 0) or "input gone" (a -> 0) for no reason.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class WeightEma:
    """An exponential moving average of a model's parameters and BatchNorm statistics.

    After every optimizer step ``update`` moves each floating-point tensor of the state dict
    towards the training model's: ``ema = d * ema + (1 - d) * current`` with
    ``d = min(decay, (1 + updates) / (10 + updates))`` (the short ramp keeps the first few
    hundred steps' random initial weights from dominating a short run). Integer buffers
    (BatchNorm's batch counter) are copied. ``module`` is what is evaluated and exported.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        current = model.state_dict()
        for name, average in self.module.state_dict().items():
            value = current[name].detach()
            if average.is_floating_point():
                average.mul_(d).add_(value.to(average.dtype), alpha=1.0 - d)
            else:
                average.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["module"])

"""Prediction heads: one 1x1 convolution per FPN level for scores, boxes and landmarks.

Data path: SSH features -> heads -> ``(B, P, k)`` tensors, locations in row-major order and
``num_anchors`` consecutive anchors per location (the order of ``priors.generate_priors``).
Module names (``conv1x1``) follow the public PyTorch RetinaFace code.
"""

from __future__ import annotations

import torch
from torch import nn


class _Head(nn.Module):
    values_per_anchor = 1

    def __init__(self, in_channels: int, num_anchors: int = 2) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(in_channels, num_anchors * self.values_per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values_per_anchor)


class ClassHead(_Head):
    """Two logits per anchor: background, face."""

    values_per_anchor = 2


class BboxHead(_Head):
    """Four box offsets per anchor (see ``codec.encode_boxes``)."""

    values_per_anchor = 4


class LandmarkHead(_Head):
    """Ten landmark offsets (five x, y pairs) per anchor."""

    values_per_anchor = 10


def make_heads(kind: type[_Head], in_channels: int, num_levels: int, num_anchors: int) -> nn.ModuleList:
    return nn.ModuleList(kind(in_channels, num_anchors) for _ in range(num_levels))

"""ResNet-9: the small residual CIFAR network of the DAWNBench CIFAR-10 entries, with a context block.

The layout of David Page's DAWNBench ResNet-9 ("How to train your ResNet", 2018), which
reached 94 % on CIFAR-10 in 24 epochs::

    prep    conv3x3(3 -> w) BN ReLU                                   32x32
    layer1  conv3x3(w -> 2w) BN ReLU max-pool 2, + residual(2w)       16x16
    layer2  conv3x3(2w -> 4w) BN ReLU max-pool 2                       8x8
    layer3  conv3x3(4w -> 8w) BN ReLU max-pool 2, + residual(8w)       4x4
    head    global max-pool, linear(8w -> classes), logits * 0.125

with w = 64 (64/128/256/512 channels) and ``residual(c)`` two conv3x3-BN-ReLU added to their
input. The final scale 0.125 is Page's: it keeps the initial logits small, which the short,
high learning-rate schedule needs.

Where the context block sits (``block_positions``, default ``["layer2"]``): after a named
stage's output, before the next stage. The default puts it on the 8x8 map of ``layer2``
(C = 4w = 256, N = 64 positions): the penultimate stage, as in the non-local protocol (res4 of
ResNet-50) that the shipped ResNet-20 and our Poly-NL placement follow. After ``layer3`` the
map has only 16 positions and a global max-pool follows at once, so a global context adds
little there; after ``layer1`` (16x16, C = 128) is the other sensible place, at the same
block cost (N * C * C' is equal), and can be chosen with ``--block-positions layer1``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from models.blocks import BLOCK_TYPES, DEFAULT_POLYNL_FORM, make_block

ARCHITECTURE = "resnet9"
STAGES = ("prep", "layer1", "layer2", "layer3")
LOGIT_SCALE = 0.125


@dataclass
class ResNet9Config:
    """Everything needed to rebuild a ResNet-9 classifier; stored in its checkpoint as ``arch``."""

    architecture: str = ARCHITECTURE
    num_classes: int = 10
    width: int = 64  # channels of the prep layer; the stages have 2x, 4x, 8x
    block: str = "polynl"  # none | nonlocal | polynl
    block_form: str = DEFAULT_POLYNL_FORM
    block_positions: list[str] = field(default_factory=lambda: ["layer2"])
    block_reduction: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResNet9Config:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    """``x + conv_bn(conv_bn(x))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.res1 = conv_bn(channels, channels)
        self.res2 = conv_bn(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res2(self.res1(x))


def _stage(in_channels: int, out_channels: int, residual: bool) -> nn.Sequential:
    layers: list[nn.Module] = [conv_bn(in_channels, out_channels), nn.MaxPool2d(2)]
    if residual:
        layers.append(Residual(out_channels))
    return nn.Sequential(*layers)


class ResNet9(nn.Module):
    """ResNet-9 with optional context blocks after chosen stages (see the module docstring)."""

    def __init__(self, config: ResNet9Config) -> None:
        super().__init__()
        if config.block not in BLOCK_TYPES:
            raise ValueError(f"unknown block type {config.block!r}; expected one of {BLOCK_TYPES}")
        self.config = config
        w = config.width
        self.prep = conv_bn(3, w)
        self.layer1 = _stage(w, 2 * w, residual=True)
        self.layer2 = _stage(2 * w, 4 * w, residual=False)
        self.layer3 = _stage(4 * w, 8 * w, residual=True)
        channels = {"prep": w, "layer1": 2 * w, "layer2": 4 * w, "layer3": 8 * w}
        self.context_blocks = nn.ModuleDict()
        if config.block != "none":
            for position in config.block_positions:
                if position not in channels:
                    raise ValueError(f"bad block position {position!r}; expected one of {STAGES}")
                self.context_blocks[position] = make_block(
                    config.block, channels[position], config.block_reduction, config.block_form
                )
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(8 * w, config.num_classes, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for name in STAGES:
            x = getattr(self, name)(x)
            if name in self.context_blocks:
                x = self.context_blocks[name](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1)) * LOGIT_SCALE


def resnet9(num_classes: int = 10, block: str = "polynl", **kwargs: Any) -> ResNet9:
    """ResNet-9 (width 64) with, by default, one Poly-NL block after ``layer2``."""
    return ResNet9(ResNet9Config(num_classes=num_classes, block=block, **kwargs))

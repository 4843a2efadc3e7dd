"""Necks: FPN (top-down merge of the stride 8/16/32 maps) and SSH context modules.

Data path: backbone maps -> :class:`FPN` -> one :class:`SSH` per level -> heads. Layout and
parameter names follow the public PyTorch RetinaFace code (``output1``, ``merge1``,
``conv3X3``, ``conv5X5_1``...); LeakyReLU slope 0.1 when ``out_channels <= 64``, else ReLU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.retinaface.backbones import conv_bn, conv_bn1x1, conv_bn_no_relu


def _leaky(out_channels: int) -> float:
    return 0.1 if out_channels <= 64 else 0.0


class FPN(nn.Module):
    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        leaky = _leaky(out_channels)
        self.output1 = conv_bn1x1(in_channels[0], out_channels, leaky=leaky)
        self.output2 = conv_bn1x1(in_channels[1], out_channels, leaky=leaky)
        self.output3 = conv_bn1x1(in_channels[2], out_channels, leaky=leaky)
        self.merge1 = conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out1 = self.output1(features[0])
        out2 = self.output2(features[1])
        out3 = self.output3(features[2])
        # Nearest upsampling to the exact size of the finer map (odd sizes: ceil halving).
        out2 = self.merge2(out2 + F.interpolate(out3, size=out2.shape[-2:], mode="nearest"))
        out1 = self.merge1(out1 + F.interpolate(out2, size=out1.shape[-2:], mode="nearest"))
        return [out1, out2, out3]


class SSH(nn.Module):
    """Single Stage Headless context module: parallel 3x3, 5x5 and 7x7 receptive fields."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels % 4 != 0:
            raise ValueError(f"SSH out_channels must be a multiple of 4, got {out_channels}")
        leaky = _leaky(out_channels)
        self.conv3X3 = conv_bn_no_relu(in_channels, out_channels // 2)
        self.conv5X5_1 = conv_bn(in_channels, out_channels // 4, leaky=leaky)
        self.conv5X5_2 = conv_bn_no_relu(out_channels // 4, out_channels // 4)
        self.conv7X7_2 = conv_bn(out_channels // 4, out_channels // 4, leaky=leaky)
        self.conv7x7_3 = conv_bn_no_relu(out_channels // 4, out_channels // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv3 = self.conv3X3(x)
        conv5_1 = self.conv5X5_1(x)
        conv5 = self.conv5X5_2(conv5_1)
        conv7 = self.conv7x7_3(self.conv7X7_2(conv5_1))
        return F.relu(torch.cat([conv3, conv5, conv7], dim=1))

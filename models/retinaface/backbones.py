"""Backbones: image -> feature maps at strides 8, 16 and 32 (the input of the FPN).

- :class:`MobileNetV1` is RetinaFace's "mobilenet0.25": depthwise-separable convolutions with
  LeakyReLU(0.1), channel widths 8..256, three stages returning 64, 128 and 256 channels.
  Parameter names (``stage1.0.0.weight``...) follow the public PyTorch RetinaFace code so that
  weights in that layout load without renaming.
- :class:`ResNet50Backbone` reuses :class:`models.resnet.ResNet` (torchvision key names) and
  returns ``layer2``/``layer3``/``layer4`` (512, 1024, 2048 channels).
"""

from __future__ import annotations

import torch
from torch import nn

from models.resnet import ResNet, ResNetConfig


def conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_bn_no_relu(inp: int, oup: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup))


def conv_bn1x1(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, stride, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """Depthwise 3x3 + pointwise 1x1, each with BN and LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNet-0.25 as used by RetinaFace; ``forward`` returns the stride 8/16/32 maps."""

    out_channels: tuple[int, int, int] = (64, 128, 256)

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, 2, leaky=0.1),  # stride 2
            conv_dw(8, 16, 1),
            conv_dw(16, 32, 2),  # stride 4
            conv_dw(32, 32, 1),
            conv_dw(32, 64, 2),  # stride 8
            conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(
            conv_dw(64, 128, 2),  # stride 16
            *[conv_dw(128, 128, 1) for _ in range(5)],
        )
        self.stage3 = nn.Sequential(
            conv_dw(128, 256, 2),  # stride 32
            conv_dw(256, 256, 1),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu", a=0.1)

    def run_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Stage 0, 1, 2 -> output at stride 8, 16, 32."""
        return (self.stage1, self.stage2, self.stage3)[index](x)


class ResNet50Backbone(nn.Module):
    """torchvision-layout ResNet-50 trunk; stages ``layer2``/``layer3``/``layer4``."""

    out_channels: tuple[int, int, int] = (512, 1024, 2048)

    def __init__(self) -> None:
        super().__init__()
        trunk = ResNet(ResNetConfig(depth=50, block="none", num_classes=1))
        self.conv1: nn.Module = trunk.conv1
        self.bn1 = trunk.bn1
        self.relu = trunk.relu
        self.maxpool = trunk.maxpool
        self.layer1 = trunk.get_submodule("layer1")
        self.layer2 = trunk.get_submodule("layer2")
        self.layer3 = trunk.get_submodule("layer3")
        self.layer4 = trunk.get_submodule("layer4")

    def run_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Stage 0 (stem .. layer2), 1 (layer3), 2 (layer4) -> output at stride 8, 16, 32."""
        if index == 0:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            return self.layer2(self.layer1(x))
        return (self.layer3, self.layer4)[index - 1](x)


BACKBONES: dict[str, type[MobileNetV1] | type[ResNet50Backbone]] = {
    "mobilenet0.25": MobileNetV1,
    "resnet50": ResNet50Backbone,
}


def build_backbone(name: str) -> MobileNetV1 | ResNet50Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    return BACKBONES[name]()

"""ResNet classifiers with Poly-NL (or non-local) context blocks at configurable positions.

One definition builds every variant from a :class:`ResNetConfig` (timm-style): the
ImageNet ResNet-18/50 whose parameter names match torchvision's state dicts, and the
CIFAR-style ResNet-20/56 (3 stages of basic blocks, 16/32/64 channels) used for the
shipped default classifier.

Context blocks are kept out of the ``layerN`` sequences so that the residual blocks keep
torchvision's keys (``layer3.5.conv1.weight``...). A block positioned at ``"layer3.5"``
runs just before residual block 5 of ``layer3``; its parameters live under
``context_blocks.layer3_5``. With the zero-initialised BN of the blocks, a network built
from a plain ResNet checkpoint gives the plain ResNet's outputs until it is fine-tuned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from models.blocks import BLOCK_TYPES, DEFAULT_POLYNL_FORM, make_block


@dataclass
class ResNetConfig:
    """Everything needed to rebuild a classifier; stored in its checkpoint."""

    depth: int = 50
    stem: str = "imagenet"  # "imagenet" (7x7/2 conv + max-pool) or "cifar" (3x3/1 conv)
    num_classes: int = 1000
    block: str = "polynl"  # none | nonlocal | polynl
    block_positions: list[str] = field(default_factory=lambda: ["layer3.5"])
    block_reduction: int = 2
    width: int = 64  # channels of the first stage (16 for the CIFAR ResNets)
    # The Poly-NL form (models/blocks.py); checkpoints written before it existed hold "projected".
    block_form: str = DEFAULT_POLYNL_FORM
    architecture: str = "resnet"  # the classifier family (models/classifiers.py); old checkpoints lack it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResNetConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


# depth -> (residual block kind, blocks per stage)
_IMAGENET_DEPTHS: dict[int, tuple[str, list[int]]] = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
}


def _cifar_layout(depth: int) -> tuple[str, list[int]]:
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56...), got {depth}")
    n = (depth - 2) // 6
    return "basic", [n, n, n]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride on 3x3 (v1.5)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out_planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet with optional context blocks before chosen residual blocks."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        if config.block not in BLOCK_TYPES:
            raise ValueError(f"unknown block type {config.block!r}; expected one of {BLOCK_TYPES}")
        self.config = config
        if config.stem == "imagenet":
            if config.depth not in _IMAGENET_DEPTHS:
                raise ValueError(f"ImageNet ResNet depth must be one of {sorted(_IMAGENET_DEPTHS)}")
            kind, counts = _IMAGENET_DEPTHS[config.depth]
            self.conv1 = nn.Conv2d(3, config.width, 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        elif config.stem == "cifar":
            kind, counts = _cifar_layout(config.depth)
            self.conv1 = nn.Conv2d(3, config.width, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {config.stem!r}")
        self.bn1 = nn.BatchNorm2d(config.width)
        self.relu = nn.ReLU(inplace=True)

        residual: type[BasicBlock] | type[Bottleneck] = BasicBlock if kind == "basic" else Bottleneck
        inplanes = config.width
        self.layer_names: list[str] = []
        stage_out_channels: dict[str, list[int]] = {}
        for stage, count in enumerate(counts):
            planes = config.width * (2**stage)
            stride = 1 if stage == 0 else 2
            blocks = []
            in_channels = []
            for i in range(count):
                in_channels.append(inplanes)
                blocks.append(residual(inplanes, planes, stride if i == 0 else 1))
                inplanes = planes * residual.expansion
            name = f"layer{stage + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.layer_names.append(name)
            stage_out_channels[name] = in_channels

        self.context_blocks = nn.ModuleDict()
        if config.block != "none":
            for position in config.block_positions:
                layer, _, index = position.partition(".")
                if layer not in stage_out_channels or not index.isdigit():
                    raise ValueError(f"bad block position {position!r}; expected e.g. 'layer3.5'")
                if int(index) >= len(stage_out_channels[layer]):
                    raise ValueError(f"block position {position!r} is past the end of {layer}")
                channels = stage_out_channels[layer][int(index)]
                self.context_blocks[position.replace(".", "_")] = make_block(
                    config.block, channels, config.block_reduction, config.block_form
                )

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, config.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for name, module in self.named_modules():
            if name.startswith("context_blocks"):
                continue  # the blocks initialise themselves (zero-init residual BN)
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for layer_name in self.layer_names:
            layer = getattr(self, layer_name)
            for i, block in enumerate(layer):
                key = f"{layer_name}_{i}"
                if key in self.context_blocks:
                    x = self.context_blocks[key](x)
                x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def resnet50(num_classes: int = 1000, block: str = "polynl", **kwargs: Any) -> ResNet:
    """Poly-NL ResNet-50: by default one block before the last residual block of res4."""
    return ResNet(ResNetConfig(depth=50, num_classes=num_classes, block=block, **kwargs))


def resnet18(num_classes: int = 1000, block: str = "polynl", **kwargs: Any) -> ResNet:
    """Poly-NL ResNet-18: by default one block before the last residual block of res4."""
    kwargs.setdefault("block_positions", ["layer3.1"])
    return ResNet(ResNetConfig(depth=18, num_classes=num_classes, block=block, **kwargs))


def cifar_resnet(depth: int = 20, num_classes: int = 10, block: str = "polynl", **kwargs: Any) -> ResNet:
    """CIFAR-style ResNet (32x32 input); by default a block before the last block of stages 2 and 3."""
    n = (depth - 2) // 6
    kwargs.setdefault("block_positions", [f"layer2.{n - 1}", f"layer3.{n - 1}"])
    kwargs.setdefault("width", 16)
    return ResNet(ResNetConfig(depth=depth, stem="cifar", num_classes=num_classes, block=block, **kwargs))


class StateDictMismatch(ValueError):
    """A plain ResNet state dict does not fit the requested architecture."""


def load_plain_resnet_state_dict(model: ResNet, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load a torchvision-layout ResNet state dict into a (Poly-NL) ResNet.

    Accepts a ``module.`` prefix (DataParallel) and a wrapping ``{"state_dict": ...}``.
    The context blocks are the only parameters allowed to be missing; they keep their
    identity initialisation, so the model computes the plain ResNet's function until it
    is fine-tuned. Returns the names of the keys that were left at initialisation.
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    cleaned = {k.removeprefix("module."): v for k, v in state_dict.items()}
    own = model.state_dict()
    unexpected = sorted(set(cleaned) - set(own))
    if unexpected:
        raise StateDictMismatch(
            f"keys not in this architecture: {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    missing = sorted(set(own) - set(cleaned))
    not_context = [k for k in missing if not k.startswith("context_blocks.")]
    if not_context:
        raise StateDictMismatch(f"checkpoint lacks ResNet keys: {not_context[:8]}")
    shapes = [k for k, v in cleaned.items() if own[k].shape != v.shape]
    if shapes:
        raise StateDictMismatch(
            f"shape mismatch for {shapes[:4]} (e.g. a different num_classes: {own[shapes[0]].shape} vs "
            f"{cleaned[shapes[0]].shape})"
        )
    model.load_state_dict(cleaned, strict=False)
    return missing

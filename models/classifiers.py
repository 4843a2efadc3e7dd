"""The classifier families, by the ``architecture`` name their checkpoints record.

``models.checkpoint.build_model`` and the training CLI turn a stored ``arch`` dict into a
config and a network here, so a new family is one entry in :data:`ARCHITECTURES`, not a new
branch in the loaders. Checkpoints written before the field existed are ``resnet``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from models.resnet import ResNet, ResNetConfig
from models.resnet9 import ResNet9, ResNet9Config

ClassifierConfig = ResNetConfig | ResNet9Config

ARCHITECTURES: dict[str, tuple[type[ResNetConfig] | type[ResNet9Config], type[nn.Module]]] = {
    "resnet": (ResNetConfig, ResNet),
    "resnet9": (ResNet9Config, ResNet9),
}


def classifier_config(arch: dict[str, Any]) -> ClassifierConfig:
    """The config of a stored ``arch`` dict (missing fields take their defaults)."""
    name = str(arch.get("architecture", "resnet"))
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown classifier architecture {name!r}; expected one of {sorted(ARCHITECTURES)}")
    config_cls, _ = ARCHITECTURES[name]
    return config_cls.from_dict(arch)


def build_classifier(config: ClassifierConfig) -> nn.Module:
    """An untrained network of ``config``."""
    _, model_cls = ARCHITECTURES[config.architecture]
    return model_cls(config)

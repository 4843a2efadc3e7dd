"""The RetinaFace network with a Poly-NL (or non-local) context block: image -> raw head outputs.

Data path: images ``(B, 3, H, W)`` (normalised as in the checkpoint's ``preprocess``) ->
backbone stages at strides 8/16/32, with the context block(s) applied to the chosen stage
outputs -> FPN -> SSH per level -> heads -> ``loc (B, P, 4)``, ``conf (B, P, 2)`` logits,
``landm (B, P, 10)``, all relative to the priors of ``priors.generate_priors``. Decoding to
pixels lives in ``inference.DecodedRetinaFace``; the loss in ``loss``.

Where the block sits: by default one block on the stride-16 backbone stage output, before it
enters the FPN (for MobileNet-0.25 that is the 128-channel ``stage2`` output). Blocks live
under ``context.stride<S>`` so that the backbone, FPN, SSH and heads keep the public
RetinaFace parameter names; with the blocks' zero-initialised BN, imported weights give the
plain RetinaFace's outputs until fine-tuned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from models.blocks import BLOCK_TYPES, make_block
from models.retinaface.backbones import build_backbone
from models.retinaface.heads import BboxHead, ClassHead, LandmarkHead, make_heads
from models.retinaface.necks import FPN, SSH
from models.retinaface.priors import DEFAULT_MIN_SIZES, DEFAULT_STEPS, DEFAULT_VARIANCES

_DEFAULT_OUT_CHANNELS = {"mobilenet0.25": 64, "resnet50": 256}


@dataclass
class RetinaFaceConfig:
    """Everything needed to rebuild a detector; stored in its checkpoint as ``arch``."""

    backbone: str = "mobilenet0.25"  # mobilenet0.25 | resnet50
    block: str = "polynl"  # none | nonlocal | polynl
    block_positions: list[int] = field(default_factory=lambda: [16])  # backbone output strides
    block_reduction: int = 2
    out_channels: int | None = None  # FPN/SSH width; None: 64 (mobilenet0.25), 256 (resnet50)
    min_sizes: list[list[int]] = field(default_factory=lambda: [list(s) for s in DEFAULT_MIN_SIZES])
    steps: list[int] = field(default_factory=lambda: list(DEFAULT_STEPS))
    variances: list[float] = field(default_factory=lambda: list(DEFAULT_VARIANCES))

    @property
    def fpn_channels(self) -> int:
        return self.out_channels or _DEFAULT_OUT_CHANNELS[self.backbone]

    @property
    def num_anchors(self) -> int:
        return len(self.min_sizes[0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetinaFaceConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class RetinaFace(nn.Module):
    """Raw RetinaFace: ``forward(images) -> (loc, conf_logits, landm)``."""

    def __init__(self, config: RetinaFaceConfig | None = None) -> None:
        super().__init__()
        config = config or RetinaFaceConfig()
        if config.block not in BLOCK_TYPES:
            raise ValueError(f"unknown block type {config.block!r}; expected one of {BLOCK_TYPES}")
        if list(config.steps) != [8, 16, 32] or len(config.min_sizes) != 3:
            raise ValueError("RetinaFace has three levels at strides 8, 16, 32")
        if len({len(s) for s in config.min_sizes}) != 1:
            raise ValueError("every level needs the same number of anchors")
        self.config = config
        self.body = build_backbone(config.backbone)
        stage_channels = dict(zip(config.steps, self.body.out_channels, strict=True))
        self.context = nn.ModuleDict()
        if config.block != "none":
            for stride in config.block_positions:
                if stride not in stage_channels:
                    raise ValueError(f"block position must be a stride in {config.steps}, got {stride}")
                self.context[f"stride{stride}"] = make_block(
                    config.block, stage_channels[stride], config.block_reduction
                )
        channels = config.fpn_channels
        self.fpn = FPN(self.body.out_channels, channels)
        self.ssh1 = SSH(channels, channels)
        self.ssh2 = SSH(channels, channels)
        self.ssh3 = SSH(channels, channels)
        anchors = config.num_anchors
        self.ClassHead = make_heads(ClassHead, channels, 3, anchors)
        self.BboxHead = make_heads(BboxHead, channels, 3, anchors)
        self.LandmarkHead = make_heads(LandmarkHead, channels, 3, anchors)

    def backbone_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Stride 8/16/32 backbone maps, context blocks applied where configured."""
        features = []
        x = images
        for index, stride in enumerate(self.config.steps):
            x = self.body.run_stage(index, x)
            key = f"stride{stride}"
            if key in self.context:
                x = self.context[key](x)  # the block's output also feeds the next stage
            features.append(x)
        return features

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fpn = self.fpn(self.backbone_features(images))
        features = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, features, strict=True)], dim=1)
        conf = torch.cat([head(f) for head, f in zip(self.ClassHead, features, strict=True)], dim=1)
        landm = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features, strict=True)], dim=1)
        return loc, conf, landm

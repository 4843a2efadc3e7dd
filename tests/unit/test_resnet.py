"""Poly-NL ResNets (models/resnet.py): block placement and torchvision-layout checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.blocks import NonLocal, PolyNL
from models.checkpoint import Checkpoint, CheckpointError, load_model, save_checkpoint
from models.resnet import (
    ResNet,
    ResNetConfig,
    StateDictMismatch,
    cifar_resnet,
    load_plain_resnet_state_dict,
    resnet18,
    resnet50,
)

# A few of torchvision's ResNet-50 parameter names, written out so the test does not need
# torchvision: the layout users' checkpoints come in.
TORCHVISION_RESNET50_KEYS = [
    "conv1.weight", "bn1.running_mean", "bn1.num_batches_tracked",
    "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight",
    "layer3.5.conv3.weight", "layer3.5.bn3.running_var", "layer4.2.bn3.bias",
    "fc.weight", "fc.bias",
]  # fmt: skip


def test_resnet50_default_places_one_polynl_before_the_last_res4_block() -> None:
    model = resnet50(num_classes=10)
    assert list(model.context_blocks.keys()) == ["layer3_5"]
    block = model.context_blocks["layer3_5"]
    assert isinstance(block, PolyNL) and block.channels == 1024 and block.inner_channels == 512


def test_resnet50_parameter_names_match_torchvision_layout() -> None:
    keys = set(resnet50(block="none").state_dict())
    assert len(keys) == 320  # torchvision resnet50().state_dict() has 320 entries
    assert set(TORCHVISION_RESNET50_KEYS) <= keys


def test_plain_resnet_checkpoint_gives_identical_outputs_in_a_polynl_resnet(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = resnet18(num_classes=7, block="none").eval()
    for module in plain.modules():  # non-trivial BN statistics, as in a trained network
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    file = tmp_path / "resnet18.pth"
    torch.save({f"module.{k}": v for k, v in plain.state_dict().items()}, file)

    poly = resnet18(num_classes=7, block="polynl").eval()
    missing = load_plain_resnet_state_dict(poly, torch.load(file, weights_only=True))
    assert missing and all(k.startswith("context_blocks.") for k in missing)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(poly(x), plain(x), rtol=0, atol=0)


def test_plain_checkpoint_with_other_num_classes_is_refused_clearly() -> None:
    plain = resnet18(num_classes=1000, block="none")
    with pytest.raises(StateDictMismatch, match="num_classes"):
        load_plain_resnet_state_dict(resnet18(num_classes=10), plain.state_dict())


@pytest.mark.parametrize("block", ["none", "nonlocal", "polynl"])
def test_cifar_resnet20_swaps_block_by_config(block: str) -> None:
    model = cifar_resnet(20, block=block).eval()
    expected = {"none": type(None), "nonlocal": NonLocal, "polynl": PolyNL}[block]
    blocks = list(model.context_blocks.values())
    if block == "none":
        assert blocks == []
    else:
        assert list(model.context_blocks.keys()) == ["layer2_2", "layer3_2"]
        assert all(isinstance(b, expected) for b in blocks)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)


def test_bad_block_position_is_rejected() -> None:
    with pytest.raises(ValueError, match="past the end"):
        ResNet(ResNetConfig(depth=20, stem="cifar", width=16, block_positions=["layer3.9"]))
    with pytest.raises(ValueError, match="bad block position"):
        ResNet(ResNetConfig(depth=20, stem="cifar", width=16, block_positions=["res4"]))


def test_checkpoint_round_trip_rebuilds_the_same_classifier(tmp_path: Path) -> None:
    model = cifar_resnet(8, num_classes=3).eval()
    ckpt = Checkpoint(
        task="classifier",
        arch=model.config.to_dict(),
        state_dict=model.state_dict(),
        labels=["a", "b", "c"],
        preprocess={"resize": "shorter_side_center_crop"},
    )
    digest = save_checkpoint(tmp_path / "c.pt", ckpt)
    loaded, meta = load_model(tmp_path / "c.pt")
    assert meta.sha256 == digest and meta.labels == ["a", "b", "c"]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_missing_or_corrupt_checkpoint_raises_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(bad)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a polynl-checkpoint"):
        load_model(tmp_path / "other.pt")

"""Importing the public PyTorch RetinaFace key layout (biubug6 Pytorch_Retinaface)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import load_model
from models.retinaface.import_weights import (
    WeightImportError,
    import_checkpoint,
    load_public_weights,
    public_key_map,
)
from models.retinaface.net import RetinaFace, RetinaFaceConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _public_model(backbone: str = "mobilenet0.25") -> RetinaFace:
    """A plain RetinaFace (no context block) with random weights and BN statistics."""
    torch.manual_seed(1)
    model = RetinaFace(RetinaFaceConfig(backbone=backbone, block="none"))
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dtype.is_floating_point:
                tensor.copy_(torch.randn_like(tensor) * 0.1 + (1.0 if "running_var" in name else 0.0))
                if "running_var" in name:
                    tensor.abs_()
    return model.eval()


def _write_public_file(model: RetinaFace, path: Path, prefix: str) -> None:
    ours = model.state_dict()
    public = {prefix + public_key: ours[our_key] for our_key, public_key in public_key_map(model).items()}
    assert any(k.startswith(prefix + "body.stage1.0.0") for k in public)
    assert prefix + "ClassHead.0.conv1x1.weight" in public and prefix + "ssh1.conv3X3.0.weight" in public
    torch.save(public, path)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_public_checkpoint_import_gives_identical_outputs(tmp_path: Path, prefix: str) -> None:
    public = _public_model()
    path = tmp_path / "mobilenet0.25_Final.pth"
    _write_public_file(public, path, prefix)

    ours = load_public_weights(RetinaFace(RetinaFaceConfig(block="polynl")), path).eval()
    bgr = torch.randn(2, 3, 67, 93) * 50
    rgb = bgr[:, [2, 1, 0]]  # the public models take BGR; ours RGB
    with torch.no_grad():
        expected = public(bgr)
        got = ours(rgb)
    for e, g in zip(expected, got, strict=True):
        assert torch.allclose(e, g, atol=1e-4, rtol=1e-4)


def test_import_can_keep_bgr_input(tmp_path: Path) -> None:
    public = _public_model()
    path = tmp_path / "public.pth"
    _write_public_file(public, path, "module.")
    ours = load_public_weights(RetinaFace(RetinaFaceConfig(block="nonlocal")), path, bgr_input=False).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(public(x)[1], ours(x)[1], atol=1e-4)


def test_imported_checkpoint_file_loads_with_the_project_loader(tmp_path: Path) -> None:
    public = _public_model()
    source = tmp_path / "public.pth"
    _write_public_file(public, source, "")
    out = tmp_path / "face_detector.pt"
    import_checkpoint(source, RetinaFaceConfig(), out)
    model, meta = load_model(out)
    assert meta.task == "face_detector" and meta.labels == ["face"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(public(x[:, [2, 1, 0]])[0], model(x)[0], atol=1e-4)


def test_wrong_backbone_file_is_rejected_with_a_clear_message(tmp_path: Path) -> None:
    public = _public_model()
    path = tmp_path / "public.pth"
    _write_public_file(public, path, "")
    with pytest.raises(WeightImportError, match=r"missing|shape"):
        load_public_weights(RetinaFace(RetinaFaceConfig(backbone="resnet50")), path)

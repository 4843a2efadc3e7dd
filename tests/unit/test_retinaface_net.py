"""The RetinaFace network, its config, and the decoded (exported) form."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.blocks import NonLocal, PolyNL
from models.checkpoint import build_model
from models.retinaface.inference import DecodedRetinaFace
from models.retinaface.net import RetinaFace, RetinaFaceConfig
from models.retinaface.priors import generate_priors, num_priors

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 64, 64), (3, 97, 131), (2, 33, 250)])
def test_decoded_outputs_have_one_row_per_prior_for_odd_sizes_and_batches(
    batch: int, height: int, width: int
) -> None:
    model = DecodedRetinaFace(RetinaFace()).eval()
    with torch.no_grad():
        boxes, scores, landmarks = model(torch.randn(batch, 3, height, width))
    priors = num_priors(height, width)
    assert boxes.shape == (batch, priors, 4)
    assert scores.shape == (batch, priors)
    assert landmarks.shape == (batch, priors, 10)
    assert bool(((scores >= 0) & (scores <= 1)).all())


def test_decoded_boxes_equal_priors_when_the_regression_is_zero() -> None:
    net = RetinaFace().eval()
    for head in [*net.BboxHead, *net.LandmarkHead]:
        torch.nn.init.zeros_(head.conv1x1.weight)
        torch.nn.init.zeros_(head.conv1x1.bias)
    with torch.no_grad():
        boxes, _, landmarks = DecodedRetinaFace(net)(torch.randn(1, 3, 40, 72))
    priors = generate_priors(40, 72)
    expected = torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], dim=1)
    assert torch.allclose(boxes[0], expected)
    assert torch.allclose(landmarks[0, :, :2], priors[:, :2])


def test_default_block_is_polynl_on_the_stride16_stage_before_the_fpn() -> None:
    net = RetinaFace()
    assert list(net.context.keys()) == ["stride16"]
    block = net.context["stride16"]
    assert isinstance(block, PolyNL) and block.channels == 128
    seen: dict[str, torch.Tensor] = {}

    def block_output(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        seen["out"] = output

    def fpn_input(_module: torch.nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        seen["fpn_in"] = inputs[0]

    block.register_forward_hook(block_output)
    net.fpn.output2.register_forward_hook(fpn_input)
    net.eval()(torch.randn(1, 3, 64, 64))
    assert torch.equal(seen["out"], seen["fpn_in"])


@pytest.mark.parametrize(("block", "kind"), [("nonlocal", NonLocal), ("none", None)])
def test_block_type_is_a_config_value(block: str, kind: type | None) -> None:
    net = RetinaFace(RetinaFaceConfig(block=block))
    if kind is None:
        assert len(net.context) == 0
    else:
        assert isinstance(net.context["stride16"], kind)


def test_config_round_trips_through_a_dict_and_builds_via_the_checkpoint_module() -> None:
    config = RetinaFaceConfig(block="polynl", block_positions=[8, 32], block_reduction=4)
    again = RetinaFaceConfig.from_dict(config.to_dict())
    assert again == config
    model = build_model("face_detector", config.to_dict())
    assert sorted(model.context.keys()) == ["stride32", "stride8"]


@pytest.mark.slow
def test_resnet50_backbone_runs_and_uses_torchvision_key_names() -> None:
    net = RetinaFace(RetinaFaceConfig(backbone="resnet50")).eval()
    keys = net.state_dict().keys()
    assert "body.layer3.5.conv1.weight" in keys and "context.stride16.w1.weight" in keys
    with torch.no_grad():
        loc, conf, landm = net(torch.randn(1, 3, 64, 64))
    assert loc.shape == (1, num_priors(64, 64), 4) and conf.shape[-1] == 2 and landm.shape[-1] == 10


@pytest.mark.slow
def test_decoded_model_exports_to_onnx_with_dynamic_batch_height_and_width(tmp_path: Path) -> None:
    import warnings

    import onnxruntime as ort

    model = DecodedRetinaFace(RetinaFace()).eval()
    path = tmp_path / "detector.onnx"
    per_prior = {0: "batch", 1: "priors"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 64, 96),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=["boxes", "scores", "landmarks"],
            dynamic_axes={
                "images": {0: "batch", 2: "height", 3: "width"},
                "boxes": per_prior,
                "scores": per_prior,
                "landmarks": per_prior,
            },
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 97, 131), (1, 3, 33, 250)]:
        images = torch.randn(*shape)
        with torch.no_grad():
            expected = model(images)
        got = session.run(None, {"images": images.numpy()})
        for e, g in zip(expected, got, strict=True):
            assert g.shape == tuple(e.shape)
            assert torch.allclose(torch.from_numpy(g), e, atol=1e-3)

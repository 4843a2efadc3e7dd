"""``python -m export`` end to end: user checkpoints -> checked ONNX -> a repository the
service's loader reads; parity with PyTorch on real images; dynamic shapes; clear errors."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import run_export_cli
from PIL import Image

from export import __main__ as cli
from export import graph_check
from export.graph_check import GraphCheckError
from export.pipeline import DEFAULT_CHECKPOINTS, PROJECT_ROOT
from models.checkpoint import Checkpoint, load_model, save_checkpoint
from models.resnet import cifar_resnet
from models.retinaface.inference import DecodedRetinaFace
from models.retinaface.net import RetinaFace, RetinaFaceConfig
from models.retinaface.priors import num_priors
from polynl_core.postprocess import select_faces
from polynl_core.preprocess import classifier_input, letterbox
from polynl_core.repository import (
    DEFAULT_BATCHING,
    Batching,
    Preprocess,
    VersionPolicy,
    load_repository,
    load_served_models,
    load_version,
    sha256_of,
)
from polynl_core.tasks import Task

CIFAR_PREPROCESS = {
    "resize": "shorter_side_center_crop",
    "size": [32, 32],
    "mean": [0.4914, 0.4822, 0.4465],
    "std": [0.2470, 0.2435, 0.2616],
    "interpolation": "bilinear",
}
FACE_PREPROCESS = {"resize": "letterbox", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BUCKETS = "320x320,480x640,250x333"
PARITY_DIR = PROJECT_ROOT / "tests" / "data" / "parity"
FACE_IMAGE = PROJECT_ROOT / "samples" / "face_astronaut.jpg"


def _spread_batchnorm(model: torch.nn.Module, seed: int) -> None:
    """Trained-looking BN statistics, so that BN folding is exercised for real."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)


def make_classifier_checkpoint(path: Path, block: str = "polynl") -> Path:
    torch.manual_seed(0)
    model = cifar_resnet(8, block=block)
    _spread_batchnorm(model, 1)
    save_checkpoint(
        path, Checkpoint("classifier", model.config.to_dict(), model.state_dict(), LABELS, CIFAR_PREPROCESS)
    )
    return path


def make_detector_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = RetinaFace(RetinaFaceConfig(backbone="mobilenet0.25", block="polynl"))
    _spread_batchnorm(model, 2)
    save_checkpoint(
        path,
        Checkpoint("face_detector", model.config.to_dict(), model.state_dict(), ["face"], FACE_PREPROCESS),
    )
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        "classifier": make_classifier_checkpoint(folder / "my_classifier.pt"),
        "face_detector": make_detector_checkpoint(folder / "my_detector.pt"),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, checkpoints: dict[str, Path]) -> tuple[Path, str]:
    """The CLI run once, as a user would, on user checkpoints; (repository, stdout)."""
    out = tmp_path_factory.mktemp("repo") / "model_repository"
    command = [
        sys.executable, "-m", "export", "--all", "--out", str(out),
        "--classifier-checkpoint", str(checkpoints["classifier"]),
        "--detector-checkpoint", str(checkpoints["face_detector"]),
        "--buckets", BUCKETS,
    ]  # fmt: skip
    done = run_export_cli(command)
    assert done.returncode == 0, done.stdout + done.stderr
    return out, done.stdout


def test_export_of_user_checkpoints_writes_a_repository_the_service_loader_reads(exported, checkpoints):
    out, _ = exported
    models = load_repository(out)  # verifies every sha256
    assert sorted(models) == ["classifier", "face_detector"]
    classifier = models["classifier"].config
    assert classifier.version == 1
    assert classifier.task == "classification"
    assert classifier.input.name == "images"
    assert (classifier.input.height, classifier.input.width) == (32, 32)
    assert classifier.outputs == ["logits"]
    assert classifier.labels == LABELS
    assert classifier.preprocess == Preprocess.model_validate(CIFAR_PREPROCESS)
    assert classifier.opset == 17
    assert classifier.block == "polynl"
    assert classifier.source_checkpoint_sha256 == sha256_of(checkpoints["classifier"])
    assert f"torch {torch.__version__}" in classifier.exporter_version
    detector = models["face_detector"].config
    assert detector.task == "face_detection"
    assert detector.outputs == ["boxes", "scores", "landmarks"]
    assert detector.preprocess.resize == "letterbox"
    assert detector.size_buckets == [(320, 320), (480, 640), (250, 333)]
    assert detector.priors is not None and detector.priors.steps == [8, 16, 32]
    assert detector.source_checkpoint_sha256 == sha256_of(checkpoints["face_detector"])
    assert not list(out.glob("*/.staging-*"))


def test_export_prints_file_size_op_histogram_and_polynl_function_count(exported):
    _, stdout = exported
    assert "model.onnx: " in stdout and " MB, opset 17" in stdout
    assert "op histogram: " in stdout
    assert "function polynl.PolyNL: Conv 4, Mul 2, ReduceMean 1, Add 1" in stdout
    assert "2 Poly-NL calls" in stdout  # classifier: layer2.0 and layer3.0
    assert "1 Poly-NL calls" in stdout  # detector: the stride-16 stage
    assert "parity fp32 face_detector 250x333 batch 3" in stdout


def _real_images(count: int) -> list[Image.Image]:
    paths = sorted(PARITY_DIR.glob("*.jpg"))[:count]
    assert len(paths) == count
    return [Image.open(p).convert("RGB") for p in paths]


def test_classifier_onnx_matches_pytorch_on_real_images_at_batch_1_and_3(exported, checkpoints):
    out, _ = exported
    model, _ = load_model(checkpoints["classifier"])
    session = ort.InferenceSession(str(out / "classifier/1/model.onnx"), providers=["CPUExecutionProvider"])
    preprocess = Preprocess.model_validate(CIFAR_PREPROCESS)
    inputs = np.stack([classifier_input(image, preprocess) for image in _real_images(3)])
    for batch in (inputs[:1], inputs):
        with torch.no_grad():
            want = model(torch.from_numpy(batch)).numpy()
        (got,) = session.run(None, {"images": batch})
        assert got.shape == (len(batch), 10)
        assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize(("height", "width"), [(320, 320), (480, 640), (250, 333)])
def test_detector_onnx_matches_pytorch_with_dynamic_batch_and_size(exported, checkpoints, height, width):
    out, _ = exported
    model, _ = load_model(checkpoints["face_detector"])
    decoded = DecodedRetinaFace(model).eval()  # type: ignore[arg-type]
    session = ort.InferenceSession(
        str(out / "face_detector/1/model.onnx"), providers=["CPUExecutionProvider"]
    )
    preprocess = Preprocess.model_validate(FACE_PREPROCESS)
    images = [Image.open(FACE_IMAGE).convert("RGB"), *_real_images(2)]
    batch = np.stack([letterbox(image, (height, width), preprocess).tensor for image in images])
    priors = num_priors(height, width)
    for inputs in (batch[:1], batch):
        with torch.no_grad():
            want = [t.numpy() for t in decoded(torch.from_numpy(inputs))]
        got = session.run(None, {"images": inputs})
        assert [g.shape for g in got] == [
            (len(inputs), priors, 4),
            (len(inputs), priors),
            (len(inputs), priors, 10),
        ]
        boxes, scores, landmarks = got
        assert np.abs(boxes - want[0]).max() <= 1e-3  # input pixels
        assert np.abs(landmarks - want[2]).max() <= 1e-3
        assert np.abs(scores - want[1]).max() <= 1e-5
        # The same faces after the service's NMS. An untrained model scores the letterbox
        # padding identically everywhere, so NMS order among those ties is float noise: use
        # PyTorch's scores on both sides (they already match) and compare the suppressions.
        threshold = float(np.quantile(want[1][0], 0.99))
        ours = select_faces(boxes[0], want[1][0], landmarks[0], threshold, 0.4, 100)
        theirs = select_faces(want[0][0], want[1][0], want[2][0], threshold, 0.4, 100)
        assert len(ours.scores) == len(theirs.scores) > 0
        np.testing.assert_allclose(ours.boxes, theirs.boxes, atol=1e-3)


def _triton_model_config() -> ModuleType:
    """tritonclient's generated ``model_config_pb2``, loaded without its gRPC client package."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tritonclient is not installed (pip install -e .[dev])")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    name = "polynl_tests_triton_model_config_pb2"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def test_triton_config_pbtxt_parses_as_a_triton_model_config(exported):
    from google.protobuf import text_format

    out, _ = exported
    pb2 = _triton_model_config()
    for name, input_dims, outputs in [
        ("classifier", [3, 32, 32], {"logits": [10]}),
        ("face_detector", [3, -1, -1], {"boxes": [-1, 4], "scores": [-1], "landmarks": [-1, 10]}),
    ]:
        config = text_format.Parse((out / name / "config.pbtxt").read_text(), pb2.ModelConfig())
        assert config.name == name
        assert config.backend == "onnxruntime"
        # The same per-model values as config.json's batching section, which the service reads.
        batching = load_repository(out)[name].config.batching
        assert batching is not None
        assert config.max_batch_size == batching.max_batch_size
        assert config.dynamic_batching.max_queue_delay_microseconds == round(batching.max_wait_ms * 1000)
        assert config.dynamic_batching.default_queue_policy.max_queue_size == batching.queue_size
        assert config.version_policy.latest.num_versions == 1
        assert [(i.name, list(i.dims), i.data_type) for i in config.input] == [
            ("images", input_dims, pb2.TYPE_FP32)
        ]
        assert {o.name: list(o.dims) for o in config.output} == outputs


def test_missing_checkpoint_exits_2_with_one_line_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    code = cli.main(
        ["--only", "classifier", "--classifier-checkpoint", str(missing), "--out", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and str(missing) in err and err.startswith("error: ")
    assert not (tmp_path / "r" / "classifier" / "1").exists()


def test_corrupt_checkpoint_exits_2_with_one_line_naming_the_file(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    code = cli.main(["--detector-checkpoint", str(corrupt), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and str(corrupt) in err


def test_a_classifier_checkpoint_given_as_detector_is_refused(checkpoints, tmp_path, capsys):
    code = cli.main(["--detector-checkpoint", str(checkpoints["classifier"]), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert "is a classifier checkpoint" in err and str(checkpoints["classifier"]) in err


def test_nonlocal_model_fails_the_graph_check_and_publishes_nothing(tmp_path, capsys):
    checkpoint = make_classifier_checkpoint(tmp_path / "nonlocal.pt", block="nonlocal")
    out = tmp_path / "repo"
    code = cli.main(["--classifier-checkpoint", str(checkpoint), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "graph check failed" in captured.err and "quadratic" in captured.err
    assert "QUADRATIC" in captured.out
    assert not (out / "classifier" / "1").exists()
    assert not list((out / "classifier").glob(".staging-*"))


def test_a_new_version_is_published_beside_the_old_and_loaded(tmp_path, checkpoints, capsys):
    out = tmp_path / "repo"
    serving = [
        "--max-batch-size",
        "16",
        "--max-wait-ms",
        "3",
        "--queue-size",
        "40",
        "--version-policy",
        "all",
    ]
    for version, extra in (("1", []), ("2", serving)):
        args = [
            "--classifier-checkpoint",
            str(checkpoints["classifier"]),
            "--out",
            str(out),
            "--version",
            version,
        ]
        assert cli.main([*args, *extra]) == 0, capsys.readouterr().err
    assert (out / "classifier" / "1" / "model.onnx").is_file()
    newest = load_repository(out)["classifier"].config
    assert newest.version == 2
    # The serving options land in config.json and, the same values, in config.pbtxt.
    assert newest.batching == Batching(max_batch_size=16, max_wait_ms=3.0, queue_size=40)
    assert newest.version_policy == VersionPolicy.parse("all")
    assert [m.version for m in load_served_models(out)] == [2, 1]
    pbtxt = (out / "classifier" / "config.pbtxt").read_text()
    assert "max_batch_size: 16" in pbtxt and "max_queue_delay_microseconds: 3000" in pbtxt
    assert "max_queue_size: 40" in pbtxt and "version_policy: { all: {} }" in pbtxt
    # Version 1 was written with the task's defaults.
    assert load_version(out / "classifier", 1).config.batching == DEFAULT_BATCHING[Task.CLASSIFICATION]


@pytest.mark.parametrize(
    "error",
    [
        GraphCheckError("input images has rank 3, not 4"),
        onnx.checker.ValidationError("bad graph\nsecond line"),
    ],
)
def test_graph_checker_errors_are_one_line_cli_errors(tmp_path, checkpoints, capsys, monkeypatch, error):
    def broken(*_: object) -> None:
        raise error

    monkeypatch.setattr(graph_check, "check_graph", broken)
    out = tmp_path / "repo"
    code = cli.main(
        ["--only", "classifier", "--classifier-checkpoint", str(checkpoints["classifier"]), "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: classifier: graph check: ")
    assert "Traceback" not in err
    assert not (out / "classifier" / "1").exists()


def test_shipped_classifier_weights_export_and_pass_every_check(tmp_path, capsys):
    shipped = DEFAULT_CHECKPOINTS["classifier"]
    if not shipped.is_file():
        pytest.skip(f"{shipped} is not there yet")
    assert cli.main(["--only", "classifier", "--out", str(tmp_path / "repo")]) == 0, capsys.readouterr().err
    config = load_repository(tmp_path / "repo")["classifier"].config
    assert config.source_checkpoint_sha256 == sha256_of(shipped)


@pytest.mark.slow
def test_shipped_default_weights_export_with_all(tmp_path):
    if not all(path.is_file() for path in DEFAULT_CHECKPOINTS.values()):
        pytest.skip("shipped weights are not all there yet")
    command = [sys.executable, "-m", "export", "--all", "--out", str(tmp_path / "repo")]
    done = run_export_cli(command)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(load_repository(tmp_path / "repo")) == ["classifier", "face_detector"]

"""The model repository contract: the one arrow between the export and the service.

Layout (Triton-style, one folder per model, one sub-folder per integer version)::

    model_repository/
      classifier/config.pbtxt, classifier/1/model.onnx, classifier/1/config.json
      face_detector/config.pbtxt, face_detector/1/model.onnx, face_detector/1/config.json

(``config.pbtxt`` is for Triton Inference Server, which looks for it beside the version folders.)

``config.json`` holds everything the service needs and nothing it must guess:
input name and layout, preprocessing, labels, detector priors and size buckets, opset,
sha256 of the ONNX file, the source checkpoint's sha256 and the exporter version.

The export writes it with :func:`write_model_config`; the service and the tests read it
with :func:`load_repository`. This module imports nothing heavy (no torch, no onnxruntime).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

CONFIG_FILE = "config.json"
CONFIG_FORMAT: Literal["polynl-model-config/1"] = "polynl-model-config/1"


class RepositoryError(RuntimeError):
    """The model repository is missing, incomplete, corrupt, or fails its checksums."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """The ONNX input: NCHW float32, RGB channel order. ``None`` means a dynamic axis."""

    name: str = "images"
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32", "float16"] = "float32"
    color: Literal["RGB"] = "RGB"
    height: int | None = None
    width: int | None = None


class Preprocess(_Strict):
    """How an uploaded image becomes the input tensor (see ``service/preprocess.py``).

    ``resize``:
      - ``shorter_side_center_crop``: scale the shorter side to ``size`` (bilinear),
        then centre-crop ``size`` (classifier);
      - ``letterbox``: scale to fit inside the size bucket keeping the aspect ratio,
        paste at the top-left corner, pad the rest with ``pad_value`` (detector); boxes map
        back to the original image by dividing by the scale.
    Pixels are then ``(rgb / 255 - mean) / std`` per channel.
    """

    resize: Literal["shorter_side_center_crop", "letterbox"]
    size: tuple[int, int] | None = None  # (height, width) for the classifier
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Literal["bilinear"] = "bilinear"
    pad_value: float = 0.0  # in normalised units (0 = the mean colour)
    # Detector only: extra passes on copies scaled by these factors (service/pyramid.py), for a
    # model that misses faces larger than it saw in training; () = one pass. The service's
    # POLYNL_DETECTOR_PYRAMID overrides it.
    pyramid: tuple[float, ...] = ()

    @field_validator("pyramid")
    @classmethod
    def _pyramid_factors(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 < factor < 1.0 for factor in value):
            raise ValueError("pyramid factors must be between 0 and 1 (exclusive), e.g. [0.5, 0.25]")
        return tuple(sorted(value, reverse=True))


class PriorSpec(_Strict):
    """RetinaFace anchors: generated inside the ONNX graph from the input size."""

    min_sizes: list[list[int]] = Field(default_factory=lambda: [[16, 32], [64, 128], [256, 512]])
    steps: list[int] = Field(default_factory=lambda: [8, 16, 32])
    variances: tuple[float, float] = (0.1, 0.2)


class ModelConfig(_Strict):
    format: Literal["polynl-model-config/1"] = CONFIG_FORMAT
    name: str
    version: int
    task: Literal["classification", "face_detection"]
    onnx_file: str = "model.onnx"
    onnx_sha256: str
    opset: int
    input: InputSpec
    # classification: ["logits"] (B, K)
    # face_detection: ["boxes", "scores", "landmarks"]: (B, P, 4) x1y1x2y2 and (B, P, 10)
    #   x/y pairs in input pixels, (B, P) face probability; NMS runs in the service.
    outputs: list[str]
    preprocess: Preprocess
    labels: list[str]
    priors: PriorSpec | None = None
    size_buckets: list[tuple[int, int]] | None = None  # (height, width), detector only
    block: str  # none | nonlocal | polynl: the context block inside the network
    arch: dict[str, object] = Field(default_factory=dict)
    source_checkpoint_sha256: str
    exporter_version: str
    fp16_onnx_file: str | None = None
    fp16_onnx_sha256: str | None = None


class LoadedModel(BaseModel):
    """A model found in the repository, checksums verified."""

    model_config = ConfigDict(frozen=True)

    config: ModelConfig
    directory: Path

    @property
    def onnx_path(self) -> Path:
        return self.directory / self.config.onnx_file

    @property
    def fp16_onnx_path(self) -> Path | None:
        if self.config.fp16_onnx_file is None:
            return None
        return self.directory / self.config.fp16_onnx_file


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_model_config(version_dir: Path, config: ModelConfig) -> Path:
    """Write ``config.json`` next to the ONNX file(s) of one model version."""
    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / CONFIG_FILE
    path.write_text(config.model_dump_json(indent=2) + "\n")
    return path


def read_model_config(version_dir: Path) -> ModelConfig:
    path = version_dir / CONFIG_FILE
    if not path.is_file():
        raise RepositoryError(f"missing {path}")
    try:
        return ModelConfig.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise RepositoryError(f"invalid {path}: {exc}") from exc


def latest_version_dir(model_dir: Path) -> Path:
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise RepositoryError(f"no numbered version folder in {model_dir}")
    return max(versions, key=lambda p: int(p.name))


def load_model(model_dir: Path, verify: bool = True) -> LoadedModel:
    """Read the newest version of one model and verify its ONNX file's sha256."""
    version_dir = latest_version_dir(model_dir)
    config = read_model_config(version_dir)
    if config.version != int(version_dir.name):
        raise RepositoryError(
            f"{version_dir / CONFIG_FILE} says version {config.version}, folder is {version_dir.name}"
        )
    loaded = LoadedModel(config=config, directory=version_dir)
    files = [(loaded.onnx_path, config.onnx_sha256)]
    if loaded.fp16_onnx_path is not None and config.fp16_onnx_sha256 is not None:
        files.append((loaded.fp16_onnx_path, config.fp16_onnx_sha256))
    for path, expected in files:
        if not path.is_file():
            raise RepositoryError(f"missing ONNX file {path}")
        if verify and sha256_of(path) != expected:
            raise RepositoryError(f"checksum mismatch for {path}: the file is not the one exported")
    return loaded


def load_repository(root: Path, verify: bool = True) -> dict[str, LoadedModel]:
    """All models of a repository by name (folder name), newest version of each."""
    root = Path(root)
    if not root.is_dir():
        raise RepositoryError(f"model repository not found: {root}")
    models: dict[str, LoadedModel] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        loaded = load_model(model_dir, verify=verify)
        if loaded.config.name != model_dir.name:
            raise RepositoryError(
                f"{model_dir} holds a model named {loaded.config.name!r}; folder and name must agree"
            )
        models[model_dir.name] = loaded
    if not models:
        raise RepositoryError(f"model repository {root} holds no models")
    return models

"""The model repository contract: the one arrow between the export and the service.

Layout (Triton-style, one folder per model, one sub-folder per integer version)::

    model_repository/
      repository.json                      (optional: the default model of each task)
      classifier/config.pbtxt, classifier/1/model.onnx, classifier/1/config.json
      face_detector/config.pbtxt, face_detector/1/model.onnx, face_detector/1/config.json

(``config.pbtxt`` is for Triton Inference Server, which looks for it beside the version folders;
the export generates it from the same values as ``config.json``.)

``config.json`` holds everything the service needs and nothing it must guess: input name and
layout, preprocessing (detector pyramid levels included), labels, detector priors and size
buckets, the serving settings (``batching``; ``version_policy``, read from a model's newest
version), opset, sha256 of the ONNX file, the source checkpoint's sha256 and the exporter
version.

The export writes it with :func:`write_model_config`; the service reads the versions its
policy selects with :func:`load_served_models`, the evaluation one folder with
:func:`load_model`. Imports numpy-free pydantic only (no torch, no onnxruntime).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from polynl_core.tasks import Task, parse_task

CONFIG_FILE = "config.json"
CONFIG_FORMAT: Literal["polynl-model-config/1"] = "polynl-model-config/1"
REPOSITORY_FILE = "repository.json"
ONNX_FILE = "model.onnx"


class RepositoryError(RuntimeError):
    """The model repository is missing, incomplete, corrupt, or fails its checksums."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """The ONNX input: NCHW float32, RGB channel order. ``None`` means a dynamic axis."""

    name: str = "images"
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"
    color: Literal["RGB"] = "RGB"
    height: int | None = None
    width: int | None = None


def check_pyramid(value: Sequence[float]) -> tuple[float, ...]:
    """Pyramid factors, largest first; each strictly between 0 and 1."""
    if any(not 0.0 < factor < 1.0 for factor in value):
        raise ValueError("pyramid factors must be between 0 and 1 (exclusive), e.g. [0.5, 0.25]")
    return tuple(sorted((float(f) for f in value), reverse=True))


class Preprocess(_Strict):
    """How an uploaded image becomes the input tensor (see ``polynl_core/preprocess.py``).

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
    # Detector only: extra passes on copies scaled by these factors (polynl_core/pyramid.py), for
    # a model that misses faces larger than it saw in training; () = one pass. The service's
    # POLYNL_DETECTOR_PYRAMID (or POLYNL_MODELS__<NAME>__PYRAMID) overrides it.
    pyramid: tuple[float, ...] = ()

    @field_validator("pyramid")
    @classmethod
    def _pyramid_factors(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        return check_pyramid(value)

    @classmethod
    def from_checkpoint(cls, raw: Mapping[str, Any]) -> Preprocess:
        """A checkpoint's ``preprocess`` dict (extra keys dropped; ValidationError if invalid)."""
        return cls.model_validate({k: v for k, v in raw.items() if k in cls.model_fields})


class PriorSpec(_Strict):
    """RetinaFace anchors: generated inside the ONNX graph from the input size."""

    min_sizes: list[list[int]] = Field(default_factory=lambda: [[16, 32], [64, 128], [256, 512]])
    steps: list[int] = Field(default_factory=lambda: [8, 16, 32])
    variances: tuple[float, float] = (0.1, 0.2)


class Batching(_Strict):
    """How the service batches one model version's requests (``config.pbtxt`` says the same)."""

    max_batch_size: int = Field(ge=1, le=1024, description="Largest batch of one inference call.")
    max_wait_ms: float = Field(ge=0.0, description="Longest wait for a batch to fill.")
    queue_size: int = Field(
        ge=1, description="Queued network inputs before 503 (each detector pyramid level counts)."
    )


# Per task: a 32x32 classifier batches wide and waits little; a 640x640 detector call is already
# long, so small batches keep the latency of the first request in a batch down.
DEFAULT_BATCHING: dict[Task, Batching] = {
    Task.CLASSIFICATION: Batching(max_batch_size=32, max_wait_ms=2.0, queue_size=128),
    Task.FACE_DETECTION: Batching(max_batch_size=4, max_wait_ms=5.0, queue_size=128),
}


class _AllVersions(_Strict):
    pass


class _LatestVersions(_Strict):
    num_versions: int = Field(default=1, ge=1)


class _SpecificVersions(_Strict):
    versions: list[int] = Field(min_length=1)


class VersionPolicy(_Strict):
    """Which versions of a model are served, as Triton's ``version_policy``: exactly one of
    ``{"latest": {"num_versions": N}}`` (default N = 1), ``{"all": {}}`` or
    ``{"specific": {"versions": [1, 3]}}``."""

    latest: _LatestVersions | None = None
    all: _AllVersions | None = None
    specific: _SpecificVersions | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicy:
        chosen = [self.latest, self.all, self.specific]
        if sum(c is not None for c in chosen) > 1:
            raise ValueError("a version policy is one of latest, all or specific")
        if all(c is None for c in chosen):
            object.__setattr__(self, "latest", _LatestVersions())
        return self

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """``latest`` | ``latest:N`` | ``all`` | ``1,3`` (specific versions)."""
        text = text.strip().lower()
        if text == "all":
            return cls(all=_AllVersions())
        if text.startswith("latest"):
            _, _, count = text.partition(":")
            return cls(latest=_LatestVersions(num_versions=int(count or 1)))
        try:
            versions = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ValueError(
                f"version policy {text!r} is not latest[:N], all, or versions like 1,3"
            ) from None
        return cls(specific=_SpecificVersions(versions=versions))

    def select(self, available: Sequence[int]) -> list[int]:
        """The versions to serve out of ``available``, newest first."""
        newest_first = sorted(set(available), reverse=True)
        if self.all is not None:
            return newest_first
        if self.specific is not None:
            return [v for v in newest_first if v in self.specific.versions]
        assert self.latest is not None
        return newest_first[: self.latest.num_versions]

    def describe(self) -> str:
        if self.all is not None:
            return "all"
        if self.specific is not None:
            return ",".join(str(v) for v in self.specific.versions)
        assert self.latest is not None
        return f"latest:{self.latest.num_versions}"

    def pbtxt(self) -> str:
        """The same policy in Triton's ``config.pbtxt`` notation."""
        if self.all is not None:
            return "{ all: {} }"
        if self.specific is not None:
            return "{ specific: { versions: [ " + ", ".join(map(str, self.specific.versions)) + " ] } }"
        assert self.latest is not None
        return f"{{ latest: {{ num_versions: {self.latest.num_versions} }} }}"


# Written by exporters before 2026-12 (always null): accepted and dropped when reading.
_RETIRED_NULL_FIELDS = ("fp16_onnx_file", "fp16_onnx_sha256")


class ModelConfig(_Strict):
    format: Literal["polynl-model-config/1"] = CONFIG_FORMAT
    name: str
    version: int
    task: Task
    onnx_file: str = ONNX_FILE
    onnx_sha256: str
    opset: int
    input: InputSpec
    # The graph's outputs, in order; each task needs at least Task.outputs (polynl_core/tasks.py).
    outputs: list[str]
    preprocess: Preprocess
    labels: list[str]
    priors: PriorSpec | None = None
    size_buckets: list[tuple[int, int]] | None = None  # (height, width), detector only
    # Serving settings; absent in repositories exported before they existed: the task's defaults.
    batching: Batching | None = None
    # Read from a model's newest version only (as Triton reads one config.pbtxt for all versions).
    version_policy: VersionPolicy | None = None
    block: str  # none | nonlocal | polynl: the context block inside the network
    arch: dict[str, object] = Field(default_factory=dict)
    source_checkpoint_sha256: str
    exporter_version: str

    @model_validator(mode="before")
    @classmethod
    def _drop_retired_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(data.get(k, 1) is None for k in _RETIRED_NULL_FIELDS):
            data = {k: v for k, v in data.items() if not (k in _RETIRED_NULL_FIELDS and v is None)}
        return data

    @property
    def effective_batching(self) -> Batching:
        return self.batching or DEFAULT_BATCHING[self.task]


class LoadedModel(BaseModel):
    """A model version found in the repository, checksum verified."""

    model_config = ConfigDict(frozen=True)

    config: ModelConfig
    directory: Path

    @property
    def onnx_path(self) -> Path:
        return self.directory / self.config.onnx_file

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> int:
        return self.config.version


class RepositoryIndex(_Strict):
    """``repository.json``: the model that answers a task when a request names none."""

    defaults: dict[Task, str] = Field(default_factory=dict)


def sha256_of(path: str | Path) -> str:
    """The hex sha256 of a file (ONNX files, checkpoints), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_model_config(version_dir: Path, config: ModelConfig) -> Path:
    """Write ``config.json`` next to the ONNX file of one model version."""
    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / CONFIG_FILE
    path.write_text(config.model_dump_json(indent=2, exclude_none=False) + "\n")
    return path


def read_model_config(version_dir: Path) -> ModelConfig:
    path = version_dir / CONFIG_FILE
    if not path.is_file():
        raise RepositoryError(f"missing {path}")
    try:
        return ModelConfig.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise RepositoryError(f"invalid {path}: {exc}") from exc


def read_repository_index(root: Path) -> RepositoryIndex:
    path = Path(root) / REPOSITORY_FILE
    if not path.is_file():
        return RepositoryIndex()
    try:
        return RepositoryIndex.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise RepositoryError(f"invalid {path}: {exc}") from exc


def available_versions(model_dir: Path) -> list[int]:
    """The numbered version folders of one model, newest first."""
    versions = sorted(
        (int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True
    )
    if not versions:
        raise RepositoryError(f"no numbered version folder in {model_dir}")
    return versions


def load_version(model_dir: Path, version: int, verify: bool = True) -> LoadedModel:
    """One version of one model, its ONNX file's sha256 verified."""
    version_dir = model_dir / str(version)
    config = read_model_config(version_dir)
    if config.version != version:
        raise RepositoryError(
            f"{version_dir / CONFIG_FILE} says version {config.version}, folder is {version}"
        )
    if config.name != model_dir.name:
        raise RepositoryError(f"{model_dir} holds a model named {config.name!r}; folder and name must agree")
    loaded = LoadedModel(config=config, directory=version_dir)
    if not loaded.onnx_path.is_file():
        raise RepositoryError(f"missing ONNX file {loaded.onnx_path}")
    if verify and sha256_of(loaded.onnx_path) != config.onnx_sha256:
        raise RepositoryError(f"checksum mismatch for {loaded.onnx_path}: the file is not the one exported")
    return loaded


def load_model(model_dir: Path, verify: bool = True) -> LoadedModel:
    """The newest version of one model (the evaluation's and the export's view of a folder)."""
    model_dir = Path(model_dir)
    return load_version(model_dir, available_versions(model_dir)[0], verify=verify)


def model_dirs(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise RepositoryError(f"model repository not found: {root}")
    found = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise RepositoryError(f"model repository {root} holds no models")
    return found


def load_repository(root: Path, verify: bool = True) -> dict[str, LoadedModel]:
    """All models of a repository by name (folder name), newest version of each."""
    return {model_dir.name: load_model(model_dir, verify=verify) for model_dir in model_dirs(root)}


def load_served_models(
    root: Path, verify: bool = True, policies: Mapping[str, VersionPolicy] | None = None
) -> list[LoadedModel]:
    """Every version the version policy of each model selects (models by name, newest first).

    A model's policy is ``policies[name]`` when given (the service's overrides), else the
    ``version_policy`` of its newest version's config.json, else the newest version only.
    """
    served: list[LoadedModel] = []
    for model_dir in model_dirs(root):
        available = available_versions(model_dir)
        newest = load_version(model_dir, available[0], verify=verify)
        policy = (policies or {}).get(model_dir.name) or newest.config.version_policy or VersionPolicy()
        chosen = policy.select(available)
        if not chosen:
            raise RepositoryError(
                f"model {model_dir.name}: version policy {policy.describe()} selects none of the "
                f"versions {available}"
            )
        served += [newest if v == newest.version else load_version(model_dir, v, verify) for v in chosen]
    return served


def default_models(root: Path, models: Sequence[LoadedModel]) -> dict[Task, str]:
    """The model answering each task when a request names none: ``repository.json``'s
    ``defaults``, else the task's canonical name (``classifier``, ``face_detector``) when such a
    model is served, else the first served model of the task by name."""
    index = read_repository_index(root)
    names: dict[Task, list[str]] = {}
    for model in models:
        names.setdefault(model.config.task, []).append(model.name)
    defaults: dict[Task, str] = {}
    for task, served in names.items():
        chosen = index.defaults.get(task)
        if chosen is not None and chosen not in served:
            raise RepositoryError(
                f"{REPOSITORY_FILE} names {chosen!r} the default {task.value} model, but no such "
                f"{task.value} model is served (served: {', '.join(sorted(set(served)))})"
            )
        defaults[task] = chosen or (task.model_name if task.model_name in served else sorted(served)[0])
    return defaults


__all__ = [
    "CONFIG_FILE",
    "DEFAULT_BATCHING",
    "Batching",
    "InputSpec",
    "LoadedModel",
    "ModelConfig",
    "Preprocess",
    "PriorSpec",
    "RepositoryError",
    "Task",
    "VersionPolicy",
    "parse_task",
]

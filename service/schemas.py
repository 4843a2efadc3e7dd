"""Response bodies of every endpoint: the last step of the data path (-> JSON).

Pydantic models so that the OpenAPI schema at ``/openapi.json`` documents each answer,
errors included. Coordinates are pixels of the original upload after EXIF orientation.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    """Every non-2xx answer (see ``service.errors`` for the codes)."""

    error: str = Field(description="Stable machine-readable code, e.g. 'unsupported_image'.")
    message: str = Field(description="What went wrong, for humans.")
    request_id: str = Field(description="The X-Request-ID of this request.")


class ModelRef(BaseModel):
    name: str
    version: int


class Timing(BaseModel):
    """Milliseconds spent per step for this request."""

    decode_ms: float = Field(description="Decoding (bytes to pixels), summed over the answered images.")
    preprocess_ms: float = Field(
        description="Preprocessing (pixels to network inputs, detector pyramid levels included), "
        "summed over the answered images."
    )
    queue_ms: float = Field(description="Longest wait of one image in the batch queue.")
    inference_ms: float = Field(
        description="Longest ONNX Runtime time serving one of the images (its detector pyramid "
        "levels summed)."
    )
    total_ms: float = Field(description="Wall time from the body being read to the response.")


class LabelScore(BaseModel):
    id: int = Field(ge=0)
    label: str
    probability: float = Field(ge=0.0, le=1.0)


class Classification(BaseModel):
    index: int = Field(ge=0, description="Position of the image in the request.")
    filename: str | None = None
    width: int = Field(ge=1, description="Width after EXIF orientation.")
    height: int = Field(ge=1, description="Height after EXIF orientation.")
    top_k: list[LabelScore] = Field(description="Most probable labels first.")


class ImageFailure(BaseModel):
    """An image of a several-image request that could not be read; the others are answered.
    (A request none of whose images can be read fails as a whole, with this error.)"""

    index: int = Field(ge=0, description="Position of the image in the request.")
    filename: str | None = None
    error: str = Field(
        description="Stable code, as in an error response: 'empty_body', 'unsupported_image', "
        "'corrupt_image' or 'image_too_large'."
    )
    message: str = Field(description="What went wrong, for humans.")
    status: int = Field(description="The HTTP status a request of this image alone is answered with.")


class ClassifyResponse(BaseModel):
    model: ModelRef
    results: list[Classification | ImageFailure] = Field(
        description="One per image, in request order: its answer, or why it could not be read."
    )
    timing: Timing


Point = tuple[float, float]


class Landmarks(BaseModel):
    """Five facial points (x, y); left/right as seen in the image (left = smaller x)."""

    left_eye: Point
    right_eye: Point
    nose: Point
    left_mouth: Point
    right_mouth: Point


class Face(BaseModel):
    box: tuple[float, float, float, float] = Field(description="[x1, y1, x2, y2] in original pixels.")
    score: float = Field(ge=0.0, le=1.0)
    landmarks: Landmarks


class Detection(BaseModel):
    index: int = Field(ge=0, description="Position of the image in the request.")
    filename: str | None = None
    width: int = Field(ge=1, description="Width after EXIF orientation.")
    height: int = Field(ge=1, description="Height after EXIF orientation.")
    faces: list[Face] = Field(description="Highest score first.")


class DetectResponse(BaseModel):
    model: ModelRef
    results: list[Detection | ImageFailure] = Field(
        description="One per image, in request order: its answer, or why it could not be read."
    )
    timing: Timing


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    models: dict[str, bool] = Field(description="Per model: loaded and warmed up.")


class TensorInfo(BaseModel):
    name: str
    dtype: str
    shape: list[int | str | None]


class BatchingInfo(BaseModel):
    """The effective batching of this model version (``settings`` says where each came from)."""

    max_batch_size: int
    max_wait_ms: float
    queue_size: int
    request_timeout_s: float


class SettingInfo(BaseModel):
    value: Any
    source: str = Field(
        description="Where the value came from: 'POLYNL_MODELS__<NAME>__<FIELD>' (this model's "
        "variable), 'POLYNL_<FIELD>' (the variable for every model), 'config.json' or 'default'."
    )


class ModelInfo(BaseModel):
    name: str
    version: int
    task: str
    default: bool = Field(
        description="This version answers its task's requests that name no model and no version."
    )
    served_versions: list[int] = Field(description="Every served version of this model, newest first.")
    block: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    labels: list[str]
    providers: list[str] = Field(description="Execution providers the session actually runs on.")
    io_binding: bool
    batching: BatchingInfo
    size_buckets: list[tuple[int, int]] | None = Field(
        None, description="Detector input sizes (height, width) that images are letterboxed into."
    )
    pyramid: list[float] | None = Field(
        None, description="Detector pyramid levels: extra passes at these scales (empty: one pass)."
    )
    settings: dict[str, SettingInfo] = Field(
        description="Every per-model serving setting: its effective value and its source."
    )
    onnx_file: str
    onnx_sha256: str
    checksum_verified: bool
    ready: bool


class ModelsResponse(BaseModel):
    models: list[ModelInfo]

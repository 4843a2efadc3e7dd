"""Service configuration: every knob of the serving path, read from ``POLYNL_*`` variables.

Sits before everything else in the data path: ``service.app`` builds one :class:`Settings`
at start-up and hands it to the image decoder (upload and pixel limits), the runtime
(providers, threads), the batchers (deadline) and the routes. Defaults work on a laptop; the
README lists every variable.

Per-model serving settings (batch size, wait, queue, detector buckets and pyramid, version
policy) live in each model's ``config.json``; the variables here override them, for every
model (``POLYNL_MAX_BATCH_SIZE``) or for one (``POLYNL_MODELS__<NAME>__MAX_BATCH_SIZE``, through
pydantic-settings' nested delimiter ``__``). :mod:`service.model_settings` merges the sources.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from polynl_core.buckets import check_buckets, parse_buckets
from polynl_core.repository import VersionPolicy, check_pyramid


def _split_commas(value: object) -> object:
    """Environment variables hold lists as ``a,b,c``; JSON lists are accepted too."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _parse_buckets(value: object) -> object:
    if value is None or value == "":
        return None
    if isinstance(value, str) and not value.strip().startswith("["):
        return parse_buckets(value)
    return _split_commas(value)


def _check_buckets(value: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
    return check_buckets(value) if value else None


class ModelOverrides(BaseModel):
    """One model's overrides (``POLYNL_MODELS__<NAME>__<FIELD>``); unset fields override nothing."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int | None = Field(default=None, ge=1, le=1024)
    max_wait_ms: float | None = Field(default=None, ge=0.0)
    queue_size: int | None = Field(default=None, ge=1)
    buckets: list[tuple[int, int]] | None = Field(default=None, description="Detector only: HxW,HxW.")
    pyramid: list[float] | None = Field(default=None, description="Detector only: '' = one pass.")
    version_policy: VersionPolicy | None = Field(default=None, description="latest[:N] | all | 1,3")

    @field_validator("buckets", mode="before")
    @classmethod
    def _buckets_text(cls, value: object) -> object:
        return _parse_buckets(value)

    @field_validator("buckets")
    @classmethod
    def _buckets_size(cls, value: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        return _check_buckets(value)

    @field_validator("pyramid", mode="before")
    @classmethod
    def _pyramid_text(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("pyramid")
    @classmethod
    def _pyramid_factors(cls, value: list[float] | None) -> list[float] | None:
        return None if value is None else list(check_pyramid(value))

    @field_validator("version_policy", mode="before")
    @classmethod
    def _policy_text(cls, value: object) -> object:
        return VersionPolicy.parse(value) if isinstance(value, str) else value


class Settings(BaseSettings):
    """All service settings. Environment: ``POLYNL_<FIELD NAME IN UPPER CASE>``."""

    model_config = SettingsConfigDict(
        env_prefix="POLYNL_", env_nested_delimiter="__", extra="ignore", protected_namespaces=()
    )

    # --- models and runtime -------------------------------------------------------------
    model_repository: Path = Field(default=Path("model_repository"), description="Model repository folder.")
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="ONNX Runtime execution providers in order of preference (comma-separated).",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="ORT intra-op threads on CPU per worker; 0 = ORT default (one per core), or the "
        "usable cores split between the workers when POLYNL_WORKERS is over 1.",
    )
    intra_op_spinning: bool = Field(
        default=True, description="Let ORT worker threads spin between ops (faster, burns CPU when idle)."
    )
    io_binding: bool | None = Field(
        default=None, description="Use ORT I/O binding; default: only when the session runs on CUDA."
    )
    cuda_device_id: int = Field(default=0, ge=0)
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "HEURISTIC"
    cuda_arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kSameAsRequested"
    verify_checksums: bool = Field(default=True, description="Check each ONNX file's sha256 at start-up.")

    # --- batching: per model in config.json; these override it for every model ------------
    max_batch_size: int | None = Field(
        default=None, ge=1, le=1024, description="Largest batch; default: each model's config.json."
    )
    max_wait_ms: float | None = Field(
        default=None, ge=0.0, description="Longest wait for a batch to fill; default: config.json."
    )
    queue_size: int | None = Field(
        default=None,
        ge=1,
        description="Queued network inputs per model before 503: images, each detector pyramid "
        "level counting as one; default: config.json.",
    )
    models: dict[str, ModelOverrides] = Field(
        default_factory=dict,
        description="Per-model overrides, e.g. POLYNL_MODELS__FACE_DETECTOR__MAX_BATCH_SIZE=2 "
        "(or POLYNL_MODELS as JSON); they beat the variables for every model.",
    )
    request_timeout_s: float = Field(
        default=10.0, gt=0.0, description="Deadline per request (queue + inference)."
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After header value on 503.")
    # 32: at 3x the small classifier's capacity (bench/results/overload.md) it met every target
    # (/healthz p99 68 ms, answered p99 0.6 s) and served 94 % of the 200s that 64 served, whose
    # /healthz p99 was 141 ms; an admitted request waits about limit / throughput. Deployments
    # with larger batches (GPU) want about 2x max_batch_size: one batch running, one filling.
    max_inflight_requests: int = Field(
        default=32,
        ge=0,
        description="Inference requests (HTTP and gRPC) in flight per worker before more are refused "
        "with 503 and Retry-After, before their body is read (service/admission.py); 0 = no limit.",
    )
    inference_delay_ms: float = Field(
        default=0.0, ge=0.0, description="Artificial delay per inference call (tests and drills only)."
    )
    fault_every_n_batches: int = Field(
        default=0,
        ge=0,
        description="Fail every n-th inference call (fault drills and tests only; 0 = never).",
    )

    # --- uploads and decoding -----------------------------------------------------------
    max_upload_bytes: int = Field(default=16 * 1024 * 1024, ge=1, description="Largest request body.")
    max_image_pixels: int = Field(default=40_000_000, ge=1, description="Largest width*height decoded.")
    max_images_per_request: int = Field(default=16, ge=1)
    decode_threads: int = Field(default=4, ge=1, description="Threads for decoding and preprocessing.")
    reduced_decode: bool = Field(
        default=True,
        description="Decode a JPEG at 1/2, 1/4 or 1/8 scale (in the DCT domain) when the model "
        "needs that few pixels (a large photo to a small input); false = always full size.",
    )
    inline_decode_max_pixels: int = Field(
        default=128 * 128,
        ge=0,
        description="Images up to this many pixels are decoded on the event loop (cheaper than a "
        "thread hop); larger ones in the decode threads. 0 = always in the threads.",
    )

    # --- detection ----------------------------------------------------------------------
    detection_buckets: Annotated[list[tuple[int, int]] | None, NoDecode] = Field(
        default=None,
        description="Detector size buckets HxW, e.g. '480x640,640x640'; default from config.json.",
    )
    max_faces_limit: int = Field(default=1000, ge=1, description="Upper bound of the max_faces query value.")
    detector_pyramid: Annotated[list[float] | None, NoDecode] = Field(
        default=None,
        description="Extra detector passes on smaller copies of each image, as scale factors, "
        "e.g. '0.5,0.25': faces too large for one pass are found on them (polynl_core/pyramid.py). "
        "Empty ('') = one pass per image. Default: the model's config.json (preprocess.pyramid; "
        "the shipped WIDER FACE detector uses one pass).",
    )

    # --- HTTP and access ----------------------------------------------------------------
    workers: int = Field(
        default=1,
        ge=0,
        le=64,
        description="Server processes of python -m service, each with its own ONNX Runtime sessions "
        "and batchers, sharing the port; 0 = one per usable CPU core.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    grpc: bool = Field(default=True, description="Serve the Open Inference Protocol over gRPC too.")
    grpc_port: int = Field(
        default=8001, ge=0, le=65535, description="gRPC port (Open Inference Protocol), as Triton's."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = Field(default=True, description="One INFO line per request (else DEBUG).")
    api_key: SecretStr | None = Field(default=None, description="Bearer token required when set.")
    protect_metrics: bool = Field(default=False, description="Require the API key for /metrics too.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed to call the API (CORS), e.g. 'https://app.example.com'; "
        "'*' = any origin (without credentials); empty (the default) = no CORS headers.",
    )

    # --- logs and traces ------------------------------------------------------------------
    log_format: Literal["text", "json"] = Field(
        default="text", description="'json': one JSON object per log line (service/logs.py)."
    )
    otel_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector for traces, e.g. 'http://127.0.0.1:4318' (service/tracing.py); "
        "the standard OTEL_* variables work too. Unset and no OTEL_* exporter variable: tracing off.",
    )

    @field_validator("max_batch_size", "max_wait_ms", "queue_size", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Compose files pass ${POLYNL_MAX_BATCH_SIZE:-}: empty means "each model's own value".
        return None if value == "" else value

    @field_validator("providers", "cors_origins", mode="before")
    @classmethod
    def _parse_lists(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("otel_endpoint", mode="before")
    @classmethod
    def _empty_endpoint_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("detector_pyramid", mode="before")
    @classmethod
    def _parse_pyramid(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("detector_pyramid")
    @classmethod
    def _pyramid_factors(cls, value: list[float] | None) -> list[float] | None:
        return None if value is None else list(check_pyramid(value))

    @field_validator("detection_buckets", mode="before")
    @classmethod
    def _buckets_text(cls, value: object) -> object:
        return _parse_buckets(value)

    @field_validator("detection_buckets")
    @classmethod
    def _buckets_size(cls, value: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        return _check_buckets(value)

    @field_validator("models", mode="before")
    @classmethod
    def _lower_case_names(cls, value: object) -> object:
        # Variable names are case-insensitive; folder names of the repository are lower case.
        return {str(k).lower(): v for k, v in value.items()} if isinstance(value, dict) else value

    @property
    def worker_count(self) -> int:
        """Server processes to run: ``workers``, or one per usable core when it is 0."""
        return self.workers or usable_cores()

    @property
    def session_threads(self) -> int:
        """ORT intra-op threads per session (0 = ORT's default). Several workers share the
        cores: each gets its share instead of one thread per core apiece, which would
        over-subscribe the CPU and stall every parallel region."""
        if self.intra_op_threads or self.worker_count == 1:
            return self.intra_op_threads
        return max(1, usable_cores() // self.worker_count)


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity and container cpusets included)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()

"""One model version's effective serving settings, and where each value came from.

Between the repository and the pipelines: :func:`serving_settings` merges, for each setting,
the first of

1. the model's own override, ``POLYNL_MODELS__<NAME>__<FIELD>`` (:class:`ModelOverrides`);
2. the override for every model, ``POLYNL_MAX_BATCH_SIZE``, ``POLYNL_DETECTION_BUCKETS``, ...;
3. the model version's ``config.json`` (``batching``, ``size_buckets``, ``preprocess.pyramid``);
4. the task's default (:data:`polynl_core.repository.DEFAULT_BATCHING`, the default buckets).

``GET /v1/models`` shows both the values and their sources, so nobody has to guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from polynl_core.buckets import DEFAULT_BUCKETS, Bucket
from polynl_core.repository import DEFAULT_BATCHING, ModelConfig
from polynl_core.tasks import Task
from service.settings import Settings

T = TypeVar("T")

CONFIG_JSON = "config.json"
DEFAULT = "default"

# Setting -> the variable that overrides it for every model.
GLOBAL_VARIABLES = {
    "max_batch_size": "POLYNL_MAX_BATCH_SIZE",
    "max_wait_ms": "POLYNL_MAX_WAIT_MS",
    "queue_size": "POLYNL_QUEUE_SIZE",
    "buckets": "POLYNL_DETECTION_BUCKETS",
    "pyramid": "POLYNL_DETECTOR_PYRAMID",
}
_GLOBAL_FIELDS = {
    "max_batch_size": "max_batch_size",
    "max_wait_ms": "max_wait_ms",
    "queue_size": "queue_size",
    "buckets": "detection_buckets",
    "pyramid": "detector_pyramid",
}


@dataclass(frozen=True)
class ServingSettings:
    """What the pipeline of one model version runs with (detector fields are empty otherwise)."""

    max_batch_size: int
    max_wait_ms: float
    queue_size: int
    buckets: tuple[Bucket, ...] = ()
    pyramid: tuple[float, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0


def model_variable(name: str, setting: str) -> str:
    return f"POLYNL_MODELS__{name.upper()}__{setting.upper()}"


class _Resolver:
    """Picks each setting's first source and remembers which one it was."""

    def __init__(self, config: ModelConfig, settings: Settings) -> None:
        self.name = config.name
        self.overrides = settings.models.get(config.name.lower())
        self.settings = settings
        self.sources: dict[str, str] = {}

    def pick(self, setting: str, from_config: T | None, default: T) -> T:
        candidates: list[tuple[T | None, str]] = [
            (getattr(self.overrides, setting, None), model_variable(self.name, setting)),
            (getattr(self.settings, _GLOBAL_FIELDS[setting]), GLOBAL_VARIABLES[setting]),
            (from_config, CONFIG_JSON),
        ]
        for value, source in candidates:
            if value is not None:
                self.sources[setting] = source
                return value
        self.sources[setting] = DEFAULT
        return default


def serving_settings(config: ModelConfig, settings: Settings) -> ServingSettings:
    """The effective settings of one model version (see the module docstring for the order)."""
    pick = _Resolver(config, settings)
    written = config.batching  # None in repositories exported before it existed
    default = DEFAULT_BATCHING[config.task]
    max_batch_size = pick.pick(
        "max_batch_size", written.max_batch_size if written else None, default.max_batch_size
    )
    max_wait_ms = pick.pick("max_wait_ms", written.max_wait_ms if written else None, default.max_wait_ms)
    queue_size = pick.pick("queue_size", written.queue_size if written else None, default.queue_size)
    buckets: Sequence[Bucket] = ()
    pyramid: Sequence[float] = ()
    if config.task is Task.FACE_DETECTION:
        buckets = pick.pick("buckets", config.size_buckets or None, list(DEFAULT_BUCKETS))
        # preprocess.pyramid is always in config.json: () is the model's own "one pass".
        pyramid = pick.pick("pyramid", config.preprocess.pyramid, ())
    return ServingSettings(
        max_batch_size=max_batch_size,
        max_wait_ms=float(max_wait_ms),
        queue_size=queue_size,
        buckets=tuple((int(h), int(w)) for h, w in buckets),
        pyramid=tuple(sorted((float(f) for f in pyramid), reverse=True)),
        sources=pick.sources,
    )

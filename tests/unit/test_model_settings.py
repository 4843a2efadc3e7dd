"""Per-model serving settings: config.json, then the variables for every model, then one model's."""

from __future__ import annotations

import pytest

from polynl_core.repository import (
    DEFAULT_BATCHING,
    Batching,
    InputSpec,
    ModelConfig,
    Preprocess,
    VersionPolicy,
)
from polynl_core.tasks import Task
from service.model_settings import serving_settings
from service.settings import Settings


def _config(name: str, task: Task, batching: Batching | None, **extra: object) -> ModelConfig:
    return ModelConfig(
        name=name,
        version=1,
        task=task,
        onnx_sha256="0" * 64,
        opset=18,
        input=InputSpec(),
        outputs=list(task.outputs),
        preprocess=Preprocess(resize="letterbox", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), pyramid=(0.5,)),
        labels=["x"],
        batching=batching,
        block="polynl",
        source_checkpoint_sha256="0" * 64,
        exporter_version="test",
        **extra,  # type: ignore[arg-type]
    )


DETECTOR = _config(
    "face_detector",
    Task.FACE_DETECTION,
    Batching(max_batch_size=2, max_wait_ms=7.0, queue_size=16),
    size_buckets=[(320, 320)],
)
OLD_CLASSIFIER = _config("classifier", Task.CLASSIFICATION, None)  # exported before `batching`


def test_config_json_then_task_defaults_when_nothing_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    detector = serving_settings(DETECTOR, settings)
    assert (detector.max_batch_size, detector.max_wait_ms, detector.queue_size) == (2, 7.0, 16)
    assert detector.buckets == ((320, 320),) and detector.pyramid == (0.5,)
    assert set(detector.sources.values()) == {"config.json"}
    classifier = serving_settings(OLD_CLASSIFIER, settings)
    assert classifier.max_batch_size == DEFAULT_BATCHING[Task.CLASSIFICATION].max_batch_size
    assert classifier.sources == {
        "max_batch_size": "default",
        "max_wait_ms": "default",
        "queue_size": "default",
    }


def test_one_models_variable_beats_the_variable_for_every_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYNL_MAX_BATCH_SIZE", "6")
    monkeypatch.setenv("POLYNL_MODELS__FACE_DETECTOR__MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("POLYNL_MODELS__FACE_DETECTOR__BUCKETS", "256x256,256x384")
    monkeypatch.setenv("POLYNL_MODELS__FACE_DETECTOR__PYRAMID", "")
    monkeypatch.setenv("POLYNL_MODELS__CLASSIFIER__VERSION_POLICY", "latest:2")
    settings = Settings()
    detector = serving_settings(DETECTOR, settings)
    assert detector.max_batch_size == 3
    assert detector.sources["max_batch_size"] == "POLYNL_MODELS__FACE_DETECTOR__MAX_BATCH_SIZE"
    assert detector.buckets == ((256, 256), (256, 384)) and detector.pyramid == ()
    assert detector.sources["pyramid"] == "POLYNL_MODELS__FACE_DETECTOR__PYRAMID"
    assert detector.max_wait_ms == 7.0 and detector.sources["max_wait_ms"] == "config.json"
    classifier = serving_settings(OLD_CLASSIFIER, settings)
    assert classifier.max_batch_size == 6 and classifier.sources["max_batch_size"] == "POLYNL_MAX_BATCH_SIZE"
    assert settings.models["classifier"].version_policy == VersionPolicy.parse("latest:2")


def test_a_bad_per_model_value_is_refused_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYNL_MODELS__FACE_DETECTOR__BUCKETS", "16x16")
    with pytest.raises(ValueError, match="32x32"):
        Settings()


@pytest.mark.parametrize(
    ("text", "available", "served"),
    [
        ("latest", [1, 2, 3], [3]),
        ("latest:2", [1, 2, 3], [3, 2]),
        ("all", [1, 3], [3, 1]),
        ("1,3", [1, 2, 3], [3, 1]),
    ],
)
def test_version_policies_select_like_tritons(text: str, available: list[int], served: list[int]) -> None:
    assert VersionPolicy.parse(text).select(available) == served


def test_every_task_has_a_pipeline_and_an_unknown_one_is_an_error() -> None:
    from polynl_core.tasks import UnknownTask
    from service.registry import PIPELINES, pipeline_class

    assert set(PIPELINES) == set(Task)
    with pytest.raises(UnknownTask, match="segmentation"):
        pipeline_class("segmentation")


def test_an_empty_variable_for_every_model_leaves_each_models_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYNL_MAX_BATCH_SIZE", "")
    assert serving_settings(DETECTOR, Settings()).sources["max_batch_size"] == "config.json"

"""The repository contract: versions, version policies, defaults, and older config.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polynl_core.repository import (
    RepositoryError,
    default_models,
    load_model,
    load_served_models,
    sha256_of,
)
from polynl_core.tasks import Task, UnknownTask, parse_task


def write_version(root: Path, name: str, version: int, task: str, **extra: object) -> Path:
    folder = root / name / str(version)
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(f"{name} {version}".encode())
    config = {
        "name": name,
        "version": version,
        "task": task,
        "onnx_sha256": sha256_of(folder / "model.onnx"),
        "opset": 18,
        "input": {"name": "images"},
        "outputs": list(parse_task(task).outputs),
        "preprocess": {"resize": "letterbox", "mean": [0, 0, 0], "std": [1, 1, 1]},
        "labels": ["x"],
        "block": "polynl",
        "source_checkpoint_sha256": "0" * 64,
        "exporter_version": "test",
        **extra,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_newest_version_decides_the_policy_and_defaults_follow_the_canonical_name(tmp_path: Path) -> None:
    write_version(tmp_path, "classifier", 1, "classification")
    write_version(tmp_path, "classifier", 2, "classification", version_policy={"latest": {"num_versions": 2}})
    write_version(
        tmp_path, "classifier", 3, "classification", version_policy={"specific": {"versions": [1, 3]}}
    )
    write_version(tmp_path, "alpha", 1, "classification")
    write_version(tmp_path, "faces", 4, "face_detection")
    served = load_served_models(tmp_path)
    assert [(m.name, m.version) for m in served] == [
        ("alpha", 1),
        ("classifier", 3),
        ("classifier", 1),
        ("faces", 4),
    ]
    assert default_models(tmp_path, served) == {
        Task.CLASSIFICATION: "classifier",
        Task.FACE_DETECTION: "faces",
    }


def test_repository_json_names_the_default_model_of_a_task(tmp_path: Path) -> None:
    write_version(tmp_path, "classifier", 1, "classification")
    write_version(tmp_path, "alpha", 1, "classification")
    (tmp_path / "repository.json").write_text(json.dumps({"defaults": {"classification": "alpha"}}))
    served = load_served_models(tmp_path)
    assert default_models(tmp_path, served) == {Task.CLASSIFICATION: "alpha"}
    (tmp_path / "repository.json").write_text(json.dumps({"defaults": {"classification": "nope"}}))
    with pytest.raises(RepositoryError, match="nope"):
        default_models(tmp_path, served)


def test_a_policy_that_selects_nothing_stops_start_up(tmp_path: Path) -> None:
    write_version(tmp_path, "classifier", 1, "classification", version_policy={"specific": {"versions": [7]}})
    with pytest.raises(RepositoryError, match="selects none"):
        load_served_models(tmp_path)


def test_config_json_of_older_exporters_still_loads(tmp_path: Path) -> None:
    """No batching, no version_policy, and the never-written fp16 fields as null."""
    write_version(tmp_path, "face_detector", 1, "face_detection", fp16_onnx_file=None, fp16_onnx_sha256=None)
    config = load_model(tmp_path / "face_detector").config
    assert config.batching is None and config.version_policy is None
    assert config.effective_batching.max_batch_size >= 1


@pytest.mark.parametrize(
    ("name", "task"),
    [
        ("classifier", Task.CLASSIFICATION),
        ("classification", Task.CLASSIFICATION),
        ("face_detector", Task.FACE_DETECTION),
        ("face-detection", Task.FACE_DETECTION),
        ("detector", Task.FACE_DETECTION),
    ],
)
def test_every_vocabulary_of_a_task_means_the_same_task(name: str, task: Task) -> None:
    assert parse_task(name) is task


def test_an_unknown_task_is_an_error() -> None:
    with pytest.raises(UnknownTask, match="segmentation"):
        parse_task("segmentation")

"""Every model and version of a repository served, each with its own batching.

The repositories here are copies of the test repository with their ``config.json`` edited as
an operator (or ``python -m export --max-batch-size ... --version-policy ...``) would: a second
classifier, a second version of the first one, and per-model batching values.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import SAMPLES, ServerHandle

CAT = (SAMPLES / "cat.jpg").read_bytes()
FACES = (SAMPLES / "faces_group.jpg").read_bytes()


def edit_config(version_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = version_dir / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config, indent=2))


def copy_version(repository: Path, name: str, version: int, new_name: str, new_version: int) -> Path:
    """A model version copied under another name and/or version number (same ONNX file)."""
    target = repository / new_name / str(new_version)
    shutil.copytree(repository / name / str(version), target)

    def rename(config: dict[str, Any]) -> None:
        config["name"], config["version"] = new_name, new_version

    edit_config(target, rename)
    return target


@pytest.fixture(scope="module")
def two_classifiers(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """classifier v1 + v2 (policy: all versions) and classifier_b v1, beside face_detector."""
    root = tmp_path_factory.mktemp("two-classifiers") / "repository"
    shutil.copytree(model_repository, root)
    newest = copy_version(root, "classifier", 1, "classifier", 2)
    edit_config(newest, lambda c: c.update(version_policy={"all": {}}))
    copy_version(root, "classifier", 1, "classifier_b", 1)
    return root


@pytest.fixture(scope="module")
def multi_server(start_server: Callable[..., ServerHandle], two_classifiers: Path) -> ServerHandle:
    return start_server({}, repository=two_classifiers)


def classify(client: httpx.Client, **params: object) -> httpx.Response:
    return client.post("/classify", params=params, files={"file": ("cat.jpg", CAT)})


def test_every_classifier_and_version_is_callable_by_name_and_version(multi_server: ServerHandle) -> None:
    with multi_server.client() as client:
        listed = {(m["name"], m["version"]): m for m in client.get("/v1/models").json()["models"]}
        assert set(listed) == {
            ("classifier", 1),
            ("classifier", 2),
            ("classifier_b", 1),
            ("face_detector", 1),
        }
        assert listed[("classifier", 2)]["default"] and not listed[("classifier", 1)]["default"]
        assert listed[("classifier", 1)]["served_versions"] == [2, 1]
        answers = {}
        for params, expected in [
            ({}, {"name": "classifier", "version": 2}),  # the default model, newest version
            ({"version": 1}, {"name": "classifier", "version": 1}),
            ({"model": "classifier", "version": 2}, {"name": "classifier", "version": 2}),
            ({"model": "classifier_b"}, {"name": "classifier_b", "version": 1}),
        ]:
            response = classify(client, **params)
            assert response.status_code == 200, response.text
            assert response.json()["model"] == expected
            answers[str(params)] = response.json()["results"][0]["top_k"]
        # Copies of one ONNX file: the same answer from every one of them.
        assert len({json.dumps(a) for a in answers.values()}) == 1
        ready = client.get("/readyz").json()["models"]
        assert ready == {
            "classifier/1": True,
            "classifier/2": True,
            "classifier_b": True,
            "face_detector": True,
        }
        detected = client.post("/detect-faces", files={"file": ("g.jpg", FACES)})
        assert detected.json()["model"] == {"name": "face_detector", "version": 1}


def test_unknown_model_or_version_is_404_listing_what_is_served(multi_server: ServerHandle) -> None:
    with multi_server.client() as client:
        unknown = classify(client, model="nope")
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "unknown_model"
        assert "classifier, classifier_b" in unknown.json()["message"]
        # A model of another task is not a classifier.
        assert classify(client, model="face_detector").status_code == 404
        missing = classify(client, model="classifier_b", version=2)
        assert missing.status_code == 404 and "served versions: 1" in missing.json()["message"]
        assert classify(client, version=0).status_code == 422


@pytest.fixture(scope="module")
def own_batching(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The classifier batches up to 8 and waits long; the detector takes one image per call."""
    root = tmp_path_factory.mktemp("own-batching") / "repository"
    shutil.copytree(model_repository, root)
    edit_config(
        root / "classifier" / "1",
        lambda c: c.update(batching={"max_batch_size": 8, "max_wait_ms": 400.0, "queue_size": 64}),
    )

    def one_per_call(config: dict[str, Any]) -> None:
        config["batching"] = {"max_batch_size": 1, "max_wait_ms": 0.0, "queue_size": 32}
        config["preprocess"]["pyramid"] = []  # one network input per image

    edit_config(root / "face_detector" / "1", one_per_call)
    return root


async def _fire(server: ServerHandle, path: str, data: bytes, count: int) -> list[httpx.Response]:
    async with server.async_client(limits=httpx.Limits(max_connections=count + 4)) as client:
        return await asyncio.gather(
            *(client.post(path, files={"file": ("x.jpg", data)}) for _ in range(count))
        )


def test_classifier_and_detector_batch_with_their_own_settings_from_one_repository(
    start_server: Callable[..., ServerHandle], own_batching: Path
) -> None:
    server = start_server({}, repository=own_batching)
    with server.client() as client:
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["classifier"]["batching"]["max_batch_size"] == 8
    assert models["face_detector"]["batching"]["max_batch_size"] == 1
    for info in models.values():
        assert {s["source"] for s in info["settings"].values()} <= {"config.json", "default"}

    def calls(model: str) -> tuple[float, float]:
        return (
            server.metric("polynl_batch_size_count", {"model": model}),
            server.metric("polynl_batch_size_sum", {"model": model}),
        )

    before = {m: calls(m) for m in ("classifier", "face_detector")}

    async def both() -> tuple[list[httpx.Response], list[httpx.Response]]:
        return await asyncio.gather(
            _fire(server, "/classify", CAT, 8), _fire(server, "/detect-faces", FACES, 3)
        )

    classified, detected = asyncio.run(both())
    assert [r.status_code for r in classified + detected] == [200] * 11
    after = {m: calls(m) for m in ("classifier", "face_detector")}
    classifier_calls = after["classifier"][0] - before["classifier"][0]
    detector_calls, detector_images = (
        a - b for a, b in zip(after["face_detector"], before["face_detector"], strict=True)
    )
    assert after["classifier"][1] - before["classifier"][1] == 8
    assert classifier_calls <= 2, (
        f"8 classifications took {classifier_calls} calls (max batch 8, wait 400 ms)"
    )
    assert (detector_calls, detector_images) == (3, 3), "the detector's max_batch_size is 1"

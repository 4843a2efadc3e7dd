"""Known content through the service: the shipped models' answers on the sample images.

Expected answers come from ``samples/README.md``. Skipped when the model repository holds
random weights (before the shipped weights exist); with the shipped weights these tests
say whether the service, end to end, gives the answers a user expects.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import CIFAR10_LABELS, SAMPLES, ServerHandle, repository_is_random


@pytest.fixture(scope="module")
def client(start_server, model_repository: Path) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    if repository_is_random(model_repository):
        pytest.skip("random-init weights: answers are not meaningful")
    server: ServerHandle = start_server()
    with server.client() as client:
        yield client


def test_classifier_recognises_the_cifar_samples(client: httpx.Client) -> None:
    files = [
        ("files", (f"{label}.png", (SAMPLES / f"cifar_{label}.png").read_bytes())) for label in CIFAR10_LABELS
    ]
    response = client.post("/classify", params={"top_k": 3}, files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    top1 = [r["top_k"][0]["label"] == label for r, label in zip(results, CIFAR10_LABELS, strict=True)]
    top3 = [
        label in {e["label"] for e in r["top_k"]} for r, label in zip(results, CIFAR10_LABELS, strict=True)
    ]
    # One image per class: chance is 1 of 10 at top-1. The shipped model should get most.
    assert sum(top1) >= 7, [r["top_k"][0]["label"] for r in results]
    assert sum(top3) >= 9


def test_detector_finds_the_astronauts_face_where_it_is(client: httpx.Client) -> None:
    response = client.post(
        "/detect-faces", files={"file": ("a.jpg", (SAMPLES / "face_astronaut.jpg").read_bytes())}
    )
    assert response.status_code == 200, response.text
    faces = response.json()["results"][0]["faces"]
    assert faces, "no face found"
    x1, y1, x2, y2 = faces[0]["box"]  # the best face: near x 180-270, y 60-170 (samples/README.md)
    assert 170 <= (x1 + x2) / 2 <= 280 and 50 <= (y1 + y2) / 2 <= 180, faces[0]
    assert len(faces) <= 2


def test_detector_finds_no_face_in_the_coffee_photo(client: httpx.Client) -> None:
    response = client.post("/detect-faces", files={"file": ("c.jpg", (SAMPLES / "coffee.jpg").read_bytes())})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["faces"] == []

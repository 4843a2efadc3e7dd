"""Known content through the service: the shipped models' answers on the sample images.

Expected answers come from ``samples/README.md``. Skipped when the model repository holds
random weights (before the shipped weights exist); with the shipped weights these tests
say whether the service, end to end, gives the answers a user expects.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import CIFAR10_LABELS, SAMPLES, ServerHandle, repository_is_random
from PIL import Image

CMUMIT = Path(__file__).resolve().parents[1] / "data" / "cmumit-val"


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


def _group_photo_labels() -> list[list[float]]:
    """The 8 hand-labelled faces of samples/faces_group.jpg (= cmumit-val's newsradio.jpg)."""
    labels = json.loads((CMUMIT / "labels.json").read_text())
    entry = next(e for e in labels["images"] if e["file"].endswith("newsradio.jpg"))
    return [face["box"] for face in entry["faces"]]


@pytest.fixture(scope="module")
def default_buckets(start_server, model_repository: Path) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    """A server with the export's default buckets (the test repository has only 320x320 and
    480x640, where the 500 px group photo would be scaled down to 480 px)."""
    from polynl_core.buckets import DEFAULT_BUCKETS

    if repository_is_random(model_repository):
        pytest.skip("random-init weights: answers are not meaningful")

    buckets = ",".join(f"{h}x{w}" for h, w in DEFAULT_BUCKETS)
    with start_server({"POLYNL_DETECTION_BUCKETS": buckets}).client() as served:
        yield served


def _assert_each_face_in_exactly_one_detection(found: list[list[float]], labelled: list[list[float]]) -> None:
    """Convention-free matching (the labels are tight eye-to-mouth boxes, ours WIDER FACE boxes):
    every labelled face's centre lies in exactly one detection, and every detection holds one."""

    def inside(point: tuple[float, float], box: list[float]) -> bool:
        return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]

    centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in labelled]
    rounded = [[round(v) for v in box] for box in found]
    assert all(sum(inside(c, box) for box in found) == 1 for c in centres), rounded
    assert all(sum(inside(c, box) for c in centres) == 1 for box in found), rounded


def test_detector_finds_every_face_of_the_group_photo_and_nothing_else(default_buckets: httpx.Client) -> None:
    response = default_buckets.post(
        "/detect-faces", files={"file": ("g.jpg", (SAMPLES / "faces_group.jpg").read_bytes())}
    )
    assert response.status_code == 200, response.text
    found = [face["box"] for face in response.json()["results"][0]["faces"]]  # default threshold 0.5
    labelled = _group_photo_labels()
    assert len(labelled) == 8
    _assert_each_face_in_exactly_one_detection(found, labelled)


def test_a_photo_decoded_reduced_gives_its_faces_in_the_full_size_pixels(
    default_buckets: httpx.Client,
) -> None:
    """Issue 19: a JPEG far larger than the bucket is decoded at 1/2-1/8 scale (reduced decode
    is on by default); the faces are still all found, in the uploaded image's pixels."""
    from polynl_core.images import load_image, open_image

    factor = 4
    with Image.open(SAMPLES / "faces_group.jpg") as small:
        big = small.convert("RGB").resize(
            (small.width * factor, small.height * factor), Image.Resampling.BICUBIC
        )
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=92)
    data = buffer.getvalue()
    # Precondition: this 2000x2000 JPEG, letterboxed into 640x640, is decoded at 1/2 scale.
    assert load_image(open_image(data, 10**8), 10**8, lambda width, height: (640, 640)).reduction == 2

    response = default_buckets.post("/detect-faces", files={"file": ("big.jpg", data)})
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert (result["width"], result["height"]) == big.size
    found = [face["box"] for face in result["faces"]]  # default threshold 0.5
    labelled = [[v * factor for v in box] for box in _group_photo_labels()]
    assert len(labelled) == 8
    _assert_each_face_in_exactly_one_detection(found, labelled)
    assert all(0 <= x <= big.width and 0 <= y <= big.height for box in found for x, y in (box[:2], box[2:]))


@pytest.mark.parametrize("pyramid", ["", "0.5,0.25"])
def test_served_detections_equal_the_evaluation_of_the_same_files(
    start_server, model_repository: Path, pyramid: str
) -> None:  # type: ignore[no-untyped-def]
    """POST /detect-faces and ``models.evaluate``'s ONNX detector in served mode agree."""
    if repository_is_random(model_repository):
        pytest.skip("random-init weights: answers are not meaningful")
    from models.evaluate import FaceSelection, OnnxFaceDetector
    from polynl_core.images import read_rgb

    levels = tuple(float(f) for f in pyramid.split(",") if f)
    evaluation = OnnxFaceDetector(
        model_repository / "face_detector", FaceSelection(score_threshold=0.3, pyramid=levels), served=True
    )
    files = [SAMPLES / "faces_group.jpg", SAMPLES / "face_astronaut.jpg", CMUMIT / "images" / "window.jpg"]
    server: ServerHandle = start_server({"POLYNL_DETECTOR_PYRAMID": pyramid})
    with server.client() as served:
        for path in files:
            response = served.post(
                "/detect-faces",
                params={"score_threshold": 0.3, "max_faces": 750},
                files={"file": (path.name, path.read_bytes())},
            )
            assert response.status_code == 200, response.text
            faces = response.json()["results"][0]["faces"]
            expected = evaluation(np.asarray(read_rgb(path)))
            assert len(faces) == len(expected.scores), path.name
            boxes = np.asarray([face["box"] for face in faces], dtype=np.float64).reshape(-1, 4)
            scores = np.asarray([face["score"] for face in faces])
            assert np.abs(boxes - expected.boxes).max(initial=0.0) < 1e-2, path.name  # JSON rounds boxes
            assert np.abs(scores - expected.scores).max(initial=0.0) < 1e-3, path.name

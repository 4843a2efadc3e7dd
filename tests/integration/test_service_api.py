"""The API against a real server (uvicorn subprocess, real ONNX models, real images).

One server for the module, default settings. Answers are checked against an independent
path: the same decode + preprocessing fed straight to an ONNX Runtime session.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import image_cases
import numpy as np
import onnxruntime as ort
import pytest
from conftest import SAMPLES, ServerHandle, repository_is_random
from PIL import Image

from polynl_core.buckets import choose_bucket
from polynl_core.images import decode_image
from polynl_core.postprocess import box_iou, faces_to_original, select_faces, softmax
from polynl_core.preprocess import classifier_input, classifier_needed_size
from polynl_core.pyramid import DEFAULT_LEVELS, detect_levels, pyramid_inputs
from polynl_core.repository import load_repository

CAT = SAMPLES / "cat.jpg"
FACE = SAMPLES / "face_astronaut.jpg"


@pytest.fixture(scope="module")
def server(start_server) -> ServerHandle:  # type: ignore[no-untyped-def]
    return start_server()


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "request_id"}
    assert body["error"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    for leak in ("Traceback", 'File "', "/work/", ".py", "site-packages"):
        assert leak not in response.text
    return body


def direct_session(repository: Path, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )


# --- classification ----------------------------------------------------------------------------
def test_classify_returns_top_k_labels_for_a_real_image(client: httpx.Client, model_repository: Path) -> None:
    response = client.post("/classify", params={"top_k": 3}, files={"file": ("cat.jpg", CAT.read_bytes())})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "classifier", "version": 1}
    (result,) = body["results"]
    assert (result["width"], result["height"]) == decode_image(CAT.read_bytes(), 10**8).image.size
    assert result["filename"] == "cat.jpg"
    probabilities = [entry["probability"] for entry in result["top_k"]]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert set(body["timing"]) == {"decode_ms", "preprocess_ms", "queue_ms", "inference_ms", "total_ms"}
    assert body["timing"]["total_ms"] >= body["timing"]["inference_ms"] > 0


def test_classification_equals_a_direct_onnxruntime_call(
    client: httpx.Client, model_repository: Path
) -> None:
    config = load_repository(model_repository)["classifier"].config
    images = [CAT, SAMPLES / "rocket.jpg", SAMPLES / "coffee.jpg"]
    response = client.post(
        "/classify", params={"top_k": 10}, files=[("files", (p.name, p.read_bytes())) for p in images]
    )
    assert response.status_code == 200, response.text

    def served_input(path: Path) -> np.ndarray:
        # As the service decodes: a JPEG no larger than the classifier needs (reduced decode).
        needed = partial(classifier_needed_size, preprocess=config.preprocess)
        return classifier_input(decode_image(path.read_bytes(), 10**8, needed).image, config.preprocess)

    batch = np.stack([served_input(p) for p in images])
    (logits,) = direct_session(model_repository, "classifier").run(None, {"images": batch})
    expected = softmax(logits.astype(np.float64))
    for index, result in enumerate(response.json()["results"]):
        got = {entry["id"]: entry["probability"] for entry in result["top_k"]}
        assert result["index"] == index
        np.testing.assert_allclose([got[i] for i in range(10)], expected[index], rtol=1e-5, atol=1e-6)


def test_classify_accepts_a_raw_image_body(client: httpx.Client) -> None:
    response = client.post("/classify", content=CAT.read_bytes(), headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"][0]["top_k"]) == 5


def test_content_type_of_a_part_is_not_trusted(client: httpx.Client) -> None:
    response = client.post("/classify", files={"file": ("x.gif", image_cases.png(), "image/gif")})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("name", sorted(image_cases.CONVERTIBLE))
def test_unusual_image_modes_are_converted_not_rejected(client: httpx.Client, name: str) -> None:
    response = client.post("/classify", files={"file": (name, image_cases.CONVERTIBLE[name]())})
    assert response.status_code == 200, response.text


def test_exif_orientation_sets_the_reported_size(client: httpx.Client) -> None:
    response = client.post("/detect-faces", files={"file": ("r.jpg", image_cases.exif_rotated_jpeg(40, 20))})
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert (result["width"], result["height"]) == (20, 40)


# --- detection ---------------------------------------------------------------------------------
def test_detect_faces_returns_faces_inside_the_original_image(
    client: httpx.Client, model_repository: Path
) -> None:
    response = client.post(
        "/detect-faces",
        params={"score_threshold": 0.5, "max_faces": 20},
        files={"file": ("a.jpg", FACE.read_bytes())},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "face_detector", "version": 1}
    result = body["results"][0]
    width, height = result["width"], result["height"]
    assert (width, height) == decode_image(FACE.read_bytes(), 10**8).image.size
    assert len(result["faces"]) <= 20
    for face in result["faces"]:
        x1, y1, x2, y2 = face["box"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        assert 0.5 <= face["score"] <= 1.0
        assert set(face["landmarks"]) == {"left_eye", "right_eye", "nose", "left_mouth", "right_mouth"}
        for x, y in face["landmarks"].values():
            assert 0 <= x <= width and 0 <= y <= height


def test_detection_equals_direct_onnxruntime_plus_postprocessing(
    client: httpx.Client, model_repository: Path
) -> None:
    model = load_repository(model_repository)["face_detector"]
    buckets = model.config.size_buckets
    assert buckets
    params = {"score_threshold": 0.6, "nms_iou": 0.3, "max_faces": 50}
    images = [FACE, SAMPLES / "faces_group.jpg"]
    response = client.post(
        "/detect-faces", params=params, files=[("files", (p.name, p.read_bytes())) for p in images]
    )
    assert response.status_code == 200, response.text
    session = direct_session(model_repository, "face_detector")
    for path, result in zip(images, response.json()["results"], strict=True):
        image = decode_image(path.read_bytes(), 10**8).image
        inputs = pyramid_inputs(
            image, choose_bucket(*image.size, buckets), model.config.preprocess, DEFAULT_LEVELS
        )
        assert len(inputs) == 3  # both pyramid levels (the default) shrink these images
        merged = detect_levels(inputs, lambda batch: session.run(None, {"images": batch}))
        faces = select_faces(*merged, 0.6, 0.3, 50)
        expected = faces_to_original(faces, 1.0, *image.size)
        assert len(result["faces"]) == len(expected.scores)
        if result["faces"]:
            got = np.asarray([f["box"] for f in result["faces"]])
            np.testing.assert_allclose(got, expected.boxes, rtol=1e-4, atol=1e-2)
            np.testing.assert_allclose([f["score"] for f in result["faces"]], expected.scores, atol=1e-5)


def test_a_face_larger_than_the_training_faces_is_found_on_a_pyramid_level(
    client: httpx.Client, model_repository: Path
) -> None:
    if repository_is_random(model_repository):
        pytest.skip("needs the shipped detector weights")
    # A tight crop around the astronaut's face, enlarged to 600 x 600: the face (tight box,
    # samples/README.md) becomes about 460 px, twice the largest face of the training images.
    crop = (137, 33, 310, 206)
    image = Image.open(FACE).convert("RGB").crop(crop).resize((600, 600), Image.Resampling.BILINEAR)
    factor = 600 / (crop[2] - crop[0])
    expected = np.asarray([(158 - crop[0]) * factor, (46 - crop[1]) * factor,
                           (291 - crop[0]) * factor, (195 - crop[1]) * factor])  # fmt: skip
    payload = io.BytesIO()
    image.save(payload, format="PNG")
    response = client.post(
        "/detect-faces", params={"score_threshold": 0.5}, files={"file": ("big.png", payload.getvalue())}
    )
    assert response.status_code == 200, response.text
    faces = response.json()["results"][0]["faces"]
    assert faces, "no face found"
    best = max(faces, key=lambda face: face["score"])
    assert box_iou(expected, np.asarray([best["box"]]))[0] >= 0.5, (best, expected.tolist())


# --- errors: each a clear 4xx in one JSON shape, and the server keeps serving --------------------
ERROR_CASES = [
    # (name, request kwargs, status, code)
    ("not_an_image", {"files": {"file": ("a.png", image_cases.not_an_image())}}, 415, "unsupported_image"),
    ("truncated_jpeg", {"files": {"file": ("a.jpg", image_cases.truncated_jpeg())}}, 422, "corrupt_image"),
    ("truncated_png", {"files": {"file": ("a.png", image_cases.truncated_png())}}, 422, "corrupt_image"),
    ("empty_file", {"files": {"file": ("a.jpg", b"")}}, 400, "empty_body"),
    ("empty_raw_body", {"content": b"", "headers": {"content-type": "image/jpeg"}}, 400, "empty_body"),
    ("no_body_at_all", {}, 400, "empty_body"),
    ("wrong_field", {"files": {"image": ("a.jpg", image_cases.jpeg())}}, 400, "unexpected_field"),
    (
        "text_field",
        {"files": {"file": ("a.jpg", image_cases.jpeg())}, "data": {"note": "x"}},
        400,
        "unexpected_field",
    ),
    ("json_body", {"json": {"image": "abc"}}, 415, "unsupported_image"),
    ("too_many_pixels", {"files": {"file": ("bomb.png", image_cases.png_bomb())}}, 413, "image_too_large"),
    (
        "raw_text_body",
        {"content": b"hello", "headers": {"content-type": "text/plain"}},
        415,
        "unsupported_image",
    ),
]


@pytest.mark.parametrize("path", ["/classify", "/detect-faces"])
@pytest.mark.parametrize(("name", "kwargs", "status", "code"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_uploads_get_a_clear_json_4xx(
    client: httpx.Client,
    path: str,
    name: str,
    kwargs: dict,
    status: int,
    code: str,  # type: ignore[type-arg]
) -> None:
    assert_error(client.post(path, **kwargs), status, code)


BAD_QUERIES = [
    ("/classify", {"top_k": 0}),
    ("/classify", {"top_k": 11}),  # more than the 10 labels
    ("/classify", {"top_k": "five"}),
    ("/detect-faces", {"score_threshold": 1.5}),
    ("/detect-faces", {"score_threshold": "nan"}),
    ("/detect-faces", {"nms_iou": -0.1}),
    ("/detect-faces", {"max_faces": 0}),
    ("/detect-faces", {"max_faces": 100000}),
]


@pytest.mark.parametrize(("path", "params"), BAD_QUERIES)
def test_bad_query_values_are_422(client: httpx.Client, path: str, params: dict) -> None:  # type: ignore[type-arg]
    body = assert_error(
        client.post(path, params=params, files={"file": ("a.jpg", image_cases.jpeg())}),
        422,
        "validation_error",
    )
    assert next(iter(params)) in body["message"]


def test_unknown_path_and_method_use_the_error_shape(client: httpx.Client) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/classify"), 405, "method_not_allowed")


def test_server_still_serves_after_every_error(client: httpx.Client) -> None:
    for _, kwargs, _, _ in ERROR_CASES:
        client.post("/classify", **kwargs)
    assert client.get("/healthz").status_code == 200
    assert client.post("/classify", files={"file": ("cat.jpg", CAT.read_bytes())}).status_code == 200


# --- request ids, health, models, metrics, schema ------------------------------------------------
def test_well_formed_request_id_is_echoed_and_bad_ones_replaced(client: httpx.Client) -> None:
    assert (
        client.get("/healthz", headers={"X-Request-ID": "abc-123.x"}).headers["x-request-id"] == "abc-123.x"
    )
    replaced = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
    assert replaced != "bad id\twith spaces" and len(replaced) == 32
    assert len(client.get("/healthz", headers={"X-Request-ID": "x" * 500}).headers["x-request-id"]) == 32
    error = client.post("/classify", headers={"X-Request-ID": "trace-7"}, content=b"")
    assert error.json()["request_id"] == "trace-7"


def test_request_id_appears_in_the_server_log(client: httpx.Client, server: ServerHandle) -> None:
    client.post("/classify", headers={"X-Request-ID": "find-me-in-the-log"}, content=b"")
    assert "find-me-in-the-log" in server.log()


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "models": {"classifier": True, "face_detector": True}}


def test_models_lists_providers_in_use_batching_and_file_checksums(
    client: httpx.Client, model_repository: Path
) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(models) == {"classifier", "face_detector"}
    for name, info in models.items():
        onnx_file = model_repository / name / "1" / info["onnx_file"]
        assert info["onnx_sha256"] == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
        # The default asks for CUDA first; this machine has no GPU, so CPU is what runs.
        assert info["providers"][-1] == "CPUExecutionProvider"
        # Each model's own batching from its config.json, and where each setting came from.
        config = json.loads((model_repository / name / "1" / "config.json").read_text())
        assert info["batching"]["max_batch_size"] == config["batching"]["max_batch_size"]
        assert info["settings"]["max_batch_size"] == {
            "value": config["batching"]["max_batch_size"],
            "source": "config.json",
        }
        assert info["default"] is True and info["served_versions"] == [1]
        assert info["inputs"][0]["name"] == "images"
        assert info["ready"] is True
    assert models["face_detector"]["size_buckets"] == [[320, 320], [480, 640]]
    assert models["face_detector"]["settings"]["buckets"]["source"] == "config.json"
    assert models["classifier"]["batching"] != models["face_detector"]["batching"]
    assert len(models["classifier"]["labels"]) == 10


def test_metrics_count_requests_by_endpoint_and_status(client: httpx.Client, server: ServerHandle) -> None:
    client.post("/classify", content=b"")
    text = client.get("/metrics").text
    assert 'polynl_requests_total{endpoint="/classify",method="POST",status="400"}' in text
    for family in (
        "polynl_request_duration_seconds",
        "polynl_queue_depth",
        "polynl_batch_size",
        "polynl_inference_seconds",
    ):
        assert family in text


def test_openapi_documents_every_endpoint_and_the_error_shape(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    for path in ("/classify", "/detect-faces", "/healthz", "/readyz", "/metrics", "/v1/models"):
        assert path in schema["paths"]
    classify = schema["paths"]["/classify"]["post"]
    assert "multipart/form-data" in classify["requestBody"]["content"]
    assert "image/*" in classify["requestBody"]["content"]
    assert {"200", "400", "413", "415", "422", "503", "504"} <= set(classify["responses"])
    assert "ErrorResponse" in json.dumps(schema["components"])

"""The Open Inference Protocol (KServe v2), driven by Triton's own clients.

A real ``python -m service`` (uvicorn and the gRPC server on loopback) answers
``tritonclient.http`` and ``tritonclient.grpc``: health, metadata, config, inference with
tensors (JSON and binary) and with encoded images (BYTES), and every error case. The answers
are checked against ``POST /classify`` and ``POST /detect-faces`` on the same images, and the
tensor path against the project's own preprocessing and post-processing (polynl_core).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from conftest import SAMPLES, ServerHandle
from google.rpc import error_details_pb2, status_pb2
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from polynl_core.buckets import choose_bucket
from polynl_core.postprocess import faces_to_original, select_faces
from polynl_core.preprocess import classifier_input
from polynl_core.pyramid import LevelOutput, merge_levels, pyramid_inputs
from polynl_core.repository import read_model_config

KEY = "oip-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
GRPC_AUTH = {"authorization": f"Bearer {KEY}"}


def auth() -> dict[str, str]:
    """A fresh header dict per call: tritonclient.http adds its own headers to the one given."""
    return dict(AUTH)


CIFAR = sorted(SAMPLES.glob("cifar_*.png"))
FACES = [SAMPLES / "faces_group.jpg", SAMPLES / "face_astronaut.jpg"]


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerHandle]) -> ServerHandle:
    return start_server({"POLYNL_API_KEY": KEY})


@pytest.fixture(scope="module")
def slow_server(start_server: Callable[..., ServerHandle]) -> ServerHandle:
    """Every inference call takes 400 ms and each model queues one image: overload and deadlines."""
    return start_server({"POLYNL_INFERENCE_DELAY_MS": "400", "POLYNL_QUEUE_SIZE": "1"})


def http_client(server: ServerHandle) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)


def grpc_client(server: ServerHandle) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc_url)


def image_files(paths: list[Path], module: Any = httpclient) -> Any:
    data = np.array([p.read_bytes() for p in paths], dtype=np.object_)
    tensor = module.InferInput("image_files", [len(paths)], "BYTES")
    if module is httpclient:
        tensor.set_data_from_numpy(data, binary_data=True)
    else:
        tensor.set_data_from_numpy(data)
    return tensor


def images_tensor(array: np.ndarray, module: Any = httpclient, binary: bool = True) -> Any:
    tensor = module.InferInput("images", list(array.shape), "FP32")
    if module is httpclient:
        tensor.set_data_from_numpy(array, binary_data=binary)
    else:
        tensor.set_data_from_numpy(array)
    return tensor


def classify_json(server: ServerHandle, path: Path, top_k: int = 3) -> dict[str, Any]:
    with server.client(headers=auth()) as client:
        response = client.post(
            "/classify", params={"top_k": top_k}, files={"file": (path.name, path.read_bytes())}
        )
    assert response.status_code == 200, response.text
    return dict(response.json()["results"][0])


def detect_json(server: ServerHandle, path: Path) -> dict[str, Any]:
    with server.client(headers=auth()) as client:
        response = client.post("/detect-faces", files={"file": (path.name, path.read_bytes())})
    assert response.status_code == 200, response.text
    return dict(response.json()["results"][0])


# --- health, metadata, config ----------------------------------------------------------------
def test_health_and_server_metadata_over_both_protocols(server: ServerHandle) -> None:
    http, rpc = http_client(server), grpc_client(server)
    assert http.is_server_live() and http.is_server_ready()
    assert rpc.is_server_live() and rpc.is_server_ready()
    assert http.is_model_ready("classifier", headers=auth())
    assert rpc.is_model_ready("face_detector", "1", headers=GRPC_AUTH)
    meta = http.get_server_metadata(headers=auth())
    assert meta["name"] == "polynl-serve" and "binary_tensor_data" in meta["extensions"]
    assert "binary_tensor_data" in rpc.get_server_metadata(headers=GRPC_AUTH).extensions


def test_model_metadata_lists_both_optional_inputs_and_every_output(server: ServerHandle) -> None:
    meta = http_client(server).get_model_metadata("classifier", headers=auth())
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert inputs["images"] == {"name": "images", "datatype": "FP32", "shape": [-1, 3, 32, 32]}
    assert inputs["image_files"]["datatype"] == "BYTES"
    assert {o["name"] for o in meta["outputs"]} == {"logits", "labels", "ids", "probabilities", "image_sizes"}
    rpc_meta = grpc_client(server).get_model_metadata("face_detector", headers=GRPC_AUTH)
    outputs = {o.name: list(o.shape) for o in rpc_meta.outputs}
    assert outputs["face_boxes"] == [-1, 4] and outputs["face_landmarks"] == [-1, 10]
    assert {"boxes", "scores", "landmarks", "face_count"} <= set(outputs)
    config = grpc_client(server).get_model_config("face_detector", headers=GRPC_AUTH).config
    assert [i.optional for i in config.input] == [True, True]
    assert "320x320" in config.parameters["size_buckets"].string_value
    index = http_client(server).get_model_repository_index(headers=auth())
    assert {(m["name"], m["version"], m["state"]) for m in index} == {
        ("classifier", "1", "READY"),
        ("face_detector", "1", "READY"),
    }


# --- images in, answers out --------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bytes_images_classify_like_post_classify(server: ServerHandle, protocol: str) -> None:
    paths = CIFAR[:8]
    if protocol == "http":
        result = http_client(server).infer(
            "classifier", [image_files(paths)], parameters={"top_k": 3}, headers=auth()
        )
    else:
        result = grpc_client(server).infer(
            "classifier", [image_files(paths, grpcclient)], parameters={"top_k": 3}, headers=GRPC_AUTH
        )
    labels, ids, probabilities = (result.as_numpy(n) for n in ("labels", "ids", "probabilities"))
    assert labels.shape == (8, 3) and ids.dtype == np.int64 and probabilities.dtype == np.float32
    for row, path in enumerate(paths):
        expected = classify_json(server, path)["top_k"]
        assert [x.decode() for x in labels[row]] == [e["label"] for e in expected]
        assert ids[row].tolist() == [e["id"] for e in expected]
        np.testing.assert_allclose(probabilities[row], [e["probability"] for e in expected], atol=1e-6)
    assert result.as_numpy("image_sizes").tolist() == [[32, 32]] * 8


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bytes_images_detect_like_post_detect_faces(server: ServerHandle, protocol: str) -> None:
    params = {"score_threshold": 0.5, "max_faces": 50}
    if protocol == "http":
        result = http_client(server).infer(
            "face_detector", [image_files(FACES)], parameters=params, headers=auth()
        )
    else:
        result = grpc_client(server).infer(
            "face_detector", [image_files(FACES, grpcclient)], parameters=params, headers=GRPC_AUTH
        )
    counts = result.as_numpy("face_count").tolist()
    boxes, scores = result.as_numpy("face_boxes"), result.as_numpy("face_scores")
    landmarks = result.as_numpy("face_landmarks")
    assert boxes.shape == (sum(counts), 4) and landmarks.shape == (sum(counts), 10)
    start = 0
    for count, path in zip(counts, FACES, strict=True):
        expected = detect_json(server, path)["faces"]
        assert count == len(expected) > 0
        np.testing.assert_allclose(boxes[start : start + count], [f["box"] for f in expected], atol=1e-3)
        np.testing.assert_allclose(scores[start : start + count], [f["score"] for f in expected], atol=1e-6)
        marks = [[v for point in f["landmarks"].values() for v in point] for f in expected]
        np.testing.assert_allclose(landmarks[start : start + count], marks, atol=1e-3)
        start += count


# --- tensor in, tensor out ----------------------------------------------------------------------
def _classifier_batch(model_repository: Path, paths: list[Path]) -> np.ndarray:
    config = read_model_config(model_repository / "classifier" / "1")
    return np.stack([classifier_input(Image.open(p).convert("RGB"), config.preprocess) for p in paths])


@pytest.mark.parametrize(
    ("protocol", "batch"), [("http-binary", 1), ("http-json", 8), ("grpc", 8), ("grpc", 1)]
)
def test_tensor_path_returns_the_raw_logits(
    server: ServerHandle, model_repository: Path, protocol: str, batch: int
) -> None:
    paths = CIFAR[:batch]
    array = _classifier_batch(model_repository, paths)
    if protocol.startswith("http"):
        binary = protocol == "http-binary"
        outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
        result = http_client(server).infer(
            "classifier", [images_tensor(array, binary=binary)], outputs=outputs, headers=auth()
        )
    else:
        result = grpc_client(server).infer(
            "classifier", [images_tensor(array, grpcclient)], headers=GRPC_AUTH
        )
    logits = result.as_numpy("logits")
    assert logits.shape == (batch, 10) and logits.dtype == np.float32
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    for row, path in enumerate(paths):
        expected = classify_json(server, path, top_k=1)["top_k"][0]
        assert int(np.argmax(logits[row])) == expected["id"]
        assert probabilities[row, expected["id"]] == pytest.approx(expected["probability"], abs=1e-5)


def test_detector_tensor_path_gives_the_boxes_of_post_detect_faces(
    server: ServerHandle, model_repository: Path
) -> None:
    config = read_model_config(model_repository / "face_detector" / "1")
    image = Image.open(FACES[0]).convert("RGB")
    bucket = choose_bucket(image.width, image.height, [(b[0], b[1]) for b in config.size_buckets or []])
    boxed = pyramid_inputs(image, bucket, config.preprocess, ())[0]
    result = grpc_client(server).infer(
        "face_detector", [images_tensor(boxed.tensor[None], grpcclient)], headers=GRPC_AUTH
    )
    raw = {name: result.as_numpy(name)[0] for name in ("boxes", "scores", "landmarks")}
    boxes, scores, landmarks = merge_levels(
        [LevelOutput(raw["boxes"], raw["scores"], raw["landmarks"], boxed.scale)]
    )
    faces = select_faces(boxes, scores, landmarks, score_threshold=0.5, nms_iou=0.4, max_faces=100)
    faces = faces_to_original(faces, 1.0, image.width, image.height)
    expected = detect_json(server, FACES[0])["faces"]
    np.testing.assert_allclose(faces.boxes, [f["box"] for f in expected], atol=1e-3)


def test_http_json_request_and_json_response_without_the_client(server: ServerHandle) -> None:
    """The plain JSON form of the protocol (no binary extension), as curl would send it."""
    body = {
        "id": "req-7",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0] * 3072}],
        "outputs": [{"name": "logits"}],
    }
    response = httpx.post(f"{server.url}/v2/models/classifier/versions/1/infer", json=body, headers=auth())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == "req-7" and answer["model_version"] == "1"
    assert answer["outputs"][0]["shape"] == [1, 10] and len(answer["outputs"][0]["data"]) == 10
    assert response.headers["X-Request-ID"]


# --- errors ---------------------------------------------------------------------------------------
def _http_error(call: Callable[[], Any]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_http_errors_in_the_protocols_shape(server: ServerHandle) -> None:
    client = http_client(server)
    unknown = _http_error(lambda: client.get_model_metadata("nope", headers=auth()))
    assert unknown.status() == "404" and "served: classifier, face_detector" in unknown.message()
    assert _http_error(lambda: client.get_model_metadata("classifier", "7", headers=auth())).status() == "404"
    assert _http_error(lambda: client.get_model_metadata("classifier")).status() == "401"
    wrong = np.zeros((1, 3, 200, 200), dtype=np.float32)
    error = _http_error(lambda: client.infer("face_detector", [images_tensor(wrong)], headers=auth()))
    assert error.status() == "400" and "320x320" in error.message() and "480x640" in error.message()
    both = [images_tensor(np.zeros((1, 3, 32, 32), np.float32)), image_files(CIFAR[:1])]
    error = _http_error(lambda: client.infer("classifier", both, headers=auth()))
    assert error.status() == "400" and "exactly one input" in error.message()
    error = _http_error(
        lambda: client.infer("classifier", [image_files(CIFAR[:1])], parameters={"top_k": 0}, headers=auth())
    )
    assert error.status() == "400" and "top_k" in error.message()
    raw = httpx.get(f"{server.url}/v2/models/nope", headers=auth())
    assert raw.status_code == 404 and set(raw.json()) == {"error"}
    not_image = _http_error(
        lambda: client.infer("classifier", [image_files([Path(__file__)])], headers=auth())
    )
    assert not_image.status() == "415"


def _grpc_error(call: Callable[[], Any]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_grpc_errors_are_status_codes(server: ServerHandle) -> None:
    client = grpc_client(server)
    assert (
        _grpc_error(lambda: client.get_model_metadata("nope", headers=GRPC_AUTH)).status()
        == "StatusCode.NOT_FOUND"
    )
    assert (
        _grpc_error(lambda: client.get_model_metadata("classifier")).status() == "StatusCode.UNAUTHENTICATED"
    )
    wrong = np.zeros((1, 3, 200, 200), dtype=np.float32)
    error = _grpc_error(
        lambda: client.infer("face_detector", [images_tensor(wrong, grpcclient)], headers=GRPC_AUTH)
    )
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "320x320" in error.message()
    error = _grpc_error(lambda: client.infer("classifier", [], headers=GRPC_AUTH))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    fp64 = grpcclient.InferInput("images", [1, 3, 32, 32], "FP64")
    fp64.set_data_from_numpy(np.zeros((1, 3, 32, 32)))
    error = _grpc_error(lambda: client.infer("classifier", [fp64], headers=GRPC_AUTH))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "FP32" in error.message()


def test_grpc_calls_are_counted_in_the_metrics(server: ServerHandle) -> None:
    before = server.metric(
        "polynl_requests_total", {"endpoint": "/inference.GRPCInferenceService/ModelInfer"}, auth()
    )
    grpc_client(server).infer("classifier", [image_files(CIFAR[:1], grpcclient)], headers=GRPC_AUTH)
    after = server.metric(
        "polynl_requests_total", {"endpoint": "/inference.GRPCInferenceService/ModelInfer"}, auth()
    )
    assert after == before + 1


def test_deadline_parameter_answers_504_and_deadline_exceeded(slow_server: ServerHandle) -> None:
    tensor = np.zeros((1, 3, 32, 32), dtype=np.float32)
    error = _http_error(
        lambda: http_client(slow_server).infer("classifier", [images_tensor(tensor)], timeout=50_000)
    )
    assert error.status() == "504"
    error = _grpc_error(
        lambda: grpc_client(slow_server).infer(
            "classifier", [images_tensor(tensor, grpcclient)], timeout=50_000
        )
    )
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED"


def test_full_queue_answers_resource_exhausted_with_retry_info(slow_server: ServerHandle) -> None:
    array = np.zeros((1, 3, 32, 32), dtype=np.float32)
    request = service_pb2.ModelInferRequest(model_name="classifier")
    request.inputs.add(name="images", datatype="FP32", shape=[1, 3, 32, 32])
    request.raw_input_contents.append(array.tobytes())

    async def burst() -> list[grpc.aio.AioRpcError | service_pb2.ModelInferResponse]:
        async with grpc.aio.insecure_channel(slow_server.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            calls = [stub.ModelInfer(request, timeout=30) for _ in range(6)]
            return list(await asyncio.gather(*calls, return_exceptions=True))

    answers = asyncio.run(burst())
    refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert refused and all(a.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for a in refused)
    assert any(isinstance(a, service_pb2.ModelInferResponse) for a in answers)
    trailing = dict(refused[0].trailing_metadata() or ())
    assert trailing["retry-after"] == "1"
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry) and retry.retry_delay.seconds == 1
    # The same overload over REST: 503 with Retry-After, in the protocol's error shape.

    async def rest_burst() -> list[httpx.Response]:
        body = {
            "inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0] * 3072}]
        }
        async with slow_server.async_client() as client:
            return list(
                await asyncio.gather(
                    *(client.post("/v2/models/classifier/infer", json=body) for _ in range(6))
                )
            )

    responses = asyncio.run(rest_burst())
    busy = [r for r in responses if r.status_code == 503]
    assert busy and busy[0].headers["Retry-After"] == "1" and "error" in busy[0].json()


def test_async_clients_share_batches_with_post_classify(server: ServerHandle) -> None:
    """grpc.aio and /classify requests of the same model land in the same batcher."""
    before = server.metric("polynl_batch_size_count", {"model": "classifier"}, auth())

    async def mixed() -> None:
        client = grpcaio.InferenceServerClient(server.grpc_url)
        try:
            calls = [
                client.infer("classifier", [image_files(CIFAR[i : i + 1], grpcclient)], headers=GRPC_AUTH)
                for i in range(8)
            ]
            async with server.async_client(headers=auth()) as http:
                posts = [http.post("/classify", files={"file": (p.name, p.read_bytes())}) for p in CIFAR[:8]]
                results = await asyncio.gather(*calls, *posts)
        finally:
            await client.close()
        assert all(not isinstance(r, httpx.Response) or r.status_code == 200 for r in results)

    asyncio.run(mixed())
    calls = server.metric("polynl_batch_size_count", {"model": "classifier"}, auth()) - before
    assert 1 <= calls < 16


# --- the load tester's protocol targets ----------------------------------------------------------
@pytest.mark.parametrize(("protocol", "way_in"), [("oip-http", "bytes"), ("oip-grpc", "tensor")])
def test_load_tester_drives_the_protocol_through_tritonclient(
    server: ServerHandle, model_repository: Path, tmp_path: Path, protocol: str, way_in: str
) -> None:
    import json

    from bench.loadtest.cli import main

    out = tmp_path / "report.json"
    argv = [
        "--url", server.url, "--protocol", protocol, "--grpc-address", server.grpc_url,
        "--endpoint", "classifier", "--oip-input", way_in, "--repository", str(model_repository),
        "--images", str(SAMPLES), "--max-images", "4", "--requests", "24", "--concurrency", "4",
        "--api-key", KEY, "--param", "top_k=2", "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    summary = report["points"][0]["summary"]
    assert summary["ok"] == 24 and summary["by_status"] == {"200": 24}
    assert report["protocol"] == f"{protocol} ({way_in})"
    assert summary["server_batch_sizes"][0]["labels"] == {"model": "classifier"}

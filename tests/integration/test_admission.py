"""Admission control against a real server: the per-worker limit on inference requests in flight.

The server admits 2 inference requests at a time and each inference takes 2 s (one image per
batch), so two slow requests hold the worker full for a while; what arrives meanwhile must be
refused at once, before its body is read, while health and metadata keep answering.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
import httpx
import image_cases
import numpy as np
import pytest
from conftest import ServerHandle
from tritonclient.grpc import service_pb2, service_pb2_grpc

LIMIT = 2
SLOW = {
    "POLYNL_MAX_INFLIGHT_REQUESTS": str(LIMIT),
    "POLYNL_INFERENCE_DELAY_MS": "2000",
    "POLYNL_MAX_BATCH_SIZE": "1",
    "POLYNL_MAX_WAIT_MS": "0",
    "POLYNL_QUEUE_SIZE": "16",
    "POLYNL_RETRY_AFTER_S": "3",
}
IMAGE = image_cases.jpeg(32, 32)
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerHandle]) -> ServerHandle:
    return start_server(SLOW)


def classify(server: ServerHandle) -> httpx.Response:
    with server.client() as client:
        return client.post("/classify", content=IMAGE, headers={"content-type": "image/jpeg"})


@contextmanager
def worker_full(server: ServerHandle) -> Iterator[list[httpx.Response]]:
    """``LIMIT`` slow classify requests in flight for the duration of the block; their
    answers are in the yielded list once it ends."""
    answers: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: answers.append(classify(server))) for _ in range(LIMIT)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while server.metric("polynl_inflight_requests") < LIMIT:
        assert time.monotonic() < deadline, "the slow requests never got in flight"
        time.sleep(0.02)
    try:
        yield answers
    finally:
        for thread in threads:
            thread.join(30)


def raw_request_without_body(server: ServerHandle, path: str, declared_length: int) -> tuple[bytes, bool]:
    """Send only the request head of a POST that declares ``declared_length`` body bytes;
    return the whole answer and whether the server then closed the connection."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {declared_length}\r\nX-Request-ID: admission-test-1\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head.encode())
        received = b""
        closed = False
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break  # the server kept the connection open (and waits for the body)
            if not chunk:
                closed = True
                break
            received += chunk
    return received, closed


def test_over_the_limit_answers_503_with_retry_after_before_reading_the_body(server: ServerHandle) -> None:
    refused_before = server.metric("polynl_admission_refused_total", {"endpoint": "/classify"})
    with worker_full(server) as answers:
        started = time.perf_counter()
        # The head promises 10 MB that never come: only an answer that does not read the
        # body can arrive at all.
        answer, closed = raw_request_without_body(server, "/classify", 10_000_000)
        elapsed = time.perf_counter() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert lines[0].startswith("HTTP/1.1 503"), lines[0]
    assert headers["retry-after"] == "3"
    assert headers["connection"] == "close" and closed
    assert headers["x-request-id"] == "admission-test-1"
    assert json.loads(body) == {
        "error": "overloaded",
        "message": json.loads(body)["message"],
        "request_id": "admission-test-1",
    }
    assert "in flight" in json.loads(body)["message"]
    assert elapsed < 2.0  # at once, not after the slow requests
    # The admitted requests were not disturbed.
    assert [r.status_code for r in answers] == [200] * LIMIT
    assert server.metric("polynl_admission_refused_total", {"endpoint": "/classify"}) == refused_before + 1
    assert server.metric("polynl_requests_total", {"endpoint": "/classify", "status": "503"}) >= 1
    assert server.metric("polynl_inflight_requests") == 0


def test_health_metrics_and_metadata_are_never_refused(server: ServerHandle) -> None:
    with worker_full(server), server.client(timeout=5) as client:
        refused = client.post("/detect-faces", content=IMAGE, headers={"content-type": "image/jpeg"})
        assert refused.status_code == 503 and refused.json()["error"] == "overloaded"
        for path in (
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/models",
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/classifier",
            "/openapi.json",
            "/demo",
        ):
            started = time.perf_counter()
            response = client.get(path)
            assert response.status_code == 200, (path, response.status_code)
            assert time.perf_counter() - started < 1.0, path


def test_under_the_limit_every_request_is_answered_200(server: ServerHandle) -> None:
    refused_before = server.metric("polynl_admission_refused_total")

    async def two() -> list[httpx.Response]:
        async with server.async_client() as client:
            post = client.post("/classify", content=IMAGE, headers={"content-type": "image/jpeg"})
            again = client.post("/classify", content=IMAGE, headers={"content-type": "image/jpeg"})
            return list(await asyncio.gather(post, again))

    assert [r.status_code for r in asyncio.run(two())] == [200] * LIMIT
    assert server.metric("polynl_admission_refused_total") == refused_before


def test_open_inference_protocol_shares_the_limit_over_rest_and_grpc(server: ServerHandle) -> None:
    array = np.zeros((1, 3, 32, 32), dtype=np.float32)
    request = service_pb2.ModelInferRequest(model_name="classifier")
    request.inputs.add(name="images", datatype="FP32", shape=[1, 3, 32, 32])
    request.raw_input_contents.append(array.tobytes())
    with worker_full(server), server.client(timeout=5) as client:
        rest = client.post(
            "/v2/models/classifier/versions/1/infer",
            json={
                "inputs": [
                    {"name": "images", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0] * 3072}
                ]
            },
        )
        with grpc.insecure_channel(server.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(request, timeout=5)
            live = stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=5)
    assert rest.status_code == 503 and rest.headers["retry-after"] == "3"
    assert set(rest.json()) == {"error"}  # the protocol's error shape
    error = refused.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(error.trailing_metadata() or ())["retry-after"] == "3"
    assert live.live
    assert server.metric("polynl_admission_refused_total", {"endpoint": GRPC_INFER}) >= 1
    assert (
        server.metric(
            "polynl_admission_refused_total", {"endpoint": "/v2/models/{name}/versions/{version}/infer"}
        )
        >= 1
    )
    # gRPC counts in the same limit: admitted, it holds a place until it is answered.
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelInfer(request, timeout=30).model_name == "classifier"
    assert server.metric("polynl_inflight_requests") == 0


def test_refusals_are_summarised_in_the_log_not_one_line_each(server: ServerHandle) -> None:
    with worker_full(server):
        for _ in range(5):
            assert classify(server).status_code == 503
    log = server.log()
    assert "overloaded: refused" in log
    # No access line per refusal at the default level (they are DEBUG).
    assert "/classify -> 503" not in log


def test_limit_zero_admits_everything(start_server: Callable[..., ServerHandle]) -> None:
    server = start_server({**SLOW, "POLYNL_MAX_INFLIGHT_REQUESTS": "0", "POLYNL_INFERENCE_DELAY_MS": "300"})

    async def burst() -> list[httpx.Response]:
        async with server.async_client() as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post("/classify", content=IMAGE, headers={"content-type": "image/jpeg"})
                        for _ in range(3 * LIMIT)
                    )
                )
            )

    assert [r.status_code for r in asyncio.run(burst())] == [200] * 3 * LIMIT
    assert server.metric("polynl_admission_refused_total") == 0
    assert server.metric("polynl_admission_limit") == 0

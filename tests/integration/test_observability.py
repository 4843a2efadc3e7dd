"""Traces, CORS, JSON access logs and the process/readiness metrics, against real servers.

- Traces: the real app in-process (lifespan started by Starlette's TestClient, real models and
  ONNX Runtime), with the OpenTelemetry SDK's in-memory exporter; the span tree of a request
  that carries a W3C ``traceparent`` is checked, and the batch's inference span is linked to
  every request in the batch.
- CORS, logs, metrics: ``python -m service`` on a loopback port.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import SAMPLES, ServerHandle, parse_metric

from service import tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
ORIGIN = "http://demo.example.test"


@pytest.fixture
def spans(model_repository: Path) -> Iterator[tuple[Any, Any]]:
    sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="the tracing extra is not installed")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from starlette.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(
        model_repository=model_repository,
        intra_op_threads=1,
        models={"classifier": {"max_batch_size": 4, "max_wait_ms": 300}},
    )
    app = create_app(settings)
    tracing.configure(None, provider=provider)  # after create_app, before the lifespan loads models
    try:
        with TestClient(app) as client:
            yield client, exporter
    finally:
        tracing.disable()


def _by_name(finished: list[Any], name: str) -> list[Any]:
    return [span for span in finished if span.name == name]


def test_a_request_is_one_trace_continuing_the_callers_with_a_span_per_step(spans: tuple[Any, Any]) -> None:
    client, exporter = spans
    response = client.post(
        "/classify",
        files={"file": ("ship.png", (SAMPLES / "cifar_ship.png").read_bytes())},
        headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "X-Request-ID": "trace-test-1"},
    )
    assert response.status_code == 200, response.text
    finished = exporter.get_finished_spans()
    [server] = [s for s in finished if s.attributes.get("polynl.request_id") == "trace-test-1"]
    assert server.name == "POST /classify"
    assert f"{server.context.trace_id:032x}" == TRACE_ID  # the caller's trace goes on
    assert f"{server.parent.span_id:016x}" == PARENT_ID
    assert server.attributes["http.route"] == "/classify"
    assert server.attributes["http.response.status_code"] == 200
    children = [s for s in finished if s.parent is not None and s.parent.span_id == server.context.span_id]
    assert sorted(s.name for s in children) == ["decode", "inference", "postprocess", "queue_wait"]
    by_name = {s.name: s for s in children}
    assert by_name["inference"].attributes["polynl.model"] == "classifier"
    assert by_name["queue_wait"].end_time <= by_name["inference"].start_time
    assert by_name["decode"].end_time <= by_name["queue_wait"].end_time
    assert by_name["inference"].end_time <= by_name["postprocess"].start_time
    assert (
        server.start_time <= by_name["decode"].start_time
        and by_name["postprocess"].end_time <= server.end_time
    )


def test_the_batch_inference_span_links_every_request_in_the_batch(spans: tuple[Any, Any]) -> None:
    client, exporter = spans
    photo = (SAMPLES / "cifar_cat.png").read_bytes()
    statuses: list[int] = []

    def send(index: int) -> None:
        response = client.post(
            "/classify", files={"file": ("cat.png", photo)}, headers={"X-Request-ID": f"batch-{index}"}
        )
        statuses.append(response.status_code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200, 200, 200]
    finished = exporter.get_finished_spans()
    servers = {
        s.context.span_id: s
        for s in finished
        if str(s.attributes.get("polynl.request_id", "")).startswith("batch-")
    }
    inferences = [s for s in _by_name(finished, "inference") if s.parent.span_id in servers]
    assert len(inferences) == 3
    batched = [s for s in inferences if s.attributes["polynl.batch_size"] > 1]
    assert batched, "the three requests never shared a batch (max_wait_ms 300)"
    for span in batched:
        linked = {link.context.span_id for link in span.links}
        assert span.parent.span_id in linked and len(linked) == span.attributes["polynl.batch_size"]
        assert linked <= set(servers)


def test_tracing_is_off_and_costs_nothing_by_default() -> None:
    assert not tracing.wanted(None, environ={})
    assert tracing.wanted(None, environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert not tracing.wanted(None, environ={"OTEL_TRACES_EXPORTER": "none"})
    assert tracing.batch_tracer("classifier") is None
    with tracing.request_span("GET", "/healthz", [], "id") as span:
        assert span is None


@pytest.fixture(scope="module")
def observed(start_server) -> ServerHandle:  # type: ignore[no-untyped-def]
    return start_server({"POLYNL_CORS_ORIGINS": ORIGIN, "POLYNL_LOG_FORMAT": "json"})


def test_cors_preflight_and_answers_for_an_allowed_origin_only(observed: ServerHandle) -> None:
    with observed.client() as client:
        preflight = client.options(
            "/classify",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        other = client.options(
            "/classify", headers={"Origin": "http://elsewhere.test", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in other.headers
        answer = client.post(
            "/classify",
            files={"file": ("ship.png", (SAMPLES / "cifar_ship.png").read_bytes())},
            headers={"Origin": ORIGIN},
        )
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()


def test_cors_is_off_unless_configured(start_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerHandle = start_server()
    with server.client() as client:
        response = client.get("/healthz", headers={"Origin": ORIGIN})
        assert "access-control-allow-origin" not in response.headers


def test_json_access_log_lines_carry_request_id_model_status_and_timing(observed: ServerHandle) -> None:
    with observed.client() as client:
        response = client.post(
            "/detect-faces",
            files={"file": ("a.jpg", (SAMPLES / "face_astronaut.jpg").read_bytes())},
            headers={"X-Request-ID": "json-log-1"},
        )
        assert response.status_code == 200
        assert client.get("/nowhere", headers={"X-Request-ID": "json-log-2"}).status_code == 404
    lines = [json.loads(line) for line in observed.log().splitlines() if line.startswith("{")]
    assert lines, observed.log()[-2000:]
    [access] = [line for line in lines if line.get("request_id") == "json-log-1" and "status" in line]
    assert access["status"] == 200 and access["method"] == "POST" and access["endpoint"] == "/detect-faces"
    assert access["model"] == "face_detector" and access["level"] == "INFO"
    assert set(access["timing"]) == {"decode_ms", "preprocess_ms", "queue_ms", "inference_ms", "total_ms"}
    assert access["duration_ms"] > 0 and access["time"].endswith("+00:00")
    [missing] = [line for line in lines if line.get("request_id") == "json-log-2" and "status" in line]
    assert missing["status"] == 404 and "model" not in missing


def test_process_readiness_and_build_metrics(observed: ServerHandle) -> None:
    with observed.client() as client:
        text = client.get("/metrics").text
    assert parse_metric(text, "process_resident_memory_bytes") > 1e6
    assert parse_metric(text, "process_open_fds") > 0
    assert parse_metric(text, "polynl_model_ready", {"model": "classifier"}) == 1
    assert parse_metric(text, "polynl_queue_capacity", {"model": "face_detector"}) >= 1
    assert parse_metric(text, "polynl_max_batch_size", {"model": "classifier"}) >= 1
    info = [line for line in text.splitlines() if line.startswith("polynl_build_info{")]
    assert (
        len(info) == 1
        and 'models="classifier,face_detector"' in info[0]
        and "CPUExecutionProvider" in info[0]
    )


def test_worker_process_metrics_are_summed(start_server) -> None:  # type: ignore[no-untyped-def]
    single: ServerHandle = start_server({"POLYNL_WORKERS": "1"})
    double: ServerHandle = start_server({"POLYNL_WORKERS": "2"})
    with single.client() as a:
        one = a.get("/metrics").text
    capacity = parse_metric(one, "polynl_queue_capacity", {"model": "classifier"})
    # /readyz answered from one worker; the other may still be loading: wait until both report.
    deadline = time.monotonic() + 60
    with double.client() as b:
        while True:
            two = b.get("/metrics").text
            if parse_metric(two, "polynl_queue_capacity", {"model": "classifier"}) == 2 * capacity:
                break
            assert time.monotonic() < deadline, "the second worker never reported its queue"
            time.sleep(0.5)
    # each worker loads its own models: the sum of two is well above one process's memory
    rss_one = parse_metric(one, "process_resident_memory_bytes")
    assert parse_metric(two, "process_resident_memory_bytes") > 1.5 * rss_one
    assert parse_metric(two, "polynl_model_ready", {"model": "face_detector"}) == 1
    assert httpx.get(f"{double.url}/readyz").status_code == 200

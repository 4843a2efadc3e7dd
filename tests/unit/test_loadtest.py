"""The load tester (bench.loadtest) against a tiny real server on 127.0.0.1.

The server is a minimal FastAPI app under a real uvicorn: ``/classify`` answers after a
fixed service time, one request at a time (so its capacity is known), 503 for a marked
payload, and exposes a Prometheus batch-size histogram on ``/metrics``. A few seconds in all.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest

from bench.loadtest.cli import main
from bench.loadtest.metrics import histogram_deltas
from bench.loadtest.runner import LoadConfig, Payload, poisson_arrivals, run_load
from bench.loadtest.stats import RequestRecord, percentile, summarize
from bench.loadtest.targets import TargetError, check_target, is_loopback_host

SERVICE_TIME_S = 0.04  # the tiny server's time per request; it serves one at a time
FAIL_MARK = b"FAIL"


def _tiny_app() -> FastAPI:
    app = FastAPI()
    registry = CollectorRegistry()
    batch_size = Histogram(
        "polynl_batch_size", "requests per inference call", ["model"], buckets=(1, 2, 4, 8), registry=registry
    )
    lock = asyncio.Lock()

    @app.post("/classify")
    async def classify(request: Request) -> Response:
        body = await request.body()
        if body.startswith(FAIL_MARK):
            return Response(status_code=503, headers={"Retry-After": "1"})
        async with lock:  # a single worker: capacity is 1 / SERVICE_TIME_S requests per second
            await asyncio.sleep(SERVICE_TIME_S)
        batch_size.labels(model="classifier").observe(1)
        return Response(content=b'{"ok": true}', media_type="application/json")

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    port = _free_port()
    config = uvicorn.Config(_tiny_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("tiny server did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"img{i}.jpg").write_bytes(b"\xff\xd8\xff" + bytes([i]) * 64)
    return folder


GOOD = Payload(b"\xff\xd8\xffgood", "image/jpeg", "good.jpg")
BAD = Payload(FAIL_MARK + b"bad", "image/jpeg", "bad.jpg")


def test_percentile_matches_numpy_linear_definition() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 10, 101, 1000):
        values = sorted(rng.exponential(size=n).tolist())
        for q in (0, 1, 50, 90, 95, 99, 99.9, 100):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_percentile_of_hand_computed_case() -> None:
    values = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(values, 50) == 30.0
    assert percentile(values, 90) == pytest.approx(46.0)  # rank 3.6: 40 + 0.6 * 10
    assert percentile(values, 100) == 50.0
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_summary_counts_errors_by_status_and_excludes_them_from_latency() -> None:
    records = [
        RequestRecord(0.0, 0.010, "200"),
        RequestRecord(0.0, 0.020, "200"),
        RequestRecord(0.0, 5.0, "503"),
        RequestRecord(0.5, 1.0, "timeout"),
    ]
    summary = summarize(records, scheduled=4)
    assert summary["by_status"] == {"200": 2, "503": 1, "timeout": 1}
    assert (summary["ok"], summary["errors"], summary["completed"]) == (2, 2, 4)
    assert summary["latency_ms"]["max"] == pytest.approx(20.0)  # the slow 503 is not in it
    assert summary["latency_all_ms"]["max"] == pytest.approx(5000.0)
    assert summary["throughput_rps"] == pytest.approx(2 / 5.0)


def test_steady_throughput_leaves_out_the_closed_loop_ramp_down() -> None:
    # Sent over [0, 2] s; answers at 0.5, 1.0, 1.5, 2.0 inside the window, two drain later.
    records = [RequestRecord(t, t + 0.5, "200") for t in (0.0, 0.5, 1.0, 1.5)]
    records += [RequestRecord(2.0, 4.0, "200"), RequestRecord(2.0, 6.0, "200")]
    summary = summarize(records, scheduled=6)
    assert summary["steady_throughput_rps"] == pytest.approx(4 / 2.0)
    assert summary["throughput_rps"] == pytest.approx(6 / 6.0)


def test_poisson_arrivals_have_the_requested_rate_and_are_reproducible() -> None:
    arrivals = poisson_arrivals(rate=100.0, requests=None, duration_s=50.0, seed=1)
    assert abs(len(arrivals) - 5000) < 4 * 5000**0.5
    gaps = np.diff([0.0, *arrivals])
    assert gaps.mean() == pytest.approx(0.01, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: CV = 1
    assert arrivals == poisson_arrivals(rate=100.0, requests=None, duration_s=50.0, seed=1)
    assert len(poisson_arrivals(rate=100.0, requests=7, duration_s=50.0, seed=1)) == 7


@pytest.mark.parametrize(
    "host,expected",
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("10.0.0.1", False), ("192.0.2.7", False), ("0.0.0.0", False)],
)  # fmt: skip
def test_loopback_detection(host: str, expected: bool) -> None:
    assert is_loopback_host(host) is expected


def test_non_loopback_target_is_refused_unless_allowed() -> None:
    with pytest.raises(TargetError, match="--allow-remote"):
        check_target("http://192.0.2.7:8000", allow_remote=False)
    assert check_target("http://192.0.2.7:8000/", allow_remote=True) == "http://192.0.2.7:8000"


def test_cli_refuses_remote_url_before_sending(image_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.json"
    code = main(["--url", "http://192.0.2.7:8000", "--images", str(image_dir), "--out", str(out), "--quiet"])
    assert code == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert not out.exists()


def test_open_loop_keeps_sending_on_schedule_and_charges_queueing_to_latency(server_url: str) -> None:
    # Offered 50/s against a server that does 25/s: answers fall further and further behind.
    config = LoadConfig(mode="open", rate=50.0, requests=None, duration_s=0.8, seed=3, timeout_s=10)
    result = run_load(f"{server_url}/classify", [GOOD], config, progress_stream=None)
    summary = summarize(result.records, result.scheduled)
    assert summary["ok"] == summary["scheduled"] == result.scheduled >= 20
    # The sends kept to the Poisson schedule although the server lagged ...
    assert summary["send_lag_ms"]["p99"] < 250  # ms; the backlog it would otherwise hide is ~1 s
    # ... so the queue shows in the latency, measured from the scheduled arrival.
    expected_backlog_s = result.scheduled * SERVICE_TIME_S - 0.8
    assert summary["latency_ms"]["max"] > 1000 * 0.5 * expected_backlog_s
    assert summary["latency_ms"]["max"] > 5 * 1000 * SERVICE_TIME_S


def test_closed_loop_single_client_sees_just_the_service_time(server_url: str) -> None:
    config = LoadConfig(mode="closed", concurrency=1, requests=6, duration_s=None)
    result = run_load(f"{server_url}/classify", [GOOD], config, progress_stream=None)
    summary = summarize(result.records, result.scheduled)
    assert summary["ok"] == 6
    assert 1000 * SERVICE_TIME_S <= summary["latency_ms"]["p50"] < 1000 * SERVICE_TIME_S * 4


def test_closed_loop_stops_at_the_duration_bound(server_url: str) -> None:
    config = LoadConfig(mode="closed", concurrency=2, requests=None, duration_s=0.3)
    started = time.perf_counter()
    result = run_load(f"{server_url}/classify", [GOOD], config, progress_stream=None)
    assert time.perf_counter() - started < 0.3 + 1.0
    assert 0 < result.scheduled < 0.3 / SERVICE_TIME_S + 4


def test_cli_report_is_consistent_and_reads_the_server_batch_histogram(
    server_url: str, image_dir: Path, tmp_path: Path
) -> None:
    (image_dir / "z_fail.jpg").write_bytes(FAIL_MARK + b"x")  # every 4th request gets a 503
    out = tmp_path / "report.json"
    args = ["--url", server_url, "--endpoint", "classify", "--mode", "closed", "--concurrency", "4"]
    code = main([*args, "--requests", "16", "--images", str(image_dir), "--out", str(out), "--quiet"])
    assert code == 0
    report = json.loads(out.read_text())
    summary = report["points"][0]["summary"]
    assert summary["scheduled"] == summary["completed"] == 16
    assert summary["ok"] + summary["errors"] == summary["completed"]
    assert sum(summary["by_status"].values()) == summary["completed"]
    assert summary["by_status"] == {"200": 12, "503": 4}
    latency = summary["latency_ms"]
    ordered = [latency[k] for k in ("min", "p50", "p90", "p95", "p99", "max")]
    assert ordered == sorted(ordered)
    (batch_hist,) = summary["server_batch_sizes"]
    assert batch_hist["count"] == 12 and batch_hist["buckets"]["1"] == 12 and batch_hist["mean"] == 1.0
    assert report["machine"]["logical_cores"] >= 1


def test_cli_sweep_writes_one_point_per_rate_and_a_png(
    server_url: str, image_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "sweep.json"
    args = ["--url", server_url, "--mode", "open", "--sweep", "5,10", "--duration", "0.4", "--quiet"]
    assert main([*args, "--images", str(image_dir), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [p["load"] for p in report["points"]] == [5.0, 10.0]
    png = Path(report["plot"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_histogram_delta_subtracts_the_counts_before_the_run() -> None:
    before = (
        "# TYPE b histogram\n"
        'b_bucket{le="1.0"} 2\nb_bucket{le="4.0"} 3\nb_bucket{le="+Inf"} 3\nb_count 3\nb_sum 5\n'
    )
    after = (
        "# TYPE b histogram\n"
        'b_bucket{le="1.0"} 4\nb_bucket{le="4.0"} 8\nb_bucket{le="+Inf"} 9\nb_count 9\nb_sum 30\n'
    )
    (delta,) = histogram_deltas(before, after, "b")
    assert delta["buckets"] == {"1": 2, "4": 3, "+Inf": 1}
    assert delta["count"] == 6 and delta["sum"] == 25 and delta["mean"] == pytest.approx(25 / 6)

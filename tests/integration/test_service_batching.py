"""Batching, overload, deadlines, disconnects and shutdown against real servers.

Each behaviour gets a server whose settings make it observable on 2 CPU cores: a tiny
queue, one image per batch, or an artificial inference delay (``POLYNL_INFERENCE_DELAY_MS``).
Numbers are read from the server's own ``/metrics``.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import image_cases
import pytest
from conftest import SAMPLES, ServerHandle

CAT = SAMPLES / "cat.jpg"


def classify_files() -> dict[str, tuple[str, bytes]]:
    return {"file": ("cat.jpg", CAT.read_bytes())}


async def fire(
    server: ServerHandle, count: int, path: str = "/classify", **kwargs: object
) -> list[httpx.Response]:
    """``count`` concurrent requests, each on its own connection."""
    limits = httpx.Limits(max_connections=count + 4)
    async with server.async_client(limits=limits) as client:
        return await asyncio.gather(
            *(client.post(path, files=classify_files(), **kwargs) for _ in range(count))
        )  # type: ignore[arg-type]


def batch_calls(server: ServerHandle, model: str = "classifier") -> float:
    return server.metric("polynl_batch_size_count", {"model": model})


def wait_until_idle(server: ServerHandle, quiet_s: float = 0.8, timeout_s: float = 15.0) -> None:
    """Until nothing is queued and no batch has completed for ``quiet_s`` (longer than one
    inference): earlier tests' requests, answered 504 at their deadline, may still be running."""
    give_up = time.monotonic() + timeout_s
    calls, since = batch_calls(server), time.monotonic()
    while time.monotonic() < give_up:
        time.sleep(0.1)
        now_calls = batch_calls(server)
        if now_calls != calls:
            calls, since = now_calls, time.monotonic()
        elif (
            server.metric("polynl_queue_depth", {"model": "classifier"}) == 0
            and time.monotonic() - since >= quiet_s
        ):
            return
    raise AssertionError(f"server still busy after {timeout_s} s")


def test_concurrent_requests_are_served_in_fewer_inference_calls(start_server) -> None:  # type: ignore[no-untyped-def]
    # The delay keeps one batch running while the next fills: the real-load situation.
    server = start_server(
        {"POLYNL_MAX_BATCH_SIZE": "8", "POLYNL_MAX_WAIT_MS": "50", "POLYNL_INFERENCE_DELAY_MS": "100"}
    )
    calls_before = batch_calls(server)
    images_before = server.metric("polynl_batch_size_sum", {"model": "classifier"})
    responses = asyncio.run(fire(server, 24))
    assert [r.status_code for r in responses] == [200] * 24
    calls = batch_calls(server) - calls_before
    assert server.metric("polynl_batch_size_sum", {"model": "classifier"}) - images_before == 24
    assert calls < 24 / 2, f"24 requests took {calls} inference calls"
    assert max(r.json()["timing"]["queue_ms"] for r in responses) > 0


@pytest.fixture(scope="module")
def slow_server(start_server) -> ServerHandle:  # type: ignore[no-untyped-def]
    """One image per batch, 600 ms per inference, room for 2 queued images, 1 s deadline."""
    return start_server(
        {
            "POLYNL_MAX_BATCH_SIZE": "1",
            "POLYNL_MAX_WAIT_MS": "0",
            "POLYNL_QUEUE_SIZE": "2",
            "POLYNL_INFERENCE_DELAY_MS": "600",
            "POLYNL_REQUEST_TIMEOUT_S": "1.0",
            "POLYNL_RETRY_AFTER_S": "2",
        }
    )


def test_full_queue_answers_503_with_retry_after_at_once(slow_server: ServerHandle) -> None:
    started = time.perf_counter()
    responses = asyncio.run(fire(slow_server, 8))
    statuses = sorted(r.status_code for r in responses)
    rejected = [r for r in responses if r.status_code == 503]
    assert statuses.count(200) >= 1, statuses
    assert len(rejected) >= 3, statuses  # 1 running + 2 queued at most
    for response in rejected:
        assert response.headers["retry-after"] == "2"
        assert response.json()["error"] == "overloaded"
    assert set(statuses) <= {200, 503, 504}
    # Refused at once instead of queueing: every 503 came back before the last 200.
    slowest_ok = max(r.elapsed.total_seconds() for r in responses if r.status_code == 200)
    assert max(r.elapsed.total_seconds() for r in rejected) < slowest_ok
    assert time.perf_counter() - started < 10
    assert slow_server.metric("polynl_dropped_total", {"model": "classifier", "reason": "overloaded"}) >= 3


def test_request_past_its_deadline_gets_504_and_is_dropped_before_inference(
    slow_server: ServerHandle,
) -> None:
    # One at a time, 600 ms each, 1 s deadline: the first is served; the other two arrive
    # 0.1 s later, while it runs. The second starts at 0.6 s and is answered 504 at its
    # deadline (1.1 s; its result, at 1.2 s, is dropped); the third is still queued at its
    # deadline, answered 504 and never inferred. (Sent all at once, the three could all be
    # queued before the first is taken, and the third would rightly get 503: the queue holds 2.)
    wait_until_idle(slow_server)  # earlier tests' work must not hold a queue slot
    calls_before = batch_calls(slow_server)
    dropped_before = slow_server.metric("polynl_dropped_total", {"model": "classifier", "reason": "deadline"})

    async def staggered() -> list[httpx.Response]:
        first = asyncio.ensure_future(fire(slow_server, 1))
        await asyncio.sleep(0.1)
        rest = await fire(slow_server, 2)
        return [*(await first), *rest]

    responses = asyncio.run(staggered())
    assert sorted(r.status_code for r in responses) == [200, 504, 504]
    for response in responses:
        if response.status_code == 504:
            assert response.json()["error"] == "deadline_exceeded"
            assert response.elapsed.total_seconds() < 1.0 + 0.5  # at the deadline, not after the queue
    time.sleep(0.8)
    assert batch_calls(slow_server) - calls_before == 2
    dropped = slow_server.metric("polynl_dropped_total", {"model": "classifier", "reason": "deadline"})
    assert dropped - dropped_before == 2
    assert slow_server.metric("polynl_queue_depth", {"model": "classifier"}) == 0


def test_client_that_disconnects_costs_no_inference(slow_server: ServerHandle) -> None:
    wait_until_idle(slow_server)
    calls_before = batch_calls(slow_server)
    cancelled_before = slow_server.metric(
        "polynl_dropped_total", {"model": "classifier", "reason": "cancelled"}
    )

    async def scenario() -> int:
        async with slow_server.async_client() as client, slow_server.async_client(timeout=0.2) as impatient:
            running = asyncio.ensure_future(client.post("/classify", files=classify_files()))
            await asyncio.sleep(0.1)  # the first one is in inference now
            with pytest.raises(httpx.ReadTimeout):
                await impatient.post("/classify", files=classify_files())  # gives up, closes
            return (await running).status_code

    assert asyncio.run(scenario()) == 200
    time.sleep(0.8)
    assert batch_calls(slow_server) - calls_before == 1
    cancelled = slow_server.metric("polynl_dropped_total", {"model": "classifier", "reason": "cancelled"})
    assert cancelled - cancelled_before == 1


def test_healthz_answers_quickly_while_inference_is_busy(slow_server: ServerHandle) -> None:
    async def scenario() -> float:
        async with slow_server.async_client() as client:
            busy = [asyncio.ensure_future(client.post("/classify", files=classify_files())) for _ in range(3)]
            await asyncio.sleep(0.1)
            started = time.perf_counter()
            assert (await client.get("/healthz")).status_code == 200
            elapsed = time.perf_counter() - started
            await asyncio.gather(*busy)
            return elapsed

    assert asyncio.run(scenario()) < 0.2


@pytest.mark.slow
def test_sigterm_answers_accepted_requests_then_exits_zero(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server({"POLYNL_MAX_BATCH_SIZE": "1", "POLYNL_INFERENCE_DELAY_MS": "300"})

    async def scenario() -> list[int]:
        async with server.async_client(limits=httpx.Limits(max_connections=8)) as client:
            pending = [
                asyncio.ensure_future(client.post("/classify", files=classify_files())) for _ in range(4)
            ]
            await asyncio.sleep(0.2)  # accepted and queued
            server.process.send_signal(15)
            return [r.status_code for r in await asyncio.gather(*pending)]

    assert asyncio.run(scenario()) == [200] * 4
    assert server.process.wait(30) == 0
    assert "shutting down" in server.log()


def test_failed_inference_answers_its_batch_500_and_the_next_batches_run(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server({"POLYNL_MAX_BATCH_SIZE": "1", "POLYNL_FAULT_EVERY_N_BATCHES": "2"})
    with server.client() as client:
        statuses = []
        for index in range(4):
            response = client.post(
                "/classify", files=classify_files(), headers={"X-Request-ID": f"fault-{index}"}
            )
            statuses.append(response.status_code)
            if response.status_code == 500:
                assert response.json() == {
                    "error": "inference_failed",
                    "message": "inference failed for this request's batch",
                    "request_id": f"fault-{index}",
                }
        assert statuses == [200, 500, 200, 500]
        assert client.get("/readyz").status_code == 200
    assert "(requests: fault-1)" in server.log()  # the failure is logged with the request id
    server.stop()


# --- limits and access ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def guarded_server(start_server) -> ServerHandle:  # type: ignore[no-untyped-def]
    return start_server(
        {
            "POLYNL_API_KEY": "s3cret-key",
            "POLYNL_PROTECT_METRICS": "true",
            "POLYNL_MAX_UPLOAD_BYTES": "60000",
            "POLYNL_MAX_IMAGE_PIXELS": "1000000",
            "POLYNL_MAX_IMAGES_PER_REQUEST": "2",
        }
    )


AUTH = {"Authorization": "Bearer s3cret-key"}


def test_api_key_is_required_when_configured(guarded_server: ServerHandle) -> None:
    with guarded_server.client() as client:
        files = {"file": ("a.jpg", image_cases.jpeg())}
        missing = client.post("/classify", files=files)
        assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
        assert missing.headers["www-authenticate"] == "Bearer"
        assert (
            client.post("/classify", files=files, headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
        assert (
            client.post("/classify", files=files, headers={"Authorization": "Basic czNjcmV0"}).status_code
            == 401
        )
        assert client.post("/classify", files=files, headers=AUTH).status_code == 200
        assert client.get("/v1/models").status_code == 401
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=AUTH).status_code == 200


def test_upload_over_the_byte_limit_is_413(guarded_server: ServerHandle) -> None:
    big = image_cases.noise_png(200, 200)  # ~120 kB
    assert len(big) > 60000
    with guarded_server.client(headers=AUTH) as client:
        response = client.post("/classify", files={"file": ("big.png", big)})
        assert response.status_code == 413 and response.json()["error"] == "payload_too_large"
        raw = client.post("/classify", content=big, headers={"content-type": "image/png"})
        assert raw.status_code == 413


def test_byte_limit_holds_for_chunked_uploads_without_content_length(guarded_server: ServerHandle) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(100):
            yield b"\x00" * 10000  # 1 MB in total, no Content-Length

    with guarded_server.client(headers=AUTH) as client:
        response = client.post("/classify", content=chunks(), headers={"content-type": "image/png"})
        assert response.status_code == 413
        assert response.json()["error"] == "payload_too_large"
        assert client.get("/healthz").status_code == 200


def test_image_over_the_pixel_limit_is_413(guarded_server: ServerHandle) -> None:
    with guarded_server.client(headers=AUTH) as client:
        response = client.post("/classify", files={"file": ("a.png", image_cases.png_bomb(1001, 1000))})
        assert response.status_code == 413 and response.json()["error"] == "image_too_large"


def test_too_many_images_in_one_request_is_400(guarded_server: ServerHandle) -> None:
    files = [("files", (f"{i}.jpg", image_cases.jpeg(16, 16))) for i in range(3)]
    with guarded_server.client(headers=AUTH) as client:
        response = client.post("/classify", files=files)
        assert response.status_code == 400 and response.json()["error"] == "too_many_images"
        assert client.post("/classify", files=files[:2]).status_code == 200

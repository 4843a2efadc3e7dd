"""Access control and request ids against a real server with an API key.

Fills what ``test_service_batching.py::test_api_key_is_required_when_configured`` leaves
open: the 401 body is the error shape with the request id, a key of the right length but
wrong bytes is refused like any other, and ``X-Request-ID`` is on *every* response (2xx,
401, 404, 405, 413, 415, 422) and in the server's log line for that request, while a
malformed id never reaches the log (it is replaced, so no header or log injection).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import image_cases
import pytest
from conftest import ServerHandle

KEY = "k3y-for-access-tests"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(start_server) -> ServerHandle:  # type: ignore[no-untyped-def]
    return start_server(
        {"POLYNL_API_KEY": KEY, "POLYNL_PROTECT_METRICS": "true", "POLYNL_MAX_UPLOAD_BYTES": "100000"}
    )


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        f"Bearer {KEY[:-1]}X",
        f"Bearer {KEY}x",
        f"bearer{KEY}",
        f"Basic {KEY}",
        "Bearer " + "a" * 4096,
    ],
    ids=["missing", "empty", "same_length_wrong", "longer", "no_space", "basic_scheme", "huge"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/classify"), ("POST", "/detect-faces"), ("GET", "/v1/models"), ("GET", "/metrics")],
)
def test_wrong_or_missing_key_is_a_json_401_with_the_request_id(
    client: httpx.Client, authorization: str | None, method: str, path: str
) -> None:
    headers = {"X-Request-ID": "auth-check-1"}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = client.request(
        method,
        path,
        headers=headers,
        files={"file": ("a.jpg", image_cases.jpeg())} if method == "POST" else None,
    )
    assert response.status_code == 401, response.text
    assert response.json() == {
        "error": "unauthorized",
        "message": "missing or invalid API key",
        "request_id": "auth-check-1",
    }
    assert response.headers["x-request-id"] == "auth-check-1"
    assert response.headers["www-authenticate"] == "Bearer"
    assert KEY not in response.text


def test_health_and_readiness_stay_open_and_the_right_key_opens_the_rest(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics", headers=AUTH).status_code == 200
    assert client.get("/v1/models", headers=AUTH).status_code == 200
    response = client.post("/classify", headers=AUTH, files={"file": ("a.jpg", image_cases.jpeg())})
    assert response.status_code == 200


# (what to send, expected status): one of each kind of answer the edge and the routes give.
ANSWERS = {
    "ok": (
        lambda c, h: c.post("/classify", headers={**h, **AUTH}, content=image_cases.jpeg(), params={}),
        200,
    ),
    "health": (lambda c, h: c.get("/healthz", headers=h), 200),
    "unauthorized": (lambda c, h: c.post("/classify", headers=h, content=image_cases.jpeg()), 401),
    "not_found": (lambda c, h: c.get("/nope", headers=h), 404),
    "method_not_allowed": (lambda c, h: c.delete("/classify", headers=h), 405),
    "payload_too_large": (
        lambda c, h: c.post(
            "/classify",
            headers={**h, **AUTH, "content-type": "image/png"},
            content=image_cases.noise_png(300, 300),
        ),
        413,
    ),
    "unsupported_image": (
        lambda c, h: c.post(
            "/classify", headers={**h, **AUTH, "content-type": "image/png"}, content=b"no image"
        ),
        415,
    ),
    "validation_error": (
        lambda c, h: c.post(
            "/classify", headers={**h, **AUTH}, params={"top_k": 0}, content=image_cases.jpeg()
        ),
        422,
    ),
}


def _with_type(headers: dict[str, str]) -> dict[str, str]:
    return {"content-type": "image/jpeg", **headers}


@pytest.mark.parametrize("answer", list(ANSWERS))
def test_every_answer_echoes_a_well_formed_request_id_and_logs_it(
    client: httpx.Client, server: ServerHandle, answer: str
) -> None:
    send, status = ANSWERS[answer]
    request_id = f"trace.{answer}:0-A_9"
    response = send(client, _with_type({"X-Request-ID": request_id}))
    assert response.status_code == status, response.text
    assert response.headers["x-request-id"] == request_id
    if status >= 400:
        assert response.json()["request_id"] == request_id
    # The server's access line for this request carries the id in its [request id] field.
    lines = [line for line in server.log().splitlines() if f"[{request_id}]" in line]
    assert any(f"-> {status} in" in line for line in lines), lines


@pytest.mark.parametrize("answer", ["ok", "unauthorized", "not_found", "payload_too_large"])
def test_a_malformed_request_id_is_replaced_and_never_reaches_the_log(
    client: httpx.Client, server: ServerHandle, answer: str
) -> None:
    send, status = ANSWERS[answer]
    given = f"evil id {answer} with spaces and /slashes/"
    response = send(client, _with_type({"X-Request-ID": given}))
    assert response.status_code == status
    generated = response.headers["x-request-id"]
    assert generated != given and len(generated) == 32 and generated.isalnum()
    assert given not in server.log()
    assert any(f"[{generated}]" in line for line in server.log().splitlines())


def test_requests_without_an_id_get_distinct_generated_ones(client: httpx.Client) -> None:
    ids = {client.get("/healthz").headers["x-request-id"] for _ in range(20)}
    assert len(ids) == 20

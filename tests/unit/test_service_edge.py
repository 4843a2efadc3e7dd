"""Settings parsing and the HTTP edge (request ids, last-resort 500) on an in-process app."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from service.errors import ServiceOverloaded, install_error_handlers
from service.metrics import Metrics
from service.middleware import EdgeMiddleware, new_request_id
from service.settings import Settings


def test_settings_read_polynl_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYNL_MODEL_REPOSITORY", "/srv/models")
    monkeypatch.setenv("POLYNL_PROVIDERS", "CPUExecutionProvider")
    monkeypatch.setenv("POLYNL_DETECTION_BUCKETS", "320x320, 480x640")
    monkeypatch.setenv("POLYNL_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("POLYNL_API_KEY", "k")
    settings = Settings()
    assert str(settings.model_repository) == "/srv/models"
    assert settings.providers == ["CPUExecutionProvider"]
    assert settings.detection_buckets == [(320, 320), (480, 640)]
    assert settings.max_batch_size == 16
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "k"


def test_settings_defaults_prefer_cuda_then_cpu_and_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POLYNL_PROVIDERS", "POLYNL_API_KEY", "POLYNL_DETECTION_BUCKETS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert settings.api_key is None and settings.detection_buckets is None


@pytest.mark.parametrize("buckets", ["640", "640x", "16x16", "axb"])
def test_bad_buckets_are_rejected_at_start(monkeypatch: pytest.MonkeyPatch, buckets: str) -> None:
    monkeypatch.setenv("POLYNL_DETECTION_BUCKETS", buckets)
    with pytest.raises(ValidationError):
        Settings()


def test_request_ids_are_kept_only_when_safe() -> None:
    assert new_request_id("abc-DEF_1.2:3") == "abc-DEF_1.2:3"
    for bad in (None, "", "has space", "new\nline", "x" * 129, "<script>"):
        generated = new_request_id(bad)
        assert generated != bad and len(generated) == 32


def edge_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(EdgeMiddleware, metrics=Metrics(), max_upload_bytes=100)

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("secret detail in /work/main/service/thing.py")

    @app.get("/busy")
    async def busy() -> None:
        raise ServiceOverloaded("queue full", retry_after_s=3)

    @app.post("/echo")
    async def echo(payload: dict[str, str]) -> dict[str, str]:
        return payload

    return app


def call(method: str, path: str, **kwargs: object) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=edge_app(), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)  # type: ignore[arg-type]

    return asyncio.run(run())


def test_unexpected_exception_is_a_generic_500_without_details() -> None:
    response = call("GET", "/bug", headers={"X-Request-ID": "bug-1"})
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal_error",
        "message": "internal server error",
        "request_id": "bug-1",
    }
    assert response.headers["x-request-id"] == "bug-1"


def test_service_errors_carry_their_headers() -> None:
    response = call("GET", "/busy")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    assert response.json()["error"] == "overloaded"


def test_validation_errors_use_the_error_shape() -> None:
    response = call("POST", "/echo", json={"a": 1})
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_declared_body_over_the_limit_is_refused_before_reading() -> None:
    response = call(
        "POST", "/echo", content=b"{" + b" " * 200 + b"}", headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"

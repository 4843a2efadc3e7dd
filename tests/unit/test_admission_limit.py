"""Admission control's bookkeeping: which requests count, the limit, the quiet log."""

from __future__ import annotations

import logging

import pytest

from service import admission
from service.admission import AdmissionLimit, inference_endpoint
from service.metrics import Metrics


@pytest.mark.parametrize(
    ("method", "path", "endpoint"),
    [
        ("POST", "/classify", "/classify"),
        ("POST", "/detect-faces", "/detect-faces"),
        ("POST", "/v2/models/classifier/infer", "/v2/models/{name}/infer"),
        ("POST", "/v2/models/face_detector/versions/1/infer", "/v2/models/{name}/versions/{version}/infer"),
        ("GET", "/classify", None),
        ("GET", "/healthz", None),
        ("GET", "/metrics", None),
        ("GET", "/v2/health/live", None),
        ("POST", "/v2/repository/index", None),
        ("GET", "/v2/models/classifier", None),
        ("POST", "/v2/models/classifier/infer/extra", None),
        ("POST", "/classify/", None),
    ],
)
def test_only_inference_requests_count(method: str, path: str, endpoint: str | None) -> None:
    assert inference_endpoint(method, path) == endpoint


def test_the_limit_admits_up_to_its_value_and_zero_admits_everything() -> None:
    limit = AdmissionLimit(2, Metrics())
    assert limit.try_enter() and limit.try_enter() and not limit.try_enter()
    limit.leave()
    assert limit.try_enter() and limit.in_flight == 2
    limit.limit = 0
    assert all(limit.try_enter() for _ in range(100))


def test_refusals_log_one_line_per_interval_with_their_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(admission.time, "monotonic", lambda: now[0])
    limit = AdmissionLimit(1, Metrics(), retry_after_s=4)
    with caplog.at_level(logging.WARNING, logger="service.admission"):
        error = limit.refuse("/classify")
        for _ in range(9):
            limit.refuse("/classify")
        now[0] += admission.LOG_INTERVAL_S
        limit.refuse("/classify")
    assert [r.getMessage().split(" since")[0] for r in caplog.records] == [
        "overloaded: refused 1 inference request(s)",
        "overloaded: refused 10 inference request(s)",
    ]
    assert error.status_code == 503 and error.code == "overloaded"
    assert error.headers["Retry-After"] == "4"

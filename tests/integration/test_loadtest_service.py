"""The load tester against the real service (uvicorn, the model repository, sample images).

A few seconds: a short closed-loop run per endpoint, and the report's counts checked
against the service's own ``/metrics`` (every successful single-image request is exactly
one network input in the batch-size histogram, so the histogram's sum must equal the ok count;
the detector's pyramid is off here, as in the benchmarks, or it would add its levels).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.loadtest.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server_url(start_server: Callable[..., Any]) -> str:
    return str(start_server({"POLYNL_MAX_WAIT_MS": "20", "POLYNL_DETECTOR_PYRAMID": ""}).url)


@pytest.mark.parametrize("endpoint,model", [("classify", "classifier"), ("detect-faces", "face_detector")])
def test_loadtest_report_agrees_with_the_service_metrics(
    server_url: str, tmp_path: Path, endpoint: str, model: str
) -> None:
    out = tmp_path / "report.json"
    args = ["--url", server_url, "--endpoint", endpoint, "--concurrency", "4", "--requests", "12"]
    code = main([*args, "--images", str(ROOT / "samples"), "--max-images", "4", "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads(out.read_text())["points"][0]["summary"]
    assert summary["by_status"] == {"200": 12}
    assert summary["scheduled"] == summary["completed"] == summary["ok"] == 12
    latency = summary["latency_ms"]
    assert latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    (hist,) = [h for h in summary["server_batch_sizes"] if h["labels"].get("model") == model]
    assert hist["sum"] == 12  # images inferred during the run, by the server's own count
    assert 1 <= hist["count"] <= 12  # inference calls: concurrent requests may share one


def test_plain_fastapi_alternative_answers_like_the_service(
    server_url: str, model_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The benchmark's alternative serves the same model the same way: same top-5, same numbers."""
    from fastapi.testclient import TestClient

    from bench.alternatives import plain_fastapi

    monkeypatch.setenv("POLYNL_MODEL_REPOSITORY", str(model_repository))
    monkeypatch.setenv("POLYNL_INTRA_OP_THREADS", "1")
    for name in ("cat.jpg", "cifar_ship.png"):
        image = (ROOT / "samples" / name).read_bytes()
        kind = "image/jpeg" if name.endswith(".jpg") else "image/png"
        ours = httpx.post(f"{server_url}/classify", content=image, headers={"content-type": kind}).json()
        with TestClient(plain_fastapi.app) as client:
            theirs = client.post("/classify", files={"file": (name, image, kind)}).json()
        ours_top = [(e["id"], e["probability"]) for e in ours["results"][0]["top_k"]]
        theirs_top = [(e["id"], e["probability"]) for e in theirs["results"][0]["labels"]]
        assert [i for i, _ in theirs_top] == [i for i, _ in ours_top]
        assert [p for _, p in theirs_top] == pytest.approx([p for _, p in ours_top], abs=1e-5)

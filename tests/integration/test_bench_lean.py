"""The lean-path benchmark's parts against real servers on loopback: wrk's multipart uploads
(``bench/wrk``) answered by the service, and the minimal asyncio batcher
(``bench/alternatives/asyncio_batcher.py``) answering like the service.

wrk is Debian's package (``.ci/run`` installs it); without it the wrk test skips, loudly.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.lean import tree_cpu_s
from bench.wrk import run_wrk

ROOT = Path(__file__).resolve().parents[2]
CIFAR = sorted((ROOT / "samples").glob("cifar_*.png"))


@pytest.fixture(scope="module")
def server(start_server: Callable[..., Any]) -> Any:
    return start_server({"POLYNL_DETECTOR_PYRAMID": ""})


@pytest.fixture(scope="module")
def server_url(server: Any) -> str:
    return str(server.url)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is absent: scripts/apt-install.sh wrk")
@pytest.mark.parametrize(
    "endpoint,images", [("classify", CIFAR[:3]), ("detect-faces", [ROOT / "samples" / "face_astronaut.jpg"])]
)
def test_wrk_multipart_uploads_are_all_answered_200(
    server_url: str, endpoint: str, images: list[Path]
) -> None:
    summary = run_wrk(f"{server_url}/{endpoint}", images, connections=2, duration_s=1.0)
    assert summary["requests"] > 0
    assert summary["by_status"] == {"200": summary["requests"]}
    assert summary["ok"] == summary["requests"]
    assert all(count == 0 for count in summary["errors"].values())
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert summary["client_cpu_s"] >= 0.0


def test_server_cpu_of_a_process_tree_grows_with_its_work(server: Any) -> None:
    """The benchmark's /proc accounting: the server's CPU seconds rise while it answers."""
    before = tree_cpu_s(server.process.pid)
    with httpx.Client(timeout=30.0) as client:
        for image in CIFAR * 3:
            client.post(
                f"{server.url}/classify", files={"file": (image.name, image.read_bytes(), "image/png")}
            )
    assert tree_cpu_s(server.process.pid) > before


def test_asyncio_batcher_answers_like_the_service(
    server_url: str, model_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The baseline serves the same model the same way: same top-5, same numbers, same faces."""
    from fastapi.testclient import TestClient

    from bench.alternatives.asyncio_batcher import App

    monkeypatch.setenv("POLYNL_MODEL_REPOSITORY", str(model_repository))
    monkeypatch.setenv("POLYNL_INTRA_OP_THREADS", "1")
    with TestClient(App(max_batch_size=4, max_wait_s=0.002)) as client:
        for name in ("cat.jpg", "cifar_ship.png"):
            image = (ROOT / "samples" / name).read_bytes()
            kind = "image/jpeg" if name.endswith(".jpg") else "image/png"
            ours = httpx.post(f"{server_url}/classify", content=image, headers={"content-type": kind}).json()
            theirs = client.post("/classify", files={"file": (name, image, kind)}).json()
            ours_top = [(e["id"], e["probability"]) for e in ours["results"][0]["top_k"]]
            theirs_top = [(e["id"], e["probability"]) for e in theirs["results"][0]["labels"]]
            assert [i for i, _ in theirs_top] == [i for i, _ in ours_top]
            assert [p for _, p in theirs_top] == pytest.approx([p for _, p in ours_top], abs=1e-5)
        bad = client.post("/classify", files={"file": ("x.png", b"not an image", "image/png")})
        assert bad.status_code == 400

"""Locust users for polynl-serve, for those who prefer Locust's UI and reports.

The project's own load tester (``python -m bench.loadtest``) adds open-loop Poisson arrivals
and the server's batch-size histogram; this file gives the same two endpoints to Locust
(``pip install -e '.[bench]'`` installs it)::

    locust -f bench/locustfile.py --host http://127.0.0.1:8000
    locust -f bench/locustfile.py --host http://127.0.0.1:8000 --headless -u 32 -r 8 -t 60s \\
        ClassifyUser

Images come from ``POLYNL_BENCH_IMAGES`` (default ``samples/``), sent as raw bodies with an
image content type (and ``Authorization: Bearer $POLYNL_API_KEY`` when set). Locust users
are closed-loop (each waits for its answer), so under overload they slow down with the
server: for latency under a fixed arrival rate use ``python -m bench.loadtest --mode open``.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import ClassVar

from locust import HttpUser, constant, task

from bench.loadtest.targets import load_payloads

IMAGES = load_payloads(Path(os.environ.get("POLYNL_BENCH_IMAGES", "samples")))
API_KEY = os.environ.get("POLYNL_API_KEY")


class _ImageUser(HttpUser):
    abstract = True
    wait_time = constant(0)  # back-to-back requests, like the load tester's closed loop
    path = "/classify"
    params: ClassVar[dict[str, str]] = {}

    def on_start(self) -> None:
        self._images = itertools.cycle(IMAGES)

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"content-type": content_type}
        if API_KEY:
            headers["authorization"] = f"Bearer {API_KEY}"
        return headers

    def _post(self) -> None:
        payload = next(self._images)
        with self.client.post(
            self.path,
            params=self.params,
            data=payload.data,
            headers=self._headers(payload.content_type),
            name=self.path,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")


class ClassifyUser(_ImageUser):
    """POST /classify with one sample image per request."""

    path = "/classify"
    params: ClassVar[dict[str, str]] = {"top_k": "5"}

    @task
    def classify(self) -> None:
        self._post()


class DetectFacesUser(_ImageUser):
    """POST /detect-faces with one sample image per request."""

    path = "/detect-faces"
    params: ClassVar[dict[str, str]] = {"score_threshold": "0.5"}

    @task
    def detect_faces(self) -> None:
        self._post()

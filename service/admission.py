"""Admission control: a per-worker limit on inference requests in flight, enforced at the door.

The first step of the data path, before any byte of a request body is read. Without it an
overloaded worker takes in every request it is sent and spends its event loop on reading and
parsing bodies (multipart, JSON tensors) of requests that then wait seconds for the batcher,
or that the batcher refuses once it has them: accepted requests queue without bound before
they reach the bounded batch queue, and ``/healthz`` waits behind them.

:class:`AdmissionLimit` counts the inference requests this worker has admitted and not yet
answered, over both protocols: :class:`AdmissionMiddleware` (HTTP: ``POST /classify``,
``POST /detect-faces``, the Open Inference Protocol's ``POST /v2/models/.../infer``) and the
gRPC ``ModelInfer`` (``service.oip.grpc_server``). Over ``POLYNL_MAX_INFLIGHT_REQUESTS`` a
request is refused at once:

- HTTP: 503 ``overloaded`` with ``Retry-After`` in the service's error shape (the Open
  Inference Protocol's ``{"error": ...}`` under ``/v2``), and ``Connection: close``: the body
  is never read, so the connection cannot carry another request;
- gRPC: RESOURCE_EXHAUSTED with a ``retry-after`` trailer and ``google.rpc.RetryInfo``
  (the same mapping as the batcher's full queue, ``service.oip.errors``).

Everything else (health, readiness, metrics, model metadata, docs, the demo page) is never
counted nor refused. A refusal is counted in ``polynl_requests`` (status 503) and
``polynl_admission_refused_total``; its access line is DEBUG, and one WARNING line at most
every :data:`LOG_INTERVAL_S` says how many were refused since the last one, so an overload
does not flood the log. ``polynl_inflight_requests`` and ``polynl_admission_limit`` let alerts
compare the two.
"""

from __future__ import annotations

import json
import logging
import re
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import OIP_PREFIX, ServiceOverloaded, error_body
from service.metrics import Metrics

logger = logging.getLogger("service.admission")

LOG_INTERVAL_S = 10.0

# POST paths that run inference, with the endpoint label polynl_requests uses for them.
_INFERENCE_PATHS: dict[str, str] = {"/classify": "/classify", "/detect-faces": "/detect-faces"}
_OIP_INFER = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")


def inference_endpoint(method: str, path: str) -> str | None:
    """The endpoint (route template) of an inference request, None for anything else."""
    if method != "POST":
        return None
    endpoint = _INFERENCE_PATHS.get(path)
    if endpoint is not None:
        return endpoint
    match = _OIP_INFER.match(path)
    if match is None:
        return None
    return "/v2/models/{name}/versions/{version}/infer" if match.group(1) else "/v2/models/{name}/infer"


class AdmissionRefused(ServiceOverloaded):
    """Refused at the door (the limit on requests in flight), not by a model's full queue."""


class AdmissionLimit:
    """This worker's inference requests in flight, the limit on them, and the refusals.

    One per worker process, shared by HTTP and gRPC; only the event loop's thread touches it.
    ``limit`` 0 admits everything (the count and the gauge still run).
    """

    def __init__(self, limit: int, metrics: Metrics, retry_after_s: int = 1) -> None:
        self.in_flight = 0
        self.retry_after_s = retry_after_s
        self._metrics = metrics
        self._gauge = metrics.inflight_requests
        self._refused_since_log = 0
        self._last_log = float("-inf")
        self.limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._limit = value
        self._metrics.admission_limit.set(value)

    def try_enter(self) -> bool:
        """Admit one request (the caller must :meth:`leave` once it is answered), or refuse."""
        if self._limit and self.in_flight >= self._limit:
            return False
        self.in_flight += 1
        self._gauge.inc()
        return True

    def leave(self) -> None:
        self.in_flight -= 1
        self._gauge.dec()

    def refuse(self, endpoint: str) -> AdmissionRefused:
        """Count and (rate-limited) log a refusal; the error to answer with."""
        self._metrics.admission_refused.labels(endpoint).inc()
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_INTERVAL_S:
            logger.warning(
                "overloaded: refused %d inference request(s) since the last report (%d in flight, limit %d)",
                self._refused_since_log,
                self.in_flight,
                self._limit,
            )
            self._refused_since_log = 0
            self._last_log = now
        return AdmissionRefused(
            f"{self.in_flight} inference requests are in flight in this worker (the limit); retry later",
            self.retry_after_s,
        )


class AdmissionMiddleware:
    """Pure ASGI: counts inference requests in, refuses them over the limit before reading
    their body; passes everything else through untouched. Runs inside ``EdgeMiddleware``
    (request id, metrics, access log) and CORS (so a browser can read the 503)."""

    def __init__(self, app: ASGIApp, admission: AdmissionLimit) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        endpoint = inference_endpoint(str(scope.get("method", "")), path)
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        admission = self.admission
        if not admission.try_enter():
            await self._refuse(scope, send, endpoint, path)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            admission.leave()

    async def _refuse(self, scope: Scope, send: Send, endpoint: str, path: str) -> None:
        error = self.admission.refuse(endpoint)
        state = scope.setdefault("state", {})
        # For the edge: the endpoint label (no route matched yet) and a quiet access line.
        state["polynl_endpoint"] = endpoint
        state["polynl_admission_refused"] = True
        if path.startswith(OIP_PREFIX + "/"):
            payload: dict[str, str] = {"error": error.message}
        else:
            payload = error_body(error.code, error.message, str(state.get("request_id", "")))
        body = json.dumps(payload).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", error.headers["Retry-After"].encode()),
            # The body is left unread: the connection cannot carry another request.
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body})

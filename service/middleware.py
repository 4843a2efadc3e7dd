"""The HTTP edge, before any route: request ids, upload limits, metrics, last-resort 500.

A pure ASGI middleware (no ``BaseHTTPMiddleware``, so request bodies stream through and
the route can watch for client disconnects). For every HTTP request it

- takes ``X-Request-ID`` from the request when well-formed, else generates one, puts it in
  ``scope["state"]``, in the logging context and on the response;
- rejects a body over ``max_upload_bytes`` with 413: at once from ``Content-Length``,
  or while the body streams in (chunked uploads), never after buffering it all;
- counts the request by endpoint (route template) and status, times it, and logs one
  access line with the request id (INFO, or DEBUG for successes when
  ``POLYNL_ACCESS_LOG=false``), with its fields structured for ``POLYNL_LOG_FORMAT=json``
  (``service.logs``);
- when tracing is on (``service.tracing``), runs the request inside its server span (the
  caller's W3C ``traceparent`` continued);
- turns an unexpected exception into a generic 500 in the error shape (the stack trace
  goes to the log with the request id, never to the client).
"""

from __future__ import annotations

import contextvars
import json
import logging
import random
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import tracing
from service.errors import REQUEST_ID_HEADER, PayloadTooLarge, error_body
from service.metrics import Metrics

logger = logging.getLogger("service.http")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_REQUEST_ID_HEADER = REQUEST_ID_HEADER.lower().encode()


def new_request_id(given: str | None) -> str:
    """The client's id when it is safe to echo into headers and logs, else a fresh one."""
    if given and _VALID_REQUEST_ID.match(given):
        return given
    # 128 random bits as 32 hex digits, like uuid4().hex, without uuid4's os.urandom call:
    # a system call per request that lets the event loop's thread lose the GIL to a busy
    # worker thread. An id must be unique, not secret (the random module reseeds after fork).
    return f"{random.getrandbits(128):032x}"


class RequestIdLogFilter(logging.Filter):
    """Adds ``request_id`` to every record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _endpoint(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return str(path)
    # Refused before routing (service.admission), which names the endpoint itself.
    return str(scope.get("state", {}).get("polynl_endpoint", "unmatched"))


class EdgeMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, max_upload_bytes: int, access_log: bool = True
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_upload_bytes = max_upload_bytes
        # This line replaces uvicorn's access log (which cannot carry the request id).
        self.success_level = logging.INFO if access_log else logging.DEBUG

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id(_header(scope, _REQUEST_ID_HEADER))
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = {"code": 0}
        try:
            with tracing.request_span(
                str(scope.get("method", "")), str(scope.get("path", "")), scope.get("headers", []), request_id
            ) as span:
                await self._answer(scope, receive, send, request_id, started, status, span)
        finally:
            request_id_var.reset(token)

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        started: float,
        status: dict[str, int],
        span: object,
    ) -> None:
        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != _REQUEST_ID_HEADER]
                headers.append((_REQUEST_ID_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
                # Counted and logged before the answer leaves: whoever holds the answer
                # (a client, a test) finds its log line and metric already there.
                self._record(scope, status["code"], time.perf_counter() - started, span)
            await send(message)

        try:
            too_large = self._declared_too_large(scope)
            if too_large is not None:
                await self._send_error(send_with_id, 413, "payload_too_large", too_large, request_id)
            else:
                await self.app(scope, self._limited(receive), send_with_id)
        except Exception:
            logger.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if status["code"] == 0:
                await self._send_error(
                    send_with_id, 500, "internal_error", "internal server error", request_id
                )
        finally:
            if status["code"] == 0:  # no answer started (the client left, or a bug)
                self._record(scope, 500, time.perf_counter() - started, span)

    def _declared_too_large(self, scope: Scope) -> str | None:
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_upload_bytes:
            return f"request body of {int(length)} bytes is over the {self.max_upload_bytes} byte limit"
        return None

    def _limited(self, receive: Receive) -> Receive:
        """Count body bytes as they arrive; stop at the limit (chunked or lying uploads)."""
        received = 0
        limit = self.max_upload_bytes

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"request body is over the {limit} byte limit")
            return message

        return receive_limited

    async def _send_error(self, send: Send, status: int, code: str, message: str, request_id: str) -> None:
        body = json.dumps(error_body(code, message, request_id)).encode()
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if status == 413:
            # The rest of the body is not read; the connection cannot be reused.
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope: Scope, status: int, seconds: float, span: object = None) -> None:
        endpoint = _endpoint(scope)
        method = str(scope.get("method", ""))
        self.metrics.requests.labels(endpoint, method, str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(seconds)
        tracing.finish_request_span(span, endpoint if endpoint != "unmatched" else None, status)
        state = scope.get("state", {})
        level = self.success_level if status < 400 else logging.INFO if status < 500 else logging.WARNING
        if state.get("polynl_admission_refused"):
            level = logging.DEBUG  # an overload's refusals: summarised by service.admission
        if not logger.isEnabledFor(level):
            return
        access = {
            "method": method,
            "path": scope.get("path"),
            "endpoint": endpoint,
            "status": status,
            "duration_ms": round(seconds * 1000.0, 3),
        }
        model = state.get("polynl_model")
        if model is not None:
            access.update(model=model, timing=state.get("polynl_timing"))
        logger.log(
            level,
            "%s %s -> %d in %.1f ms%s",
            method,
            scope.get("path"),
            status,
            seconds * 1000.0,
            f" ({model})" if model else "",
            extra={"access": access},
        )

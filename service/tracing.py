"""OpenTelemetry traces of the data path, opt-in: a span per request, children per step.

Off by default, and then free: every hook below is a cheap ``if`` on a module-level flag and
OpenTelemetry is not even imported. On when ``POLYNL_OTEL_ENDPOINT`` is set (an OTLP/HTTP
collector, e.g. ``http://127.0.0.1:4318``) or when the standard ``OTEL_TRACES_EXPORTER`` /
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables are
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` and the exporter's other ``OTEL_*``
variables apply as OpenTelemetry defines them). Needs the ``tracing`` extra.

The tree of one request (W3C ``traceparent`` on the request continues the caller's trace):

- ``POST /classify`` (server span, from :mod:`service.middleware`): ``http.request.method``,
  ``http.route``, ``http.response.status_code``, ``polynl.request_id``;
  - ``decode`` per image (bytes -> checked, preprocessed arrays);
  - ``queue_wait`` per network input (enqueue -> its batch starts), from the batcher;
  - ``inference`` per network input: its batch's ONNX Runtime call, with ``polynl.batch_size``
    and a **link to the request span of every input in the same batch**;
  - ``postprocess`` (outputs -> the answer).

The batcher knows nothing of OpenTelemetry: it takes a :class:`BatchTracer` (``capture`` at
submit, ``batch_done`` after the call) when tracing is on, and ``None`` otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

logger = logging.getLogger("service.tracing")

_STANDARD_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)
SERVICE_NAME = "polynl-serve"

_tracer: Any = None  # an opentelemetry Tracer when tracing is on


def enabled() -> bool:
    return _tracer is not None


def wanted(endpoint: str | None, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the settings or the standard OTEL_* variables ask for traces."""
    if endpoint:
        return True
    disabled = environ.get("OTEL_SDK_DISABLED", "").lower() == "true"
    if disabled or environ.get("OTEL_TRACES_EXPORTER") == "none":
        return False
    return any(environ.get(name) for name in _STANDARD_VARIABLES)


def configure(endpoint: str | None, provider: Any = None) -> bool:
    """Switch tracing on for this process (idempotent). ``provider``: a ready TracerProvider
    (tests pass one with an in-memory exporter); else one exporting OTLP/HTTP to ``endpoint``
    or to where the OTEL_* variables point. Returns whether tracing is on."""
    global _tracer
    if provider is None and not wanted(endpoint):
        _tracer = None
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError("tracing needs the 'tracing' extra: pip install '.[tracing]'") from exc
    if provider is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        if endpoint:
            exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
        else:
            exporter = OTLPSpanExporter()
        attributes = {"service.name": os.environ.get("OTEL_SERVICE_NAME", SERVICE_NAME)}
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        logger.info("tracing on: OTLP/HTTP to %s", endpoint or "the OTEL_* endpoint")
    _tracer = provider.get_tracer("polynl-serve")
    return True


def disable() -> None:
    global _tracer
    _tracer = None


@contextlib.contextmanager
def request_span(
    method: str, path: str, headers: Sequence[tuple[bytes, bytes]], request_id: str
) -> Iterator[Any]:
    """The server span of one HTTP request, current for the code that answers it."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    carrier = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
    with _tracer.start_as_current_span(
        f"{method} {path}",
        context=extract(carrier),
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": method, "url.path": path, "polynl.request_id": request_id},
    ) as span:
        yield span


def finish_request_span(span: Any, route: str | None, status: int) -> None:
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    if route:
        span.update_name(f"{span.attributes.get('http.request.method', '')} {route}".strip())
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


@contextlib.contextmanager
def step(name: str, **attributes: Any) -> Iterator[None]:
    """A child span of the current one (``decode``, ``postprocess``); nothing when off."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(name, attributes=attributes):
        yield


class BatchTracer:
    """The batcher's tracing hooks for one model (only built when tracing is on)."""

    def __init__(self, model: str) -> None:
        self.model = model

    def capture(self) -> tuple[Any, int]:
        """At submit, in the request's context: (its span context, enqueue time in ns)."""
        from opentelemetry import trace

        return trace.get_current_span().get_span_context(), time.time_ns()

    def batch_done(self, tokens: Sequence[tuple[Any, int]], started_ns: int, ended_ns: int) -> None:
        """After one batch's call: queue_wait and inference spans for every input in it."""
        tracer = _tracer
        if tracer is None:
            return
        from opentelemetry import trace
        from opentelemetry.trace import Link

        contexts = [context for context, _ in tokens if context.is_valid]
        links = [Link(other) for other in contexts]  # the same for every input of the batch
        attributes = {"polynl.model": self.model, "polynl.batch_size": len(tokens)}
        for context, enqueued_ns in tokens:
            if not context.is_valid:
                continue
            parent = trace.set_span_in_context(trace.NonRecordingSpan(context))
            queue = tracer.start_span(
                "queue_wait", context=parent, start_time=enqueued_ns, attributes=attributes
            )
            queue.end(end_time=max(enqueued_ns, started_ns))
            inference = tracer.start_span(
                "inference", context=parent, start_time=started_ns, attributes=attributes, links=links
            )
            inference.end(end_time=ended_ns)


def batch_tracer(model: str) -> BatchTracer | None:
    """The batcher's hooks when tracing is on, else None (the batcher then does nothing)."""
    return BatchTracer(model) if _tracer is not None else None

"""Service logs: one line per event, with the request id; plain text or JSON lines.

``POLYNL_LOG_FORMAT=text`` (default): ``time LEVEL logger [request-id] message``.
``POLYNL_LOG_FORMAT=json``: one JSON object per line with ``time`` (ISO 8601, UTC), ``level``,
``logger``, ``request_id``, ``message``, and for the access line of each request (written by
:mod:`service.middleware`) ``method``, ``path``, ``endpoint``, ``status``, ``duration_ms``,
and, when a model answered, ``model`` and its ``timing`` (decode, queue, inference, total ms),
so that a log pipeline can filter and aggregate without parsing text. uvicorn's own access
log is replaced by ours (it cannot carry the request id).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from service.middleware import RequestIdLogFilter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
LogFormat = Literal["text", "json"]


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            line.update(access)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), default=str)


def configure_logging(level: str, fmt: LogFormat = "text") -> None:
    """The ``service`` loggers' one handler (stderr), with the request id on every record."""
    service_logger = logging.getLogger("service")
    service_logger.setLevel(level.upper())
    for handler in [h for h in service_logger.handlers if getattr(h, "_polynl", False)]:
        service_logger.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLineFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RequestIdLogFilter())
    handler._polynl = True  # type: ignore[attr-defined]
    service_logger.addHandler(handler)
    service_logger.propagate = False

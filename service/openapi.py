"""The OpenAPI schema at ``/openapi.json``, stating the running server's real limits.

Beside the data path: routes declare static bounds (``top_k <= 1000``) because the models
are loaded after the routes exist. A client, or a schema-driven fuzzer, that trusts the
schema must never be refused a request the schema calls valid, so once the models are
loaded the schema is rebuilt with the bounds the server enforces: ``top_k`` up to the
classifier's label count, ``max_faces`` up to ``POLYNL_MAX_FACES_LIMIT``, ``files`` up to
``POLYNL_MAX_IMAGES_PER_REQUEST``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from polynl_core.tasks import Task
from service.routes.inputs import image_request_body
from service.state import ServiceState


def _query_parameter(schema: dict[str, Any], path: str, name: str) -> dict[str, Any] | None:
    operation = schema.get("paths", {}).get(path, {}).get("post", {})
    for parameter in operation.get("parameters", []):
        if parameter.get("in") == "query" and parameter.get("name") == name:
            value = parameter.get("schema")
            return value if isinstance(value, dict) else None
    return None


def _set_maximum(schema: dict[str, Any], path: str, name: str, maximum: int) -> None:
    parameter = _query_parameter(schema, path, name)
    if parameter is not None:
        parameter["maximum"] = min(int(parameter.get("maximum", maximum)), maximum)


def _set_max_images(schema: dict[str, Any], path: str, max_images: int) -> None:
    operation = schema.get("paths", {}).get(path, {}).get("post", {})
    if "requestBody" in operation:
        operation["requestBody"] = image_request_body(max_images)


def apply_limits(schema: dict[str, Any], state: ServiceState) -> None:
    """Tighten the static bounds in ``schema`` to what this server enforces."""
    settings = state.settings
    # Each classifier checks top_k against its own labels; the schema states the widest bound.
    labels = [len(p.config.labels) for p in state.models if p.task is Task.CLASSIFICATION]
    if labels:
        _set_maximum(schema, "/classify", "top_k", max(labels))
    _set_maximum(schema, "/detect-faces", "max_faces", settings.max_faces_limit)
    for path in ("/classify", "/detect-faces"):
        _set_max_images(schema, path, settings.max_images_per_request)


def install_openapi(app: FastAPI) -> None:
    """Serve the schema with the real limits; cache it only once the models are loaded."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = FastAPI.openapi(app)  # builds and caches the route-declared schema
        state = getattr(app.state, "service", None)
        ready = isinstance(state, ServiceState) and state.ready
        if isinstance(state, ServiceState):
            apply_limits(schema, state)
        if not ready:
            app.openapi_schema = None  # the label count is not known yet: rebuild when ready
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

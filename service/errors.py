"""Every error the service answers with, and the one place where errors become HTTP.

Sits at the edge of the data path: any step (upload reading, batching, inference) raises a
:class:`ServiceError` subclass, and the core's image decoder an
:class:`polynl_core.images.ImageError` whose code :data:`IMAGE_ERROR_STATUS` maps to a status;
:func:`install_error_handlers` turns them, FastAPI's validation errors and Starlette's HTTP
errors into one JSON shape::

    {"error": "<stable code>", "message": "<for humans>", "request_id": "<X-Request-ID>"}

Bodies never carry stack traces or file paths; unexpected exceptions are logged with the
request id and answered with a generic 500 (see ``service.middleware``).

Status choices (documented in the README):
  400 the request carries no usable image (empty body, missing or unknown field, malformed
      multipart, too many images);
  401 missing or wrong API key;
  413 the upload is larger than ``max_upload_bytes``, or the image header declares more
      than ``max_image_pixels`` (decompression bomb: rejected before any pixel is decoded;
      413 because the request is well-formed but larger than this server accepts, and the
      client's fix is the same as for too many bytes: send a smaller image);
  415 the bytes are not an image format we decode, or the content type is not an image;
  422 query values out of range, or an image whose format is recognised but whose pixel
      data cannot be decoded (truncated, corrupt);
  503 queue full or not ready (with ``Retry-After``); 504 deadline passed before inference;
  500 an inference error (only that batch's requests) or a bug.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from polynl_core.images import CorruptImage, EmptyImage, ImageError, ImageTooLarge, UnsupportedImage

logger = logging.getLogger("service.errors")

REQUEST_ID_HEADER = "X-Request-ID"
# Paths of the Open Inference Protocol (service.oip.rest): errors in that protocol's shape.
OIP_PREFIX = "/v2"


class ServiceError(Exception):
    """Base of every error the service answers deliberately."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


# --- 400: no usable image in the request -------------------------------------------------
class BadRequest(ServiceError):
    status_code = 400
    code = "bad_request"


class EmptyBody(BadRequest):
    code = "empty_body"


class MissingImage(BadRequest):
    code = "missing_image"


class UnexpectedField(BadRequest):
    code = "unexpected_field"


class TooManyImages(BadRequest):
    code = "too_many_images"


class MalformedBody(BadRequest):
    code = "malformed_body"


# --- 401 ------------------------------------------------------------------------------
class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str = "missing or invalid API key") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


# --- 413 ------------------------------------------------------------------------------
class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"

    def __init__(self, message: str) -> None:
        # The rest of the body is left unread, so the connection cannot carry another request.
        super().__init__(message, headers={"Connection": "close"})


# --- 400 / 413 / 415 / 422: image content (raised by the core's decoder) ------------------
IMAGE_ERROR_STATUS: dict[str, int] = {
    EmptyImage.code: 400,
    ImageTooLarge.code: 413,
    UnsupportedImage.code: 415,
    CorruptImage.code: 422,
}


class UnsupportedMediaType(ServiceError):
    """The request's content type is not an image (the same answer as undecodable bytes)."""

    status_code = 415
    code = UnsupportedImage.code


# --- 404 / 422: the request names something unknown, or out of range ----------------------
class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class UnknownModel(NotFound):
    code = "unknown_model"


class InvalidParameter(ServiceError):
    status_code = 422
    code = "validation_error"


# --- 5xx: the server's side --------------------------------------------------------------
class ServiceOverloaded(ServiceError):
    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(max(0, retry_after_s))})


class NotReady(ServiceError):
    status_code = 503
    code = "not_ready"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(max(0, retry_after_s))})


class DeadlineExceeded(ServiceError):
    status_code = 504
    code = "deadline_exceeded"


class InferenceFailed(ServiceError):
    status_code = 500
    code = "inference_failed"


class ClientDisconnected(ServiceError):
    """The client went away before its answer; nobody reads the response (nginx's 499)."""

    status_code = 499
    code = "client_disconnected"


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def error_body(code: str, message: str, request_id: str) -> dict[str, str]:
    return {"error": code, "message": message, "request_id": request_id}


def error_response(
    status_code: int, code: str, message: str, request_id: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    all_headers = {REQUEST_ID_HEADER: request_id, **(headers or {})}
    return JSONResponse(error_body(code, message, request_id), status_code=status_code, headers=all_headers)


def _validation_message(errors: list[Any]) -> str:
    """'query.top_k: Input should be less than or equal to 10; ...' without echoing inputs."""
    parts = []
    for error in errors[:5]:
        location = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{location}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _respond(
    request: Request, status_code: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The service's error shape, or under ``/v2`` the Open Inference Protocol's:
    ``{"error": "<message>"}``, where a bad parameter or corrupt image (422) is a 400."""
    request_id = request_id_of(request)
    if request.url.path == OIP_PREFIX or request.url.path.startswith(OIP_PREFIX + "/"):
        status = 400 if status_code == 422 else status_code
        all_headers = {REQUEST_ID_HEADER: request_id, **(headers or {})}
        return JSONResponse({"error": message}, status_code=status, headers=all_headers)
    return error_response(status_code, code, message, request_id, headers)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.status_code >= 500:
        logger.warning("%s: %s", exc.code, exc.message)
    return _respond(request, exc.status_code, exc.code, exc.message, exc.headers)


async def _image_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ImageError)
    status = IMAGE_ERROR_STATUS.get(exc.code, 422)
    return _respond(request, status, exc.code, exc.message)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message = _validation_message(list(exc.errors()))
    return _respond(request, 422, "validation_error", message)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return _respond(request, exc.status_code, code, message, dict(exc.headers or {}))


def install_error_handlers(app: FastAPI) -> None:
    """Map every deliberate error to the one JSON shape (the only place that does so)."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(ImageError, _image_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)

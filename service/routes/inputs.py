"""Request -> uploads -> a model pipeline's outcomes, "unless the client left": shared by
/classify and /detect-faces (each route then only turns the outcomes into its answer).

The first step of the data path on the HTTP side: images come as multipart ``file`` /
``files`` fields or as a raw body with an ``image/*`` (or ``application/octet-stream``)
content type. The content type of a part is not trusted: the decoder sniffs the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import Query, Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import (
    IMAGE_ERROR_STATUS,
    ClientDisconnected,
    EmptyBody,
    MalformedBody,
    MissingImage,
    TooManyImages,
    UnexpectedField,
    UnsupportedMediaType,
    request_id_of,
)
from service.pipelines import FailedImage, Outcome, Upload
from service.registry import AnyPipeline
from service.schemas import ErrorResponse, ImageFailure
from service.settings import Settings
from service.state import ServiceState

T = TypeVar("T")

FILE_FIELDS = ("file", "files")

# Which served model answers: the task's default model and its newest served version unless named.
ModelQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=128,
        description="Model name (a folder of the model repository); default: the task's default model.",
    ),
]
VersionQuery = Annotated[
    int | None, Query(ge=1, description="Model version; default: the newest served version.")
]


def multipart_schema(max_images: int | None = None) -> dict[str, Any]:
    """The multipart body's JSON schema: one ``file``, or 1..``max_images`` ``files``.

    An empty ``files`` list sends nothing on the wire, so it may sit beside ``file``; any
    other combination, or any other field, is refused (400 unexpected_field). Written
    without ``not``/``oneOf`` so that schema-driven generators handle it.
    """
    binary = {"type": "string", "format": "binary", "minLength": 1}  # an empty file is a 400
    several: dict[str, Any] = {"minItems": 1}
    if max_images is not None:
        several["maxItems"] = max_images
    return {
        "type": "object",
        "properties": {"file": binary, "files": {"type": "array", "items": binary}},
        "anyOf": [
            {"required": ["file"], "properties": {"files": {"maxItems": 0}}},
            {"required": ["files"], "maxProperties": 1, "properties": {"files": several}},
        ],
        "additionalProperties": False,
    }


def image_request_body(max_images: int | None = None) -> dict[str, Any]:
    """The request body, documented by hand because the route reads it itself (to enforce
    limits while streaming and to accept both multipart and raw bodies)."""
    raw = {"schema": {"type": "string", "format": "binary", "minLength": 1}}
    return {
        "required": True,
        "description": "One image as multipart field `file`, several as repeated `files` fields, "
        "or one image as the raw body with an image content type.",
        "content": {
            "multipart/form-data": {"schema": multipart_schema(max_images)},
            "image/*": raw,
            "application/octet-stream": raw,
        },
    }


IMAGE_REQUEST_BODY: dict[str, Any] = {"requestBody": image_request_body()}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "No usable image in the request (empty body, missing or unknown field, malformed).",
        401: "Missing or wrong API key (only when one is configured).",
        404: "No served model of this task by the given name, or no such served version.",
        413: "Upload over max_upload_bytes, or image over max_image_pixels.",
        415: "Not an image format the service decodes, or a non-image content type.",
        422: "Query value out of range, or a corrupt/truncated image. (In a request with "
        "several images, an image that cannot be read gets its own error entry in `results`; "
        "the request fails only when none can be read.)",
        500: "Inference failed for the batch holding this request.",
        503: "Overloaded: too many requests in flight (refused before the body is read, "
        "Connection: close) or the model's queue full; or not ready. See Retry-After.",
        504: "The request deadline passed before inference.",
    }.items()
}


async def _read_form(request: Request, settings: Settings) -> list[Upload]:
    try:
        form = await request.form(max_files=settings.max_images_per_request, max_fields=0)
    except StarletteHTTPException as exc:
        detail = str(exc.detail)
        if "Too many files" in detail:
            raise TooManyImages(f"at most {settings.max_images_per_request} images per request") from exc
        if "Too many fields" in detail:
            raise UnexpectedField(
                "only file uploads (with a filename) in the fields 'file' and 'files' are accepted"
            ) from exc
        raise MalformedBody(f"cannot parse the multipart body: {detail}") from exc
    try:
        if set(FILE_FIELDS) <= set(form.keys()):
            raise UnexpectedField("send one image as 'file' or several as 'files', not both")
        uploads = []
        for key, value in form.multi_items():
            if key not in FILE_FIELDS:
                raise UnexpectedField(f"unknown form field {key[:64]!r}; send images as 'file' or 'files'")
            if not isinstance(value, UploadFile):
                raise MissingImage(f"form field {key!r} must be a file upload")
            uploads.append(Upload(await value.read(), value.filename, value.content_type))
    finally:
        await form.close()
    if not uploads:
        raise MissingImage("the form has no 'file' or 'files' field")
    for index, upload in enumerate(uploads):
        # An empty part is a broken request (the schema's minLength), not an unreadable image.
        if not upload.data:
            where = "the image" if len(uploads) == 1 else f"image {index} of the request"
            raise EmptyBody(f"{where} is empty (0 bytes)")
    return uploads


async def read_uploads(request: Request, settings: Settings) -> list[Upload]:
    """The request's images, or a 400/413/415 client error."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        return await _read_form(request, settings)
    if media_type.startswith("image/") or media_type in ("application/octet-stream", ""):
        body = await request.body()  # the edge middleware stops it at max_upload_bytes
        if not body:
            raise EmptyBody("the request has no body; send an image")
        if not media_type:
            raise UnsupportedMediaType("send a Content-Type: multipart/form-data or image/*")
        return [Upload(body, None, media_type)]
    raise UnsupportedMediaType(
        f"content type {media_type[:64]!r} is not accepted; send multipart/form-data or an image/* body"
    )


async def _until_disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read by then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client goes away first, cancel it so it leaves the batch queue."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    if task.cancelled() or not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnected("the client closed the connection")
    return task.result()


def image_failure(failed: FailedImage) -> ImageFailure:
    """An unreadable image's entry in a response's results (same code and status as alone)."""
    error = failed.error
    return ImageFailure(
        index=failed.index,
        filename=failed.upload.filename,
        error=error.code,
        message=error.message,
        status=IMAGE_ERROR_STATUS.get(error.code, 422),
    )


async def run_pipeline(
    request: Request, state: ServiceState, pipeline: AnyPipeline
) -> tuple[list[Outcome], float]:
    """Read the request's images and run them through ``pipeline``: (outcomes, start time).

    The request's time budget (``request_timeout_s``) starts once its body has been read.
    """
    uploads = await read_uploads(request, state.settings)
    started = time.perf_counter()
    deadline = asyncio.get_running_loop().time() + state.settings.request_timeout_s
    state.metrics.images.labels(pipeline.label).inc(len(uploads))
    outcomes = await unless_disconnected(
        request, pipeline.infer(uploads, state.decode_pool, deadline, request_id_of(request))
    )
    return outcomes, started

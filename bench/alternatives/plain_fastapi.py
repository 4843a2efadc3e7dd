"""Alternative (b): a plain FastAPI endpoint that runs ONNX Runtime once per request.

The usual first implementation of a model server: read the upload, decode, preprocess,
``session.run`` on a batch of one, answer, all inside FastAPI's thread pool, no queue and
no batching. Same model, session options and image functions as the service
(``bench.alternatives.common``), so ``bench.service`` measures only the serving strategy.

    POLYNL_MODEL_REPOSITORY=model_repository uvicorn bench.alternatives.plain_fastapi:app --port 8001

Accepts a raw image body or a multipart ``file`` field on ``POST /classify`` and
``POST /detect-faces`` (each when the repository holds that model).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from bench.alternatives.common import Classifier, Detector, repository_path
from polynl_core.images import ImageError
from polynl_core.repository import load_repository


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    models = load_repository(repository_path(), verify=False)
    app.state.classifier = Classifier() if "classifier" in models else None
    app.state.detector = Detector() if "face_detector" in models else None
    yield


app = FastAPI(title="plain FastAPI + ONNX Runtime (no batching)", lifespan=lifespan)


async def _image_bytes(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(422, "missing multipart field 'file'")
        return await upload.read()
    return await request.body()


def _classify(classifier: Classifier, data: bytes, k: int) -> dict[str, Any]:
    x = classifier.prepare(data)[None]
    return classifier.answer(classifier.predict(x)[0], k)


def _detect(detector: Detector, data: bytes) -> dict[str, Any]:
    x, placement = detector.prepare(data)
    outputs = detector.predict(x[None])
    return detector.answer({name: value[0] for name, value in outputs.items()}, placement)


@app.post("/classify")
async def classify(request: Request, top_k: int = 5) -> dict[str, Any]:
    data = await _image_bytes(request)
    try:
        result = await run_in_threadpool(_classify, request.app.state.classifier, data, top_k)
    except ImageError as exc:  # not an image, corrupt, too large: the client's fault
        raise HTTPException(400, str(exc)) from exc
    return {"results": [result]}


@app.post("/detect-faces")
async def detect_faces(request: Request) -> dict[str, Any]:
    data = await _image_bytes(request)
    try:
        result = await run_in_threadpool(_detect, request.app.state.detector, data)
    except ImageError as exc:
        raise HTTPException(400, str(exc)) from exc
    return {"results": [result]}


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}

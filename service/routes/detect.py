"""POST /detect-faces: images -> faces (box, score, 5 landmarks) in original pixels."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from service import tracing
from service.dependencies import StateDep, require_api_key
from service.pipelines import DetectParams, ImageOutcome
from service.routes.inputs import (
    ERROR_RESPONSES,
    IMAGE_REQUEST_BODY,
    ModelQuery,
    VersionQuery,
    image_failure,
    run_pipeline,
)
from service.routes.timing import answered, timing_of
from service.schemas import DetectResponse, ModelRef

router = APIRouter(tags=["face detection"], dependencies=[Depends(require_api_key)])

MAX_FACES = 1000


@router.post(
    "/detect-faces",
    response_model=DetectResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=IMAGE_REQUEST_BODY,
    summary="Detect faces in one or more images",
)
async def detect_faces(
    request: Request,
    state: StateDep,
    score_threshold: Annotated[float, Query(ge=0.0, le=1.0, description="Minimum face score.")] = 0.5,
    nms_iou: Annotated[float, Query(ge=0.0, le=1.0, description="IoU above which NMS drops a box.")] = 0.4,
    max_faces: Annotated[int, Query(ge=1, le=MAX_FACES, description="Most faces returned per image.")] = 100,
    model: ModelQuery = None,
    version: VersionQuery = None,
) -> DetectResponse:
    pipeline = state.detector(model, version)
    params = DetectParams(score_threshold=score_threshold, nms_iou=nms_iou, max_faces=max_faces)
    pipeline.check(params)
    outcomes, started = await run_pipeline(request, state, pipeline)
    # NMS runs in the decode pool too: the event loop only moves bytes.
    with tracing.step("postprocess", **{"polynl.model": pipeline.label}):
        results = await asyncio.get_running_loop().run_in_executor(
            state.decode_pool,
            lambda: [
                pipeline.answer(o, params) if isinstance(o, ImageOutcome) else image_failure(o)
                for o in outcomes
            ],
        )
    return DetectResponse(
        model=ModelRef(name=pipeline.name, version=pipeline.config.version),
        results=results,
        timing=answered(request, pipeline.label, timing_of(outcomes, started)),
    )

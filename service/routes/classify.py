"""POST /classify: images -> top-k labels with probabilities."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from service import tracing
from service.dependencies import StateDep, require_api_key
from service.pipelines import ClassifyParams, ImageOutcome
from service.routes.inputs import (
    ERROR_RESPONSES,
    IMAGE_REQUEST_BODY,
    ModelQuery,
    VersionQuery,
    image_failure,
    run_pipeline,
)
from service.routes.timing import answered, timing_of
from service.schemas import ClassifyResponse, ModelRef

router = APIRouter(tags=["classification"], dependencies=[Depends(require_api_key)])

MAX_TOP_K = 1000


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=IMAGE_REQUEST_BODY,
    summary="Classify one or more images",
)
async def classify(
    request: Request,
    state: StateDep,
    top_k: Annotated[
        int, Query(ge=1, le=MAX_TOP_K, description="Labels per image (at most the label count).")
    ] = 5,
    model: ModelQuery = None,
    version: VersionQuery = None,
) -> ClassifyResponse:
    pipeline = state.classifier(model, version)
    params = ClassifyParams(top_k=top_k)
    pipeline.check(params)
    outcomes, started = await run_pipeline(request, state, pipeline)
    # Softmax and top-k over one row of logits take microseconds: cheaper here than a hop
    # to a thread and back (detection's NMS, heavier, goes to the decode pool).
    with tracing.step("postprocess", **{"polynl.model": pipeline.label}):
        results = [
            pipeline.answer(o, params) if isinstance(o, ImageOutcome) else image_failure(o) for o in outcomes
        ]
    return ClassifyResponse(
        model=ModelRef(name=pipeline.name, version=pipeline.config.version),
        results=results,
        timing=answered(request, pipeline.label, timing_of(outcomes, started)),
    )

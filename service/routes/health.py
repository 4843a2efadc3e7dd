"""Liveness, readiness and metrics: what orchestrators and Prometheus poll."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from service.dependencies import require_api_key_for_metrics
from service.metrics import CONTENT_TYPE
from service.schemas import ErrorResponse, Health, Readiness
from service.state import ServiceState

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: loading, warming up or stopping."}},
    summary="Models loaded and warmed up",
)
async def readyz(request: Request) -> JSONResponse:
    state = getattr(request.app.state, "service", None)
    models = {p.label: p.ready for p in state.models} if isinstance(state, ServiceState) else {}
    ready = isinstance(state, ServiceState) and state.ready and state.accepting and all(models.values())
    body = Readiness(status="ready" if ready else "not_ready", models=models)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    dependencies=[Depends(require_api_key_for_metrics)],
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format."},
        401: {"model": ErrorResponse, "description": "Missing or wrong API key (when protected)."},
    },
    response_class=Response,
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    state = request.app.state.service
    return Response(content=state.metrics.render(), media_type=CONTENT_TYPE)

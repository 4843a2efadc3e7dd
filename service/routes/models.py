"""GET /v1/models: what is loaded, how it runs, and which exact files."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.dependencies import StateDep, require_api_key
from service.pipelines import DetectorPipeline
from service.schemas import BatchingInfo, ErrorResponse, ModelInfo, ModelsResponse, TensorInfo

router = APIRouter(tags=["models"], dependencies=[Depends(require_api_key)])


def _tensors(args: list[Any]) -> list[TensorInfo]:
    return [TensorInfo(name=a.name, dtype=a.type, shape=list(a.shape)) for a in args]


@router.get(
    "/v1/models",
    response_model=ModelsResponse,
    responses={401: {"model": ErrorResponse, "description": "Missing or wrong API key (when one is set)."}},
    summary="Loaded models",
)
async def list_models(state: StateDep) -> ModelsResponse:
    settings = state.settings
    batching = BatchingInfo(
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        queue_size=settings.queue_size,
        request_timeout_s=settings.request_timeout_s,
    )
    models = []
    for pipeline in state.pipelines.values():
        config = pipeline.config
        session = pipeline.session.session
        models.append(
            ModelInfo(
                name=config.name,
                version=config.version,
                task=config.task,
                block=config.block,
                inputs=_tensors(session.get_inputs()),
                outputs=_tensors(session.get_outputs()),
                labels=config.labels,
                providers=pipeline.session.providers,
                io_binding=pipeline.session.io_binding,
                batching=batching,
                size_buckets=pipeline.buckets if isinstance(pipeline, DetectorPipeline) else None,
                onnx_file=config.onnx_file,
                onnx_sha256=config.onnx_sha256,
                checksum_verified=settings.verify_checksums,
                ready=pipeline.ready,
            )
        )
    return ModelsResponse(models=models)

"""GET /v1/models: every served model version, how it runs (effective settings and their
sources), and which exact files."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.dependencies import StateDep, require_api_key
from service.pipelines import DetectorPipeline
from service.schemas import BatchingInfo, ErrorResponse, ModelInfo, ModelsResponse, SettingInfo, TensorInfo

router = APIRouter(tags=["models"], dependencies=[Depends(require_api_key)])


def _tensors(args: list[Any]) -> list[TensorInfo]:
    return [TensorInfo(name=a.name, dtype=a.type, shape=list(a.shape)) for a in args]


@router.get(
    "/v1/models",
    response_model=ModelsResponse,
    responses={401: {"model": ErrorResponse, "description": "Missing or wrong API key (when one is set)."}},
    summary="Served models and versions, with their effective settings",
)
async def list_models(state: StateDep) -> ModelsResponse:
    settings = state.settings
    models = []
    for pipeline in state.models:
        config = pipeline.config
        serving = pipeline.serving
        session = pipeline.session.session
        is_detector = isinstance(pipeline, DetectorPipeline)
        versions = state.models.versions(pipeline.name)
        models.append(
            ModelInfo(
                name=config.name,
                version=config.version,
                task=config.task.value,
                default=state.models.defaults.get(config.task) == config.name
                and versions[0] == config.version,
                served_versions=versions,
                block=config.block,
                inputs=_tensors(session.get_inputs()),
                outputs=_tensors(session.get_outputs()),
                labels=config.labels,
                providers=pipeline.session.providers,
                io_binding=pipeline.session.io_binding,
                batching=BatchingInfo(
                    max_batch_size=serving.max_batch_size,
                    max_wait_ms=serving.max_wait_ms,
                    queue_size=serving.queue_size,
                    request_timeout_s=settings.request_timeout_s,
                ),
                size_buckets=list(serving.buckets) if is_detector else None,
                pyramid=list(serving.pyramid) if is_detector else None,
                settings={
                    name: SettingInfo(value=getattr(serving, name), source=source)
                    for name, source in serving.sources.items()
                },
                onnx_file=config.onnx_file,
                onnx_sha256=config.onnx_sha256,
                checksum_verified=settings.verify_checksums,
                ready=pipeline.ready,
            )
        )
    return ModelsResponse(models=models)

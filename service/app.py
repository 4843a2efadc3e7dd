"""The ASGI app (``uvicorn service.app:app``): wires the data path together.

Start-up (lifespan): read the settings, load every model version the version policies select
with the one loader (``polynl_core.repository.load_served_models``, checksums verified), merge
each version's serving settings (``service.model_settings``), open an ONNX Runtime session per
version, run a warm-up inference per input shape (each detection size bucket), start one
batcher per version, then report ready. A broken repository stops start-up with
a clear message instead of serving garbage.

Shutdown: uvicorn stops accepting connections and waits for the requests in flight;
the lifespan then marks the service not ready, lets each batcher finish its queue, and
closes the thread pools.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from polynl_core.images import allow_pixels
from polynl_core.repository import LoadedModel, RepositoryError, default_models, load_served_models
from polynl_core.tasks import UnknownTask
from service import tracing
from service.admission import AdmissionLimit, AdmissionMiddleware
from service.drills import with_drills
from service.errors import install_error_handlers
from service.logs import configure_logging
from service.metrics import Metrics
from service.middleware import EdgeMiddleware
from service.model_settings import ServingSettings, serving_settings
from service.oip import rest as oip_rest
from service.oip.grpc_server import start_grpc_server
from service.openapi import install_openapi
from service.registry import AnyPipeline, ModelRegistry, make_pipeline
from service.routes import classify, demo, detect, health, models
from service.runtime import ModelSession, create_session
from service.settings import Settings, get_settings
from service.state import ServiceState

logger = logging.getLogger("service.app")


def check_contract(model: LoadedModel, session: ModelSession) -> None:
    """The ONNX graph must have the input and outputs its config.json promises: a file from
    another model (checksum updated by hand) would load, warm up, and answer garbage."""
    config = model.config
    outputs = set(session.output_names)
    expected = set(config.outputs) | set(config.task.outputs)
    if session.input_name != config.input.name or not expected <= outputs:
        raise RepositoryError(
            f"model {config.name}: {model.onnx_path} has input {session.input_name!r} and outputs "
            f"{sorted(outputs)}; config.json promises input {config.input.name!r} and outputs "
            f"{sorted(expected)}"
        )


def open_model(
    model: LoadedModel, label: str, serving: ServingSettings, settings: Settings, metrics: Metrics
) -> AnyPipeline:
    """One model version's session, checked against its config and warmed up, or a RepositoryError."""
    try:
        session = create_session(label, model.onnx_path, settings)
    except Exception as exc:  # ONNX Runtime raises its own types (InvalidProtobuf, Fail, ...)
        raise RepositoryError(f"model {label}: ONNX Runtime cannot load {model.onnx_path}: {exc}") from exc
    check_contract(model, session)
    predict = with_drills(session.run, settings)
    try:
        pipeline = make_pipeline(
            model, session, settings, serving, metrics.observer(label), label=label, predict=predict
        )
    except UnknownTask as exc:
        raise RepositoryError(f"model {label}: {exc}") from exc
    try:
        pipeline.warm_up()
    except Exception as exc:
        raise RepositoryError(f"model {label}: warm-up inference failed: {exc}") from exc
    return pipeline


def _describe(serving: ServingSettings) -> str:
    return ", ".join(
        f"{name}={getattr(serving, name)} ({source})" for name, source in serving.sources.items()
    )


def load_models(settings: Settings, metrics: Metrics) -> ModelRegistry:
    """Repository -> the versions each policy selects -> sessions -> warmed-up pipelines
    (blocking; runs in a thread)."""
    policies = {
        name: overrides.version_policy
        for name, overrides in settings.models.items()
        if overrides.version_policy is not None
    }
    root = settings.model_repository
    served = load_served_models(root, verify=settings.verify_checksums, policies=policies)
    counts = Counter(model.name for model in served)
    registry = ModelRegistry(defaults=default_models(root, served))
    for model in served:
        config = model.config
        label = config.name if counts[config.name] == 1 else f"{config.name}/{config.version}"
        serving = serving_settings(config, settings)
        pipeline = open_model(model, label, serving, settings, metrics)
        logger.info(
            "model %s v%d (%s, block=%s, sha256 %s...) on %s; %s",
            config.name,
            config.version,
            config.task.value,
            config.block,
            config.onnx_sha256[:12],
            ", ".join(pipeline.session.providers),
            _describe(serving),
        )
        registry.add(pipeline)
    logger.info("defaults: %s", ", ".join(f"{t.value} -> {n}" for t, n in registry.defaults.items()))
    return registry


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    state: ServiceState = app.state.service
    allow_pixels(settings.max_image_pixels)
    logger.info(
        "starting: repository %s, providers %s, timeout %.1fs, at most %s inference requests in flight",
        settings.model_repository,
        ",".join(settings.providers),
        settings.request_timeout_s,
        settings.max_inflight_requests or "unlimited",
    )
    try:
        state.models = await asyncio.to_thread(load_models, settings, state.metrics)
    except RepositoryError as exc:
        logger.error("cannot start: %s", exc)
        raise
    metrics = state.metrics
    for pipeline in state.models:
        metrics.model_loaded(pipeline.label, pipeline.serving.queue_size, pipeline.serving.max_batch_size)
        pipeline.batcher.start()
        pipeline.ready = True
        metrics.model_ready_state(pipeline.label, True)
    metrics.describe_build(
        app.version,
        (p.label for p in state.models),
        (provider for p in state.models for provider in p.session.providers),
    )
    grpc_server = await start_grpc_server(state) if settings.grpc else None
    state.ready = True
    logger.info("ready: %s", ", ".join(p.label for p in state.models))
    try:
        yield
    finally:
        state.accepting = False
        state.ready = False
        for pipeline in state.models:
            metrics.model_ready_state(pipeline.label, False)
        logger.info("shutting down: finishing queued requests")
        if grpc_server is not None:
            # Calls in flight get the request deadline to finish; new ones are refused.
            await grpc_server.stop(settings.request_timeout_s)
        await asyncio.gather(*(p.batcher.stop(timeout_s=settings.request_timeout_s) for p in state.models))
        state.decode_pool.shutdown(wait=True)
        state.metrics.process_exiting()
        logger.info("stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    tracing.configure(settings.otel_endpoint)
    metrics = Metrics()
    app = FastAPI(
        title="polynl-serve",
        summary="Poly-NL image classification and face detection over ONNX Runtime with dynamic batching.",
        description="[Try the models in your browser: the demo page](/demo).",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    admission = AdmissionLimit(settings.max_inflight_requests, metrics, settings.retry_after_s)
    app.state.service = ServiceState(
        settings=settings,
        metrics=metrics,
        decode_pool=ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode"),
        admission=admission,
    )
    install_error_handlers(app)
    # Innermost of the three: a refusal gets the request id, metrics and access line of the
    # edge and the CORS headers a browser needs to read it, and costs nothing more.
    app.add_middleware(AdmissionMiddleware, admission=admission)
    if settings.cors_origins:
        # Inside the edge middleware: preflights get a request id, are counted and logged.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "traceparent", "tracestate"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(
        EdgeMiddleware,
        metrics=metrics,
        max_upload_bytes=settings.max_upload_bytes,
        access_log=settings.access_log,
    )
    for module in (classify, detect, health, models, demo):
        app.include_router(module.router)
    app.include_router(oip_rest.health)
    app.include_router(oip_rest.router)
    install_openapi(app)
    return app


app = create_app()

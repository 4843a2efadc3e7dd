"""``inference.GRPCInferenceService``: the Open Inference Protocol over gRPC.

An asyncio gRPC server (grpcio's ``grpc.aio``) in the same process and event loop as the
HTTP server, on its own port (``POLYNL_GRPC_PORT``, default 8001, as Triton), so both
protocols share one batcher per model. The protocol's messages and service stubs are the
ones Triton's client package ships (``tritonclient.grpc.service_pb2``/``service_pb2_grpc``,
generated from ``grpc_service.proto`` and ``model_config.proto`` of Triton's ``common``
repository): the server and every Triton client speak the same generated code.

Per call: a request id (``x-request-id`` metadata, else a fresh one; returned in the trailing
metadata and in every log line), the API key (``authorization: Bearer <key>`` metadata, when
``POLYNL_API_KEY`` is set; ServerLive and ServerReady stay open like ``/v2/health/*``), the
deadline (the gRPC deadline, the ``timeout`` parameter and ``POLYNL_REQUEST_TIMEOUT_S``,
whichever ends first), metrics (``polynl_requests`` with ``method="GRPC"`` and the HTTP
status the same error has on REST), errors as status codes (:mod:`service.oip.errors`), and
admission control: ``ModelInfer`` counts in the worker's limit on inference requests in flight
(``POLYNL_MAX_INFLIGHT_REQUESTS``, shared with HTTP: :mod:`service.admission`) and is refused
RESOURCE_EXHAUSTED with a ``retry-after`` trailer over it.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service import __version__
from service.admission import AdmissionRefused
from service.errors import NotReady, Unauthorized
from service.middleware import new_request_id, request_id_var
from service.oip.errors import protocol_error, status_details
from service.oip.models import InferRequest, OipModel, deadline_of, find_model, model_config
from service.oip.tensors import InvalidTensor, Tensor, from_list, from_raw
from service.settings import Settings
from service.state import ServiceState

logger = logging.getLogger("service.grpc")

SERVICE = "inference.GRPCInferenceService"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository", "parameters"]
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

ResponseT = TypeVar("ResponseT")


def _parameter_value(parameter: service_pb2.InferParameter) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


def _inputs(request: service_pb2.ModelInferRequest) -> list[Tensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidTensor(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    tensors = []
    for index, item in enumerate(request.inputs):
        shape = list(item.shape)
        if raw:
            tensors.append(from_raw(item.name, item.datatype, shape, raw[index]))
            continue
        field = _CONTENTS_FIELD.get(item.datatype)
        if field is None:
            raise InvalidTensor(f"input {item.name!r}: datatype {item.datatype!r} has no typed contents")
        tensors.append(from_list(item.name, item.datatype, shape, list(getattr(item.contents, field))))
    return tensors


def infer_request(request: service_pb2.ModelInferRequest) -> InferRequest:
    parameters = {key: _parameter_value(value) for key, value in request.parameters.items()}
    outputs = [output.name for output in request.outputs] or None
    return InferRequest(_inputs(request), outputs, parameters, request.id)


def infer_response(model: OipModel, request_id: str, outputs: list[Tensor]) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(
        model_name=model.pipeline.name, model_version=str(model.pipeline.version), id=request_id
    )
    for tensor in outputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(tensor.to_bytes())
    return response


def _tensor_metadata(spec: dict[str, Any]) -> service_pb2.ModelMetadataResponse.TensorMetadata:
    return service_pb2.ModelMetadataResponse.TensorMetadata(**spec)


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The protocol's RPCs over the running service's state (the others answer UNIMPLEMENTED)."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        settings = state.settings
        self._key = settings.api_key.get_secret_value().encode() if settings.api_key is not None else None
        self._success_level = logging.INFO if settings.access_log else logging.DEBUG

    # --- the per-call frame: request id, key, metrics, errors --------------------------
    def _authorised(self, context: grpc.aio.ServicerContext[Any, Any]) -> bool:
        if self._key is None:
            return True
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                if scheme.lower() == "bearer":
                    return hmac.compare_digest(token.strip().encode(), self._key)
        return False

    async def _call(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        work: Callable[[str], Awaitable[ResponseT]],
        *,
        open_call: bool = False,
    ) -> ResponseT:
        given = next((v for k, v in context.invocation_metadata() or () if k == "x-request-id"), None)
        request_id = new_request_id(given if isinstance(given, str) else None)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 200
        refused = False
        trailing: list[tuple[str, str | bytes]] = [("x-request-id", request_id)]
        try:
            if not open_call and not self._authorised(context):
                raise Unauthorized()
            response = await work(request_id)
            context.set_trailing_metadata(tuple(trailing))
            return response
        except Exception as exc:
            error = protocol_error(exc)
            if error is None:
                logger.exception("unhandled error in %s", method)
                status, code, message = 500, grpc.StatusCode.INTERNAL, "internal server error"
            else:
                status, code, message = error.status, error.grpc_code, error.message
                refused = isinstance(exc, AdmissionRefused)
                if status >= 500 and not refused:  # refusals are summarised by service.admission
                    logger.warning("%s: %s", error.code, message)
                if error.retry_after_s is not None:
                    trailing.append(("retry-after", str(error.retry_after_s)))
                    details = status_details(code, message, error.retry_after_s)
                    trailing.append(("grpc-status-details-bin", details))
            await context.abort(code, message, tuple(trailing))
            raise  # abort raises; this keeps type checkers informed
        except BaseException:
            status = 499  # cancelled by the client (or the server stopping)
            raise
        finally:
            seconds = time.perf_counter() - started
            endpoint = f"/{SERVICE}/{method}"
            metrics = self.state.metrics
            metrics.requests.labels(endpoint, "GRPC", str(status)).inc()
            metrics.latency.labels(endpoint).observe(seconds)
            level = self._success_level if status < 400 else logging.DEBUG if refused else logging.INFO
            logger.log(level, "GRPC %s %d %.1fms", method, status, seconds * 1000.0)
            request_id_var.reset(token)

    # --- health and metadata -----------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> service_pb2.ServerLiveResponse:
        async def work(_: str) -> service_pb2.ServerLiveResponse:
            return service_pb2.ServerLiveResponse(live=True)

        return await self._call("ServerLive", context, work, open_call=True)

    async def ServerReady(self, request: Any, context: Any) -> service_pb2.ServerReadyResponse:
        async def work(_: str) -> service_pb2.ServerReadyResponse:
            state = self.state
            ready = state.ready and state.accepting and all(p.ready for p in state.models)
            return service_pb2.ServerReadyResponse(ready=ready)

        return await self._call("ServerReady", context, work, open_call=True)

    async def ModelReady(self, request: Any, context: Any) -> service_pb2.ModelReadyResponse:
        async def work(_: str) -> service_pb2.ModelReadyResponse:
            try:
                find_model(self.state, request.name, request.version)
            except NotReady:
                return service_pb2.ModelReadyResponse(ready=False)
            return service_pb2.ModelReadyResponse(ready=True)

        return await self._call("ModelReady", context, work)

    async def ServerMetadata(self, request: Any, context: Any) -> service_pb2.ServerMetadataResponse:
        async def work(_: str) -> service_pb2.ServerMetadataResponse:
            return service_pb2.ServerMetadataResponse(
                name="polynl-serve", version=__version__, extensions=EXTENSIONS
            )

        return await self._call("ServerMetadata", context, work)

    async def ModelMetadata(self, request: Any, context: Any) -> service_pb2.ModelMetadataResponse:
        async def work(_: str) -> service_pb2.ModelMetadataResponse:
            metadata = OipModel(self.state, find_model(self.state, request.name, request.version)).metadata()
            return service_pb2.ModelMetadataResponse(
                name=metadata["name"],
                versions=metadata["versions"],
                platform=metadata["platform"],
                inputs=[_tensor_metadata(spec) for spec in metadata["inputs"]],
                outputs=[_tensor_metadata(spec) for spec in metadata["outputs"]],
            )

        return await self._call("ModelMetadata", context, work)

    async def ModelConfig(self, request: Any, context: Any) -> service_pb2.ModelConfigResponse:
        async def work(_: str) -> service_pb2.ModelConfigResponse:
            model = OipModel(self.state, find_model(self.state, request.name, request.version))
            return service_pb2.ModelConfigResponse(config=model_config(model))

        return await self._call("ModelConfig", context, work)

    async def RepositoryIndex(self, request: Any, context: Any) -> service_pb2.RepositoryIndexResponse:
        async def work(_: str) -> service_pb2.RepositoryIndexResponse:
            index = service_pb2.RepositoryIndexResponse()
            for pipeline in self.state.models:
                index.models.add(
                    name=pipeline.name,
                    version=str(pipeline.version),
                    state="READY" if pipeline.ready else "UNAVAILABLE",
                )
            return index

        return await self._call("RepositoryIndex", context, work)

    # --- inference ---------------------------------------------------------------------
    async def ModelInfer(self, request: Any, context: Any) -> service_pb2.ModelInferResponse:
        async def work(request_id: str) -> service_pb2.ModelInferResponse:
            state = self.state
            # The same per-worker limit as HTTP's (service.admission). grpcio has parsed the
            # message by now; the tensor conversion and everything after are spared.
            admission = state.admission
            if not admission.try_enter():
                raise admission.refuse(f"/{SERVICE}/ModelInfer")
            try:
                model = OipModel(state, find_model(state, request.model_name, request.model_version))
                infer = infer_request(request)
                deadline = deadline_of(state, infer.parameters, context.time_remaining())
                outputs = await model.infer(infer, state.decode_pool, deadline, request_id)
                return infer_response(model, infer.id, outputs)
            finally:
                admission.leave()

        return await self._call("ModelInfer", context, work)


def server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_upload_bytes),
        ("grpc.max_send_message_length", -1),
        # One worker: a port already taken is a start-up error, not a silently shared port.
        # Several workers share it like the HTTP port (SO_REUSEPORT, service.workers).
        ("grpc.so_reuseport", 1 if settings.worker_count > 1 else 0),
    ]


async def start_grpc_server(state: ServiceState) -> grpc.aio.Server:
    """The gRPC server on ``POLYNL_HOST:POLYNL_GRPC_PORT``, started (RuntimeError if the port
    cannot be bound)."""
    settings = state.settings
    server = grpc.aio.server(options=server_options(settings))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(state), server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{host}:{settings.grpc_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot bind the gRPC port {address}: {exc}") from exc
    await server.start()
    logger.info("gRPC (Open Inference Protocol) on %s:%d", settings.host, port)
    return server

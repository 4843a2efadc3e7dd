"""``/v2/...``: the Open Inference Protocol over HTTP/REST, on the service's own port.

The protocol's HTTP front end: request bodies (JSON tensors, or the JSON header followed by
binary tensor data whose header length is ``Inference-Header-Content-Length``) ->
:class:`~service.oip.models.InferRequest` -> :class:`~service.oip.models.OipModel` -> the
response (outputs as JSON ``data``, or as binary data when the request asks for it with
``binary_data_output`` or an output's ``binary_data`` parameter, as Triton does). Errors
take the protocol's shape ``{"error": "..."}`` in :mod:`service.errors` (paths under
``/v2``). Health endpoints are open; everything else needs the API key when one is set.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from google.protobuf import json_format

from service import __version__
from service.dependencies import StateDep, require_api_key
from service.errors import MalformedBody, NotReady, request_id_of
from service.oip.models import InferRequest, OipModel, deadline_of, find_model, model_config
from service.oip.tensors import InvalidTensor, Tensor, from_list, from_raw, to_list
from service.routes.inputs import unless_disconnected
from service.state import ServiceState

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository", "parameters"]
SERVER_NAME = "polynl-serve"

# Not in the OpenAPI schema: the Open Inference Protocol specifies these paths itself (its
# bodies are tensors, often binary, which no response model here would describe truly).
health = APIRouter(prefix="/v2", tags=["open inference protocol"], include_in_schema=False)
router = APIRouter(
    prefix="/v2",
    tags=["open inference protocol"],
    dependencies=[Depends(require_api_key)],
    include_in_schema=False,
)

ModelName = Annotated[str, Path(min_length=1, max_length=128)]
Version = Annotated[str, Path(min_length=1, max_length=32)]


def _server_ready(state: ServiceState) -> bool:
    return state.ready and state.accepting and all(p.ready for p in state.models)


def _boolean(ready: bool) -> Response:
    # The protocol: 200 means true, a 4xx false.
    return Response(status_code=200 if ready else 400)


@health.get("/health/live", summary="OIP: the server is live")
async def server_live() -> Response:
    return _boolean(True)


@health.get("/health/ready", summary="OIP: every model is ready")
async def server_ready(state: StateDep) -> Response:
    return _boolean(_server_ready(state))


@router.get("", summary="OIP: server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


@router.get("/models/{name}", summary="OIP: model metadata (newest version)")
async def model_metadata(state: StateDep, name: ModelName) -> dict[str, Any]:
    return OipModel(state, find_model(state, name)).metadata()


@router.get("/models/{name}/versions/{version}", summary="OIP: model metadata")
async def model_version_metadata(state: StateDep, name: ModelName, version: Version) -> dict[str, Any]:
    return OipModel(state, find_model(state, name, version)).metadata()


@router.get("/models/{name}/ready", summary="OIP: the model is ready")
async def model_ready(state: StateDep, name: ModelName) -> Response:
    return _model_ready(state, name, "")


@router.get("/models/{name}/versions/{version}/ready", summary="OIP: the model version is ready")
async def model_version_ready(state: StateDep, name: ModelName, version: Version) -> Response:
    return _model_ready(state, name, version)


def _model_ready(state: ServiceState, name: str, version: str) -> Response:
    try:
        find_model(state, name, version)  # 404 for an unknown model or version
    except NotReady:
        return _boolean(False)
    return _boolean(True)


@router.get("/models/{name}/config", summary="OIP: model configuration (Triton's ModelConfig)")
async def model_configuration(state: StateDep, name: ModelName) -> dict[str, Any]:
    return _config(state, name, "")


@router.get("/models/{name}/versions/{version}/config", summary="OIP: model configuration")
async def model_version_configuration(state: StateDep, name: ModelName, version: Version) -> dict[str, Any]:
    return _config(state, name, version)


def _config(state: ServiceState, name: str, version: str) -> dict[str, Any]:
    config = model_config(OipModel(state, find_model(state, name, version)))
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


@router.post("/repository/index", summary="OIP: every served model version")
async def repository_index(state: StateDep) -> list[dict[str, str]]:
    return [
        {"name": p.name, "version": str(p.version), "state": "READY" if p.ready else "UNAVAILABLE"}
        for p in state.models
    ]


def _json_header(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    view = memoryview(body)
    if header_length is None:
        size = len(body)
    elif header_length.strip().isdigit() and int(header_length) <= len(body):
        size = int(header_length)
    else:
        raise MalformedBody(f"{HEADER_LENGTH} {header_length[:32]!r} does not fit the {len(body)} byte body")
    try:
        header = json.loads(bytes(view[:size]))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedBody(f"the inference request is not JSON: {exc}") from None
    except RecursionError:
        raise MalformedBody("the inference request nests JSON too deeply") from None
    if not isinstance(header, dict):
        raise MalformedBody("the inference request must be a JSON object")
    return header, view[size:]


def _shape(name: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InvalidTensor(f"input {name!r}: shape must be a list of integers")
    return value


def parse_infer_request(body: bytes, header_length: str | None) -> tuple[InferRequest, dict[str, bool]]:
    """The request, and for each requested output whether it goes back as binary data."""
    header, binary = _json_header(body, header_length)
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise MalformedBody("'parameters' must be an object")
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        raise MalformedBody("the inference request has no 'inputs' list")
    tensors = []
    offset = 0
    for item in inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise MalformedBody("each input needs a 'name'")
        name, datatype = item["name"], str(item.get("datatype", ""))
        shape = _shape(name, item.get("shape"))
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidTensor(f"input {name!r}: binary_data_size {size!r} runs past the body")
            tensors.append(from_raw(name, datatype, shape, binary[offset : offset + size]))
            offset += size
        elif "data" in item:
            tensors.append(from_list(name, datatype, shape, item["data"]))
        else:
            raise InvalidTensor(f"input {name!r} has neither 'data' nor a 'binary_data_size' parameter")
    if offset != len(binary):
        raise InvalidTensor(f"{len(binary) - offset} bytes of binary data belong to no input")
    all_binary = bool(parameters.get("binary_data_output", False))
    outputs = header.get("outputs")
    binary_of: dict[str, bool] = {}
    names: list[str] | None = None
    if outputs is not None:
        if not isinstance(outputs, list):
            raise MalformedBody("'outputs' must be a list")
        names = []
        for output in outputs:
            if not isinstance(output, dict) or not isinstance(output.get("name"), str):
                raise MalformedBody("each requested output needs a 'name'")
            names.append(output["name"])
            binary_of[output["name"]] = bool((output.get("parameters") or {}).get("binary_data", all_binary))
    request_id = header.get("id", "")
    request = InferRequest(tensors, names, parameters, request_id if isinstance(request_id, str) else "")
    return request, {"*": all_binary, **binary_of}


def infer_response(
    model: OipModel, request: InferRequest, outputs: list[Tensor], binary_of: dict[str, bool]
) -> Response:
    described = []
    chunks = []
    for tensor in outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary_of.get(tensor.name, binary_of["*"]):
            data = tensor.to_bytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = to_list(tensor)
        described.append(entry)
    body: dict[str, Any] = {
        "model_name": model.pipeline.name,
        "model_version": str(model.pipeline.version),
        "outputs": described,
    }
    if request.id:
        body["id"] = request.id
    header = json.dumps(body, separators=(",", ":")).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *chunks]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


@router.post("/models/{name}/infer", summary="OIP: inference (newest version)")
async def model_infer(request: Request, state: StateDep, name: ModelName) -> Response:
    return await _infer(request, state, name, "")


@router.post("/models/{name}/versions/{version}/infer", summary="OIP: inference")
async def model_version_infer(
    request: Request, state: StateDep, name: ModelName, version: Version
) -> Response:
    return await _infer(request, state, name, version)


async def _infer(request: Request, state: ServiceState, name: str, version: str) -> Response:
    model = OipModel(state, find_model(state, name, version))
    body = await request.body()  # the edge middleware stops it at max_upload_bytes
    infer, binary_of = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
    deadline = deadline_of(state, infer.parameters)
    outputs = await unless_disconnected(
        request, model.infer(infer, state.decode_pool, deadline, request_id_of(request))
    )
    return infer_response(model, infer, outputs, binary_of)

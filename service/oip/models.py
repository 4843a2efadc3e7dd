"""A served model version as the Open Inference Protocol sees it: metadata and ``infer``.

Two ways into every model, both under its own name, both through its one batcher (so they
batch with ``/classify`` / ``/detect-faces`` traffic of the same model):

1. **Tensor in, tensor out** (what Triton's ONNX Runtime backend does): the ONNX input
   (``images``, FP32 ``[N,3,H,W]``, already preprocessed) -> the raw ONNX outputs
   (classifier ``logits`` ``[N,10]``; detector ``boxes`` ``[N,P,4]``, ``scores`` ``[N,P]``,
   ``landmarks`` ``[N,P,10]`` in input pixels, before NMS). Each of the N rows is queued
   on its own and may share an inference call with other requests.
2. **Images in, answers out**: ``image_files``, BYTES ``[N]``, one encoded image file per
   element -> the service's own decode, preprocessing, pyramid and post-processing.
   Classifier: ``labels`` BYTES ``[N,k]``, ``ids`` INT64 ``[N,k]``, ``probabilities`` FP32
   ``[N,k]`` (most probable first). Detector (faces of all images concatenated, image order,
   highest score first within an image): ``face_count`` INT64 ``[N]``, ``face_boxes`` FP32
   ``[K,4]`` (x1,y1,x2,y2), ``face_scores`` FP32 ``[K]``, ``face_landmarks`` FP32 ``[K,10]``
   (x,y of left eye, right eye, nose, left and right mouth corner), in original pixels,
   ``K = sum(face_count)``; plus ``image_sizes`` INT64 ``[N,2]`` (width, height) for both
   models. The ``face_`` prefix keeps them apart from the raw outputs' names.

A request carries exactly one of the two inputs. Request parameters: ``top_k``,
``score_threshold``, ``nms_iou``, ``max_faces`` (as the query values of the JSON API) and
``timeout`` (microseconds, as Triton's clients send it; capped by ``POLYNL_REQUEST_TIMEOUT_S``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2

from polynl_core.buckets import format_buckets
from polynl_core.tasks import Task
from service.batching import BatchResult
from service.errors import InvalidParameter, NotReady, TooManyImages, UnknownModel
from service.oip.tensors import InvalidTensor, Tensor
from service.pipelines import (
    ClassifierPipeline,
    ClassifyParams,
    DetectorPipeline,
    DetectParams,
    ImageOutcome,
    Upload,
    all_or_first_failure,
)
from service.registry import AnyPipeline
from service.state import ServiceState

IMAGE_INPUT = "image_files"
PLATFORM = "onnxruntime_onnx"
MAX_TOP_K = 1000


@dataclass
class InferRequest:
    inputs: list[Tensor]
    outputs: list[str] | None = None  # requested output names; None = every output of the way in
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str = ""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]


def _dims(shape: Sequence[Any]) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def find_model(state: ServiceState, name: str, version: str = "") -> AnyPipeline:
    """The ready pipeline of ``name`` at ``version`` ('' = newest served), or 404 / 503."""
    if not state.accepting:
        raise NotReady("the server is shutting down", state.settings.retry_after_s)
    versions = state.models.versions(name)
    if not versions:
        served = ", ".join(sorted({p.name for p in state.models})) or "none"
        raise UnknownModel(f"unknown model {name!r}; served: {served}")
    if version:
        if not version.isdigit() or int(version) not in versions:
            listed = ", ".join(str(v) for v in versions)
            raise UnknownModel(f"model {name!r} has no served version {version!r}; served versions: {listed}")
        chosen = int(version)
    else:
        chosen = versions[0]
    pipeline = state.models.pipelines[(name, chosen)]
    if not pipeline.ready:
        raise NotReady(f"model {pipeline.label!r} is not ready yet", state.settings.retry_after_s)
    return pipeline


class OipModel:
    """One pipeline behind the protocol (built per request: it holds no state of its own)."""

    def __init__(self, state: ServiceState, pipeline: AnyPipeline) -> None:
        self.state = state
        self.pipeline = pipeline
        self.config = pipeline.config

    # --- metadata ---------------------------------------------------------------------
    @property
    def tensor_input(self) -> TensorSpec:
        pipeline = self.pipeline
        if isinstance(pipeline, ClassifierPipeline):
            height, width = pipeline.config.preprocess.size or (-1, -1)
            return TensorSpec(self.config.input.name, "FP32", [-1, 3, height, width])
        buckets = pipeline.buckets if isinstance(pipeline, DetectorPipeline) else []
        heights, widths = {h for h, _ in buckets}, {w for _, w in buckets}
        height = heights.pop() if len(heights) == 1 else -1
        width = widths.pop() if len(widths) == 1 else -1
        return TensorSpec(self.config.input.name, "FP32", [-1, 3, height, width])

    @property
    def raw_outputs(self) -> list[TensorSpec]:
        session = self.pipeline.session.session
        return [TensorSpec(o.name, "FP32", _dims(o.shape)) for o in session.get_outputs()]

    @property
    def answer_outputs(self) -> list[TensorSpec]:
        if self.pipeline.task is Task.CLASSIFICATION:
            specs = [
                TensorSpec("labels", "BYTES", [-1, -1]),
                TensorSpec("ids", "INT64", [-1, -1]),
                TensorSpec("probabilities", "FP32", [-1, -1]),
            ]
        else:
            specs = [
                TensorSpec("face_count", "INT64", [-1]),
                TensorSpec("face_boxes", "FP32", [-1, 4]),
                TensorSpec("face_scores", "FP32", [-1]),
                TensorSpec("face_landmarks", "FP32", [-1, 10]),
            ]
        return [*specs, TensorSpec("image_sizes", "INT64", [-1, 2])]

    def metadata(self) -> dict[str, Any]:
        versions = [str(v) for v in self.state.models.versions(self.pipeline.name)]
        inputs = [self.tensor_input, TensorSpec(IMAGE_INPUT, "BYTES", [-1])]
        return {
            "name": self.pipeline.name,
            "versions": versions,
            "platform": PLATFORM,
            "inputs": [vars(spec) for spec in inputs],
            "outputs": [vars(spec) for spec in [*self.raw_outputs, *self.answer_outputs]],
        }

    def config_parameters(self) -> dict[str, str]:
        """How to call the model, for ``ModelConfig.parameters`` (the metadata has no free text)."""
        raw = ", ".join(o.name for o in self.raw_outputs)
        answers = ", ".join(o.name for o in self.answer_outputs)
        parameters = {
            "task": self.pipeline.task.value,
            "inputs": f"exactly one of {self.tensor_input.name} (FP32 [N,3,H,W], preprocessed) "
            f"or {IMAGE_INPUT} (BYTES [N], encoded image files)",
            f"outputs_of_{self.tensor_input.name}": raw,
            f"outputs_of_{IMAGE_INPUT}": answers,
        }
        if isinstance(self.pipeline, DetectorPipeline):
            parameters["size_buckets"] = format_buckets(self.pipeline.buckets)
            parameters["layout"] = (
                "face_count[i] faces of image i follow those of images 0..i-1 in face_boxes "
                "[K,4] x1,y1,x2,y2, face_scores [K], face_landmarks [K,10] x,y of left eye, right "
                "eye, nose, left and right mouth corner; original pixels; image_sizes [N,2] width,height"
            )
            parameters["request_parameters"] = "score_threshold, nms_iou, max_faces, timeout (us)"
        else:
            parameters["labels"] = ",".join(self.config.labels)
            parameters["request_parameters"] = "top_k, timeout (us)"
        return parameters

    # --- inference --------------------------------------------------------------------
    def _way_in(self, request: InferRequest) -> Tensor:
        known = (self.tensor_input.name, IMAGE_INPUT)
        for tensor in request.inputs:
            if tensor.name not in known:
                raise InvalidTensor(
                    f"model {self.pipeline.name!r} has no input {tensor.name!r}; inputs: {', '.join(known)}"
                )
        if len(request.inputs) != 1:
            raise InvalidTensor(
                f"send exactly one input: {known[0]} (FP32 [N,3,H,W]) or {known[1]} (BYTES, encoded images)"
            )
        return request.inputs[0]

    def _check_outputs(self, request: InferRequest, specs: list[TensorSpec], way: str) -> list[str]:
        names = [spec.name for spec in specs]
        if request.outputs is None:
            return names
        for name in request.outputs:
            if name not in names:
                raise InvalidTensor(
                    f"output {name!r} is not an output of input {way}; outputs: {', '.join(names)}"
                )
        return list(request.outputs)

    async def infer(
        self, request: InferRequest, decode_pool: Executor, deadline: float, tag: str = ""
    ) -> list[Tensor]:
        tensor = self._way_in(request)
        if tensor.name == IMAGE_INPUT:
            wanted = self._check_outputs(request, self.answer_outputs, IMAGE_INPUT)
            outputs = await self._infer_images(tensor, request.parameters, decode_pool, deadline, tag)
        else:
            wanted = self._check_outputs(request, self.raw_outputs, tensor.name)
            outputs = await self._infer_tensor(tensor, deadline, tag)
        return [outputs[name] for name in wanted]

    def _batch_size(self, count: int) -> None:
        limit = self.state.settings.max_images_per_request
        if count < 1:
            raise InvalidTensor("the input holds no image")
        if count > limit:
            raise TooManyImages(f"at most {limit} images per request, got {count}")

    def _check_tensor(self, tensor: Tensor) -> None:
        spec = self.tensor_input
        if tensor.datatype != "FP32":
            raise InvalidTensor(f"input {spec.name!r} must be FP32, got {tensor.datatype}")
        shape = tensor.shape
        if len(shape) != 4 or shape[1] != 3:
            raise InvalidTensor(f"input {spec.name!r} must have shape [N,3,H,W], got {shape}")
        height, width = shape[2], shape[3]
        if isinstance(self.pipeline, DetectorPipeline):
            buckets = self.pipeline.buckets
            if (height, width) not in buckets:
                raise InvalidTensor(
                    f"input {spec.name!r}: H x W {height}x{width} is not a size bucket of "
                    f"{self.pipeline.name!r}; buckets (HxW): {format_buckets(buckets)}"
                )
        elif [height, width] != spec.shape[2:]:
            raise InvalidTensor(
                f"input {spec.name!r} must be [N,3,{spec.shape[2]},{spec.shape[3]}], got {shape}"
            )
        self._batch_size(shape[0])

    async def _infer_tensor(self, tensor: Tensor, deadline: float, tag: str) -> dict[str, Tensor]:
        self._check_tensor(tensor)
        batcher = self.pipeline.batcher
        batcher.check_room()
        self.state.metrics.images.labels(self.pipeline.label).inc(tensor.shape[0])
        rows = np.ascontiguousarray(tensor.array, dtype=np.float32)
        results = await _all_or_cancel([batcher.submit(row, deadline, tag) for row in rows])
        return {
            spec.name: Tensor.of(spec.name, np.stack([r.outputs[spec.name] for r in results]))
            for spec in self.raw_outputs
        }

    async def _infer_images(
        self, tensor: Tensor, parameters: Mapping[str, Any], decode_pool: Executor, deadline: float, tag: str
    ) -> dict[str, Tensor]:
        if tensor.datatype != "BYTES":
            raise InvalidTensor(
                f"input {IMAGE_INPUT!r} must be BYTES (encoded image files), got {tensor.datatype}"
            )
        files = list(tensor.array.reshape(-1))
        self._batch_size(len(files))
        pipeline = self.pipeline
        uploads = [Upload(bytes(data)) for data in files]
        if isinstance(pipeline, ClassifierPipeline):
            params = ClassifyParams(top_k=_int(parameters, "top_k", 5, 1, MAX_TOP_K))
            pipeline.check(params)
            outcomes = await self._run(uploads, decode_pool, deadline, tag)
            return _classifications(pipeline, outcomes, params)
        assert isinstance(pipeline, DetectorPipeline)
        detect = DetectParams(
            score_threshold=_float(parameters, "score_threshold", 0.5),
            nms_iou=_float(parameters, "nms_iou", 0.4),
            max_faces=_int(parameters, "max_faces", 100, 1, self.state.settings.max_faces_limit),
        )
        pipeline.check(detect)
        outcomes = await self._run(uploads, decode_pool, deadline, tag)
        return await asyncio.get_running_loop().run_in_executor(
            decode_pool, _detections, pipeline, outcomes, detect
        )

    async def _run(
        self, uploads: list[Upload], decode_pool: Executor, deadline: float, tag: str
    ) -> list[ImageOutcome]:
        self.state.metrics.images.labels(self.pipeline.label).inc(len(uploads))
        # The protocol answers a request all or nothing: the first unreadable image fails it.
        return all_or_first_failure(await self.pipeline.infer(uploads, decode_pool, deadline, tag))


async def _all_or_cancel(work: list[Any]) -> list[BatchResult]:
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _classifications(
    pipeline: ClassifierPipeline, outcomes: list[ImageOutcome], params: ClassifyParams
) -> dict[str, Tensor]:
    answers = [pipeline.answer(outcome, params) for outcome in outcomes]
    labels = np.array([[s.label.encode() for s in a.top_k] for a in answers], dtype=np.object_)
    return {
        "labels": Tensor.of("labels", labels),
        "ids": Tensor.of("ids", np.array([[s.id for s in a.top_k] for a in answers], dtype=np.int64)),
        "probabilities": Tensor.of(
            "probabilities", np.array([[s.probability for s in a.top_k] for a in answers], dtype=np.float32)
        ),
        "image_sizes": _sizes([(a.width, a.height) for a in answers]),
    }


def _detections(
    pipeline: DetectorPipeline, outcomes: list[ImageOutcome], params: DetectParams
) -> dict[str, Tensor]:
    answers = [pipeline.answer(outcome, params) for outcome in outcomes]
    faces = [face for a in answers for face in a.faces]
    boxes = np.array([f.box for f in faces], dtype=np.float32).reshape(-1, 4)
    marks = [[v for point in f.landmarks.model_dump().values() for v in point] for f in faces]
    return {
        "face_count": Tensor.of("face_count", np.array([len(a.faces) for a in answers], dtype=np.int64)),
        "face_boxes": Tensor.of("face_boxes", boxes),
        "face_scores": Tensor.of("face_scores", np.array([f.score for f in faces], dtype=np.float32)),
        "face_landmarks": Tensor.of("face_landmarks", np.array(marks, dtype=np.float32).reshape(-1, 10)),
        "image_sizes": _sizes([(a.width, a.height) for a in answers]),
    }


def _sizes(sizes: list[tuple[int, int]]) -> Tensor:
    return Tensor.of("image_sizes", np.array(sizes, dtype=np.int64).reshape(-1, 2))


def _parameter(parameters: Mapping[str, Any], name: str) -> Any:
    value = parameters.get(name)
    return value.strip() if isinstance(value, str) else value


def _int(parameters: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = _parameter(parameters, name)
    if value is None:
        return default
    try:
        number = int(value)
        if isinstance(value, float | bool) or str(number) != str(value).strip():
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidParameter(f"parameter {name}: {value!r} is not an integer") from None
    if not low <= number <= high:
        raise InvalidParameter(f"parameter {name}: must be between {low} and {high}")
    return number


def _float(parameters: Mapping[str, Any], name: str, default: float) -> float:
    value = _parameter(parameters, name)
    if value is None:
        return default
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidParameter(f"parameter {name}: {value!r} is not a number") from None
    if not 0.0 <= number <= 1.0:
        raise InvalidParameter(f"parameter {name}: must be between 0 and 1")
    return number


def deadline_of(
    state: ServiceState, parameters: Mapping[str, Any], remaining_s: float | None = None
) -> float:
    """``loop.time()`` by which the answer is due: the service's deadline, shortened by the
    request's ``timeout`` parameter (microseconds) and the gRPC deadline."""
    budget = state.settings.request_timeout_s
    timeout = _parameter(parameters, "timeout")
    if timeout is not None:
        try:
            micros = int(timeout)
        except (TypeError, ValueError):
            raise InvalidParameter(
                f"parameter timeout: {timeout!r} is not an integer (microseconds)"
            ) from None
        if micros < 0:
            raise InvalidParameter("parameter timeout: must not be negative (microseconds)")
        if micros > 0:  # 0 means "no timeout" in Triton's clients
            budget = min(budget, micros / 1e6)
    if remaining_s is not None:
        budget = min(budget, max(0.0, remaining_s))
    return asyncio.get_running_loop().time() + budget


def model_config(model: OipModel) -> model_config_pb2.ModelConfig:
    """Triton's ``ModelConfig`` of a model (gRPC ModelConfig, REST ``.../config``): full shapes
    (``max_batch_size`` 0: the batch dimension is part of each shape), both inputs optional,
    the batcher's settings as ``dynamic_batching``, and how to call it in ``parameters``."""
    config = model_config_pb2.ModelConfig(
        name=model.pipeline.name, platform=PLATFORM, max_batch_size=0, backend="onnxruntime"
    )
    for spec in (model.tensor_input, TensorSpec(IMAGE_INPUT, "BYTES", [-1])):
        config.input.add(
            name=spec.name, data_type=_config_type(spec.datatype), dims=spec.shape, optional=True
        )
    for spec in [*model.raw_outputs, *model.answer_outputs]:
        config.output.add(name=spec.name, data_type=_config_type(spec.datatype), dims=spec.shape)
    serving = model.pipeline.serving
    config.dynamic_batching.max_queue_delay_microseconds = int(serving.max_wait_ms * 1000)
    config.dynamic_batching.preferred_batch_size.append(serving.max_batch_size)
    for key, value in model.config_parameters().items():
        config.parameters[key].string_value = value
    return config


def _config_type(datatype: str) -> int:
    return int(model_config_pb2.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"))

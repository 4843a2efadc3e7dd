"""One model version's path from upload bytes to an answer, step by step (LitServe-style).

Every pipeline has the same hooks with the same signatures; a new kind of model is a new
subclass registered for its task in :mod:`service.registry`, not a new branch in the routes.
For each image: ``prepare`` (decode + preprocess: on the event loop for thumbnails up to
``inline_decode_max_pixels``, in the decode thread pool otherwise) -> ``Batcher.submit``
(queue, batch, one ONNX Runtime call, slice) -> ``answer(outcome, params)`` (softmax/top-k,
or NMS + mapping to original pixels) with the route's typed parameter object. The routes
call :meth:`ModelPipeline.infer` and :meth:`ModelPipeline.answer`; this module knows nothing
about HTTP. Preprocessing and labels come from the model's ``config.json``, batching and the
detector's buckets and pyramid from :class:`service.model_settings.ServingSettings`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from PIL import Image

from polynl_core.buckets import choose_bucket
from polynl_core.images import (
    DecodedImage,
    ImageError,
    load_image,
    open_image,
)
from polynl_core.postprocess import faces_to_original, select_faces, softmax, top_k
from polynl_core.preprocess import classifier_input, classifier_needed_size, letterbox_needed_size
from polynl_core.pyramid import LevelOutput, level_bucket, merge_levels, pyramid_inputs
from polynl_core.repository import LoadedModel, ModelConfig
from polynl_core.tasks import DETECTOR_OUTPUTS, Task
from service import tracing
from service.batching import Batcher, BatchObserver, BatchResult, PredictFn
from service.errors import InvalidParameter
from service.model_settings import ServingSettings
from service.runtime import ModelSession
from service.schemas import Classification, Detection, Face, LabelScore, Landmarks
from service.settings import Settings

logger = logging.getLogger("service.pipelines")

# Upload bytes allowed per pixel for an inline decode (see ModelPipeline._decode_inline):
# RGBA uncompressed is 4; more means extra frames, pages or metadata.
_INLINE_BYTES_PER_PIXEL = 4


@dataclass(frozen=True)
class Upload:
    """One image as it came in."""

    data: bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class Prepared:
    """One image ready for the batcher, plus what ``answer`` needs to map results back."""

    array: np.ndarray  # (3, H, W) float32
    width: int  # original (after EXIF orientation)
    height: int
    scale: float  # letterbox scale (detector); 1.0 for the classifier
    decode_ms: float  # bytes -> RGB pixels (a thread hop to the decode pool included)
    preprocess_ms: float  # pixels -> network inputs (pyramid levels included)
    # Detector pyramid levels (polynl_core/pyramid.py): (array, scale) of each smaller copy.
    levels: tuple[tuple[np.ndarray, float], ...] = ()


@dataclass(frozen=True)
class ImageOutcome:
    index: int  # position of the image in its request
    upload: Upload
    prepared: Prepared
    result: BatchResult
    level_results: tuple[BatchResult, ...] = ()  # one per prepared.levels

    @property
    def all_results(self) -> tuple[BatchResult, ...]:
        return (self.result, *self.level_results)


@dataclass(frozen=True)
class FailedImage:
    """One image of a request that could not be read: the others are still answered."""

    index: int  # position of the image in its request
    upload: Upload
    error: ImageError


Outcome = ImageOutcome | FailedImage


def all_or_first_failure(outcomes: Sequence[Outcome]) -> list[ImageOutcome]:
    """Every outcome, or the first unreadable image's error (protocols that answer a
    request all or nothing, such as the Open Inference Protocol, use this)."""
    for outcome in outcomes:
        if isinstance(outcome, FailedImage):
            raise outcome.error
    return [outcome for outcome in outcomes if isinstance(outcome, ImageOutcome)]


async def _first_error_or_all(tasks: list[asyncio.Task[Outcome]]) -> list[Outcome]:
    """All results in order, or the first failure after cancelling the rest."""
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    failed = [t for t in tasks if t in done and not t.cancelled() and t.exception() is not None]
    if failed:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        error = failed[0].exception()
        assert error is not None
        raise error
    return [task.result() for task in tasks]


@dataclass(frozen=True)
class ClassifyParams:
    """What a classification request asks for."""

    top_k: int = 5


@dataclass(frozen=True)
class DetectParams:
    """What a face detection request asks for."""

    score_threshold: float = 0.5
    nms_iou: float = 0.4
    max_faces: int = 100


ParamsT = TypeVar("ParamsT")
AnswerT = TypeVar("AnswerT")


class ModelPipeline(ABC, Generic[ParamsT, AnswerT]):
    """Shared machinery: session, batcher, decode -> batch -> answer. Subclasses say how one
    image becomes network inputs (:meth:`preprocess`), which shapes warm the session up
    (:meth:`warmup_shapes`) and how one image's outputs become its answer (:meth:`answer`)."""

    task: Task

    def __init__(
        self,
        model: LoadedModel,
        session: ModelSession,
        settings: Settings,
        serving: ServingSettings,
        observer: BatchObserver,
        *,
        label: str | None = None,
        predict: PredictFn | None = None,
    ) -> None:
        self.model = model
        self.config: ModelConfig = model.config
        self.session = session
        self.settings = settings
        self.serving = serving
        # How logs, metrics and /readyz name this version: the model name, or name/version
        # when several versions of the model are served.
        self.label = label or model.config.name
        self.ready = False
        self.batcher = Batcher(
            self.label,
            predict or session.run,
            max_batch_size=serving.max_batch_size,
            max_wait_s=serving.max_wait_s,
            queue_size=serving.queue_size,
            retry_after_s=settings.retry_after_s,
            observer=observer,
            tracer=tracing.batch_tracer(self.label),
        )

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> int:
        return self.config.version

    @abstractmethod
    def warmup_shapes(self) -> list[tuple[int, ...]]:
        """Every input shape this pipeline will send to the session."""

    @abstractmethod
    def preprocess(self, decoded: DecodedImage) -> list[tuple[np.ndarray, float]]:
        """(network input, scale) for the image: the main input first, then any pyramid
        levels; each scale in input pixels per pixel of the full-size picture."""

    def needed_size(self, width: int, height: int) -> tuple[int, int]:
        """The fewest pixels (width, height) :meth:`preprocess` needs from a picture of
        ``width`` x ``height``: a JPEG is decoded no larger than that (default: all of them)."""
        return width, height

    def check(self, params: ParamsT) -> None:
        """Reject parameters this model cannot honour (before any image is decoded)."""

    @abstractmethod
    def answer(self, outcome: ImageOutcome, params: ParamsT) -> AnswerT:
        """One image's batch results -> its answer."""

    def warm_up(self) -> None:
        """One real inference per input shape (and bucket) before reporting ready."""
        for shape in self.warmup_shapes():
            started = time.perf_counter()
            self.session.run(np.zeros(shape, dtype=np.float32))
            elapsed_ms = (time.perf_counter() - started) * 1e3
            logger.info("model %s: warm-up %s in %.0f ms", self.name, shape, elapsed_ms)

    def prepare(self, data: bytes) -> Prepared:
        """Decode + preprocess one upload, all of it in the calling thread."""
        started = time.perf_counter()
        return self._finish(open_image(data, self.settings.max_image_pixels), started)

    def _finish(self, image: Image.Image, started: float) -> Prepared:
        """Decode the pixels of an opened image (no more of them than the model needs) and
        preprocess them."""
        needed = self.needed_size if self.settings.reduced_decode else None
        decoded = load_image(image, self.settings.max_image_pixels, needed)
        decoded_at = time.perf_counter()
        (array, scale), *levels = self.preprocess(decoded)
        return Prepared(
            array=array,
            width=decoded.width,
            height=decoded.height,
            scale=scale,
            decode_ms=(decoded_at - started) * 1000.0,
            preprocess_ms=(time.perf_counter() - decoded_at) * 1000.0,
            levels=tuple(levels),
        )

    def _decode_inline(self, image: Image.Image, size_bytes: int) -> bool:
        """Small enough to decode on the event loop? A thread-pool round trip costs more CPU
        than decoding a thumbnail (tens of microseconds), so only big images go to the pool,
        where they cannot stall the loop. Bytes are bounded too: many frames or pages of a
        small image would otherwise still be read inline."""
        limit = self.settings.inline_decode_max_pixels
        width, height = image.size
        return width * height <= limit and size_bytes <= _INLINE_BYTES_PER_PIXEL * limit + 4096

    async def _prepare(self, data: bytes, decode_pool: Executor) -> Prepared:
        started = time.perf_counter()
        image = open_image(data, self.settings.max_image_pixels)  # header only: cheap
        if self._decode_inline(image, len(data)):
            return self._finish(image, started)
        return await asyncio.get_running_loop().run_in_executor(decode_pool, self._finish, image, started)

    async def _one(
        self, index: int, upload: Upload, decode_pool: Executor, deadline: float, tag: str
    ) -> Outcome:
        try:
            with tracing.step("decode", **{"polynl.model": self.label, "polynl.image_index": index}):
                prepared = await self._prepare(upload.data, decode_pool)
        except ImageError as error:
            return FailedImage(index, upload, error)
        if not prepared.levels:
            result = await self.batcher.submit(prepared.array, deadline, tag)
            return ImageOutcome(index=index, upload=upload, prepared=prepared, result=result)
        # Pyramid levels have other shapes: submitted as a group, they run back to back.
        arrays = [prepared.array, *(array for array, _ in prepared.levels)]
        result, *level_results = await self.batcher.submit_group(arrays, deadline, tag)
        return ImageOutcome(index, upload, prepared, result, level_results=tuple(level_results))

    async def infer(
        self, uploads: Sequence[Upload], decode_pool: Executor, deadline: float, tag: str = ""
    ) -> list[Outcome]:
        """Every image of one request through decode and the batcher, concurrently.

        An image that cannot be read becomes a :class:`FailedImage` and the others go on;
        when none can be read, the first one's :class:`ImageError` is raised (the request
        fails as a whole). Any other error (overload, deadline, inference) fails the request.
        ``tag`` (the request id) labels the request's images in the batcher's logs."""
        # Under overload, refuse before decoding: a 503 should cost the server nothing.
        self.batcher.check_room()
        if len(uploads) == 1:
            # The common case needs no task per image (cancellation reaches _one directly).
            outcomes = [await self._one(0, uploads[0], decode_pool, deadline, tag)]
        else:
            tasks = [
                asyncio.ensure_future(self._one(i, u, decode_pool, deadline, tag))
                for i, u in enumerate(uploads)
            ]
            outcomes = await _first_error_or_all(tasks)
        if all(isinstance(outcome, FailedImage) for outcome in outcomes):
            first = outcomes[0]
            assert isinstance(first, FailedImage)
            raise first.error
        return outcomes


class ClassifierPipeline(ModelPipeline[ClassifyParams, Classification]):
    task = Task.CLASSIFICATION

    def _size(self) -> tuple[int, int]:
        size = self.config.preprocess.size
        if size is None:
            raise ValueError(f"classifier {self.name} has no preprocess.size in config.json")
        return size

    def warmup_shapes(self) -> list[tuple[int, ...]]:
        height, width = self._size()
        sizes = sorted({1, self.serving.max_batch_size})
        return [(n, 3, height, width) for n in sizes]

    def preprocess(self, decoded: DecodedImage) -> list[tuple[np.ndarray, float]]:
        return [(classifier_input(decoded.image, self.config.preprocess), 1.0)]

    def needed_size(self, width: int, height: int) -> tuple[int, int]:
        return classifier_needed_size(width, height, self.config.preprocess)

    def check(self, params: ClassifyParams) -> None:
        labels = len(self.config.labels)
        if params.top_k > labels:
            raise InvalidParameter(
                f"query.top_k: must be between 1 and {labels} (the number of labels of {self.name})"
            )

    def answer(self, outcome: ImageOutcome, params: ClassifyParams) -> Classification:
        logits = outcome.result.outputs[self.config.outputs[0]]
        probabilities = softmax(logits.astype(np.float64))
        labels = self.config.labels
        return Classification(
            index=outcome.index,
            filename=outcome.upload.filename,
            width=outcome.prepared.width,
            height=outcome.prepared.height,
            top_k=[
                LabelScore(id=i, label=labels[i] if i < len(labels) else str(i), probability=p)
                for i, p in top_k(probabilities, params.top_k)
            ],
        )


def _level_output(result: BatchResult, scale: float) -> LevelOutput:
    boxes, scores, landmarks = (result.outputs[name].astype(np.float32) for name in DETECTOR_OUTPUTS)
    return LevelOutput(boxes, scores, landmarks, scale)


class DetectorPipeline(ModelPipeline[DetectParams, Detection]):
    task = Task.FACE_DETECTION

    @property
    def buckets(self) -> list[tuple[int, int]]:
        """Size buckets (height, width): see :mod:`service.model_settings` for their source."""
        return list(self.serving.buckets)

    @property
    def pyramid(self) -> tuple[float, ...]:
        """Pyramid levels: the model's own ``preprocess.pyramid`` unless overridden."""
        return self.serving.pyramid

    def warmup_shapes(self) -> list[tuple[int, ...]]:
        buckets = [*self.buckets]
        for bucket in self.buckets:
            buckets += [level_bucket(bucket, factor) for factor in self.pyramid]
        return [(1, 3, h, w) for h, w in dict.fromkeys(buckets)]

    def preprocess(self, decoded: DecodedImage) -> list[tuple[np.ndarray, float]]:
        # The bucket is chosen for the full-size picture, whatever size it was decoded at;
        # a decoded pixel is ``reduction`` pixels of the picture.
        bucket = choose_bucket(decoded.width, decoded.height, self.buckets)
        inputs = pyramid_inputs(decoded.image, bucket, self.config.preprocess, self.pyramid)
        return [(boxed.tensor, boxed.scale / decoded.reduction) for boxed in inputs]

    def needed_size(self, width: int, height: int) -> tuple[int, int]:
        return letterbox_needed_size(width, height, choose_bucket(width, height, self.buckets))

    def check(self, params: DetectParams) -> None:
        if params.max_faces > self.settings.max_faces_limit:
            raise InvalidParameter(f"query.max_faces: must be between 1 and {self.settings.max_faces_limit}")

    def answer(self, outcome: ImageOutcome, params: DetectParams) -> Detection:
        prepared = outcome.prepared
        scales = [prepared.scale, *(scale for _, scale in prepared.levels)]
        boxes, scores, landmarks = merge_levels(
            [_level_output(result, scale) for result, scale in zip(outcome.all_results, scales, strict=True)]
        )
        faces = select_faces(
            boxes,
            scores,
            landmarks,
            score_threshold=params.score_threshold,
            nms_iou=params.nms_iou,
            max_faces=params.max_faces,
        )
        # merge_levels already mapped to original pixels: only the clip to the image is left.
        faces = faces_to_original(faces, 1.0, prepared.width, prepared.height)
        return Detection(
            index=outcome.index,
            filename=outcome.upload.filename,
            width=prepared.width,
            height=prepared.height,
            faces=[
                Face(
                    box=tuple(float(v) for v in box),  # type: ignore[arg-type]
                    score=float(min(1.0, max(0.0, score))),
                    landmarks=Landmarks(
                        **{
                            name: (float(point[0]), float(point[1]))
                            for name, point in zip(Landmarks.model_fields, marks, strict=True)
                        }
                    ),
                )
                for box, score, marks in zip(faces.boxes, faces.scores, faces.landmarks, strict=True)
            ],
        )

"""One model's path from upload bytes to an answer, step by step (LitServe-style).

For each image: ``prepare`` (decode + preprocess: on the event loop for thumbnails up to
``inline_decode_max_pixels``, in the decode thread pool otherwise) ->
``Batcher.submit`` (queue, batch, one ONNX Runtime call, slice) -> ``answer``
(softmax/top-k or NMS + mapping to original pixels). The routes call
:meth:`ModelPipeline.infer` and build the HTTP response; this module knows nothing about
HTTP. Preprocessing and labels come from the model's ``config.json``, never from constants.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from polynl_core.buckets import DEFAULT_BUCKETS, choose_bucket
from polynl_core.images import load_image, open_image
from polynl_core.postprocess import faces_to_original, select_faces, softmax, top_k
from polynl_core.preprocess import classifier_input
from polynl_core.pyramid import LevelOutput, level_bucket, merge_levels, pyramid_inputs
from polynl_core.repository import LoadedModel, ModelConfig
from service.batching import Batcher, BatchObserver, BatchResult, PredictFn
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
    decode_ms: float
    # Detector pyramid levels (polynl_core/pyramid.py): (array, scale) of each smaller copy.
    levels: tuple[tuple[np.ndarray, float], ...] = ()


@dataclass(frozen=True)
class ImageOutcome:
    upload: Upload
    prepared: Prepared
    result: BatchResult
    level_results: tuple[BatchResult, ...] = ()  # one per prepared.levels

    @property
    def all_results(self) -> tuple[BatchResult, ...]:
        return (self.result, *self.level_results)


def _delayed(predict: PredictFn, delay_s: float) -> PredictFn:
    """Test/drill hook (``inference_delay_ms``): a slow model without a big model."""

    def slow_predict(batch: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(delay_s)
        return predict(batch)

    return slow_predict


class InjectedFault(RuntimeError):
    """The failure ``fault_every_n_batches`` injects (never raised in normal operation)."""


def _faulty(predict: PredictFn, every: int) -> PredictFn:
    """Fault drill hook (``fault_every_n_batches``): every n-th inference call raises."""
    calls = itertools.count(1)

    def faulty_predict(batch: np.ndarray) -> dict[str, np.ndarray]:
        if next(calls) % every == 0:
            raise InjectedFault(f"injected fault (every {every} batches)")
        return predict(batch)

    return faulty_predict


async def _first_error_or_all(tasks: list[asyncio.Task[ImageOutcome]]) -> list[ImageOutcome]:
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


class ModelPipeline:
    """Shared machinery: session, batcher, decode -> batch -> answer."""

    def __init__(
        self, model: LoadedModel, session: ModelSession, settings: Settings, observer: BatchObserver
    ) -> None:
        self.model = model
        self.config: ModelConfig = model.config
        self.session = session
        self.settings = settings
        self.ready = False
        predict: PredictFn = session.run
        if settings.inference_delay_ms > 0:
            predict = _delayed(predict, settings.inference_delay_ms / 1000.0)
        if settings.fault_every_n_batches > 0:
            predict = _faulty(predict, settings.fault_every_n_batches)
        self.batcher = Batcher(
            self.config.name,
            predict,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_s,
            queue_size=settings.queue_size,
            retry_after_s=settings.retry_after_s,
            observer=observer,
        )

    @property
    def name(self) -> str:
        return self.config.name

    def warmup_shapes(self) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def preprocess(self, image: Image.Image) -> list[tuple[np.ndarray, float]]:
        """(network input, scale) for the image: the main input first, then any pyramid levels."""
        raise NotImplementedError

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
        """Decode the pixels of an opened image and preprocess them."""
        decoded = load_image(image, self.settings.max_image_pixels)
        (array, scale), *levels = self.preprocess(decoded.image)
        return Prepared(
            array=array,
            width=decoded.width,
            height=decoded.height,
            scale=scale,
            decode_ms=(time.perf_counter() - started) * 1000.0,
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

    async def _one(self, upload: Upload, decode_pool: Executor, deadline: float, tag: str) -> ImageOutcome:
        prepared = await self._prepare(upload.data, decode_pool)
        if not prepared.levels:
            result = await self.batcher.submit(prepared.array, deadline, tag)
            return ImageOutcome(upload=upload, prepared=prepared, result=result)
        # Pyramid levels have other shapes, so they ride in other batches, at the same time.
        arrays = [prepared.array, *(array for array, _ in prepared.levels)]
        submitted = [asyncio.ensure_future(self.batcher.submit(a, deadline, tag)) for a in arrays]
        try:
            result, *level_results = await asyncio.gather(*submitted)
        except BaseException:
            for future in submitted:
                future.cancel()
            raise
        return ImageOutcome(upload, prepared, result, level_results=tuple(level_results))

    async def infer(
        self, uploads: Sequence[Upload], decode_pool: Executor, deadline: float, tag: str = ""
    ) -> list[ImageOutcome]:
        """Every image of one request through decode and the batcher, concurrently.

        ``tag`` (the request id) labels the request's images in the batcher's logs."""
        # Under overload, refuse before decoding: a 503 should cost the server nothing.
        self.batcher.check_room()
        if len(uploads) == 1:
            # The common case needs no task per image (cancellation reaches _one directly).
            return [await self._one(uploads[0], decode_pool, deadline, tag)]
        tasks = [asyncio.ensure_future(self._one(u, decode_pool, deadline, tag)) for u in uploads]
        return await _first_error_or_all(tasks)


class ClassifierPipeline(ModelPipeline):
    def _size(self) -> tuple[int, int]:
        size = self.config.preprocess.size
        if size is None:
            raise ValueError(f"classifier {self.name} has no preprocess.size in config.json")
        return size

    def warmup_shapes(self) -> list[tuple[int, ...]]:
        height, width = self._size()
        sizes = sorted({1, self.settings.max_batch_size})
        return [(n, 3, height, width) for n in sizes]

    def preprocess(self, image: Image.Image) -> list[tuple[np.ndarray, float]]:
        return [(classifier_input(image, self.config.preprocess), 1.0)]

    def answer(self, index: int, outcome: ImageOutcome, k: int) -> Classification:
        logits = outcome.result.outputs[self.config.outputs[0]]
        probabilities = softmax(logits.astype(np.float64))
        labels = self.config.labels
        return Classification(
            index=index,
            filename=outcome.upload.filename,
            width=outcome.prepared.width,
            height=outcome.prepared.height,
            top_k=[
                LabelScore(id=i, label=labels[i] if i < len(labels) else str(i), probability=p)
                for i, p in top_k(probabilities, k)
            ],
        )


class DetectorPipeline(ModelPipeline):
    @property
    def buckets(self) -> list[tuple[int, int]]:
        return list(self.settings.detection_buckets or self.config.size_buckets or DEFAULT_BUCKETS)

    @property
    def pyramid(self) -> tuple[float, ...]:
        """Pyramid levels: POLYNL_DETECTOR_PYRAMID when set, else the model's config.json."""
        if self.settings.detector_pyramid is not None:
            return tuple(self.settings.detector_pyramid)
        return self.config.preprocess.pyramid

    def warmup_shapes(self) -> list[tuple[int, ...]]:
        buckets = [*self.buckets]
        for bucket in self.buckets:
            buckets += [level_bucket(bucket, factor) for factor in self.pyramid]
        return [(1, 3, h, w) for h, w in dict.fromkeys(buckets)]

    def preprocess(self, image: Image.Image) -> list[tuple[np.ndarray, float]]:
        width, height = image.size
        bucket = choose_bucket(width, height, self.buckets)
        inputs = pyramid_inputs(image, bucket, self.config.preprocess, self.pyramid)
        return [(boxed.tensor, boxed.scale) for boxed in inputs]

    def answer(
        self, index: int, outcome: ImageOutcome, score_threshold: float, nms_iou: float, max_faces: int
    ) -> Detection:
        prepared = outcome.prepared
        scales = [prepared.scale, *(scale for _, scale in prepared.levels)]
        boxes, scores, landmarks = merge_levels(
            [
                LevelOutput(
                    boxes=result.outputs["boxes"].astype(np.float32),
                    scores=result.outputs["scores"].astype(np.float32),
                    landmarks=result.outputs["landmarks"].astype(np.float32),
                    scale=scale,
                )
                for result, scale in zip(outcome.all_results, scales, strict=True)
            ]
        )
        faces = select_faces(
            boxes, scores, landmarks, score_threshold=score_threshold, nms_iou=nms_iou, max_faces=max_faces
        )
        # merge_levels already mapped to original pixels: only the clip to the image is left.
        faces = faces_to_original(faces, 1.0, prepared.width, prepared.height)
        return Detection(
            index=index,
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


def make_pipeline(
    model: LoadedModel, session: ModelSession, settings: Settings, observer: BatchObserver
) -> ModelPipeline:
    if model.config.task == "classification":
        return ClassifierPipeline(model, session, settings, observer)
    return DetectorPipeline(model, session, settings, observer)

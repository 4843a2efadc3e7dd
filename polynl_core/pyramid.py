"""Detector image pyramid: the same network on smaller copies, for faces too large for it.

The shipped detector saw faces up to about 217 px wide in training (256 x 256 composites);
a face of 300-600 px in a 640 px bucket is then missed or badly placed. Each extra level runs
the network on a copy scaled by its factor (default 1/2 and 1/4, so +25 % and +6 % of the
main pass's pixels), where such a face is back in range.

Each level answers for one band of face sizes, measured in that level's own input pixels:
below :data:`MAX_FACE` (256, the training size) except on the last level, and from
:data:`MIN_FACE` (64) up except on the main level. Adjacent bands overlap (a face of 128-256 px
at one level is 64-128 px at the next), so no size falls between levels, and small boxes,
where false positives live, come from the full-resolution pass only. The candidates of all
levels, in original-image pixels, then go through the one threshold + NMS
(:func:`polynl_core.postprocess.select_faces`).

Pure NumPy + Pillow; the service (:mod:`service.pipelines`), the evaluation
(:mod:`models.evaluate`) and the benchmarks build their inputs and merge their outputs here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from polynl_core.buckets import MIN_SIDE as _MIN_SIDE
from polynl_core.preprocess import Letterbox, fit_into, pad_into
from polynl_core.repository import Preprocess

DEFAULT_LEVELS: tuple[float, ...] = (0.5, 0.25)
MIN_FACE = 64.0  # px of a level's input: smaller boxes of an extra level are dropped
MAX_FACE = 256.0  # px of a level's input: larger boxes of a non-last level are dropped
_SKIP_RATIO = 0.75  # a level that could not shrink the image below this x the main scale adds nothing


def level_bucket(bucket: tuple[int, int], factor: float) -> tuple[int, int]:
    """The (height, width) bucket of a level: ``factor`` x the main bucket, rounded up to 32."""
    return tuple(  # type: ignore[return-value]
        max(_MIN_SIDE, math.ceil(side * factor / _MIN_SIDE) * _MIN_SIDE) for side in bucket
    )


def pyramid_inputs(
    image: Image.Image, bucket: tuple[int, int], preprocess: Preprocess, levels: Sequence[float]
) -> list[Letterbox]:
    """The main letterbox in ``bucket``, then one per level that really shrinks the image.

    The levels are scaled down from the main pass's copy, not from the upload: a large photo
    is resized once at full size, not once per level.
    """
    fitted = fit_into(image, bucket)
    inputs = [pad_into(fitted, image.size, bucket, preprocess)]
    for factor in levels:
        level = level_bucket(bucket, factor)
        smaller = pad_into(fit_into(fitted, level), image.size, level, preprocess)
        if smaller.scale <= _SKIP_RATIO * inputs[-1].scale:
            inputs.append(smaller)
    return inputs


@dataclass(frozen=True)
class LevelOutput:
    """One level's decoded detector outputs for one image, in that level's input pixels."""

    boxes: np.ndarray  # (P, 4) x1y1x2y2
    scores: np.ndarray  # (P,)
    landmarks: np.ndarray  # (P, 10)
    scale: float  # the level's input pixels per original pixel


def merge_levels(
    outputs: Sequence[LevelOutput], min_face: float = MIN_FACE, max_face: float = MAX_FACE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every level's candidates in its size band, in original-image pixels (main level first)."""
    boxes, scores, landmarks = [], [], []
    last = len(outputs) - 1
    for index, level in enumerate(outputs):
        width = level.boxes[:, 2] - level.boxes[:, 0]
        keep = np.ones(width.shape, dtype=bool)
        if index > 0:
            keep &= width >= min_face
        if index < last:
            keep &= width < max_face
        boxes.append(level.boxes[keep] / np.float32(level.scale))
        scores.append(level.scores[keep])
        landmarks.append(level.landmarks[keep].reshape(-1, 10) / np.float32(level.scale))
    return (
        np.concatenate(boxes).astype(np.float32),
        np.concatenate(scores).astype(np.float32),
        np.concatenate(landmarks).astype(np.float32),
    )


def detect_levels(
    inputs: Sequence[Letterbox], run: Callable[[np.ndarray], Sequence[np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image outside the service's batcher: ``run`` (a (1, 3, H, W) input -> boxes, scores,
    landmarks, each with the batch axis) on every input of :func:`pyramid_inputs`, merged."""
    outputs = []
    for boxed in inputs:
        boxes, scores, landmarks = (np.asarray(output)[0] for output in run(boxed.tensor[None]))
        outputs.append(LevelOutput(boxes, scores, landmarks, boxed.scale))
    return merge_levels(outputs)

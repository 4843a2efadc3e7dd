"""Image -> input tensor, written once for every consumer.

The service, the export's parity checks, the evaluation code and the tests all call these
functions, driven by the ``preprocess`` section of a model's ``config.json``
(:class:`polynl_core.repository.Preprocess`). Input images are already decoded, EXIF-rotated
and converted to RGB (see ``polynl_core/images.py``). NumPy and Pillow only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from polynl_core.repository import Preprocess


def normalize(rgb: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """HWC uint8 RGB -> CHW float32 ``(x / 255 - mean) / std``."""
    height, width = rgb.shape[:2]
    out = np.empty((3, height, width), dtype=np.float32)
    normalize_into(rgb, preprocess, out)
    return out


def normalize_into(rgb: np.ndarray, preprocess: Preprocess, out: np.ndarray) -> None:
    """:func:`normalize` written into ``out`` (a (3, H, W) float32 array or view, e.g. the
    top-left corner of a padded bucket): one fused multiply-subtract pass, no temporaries."""
    mean = np.asarray(preprocess.mean, dtype=np.float64)
    std = np.asarray(preprocess.std, dtype=np.float64)
    # (x / 255 - mean) / std == x * (1 / (255 std)) - mean / std
    gain = (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
    bias = (mean / std).astype(np.float32)[:, None, None]
    np.multiply(rgb.transpose(2, 0, 1), gain, out=out, casting="unsafe")
    out -= bias


# Largest intermediate image (in multiples of the model's input area) that classifier_input
# builds by upscaling before its centre crop; beyond it only the crop's box is resampled.
_MAX_UPSCALE_AREA = 16


def classifier_input(image: Image.Image, preprocess: Preprocess) -> np.ndarray:
    """Shorter side to the model size, centre crop, normalise: (3, H, W) float32."""
    if preprocess.size is None:
        raise ValueError("classifier preprocessing needs a fixed size")
    target_h, target_w = preprocess.size
    width, height = image.size
    scale = max(target_w / width, target_h / height)
    new_w = max(target_w, round(width * scale))
    new_h = max(target_h, round(height * scale))
    left = (new_w - target_w) // 2
    top = (new_h - target_h) // 2
    if new_w * new_h > max(width * height, _MAX_UPSCALE_AREA * target_w * target_h):
        # A sliver (1 x 100000 pixels) would be upscaled to 32 x 3200000 before the crop:
        # gigabytes from a few hundred bytes of PNG. Resample only the crop's source box
        # instead (same sampling grid; values equal to within one level of 8-bit rounding).
        sx, sy = new_w / width, new_h / height
        box = (left / sx, top / sy, (left + target_w) / sx, (top + target_h) / sy)
        image = image.resize((target_w, target_h), Image.Resampling.BILINEAR, box=box)
        return normalize(np.asarray(image, dtype=np.uint8), preprocess)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    image = image.crop((left, top, left + target_w, top + target_h))
    return normalize(np.asarray(image, dtype=np.uint8), preprocess)


def classifier_needed_size(width: int, height: int, preprocess: Preprocess) -> tuple[int, int]:
    """The fewest pixels (width, height) :func:`classifier_input` uses from a picture of that
    size: its shorter side (relative to the input) at the input size. A JPEG may be decoded
    this small (``polynl_core.images.load_image``'s ``min_size``)."""
    if preprocess.size is None:
        raise ValueError("classifier preprocessing needs a fixed size")
    target_h, target_w = preprocess.size
    scale = max(target_w / width, target_h / height)
    return math.ceil(width * scale), math.ceil(height * scale)


def letterbox_needed_size(width: int, height: int, bucket: tuple[int, int]) -> tuple[int, int]:
    """The fewest pixels (width, height) :func:`letterbox` uses from a picture of that size in
    ``bucket``: the picture as it sits in the bucket (never upscaled)."""
    bucket_h, bucket_w = bucket
    scale = min(1.0, bucket_h / height, bucket_w / width)
    return math.ceil(width * scale), math.ceil(height * scale)


@dataclass(frozen=True)
class Letterbox:
    """Where an original image sits inside its size bucket."""

    tensor: np.ndarray  # (3, bucket_h, bucket_w) float32
    scale: float  # bucket pixels per original pixel
    original_size: tuple[int, int]  # (width, height)
    bucket: tuple[int, int]  # (height, width)


def fit_into(image: Image.Image, bucket: tuple[int, int]) -> Image.Image:
    """The image scaled to fit the (height, width) bucket, aspect kept, never upscaled."""
    bucket_h, bucket_w = bucket
    width, height = image.size
    scale = min(1.0, bucket_h / height, bucket_w / width)
    new_w = min(bucket_w, max(1, round(width * scale)))
    new_h = min(bucket_h, max(1, round(height * scale)))
    if (new_w, new_h) == (width, height):
        return image
    return image.resize((new_w, new_h), Image.Resampling.BILINEAR)


def pad_into(
    fitted: Image.Image, original_size: tuple[int, int], bucket: tuple[int, int], preprocess: Preprocess
) -> Letterbox:
    """A fitted image (:func:`fit_into`) pasted top-left into its bucket, padded and normalised."""
    bucket_h, bucket_w = bucket
    new_w, new_h = fitted.size
    tensor = np.full((3, bucket_h, bucket_w), preprocess.pad_value, dtype=np.float32)
    normalize_into(np.asarray(fitted, dtype=np.uint8), preprocess, tensor[:, :new_h, :new_w])
    # The exact scale actually applied on each axis can differ by rounding; use the x/y mean
    # of the realised scales so the mapping back is exact to within a fraction of a pixel.
    width, height = original_size
    realised = ((new_w / width) + (new_h / height)) / 2.0
    return Letterbox(tensor=tensor, scale=realised, original_size=original_size, bucket=bucket)


def letterbox(image: Image.Image, bucket: tuple[int, int], preprocess: Preprocess) -> Letterbox:
    """Scale to fit the bucket (aspect kept, never upscaled), paste top-left, pad, normalise.

    A point (x, y) in the bucket maps to (x / scale, y / scale) in the original image.
    """
    return pad_into(fit_into(image, bucket), image.size, bucket, preprocess)

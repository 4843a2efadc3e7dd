"""Detector size buckets: the (height, width) inputs images are letterboxed into.

One default for the export and the service (:data:`DEFAULT_BUCKETS`), one parser of the
``HxW`` notation used by the CLIs and the ``POLYNL_*`` variables, and the choice of a bucket
for an image (:func:`choose_bucket`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Bucket = tuple[int, int]  # (height, width)

# Square buckets for typical photos, plus landscape and portrait 4:3.
DEFAULT_BUCKETS: tuple[Bucket, ...] = ((320, 320), (480, 640), (640, 480), (640, 640))
MIN_SIDE = 32  # the detector's largest stride

_HXW = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_bucket(text: str) -> Bucket:
    """``"480x640"`` -> ``(480, 640)``; ValueError when it is not ``HxW`` of at least 32x32."""
    match = _HXW.match(text)
    if match is None:
        raise ValueError(f"bucket {text.strip()!r} is not HEIGHTxWIDTH, e.g. 480x640")
    bucket = (int(match.group(1)), int(match.group(2)))
    check_buckets([bucket])
    return bucket


def parse_buckets(text: str) -> list[Bucket]:
    """``"320x320,480x640"`` -> ``[(320, 320), (480, 640)]`` (empty parts ignored)."""
    return [parse_bucket(part) for part in text.split(",") if part.strip()]


def format_buckets(buckets: Sequence[Bucket]) -> str:
    return ",".join(f"{h}x{w}" for h, w in buckets)


def check_buckets(buckets: Sequence[Sequence[int]]) -> list[Bucket]:
    if any(len(b) != 2 or b[0] < MIN_SIDE or b[1] < MIN_SIDE for b in buckets):
        raise ValueError(f"size buckets must be HEIGHTxWIDTH of at least {MIN_SIDE}x{MIN_SIDE}")
    return [(int(b[0]), int(b[1])) for b in buckets]


def choose_bucket(width: int, height: int, buckets: Sequence[Bucket]) -> Bucket:
    """The smallest bucket that holds the image unscaled, else the one keeping the most pixels.

    Buckets are (height, width). Ties go to the smaller bucket (less padding, less compute).
    """
    if not buckets:
        raise ValueError("no size buckets configured")

    def kept_scale(bucket: Bucket) -> float:
        return min(1.0, bucket[0] / height, bucket[1] / width)

    return max(buckets, key=lambda b: (kept_scale(b), -b[0] * b[1]))

"""Detector outputs in bucket pixels map back to the original image exactly.

A known face box drawn in the original image is letterboxed with the one preprocessing
function (``polynl_core.preprocess.letterbox``); the box in bucket pixels is where the scaled
image puts it; ``faces_to_original`` must give the drawn box back.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from polynl_core.buckets import choose_bucket
from polynl_core.postprocess import Faces, faces_to_original
from polynl_core.preprocess import letterbox
from polynl_core.repository import Preprocess

PREPROCESS = Preprocess(resize="letterbox", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
BUCKETS = [(320, 320), (480, 640), (640, 480), (640, 640)]


def one_face(box: list[float], landmarks: list[float]) -> Faces:
    return Faces(
        boxes=np.asarray([box], dtype=np.float32),
        scores=np.asarray([0.9], dtype=np.float32),
        landmarks=np.asarray([landmarks], dtype=np.float32).reshape(1, 5, 2),
    )


@pytest.mark.parametrize(
    "size", [(1280, 960), (1000, 333), (300, 200), (640, 640), (4032, 3024), (777, 1301)]
)
def test_known_box_maps_back_to_original_pixels(size: tuple[int, int]) -> None:
    width, height = size
    original_box = [0.21 * width, 0.33 * height, 0.47 * width, 0.71 * height]
    original_marks = [0.3 * width, 0.4 * height, 0.4 * width, 0.4 * height, 0.35 * width, 0.5 * height,
                      0.31 * width, 0.6 * height, 0.39 * width, 0.6 * height]  # fmt: skip
    image = Image.new("RGB", (width, height))
    boxed = letterbox(image, choose_bucket(width, height, BUCKETS), PREPROCESS)
    # Where the resized image really puts these points inside the bucket (per-axis scale).
    new_w = min(
        boxed.bucket[1], max(1, round(width * min(1.0, boxed.bucket[0] / height, boxed.bucket[1] / width)))
    )
    new_h = min(
        boxed.bucket[0], max(1, round(height * min(1.0, boxed.bucket[0] / height, boxed.bucket[1] / width)))
    )
    sx, sy = new_w / width, new_h / height
    in_bucket = one_face(
        [original_box[0] * sx, original_box[1] * sy, original_box[2] * sx, original_box[3] * sy],
        [v * (sx if i % 2 == 0 else sy) for i, v in enumerate(original_marks)],
    )
    mapped = faces_to_original(in_bucket, boxed.scale, width, height)
    # Exact up to the sub-pixel rounding of the resized size (< 1 original pixel).
    np.testing.assert_allclose(mapped.boxes[0], original_box, atol=1.0)
    np.testing.assert_allclose(mapped.landmarks[0].reshape(-1), original_marks, atol=1.0)


def test_unscaled_image_maps_back_bit_exactly() -> None:
    boxed = letterbox(Image.new("RGB", (300, 200)), (320, 320), PREPROCESS)
    assert boxed.scale == 1.0
    mapped = faces_to_original(
        one_face([10.5, 20.25, 100.0, 150.75], [20.0, 30.0] * 5), boxed.scale, 300, 200
    )
    assert mapped.boxes[0].tolist() == [10.5, 20.25, 100.0, 150.75]


def test_scale_divides_coordinates() -> None:
    mapped = faces_to_original(one_face([50, 25, 100, 75], [60, 40] * 5), 0.5, 1000, 1000)
    assert mapped.boxes[0].tolist() == [100, 50, 200, 150]
    assert mapped.landmarks[0].tolist() == [[120, 80]] * 5


def test_boxes_reaching_into_the_padding_are_clipped_to_the_image() -> None:
    # Image 200x100 in a 320x320 bucket: everything right of x=200 or below y=100 is padding.
    mapped = faces_to_original(
        one_face([-5, -3, 250, 180], [210, 120, 5, 5, 5, 5, 5, 5, 5, 5]), 1.0, 200, 100
    )
    assert mapped.boxes[0].tolist() == [0, 0, 200, 100]
    assert mapped.landmarks[0][0].tolist() == [200, 100]


def test_empty_detections_stay_empty() -> None:
    empty = Faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
    mapped = faces_to_original(empty, 0.5, 100, 100)
    assert mapped.boxes.shape == (0, 4) and mapped.landmarks.shape == (0, 5, 2)

"""polynl_core.pyramid: which smaller copies are made, and which boxes each level answers for."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from polynl_core.pyramid import MAX_FACE, MIN_FACE, LevelOutput, level_bucket, merge_levels, pyramid_inputs
from polynl_core.repository import Preprocess

PREPROCESS = Preprocess(resize="letterbox", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_level_buckets_are_the_scaled_bucket_rounded_up_to_the_stride() -> None:
    assert level_bucket((480, 640), 0.5) == (256, 320)
    assert level_bucket((480, 640), 0.25) == (128, 160)
    assert level_bucket((100, 100), 0.1) == (32, 32)


def test_levels_that_cannot_shrink_the_image_are_skipped() -> None:
    large = Image.new("RGB", (600, 400))
    scales = [b.scale for b in pyramid_inputs(large, (480, 640), PREPROCESS, (0.5, 0.25))]
    assert scales[0] == pytest.approx(1.0)
    assert scales[1:] == pytest.approx([320 / 600, 160 / 600], abs=0.01)  # buckets 256x320, 128x160
    # A thumbnail already fits the smaller buckets unscaled: no level would see it smaller.
    thumbnail = Image.new("RGB", (60, 40))
    assert len(pyramid_inputs(thumbnail, (480, 640), PREPROCESS, (0.5, 0.25))) == 1
    assert len(pyramid_inputs(large, (480, 640), PREPROCESS, ())) == 1


def _level(widths: list[float], scale: float) -> LevelOutput:
    boxes = np.asarray([[10, 10, 10 + w, 10 + w] for w in widths], dtype=np.float32)
    return LevelOutput(
        boxes, np.full(len(widths), 0.9, np.float32), np.zeros((len(widths), 10), np.float32), scale
    )


def test_each_level_answers_for_its_band_of_face_sizes_in_original_pixels() -> None:
    small, mid, large = MIN_FACE / 2, (MIN_FACE + MAX_FACE) / 2, MAX_FACE * 1.5
    boxes, scores, landmarks = merge_levels(
        [
            _level([small, mid, large], 1.0),
            _level([small, mid, large], 0.5),
            _level([small, mid, large], 0.25),
        ]
    )
    widths = (boxes[:, 2] - boxes[:, 0]).tolist()
    # main: small and mid (not large); middle level: mid only; last level: mid and large.
    assert widths == pytest.approx([small, mid, mid * 2, mid * 4, large * 4])
    assert boxes[2, 0] == pytest.approx(20.0)  # 10 px in a half-size copy = 20 px in the original
    assert scores.shape == (5,) and landmarks.shape == (5, 10)


def test_one_level_keeps_every_box() -> None:
    boxes, _, _ = merge_levels([_level([5.0, 500.0], 2.0)])
    assert (boxes[:, 2] - boxes[:, 0]).tolist() == pytest.approx([2.5, 250.0])

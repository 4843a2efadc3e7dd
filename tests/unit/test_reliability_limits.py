"""Cheap refusals stay cheap: slivers do not explode in preprocessing; a full queue refuses
before any decode (polynl_core/preprocess.py, service/batching.py)."""

from __future__ import annotations

import asyncio
import resource
import time

import numpy as np
import pytest
from PIL import Image

from polynl_core.preprocess import classifier_input
from polynl_core.repository import Preprocess
from service.batching import Batcher
from service.errors import NotReady, ServiceOverloaded

CIFAR = Preprocess(
    resize="shorter_side_center_crop", size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
)


def reference_input(image: Image.Image, size: int = 32) -> np.ndarray:
    """Shorter side to ``size``, then the centre crop: the full intermediate image, built naively."""
    width, height = image.size
    scale = max(size / width, size / height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = np.asarray(image.resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.float32)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    crop = resized[top : top + size, left : left + size] / 255.0
    return ((crop - 0.5) / 0.25).transpose(2, 0, 1)


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("size", [(1, 3000), (3000, 1), (2, 900), (5, 4000)])
def test_a_sliver_is_preprocessed_like_the_naive_path_within_one_grey_level(size: tuple[int, int]) -> None:
    image = random_image(*size)
    got = classifier_input(image, CIFAR)
    assert got.shape == (3, 32, 32)
    # One 8-bit level is 1/255/std = 0.0157 in normalised units.
    np.testing.assert_allclose(got, reference_input(image), atol=1.01 / 255 / 0.25)


@pytest.mark.parametrize("size", [(64, 48), (640, 480), (20, 16), (33, 31), (1, 1)])
def test_ordinary_images_are_preprocessed_exactly_as_before(size: tuple[int, int]) -> None:
    image = random_image(*size)
    # Same pixels; normalisation fused into one multiply-subtract: equal to float32 rounding.
    expected = reference_input(image).astype(np.float32)
    np.testing.assert_allclose(classifier_input(image, CIFAR), expected, rtol=0, atol=1e-5)


def test_a_million_pixel_sliver_costs_milliseconds_not_gigabytes() -> None:
    image = Image.new("RGB", (1, 1_000_000), (200, 100, 50))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    tensor = classifier_input(image, CIFAR)
    assert time.perf_counter() - started < 2.0
    # Naively: a 32 x 32,000,000 RGB intermediate, 3 GB.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100_000  # kB
    assert np.allclose(tensor[0], (200 / 255 - 0.5) / 0.25)


def test_check_room_refuses_a_full_or_stopped_queue_without_queueing() -> None:
    async def scenario() -> None:
        batcher = Batcher("m", lambda b: {"out": b}, max_batch_size=1, max_wait_s=0.0, queue_size=1)
        with pytest.raises(NotReady):
            batcher.check_room()  # not started
        batcher.start()
        batcher.check_room()  # room
        batcher._set_depth(1)  # as if one image were queued
        with pytest.raises(ServiceOverloaded) as refused:
            batcher.check_room()
        assert refused.value.headers["Retry-After"] == "1"
        assert batcher.depth == 1
        batcher._set_depth(0)
        await batcher.stop(timeout_s=1.0)
        with pytest.raises(NotReady):
            batcher.check_room()

    asyncio.run(scenario())

"""Upload bytes -> RGB (polynl_core/images.py): conversions, orientation, limits, errors."""

from __future__ import annotations

import time

import image_cases
import numpy as np
import pytest
from PIL import Image

from polynl_core.images import CorruptImage, EmptyImage, ImageTooLarge, UnsupportedImage, decode_image

LIMIT = 40_000_000


@pytest.mark.parametrize("name", sorted(image_cases.CONVERTIBLE))
def test_unusual_modes_and_containers_become_rgb(name: str) -> None:
    decoded = decode_image(image_cases.CONVERTIBLE[name](), LIMIT)
    assert decoded.image.mode == "RGB"
    assert decoded.width >= 1 and decoded.height >= 1


def test_exif_orientation_is_applied() -> None:
    decoded = decode_image(image_cases.exif_rotated_jpeg(40, 20, orientation=6), LIMIT)
    assert (decoded.width, decoded.height) == (20, 40)


def test_sixteen_bit_grey_is_rescaled_not_clipped() -> None:
    decoded = decode_image(image_cases.png_16bit_grey(0x8080), LIMIT)
    assert decoded.original_mode.startswith("I")
    assert np.asarray(decoded.image)[0, 0].tolist() == [128, 128, 128]


def test_transparent_pixels_are_composited_on_white() -> None:
    transparent = np.asarray(decode_image(image_cases.rgba_png(alpha=0), LIMIT).image)
    opaque = np.asarray(decode_image(image_cases.rgba_png(alpha=255), LIMIT).image)
    assert transparent[0, 0].tolist() == [255, 255, 255]
    assert opaque[0, 0].tolist() == [255, 0, 0]


def test_animated_gif_gives_its_first_frame() -> None:
    first = np.asarray(decode_image(image_cases.animated_gif(), LIMIT).image)
    assert first[0, 0].tolist() == [255, 0, 0]


def test_multipage_tiff_gives_its_first_page() -> None:
    decoded = decode_image(image_cases.multipage_tiff(), LIMIT)
    assert (decoded.width, decoded.height) == (30, 20)


def test_cmyk_colours_survive_conversion() -> None:
    original = np.asarray(image_cases.gradient(), dtype=np.int16)
    converted = np.asarray(decode_image(image_cases.cmyk_jpeg(), LIMIT).image, dtype=np.int16)
    assert np.abs(converted - original).mean() < 12  # JPEG loss only, no inverted channels


def test_pixel_bomb_is_rejected_from_the_header_without_decoding() -> None:
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge):
        decode_image(image_cases.png_bomb(50_000, 50_000), LIMIT)
    assert time.perf_counter() - started < 0.5


def test_pixel_limit_is_the_configured_one() -> None:
    data = image_cases.png(100, 100)
    assert decode_image(data, 10_000).width == 100
    with pytest.raises(ImageTooLarge):
        decode_image(data, 9_999)


def test_pillow_hard_limit_is_reported_as_too_large() -> None:
    # Far above Pillow's own guard (2x MAX_IMAGE_PIXELS): Image.open itself refuses.
    with pytest.raises(ImageTooLarge):
        decode_image(image_cases.png_bomb(400_000, 400_000), 10**12)


@pytest.mark.parametrize("data", [image_cases.truncated_jpeg(), image_cases.truncated_png()])
def test_truncated_images_are_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptImage):
        decode_image(data, LIMIT)


@pytest.mark.parametrize("data", [image_cases.not_an_image(), b"\x00" * 100, b"GIF89a"])
def test_bytes_that_are_no_image_are_unsupported(data: bytes) -> None:
    with pytest.raises((UnsupportedImage, CorruptImage)):
        decode_image(data, LIMIT)


def test_plain_text_is_unsupported() -> None:
    with pytest.raises(UnsupportedImage):
        decode_image(image_cases.not_an_image(), LIMIT)


def test_zero_bytes_are_an_empty_body() -> None:
    with pytest.raises(EmptyImage):
        decode_image(b"", LIMIT)


def test_decoded_image_is_independent_of_the_input_buffer() -> None:
    data = bytearray(image_cases.png(8, 8))
    decoded = decode_image(bytes(data), LIMIT)
    assert isinstance(decoded.image, Image.Image)
    assert decoded.format == "PNG"

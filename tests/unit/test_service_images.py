"""Upload bytes -> RGB (polynl_core/images.py): conversions, orientation, limits, errors."""

from __future__ import annotations

import io
import time

import image_cases
import numpy as np
import pytest
from PIL import Image

from polynl_core.images import (
    CorruptImage,
    EmptyImage,
    ImageTooLarge,
    UnsupportedImage,
    decode_image,
    load_image,
    open_image,
)

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


def _jpeg(size: tuple[int, int], orientation: int | None = None) -> bytes:
    image = Image.radial_gradient("L").resize(size).convert("RGB")
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


@pytest.mark.parametrize(
    ("size", "orientation", "min_size", "reduction", "decoded", "picture"),
    [
        ((2000, 1500), None, (200, 150), 8, (250, 188), (2000, 1500)),
        ((2000, 1500), None, (600, 450), 2, (1000, 750), (2000, 1500)),
        ((2000, 1500), None, (1999, 1500), 1, (2000, 1500), (2000, 1500)),
        # Stored 2000x1000, shown rotated (EXIF 6): the minimum is in display orientation.
        ((2000, 1000), 6, (250, 500), 4, (250, 500), (1000, 2000)),
        ((2000, 1000), 6, (500, 250), 2, (500, 1000), (1000, 2000)),
    ],
)
def test_a_jpeg_is_decoded_no_larger_than_needed(
    size: tuple[int, int],
    orientation: int | None,
    min_size: tuple[int, int],
    reduction: int,
    decoded: tuple[int, int],
    picture: tuple[int, int],
) -> None:
    data = _jpeg(size, orientation)
    result = load_image(open_image(data, 40_000_000), 40_000_000, lambda width, height: min_size)
    assert (result.reduction, result.image.size, result.size) == (reduction, decoded, picture)
    assert result.image.size[0] >= min_size[0] and result.image.size[1] >= min_size[1]
    full = decode_image(data, 40_000_000)
    assert full.size == picture and full.reduction == 1
    # The reduced decode is the full one, averaged: compare after the same downscale.
    small = np.asarray(full.image.resize(result.image.size, Image.Resampling.BOX), dtype=np.float64)
    assert np.abs(small - np.asarray(result.image, dtype=np.float64)).mean() < 3.0


def test_only_jpegs_are_decoded_reduced() -> None:
    out = io.BytesIO()
    Image.new("RGB", (800, 800), (10, 20, 30)).save(out, "PNG")
    result = load_image(open_image(out.getvalue(), 40_000_000), 40_000_000, lambda width, height: (100, 100))
    assert (result.reduction, result.image.size, result.size) == (1, (800, 800), (800, 800))

"""Odd and hostile images, generated in memory (shared by the service's unit and integration tests).

Each function returns the encoded bytes. Importable from any test because ``tests/`` holds
the root ``conftest.py`` (pytest puts it on ``sys.path``).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    """An RGB image with distinct values everywhere (so crops and resizes are visible)."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, mode="RGB")


def jpeg(width: int = 64, height: int = 48) -> bytes:
    return encode(gradient(width, height), "JPEG", quality=90)


def png(width: int = 64, height: int = 48) -> bytes:
    return encode(gradient(width, height), "PNG")


def noise_png(width: int = 200, height: int = 200, seed: int = 0) -> bytes:
    """Incompressible pixels: the PNG is about 3 bytes per pixel."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "PNG")


def truncated_jpeg() -> bytes:
    data = jpeg(256, 256)
    return data[: len(data) // 2]


def truncated_png() -> bytes:
    data = png(256, 256)
    return data[: len(data) // 2]


def not_an_image() -> bytes:
    return b"this is plain text, not an image\n" * 20


def cmyk_jpeg() -> bytes:
    return encode(gradient().convert("CMYK"), "JPEG")


def png_16bit_grey(value: int = 0x8080) -> bytes:
    array = np.full((40, 30), value, dtype=np.uint16)
    return encode(Image.fromarray(array), "PNG")  # uint16 -> mode I;16


def palette_png(transparent: bool = False) -> bytes:
    image = gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    options = {"transparency": 0} if transparent else {}
    return encode(image, "PNG", **options)


def rgba_png(alpha: int = 0) -> bytes:
    """Pure red with the given alpha everywhere: a transparent image must come out white."""
    image = Image.new("RGBA", (20, 10), (255, 0, 0, alpha))
    return encode(image, "PNG")


def la_png() -> bytes:
    return encode(Image.new("LA", (20, 10), (100, 255)), "PNG")


def grey_jpeg() -> bytes:
    return encode(gradient().convert("L"), "JPEG")


def bilevel_png() -> bytes:
    return encode(gradient().convert("1"), "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (30, 20), color) for color in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def multipage_tiff() -> bytes:
    pages = [Image.new("RGB", (30, 20), (255, 0, 0)), Image.new("RGB", (60, 40), (0, 0, 255))]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def webp() -> bytes:
    return encode(gradient(), "WEBP")


def exif_rotated_jpeg(width: int = 40, height: int = 20, orientation: int = 6) -> bytes:
    """Stored ``width x height``; EXIF says rotate 90 degrees, so it shows ``height x width``."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(gradient(width, height), "JPEG", exif=exif.tobytes())


def one_pixel_png() -> bytes:
    return encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG")


def thin_png(width: int = 1, height: int = 20000) -> bytes:
    return encode(Image.new("RGB", (width, height), (200, 100, 50)), "PNG")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png(header: bytes, rows: bytes) -> bytes:
    """A PNG file from its IHDR content and its compressed scanlines."""
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny PNG whose header claims ``width x height`` RGB pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * min(width, 1024)))
    return _png(header, rows)


def random_bytes(size: int = 4096, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def png_16bit_rgb(width: int = 8, height: int = 4, alpha: bool = False) -> bytes:
    """48-bit RGB (or 64-bit RGBA) PNG, written by hand: Pillow cannot save these depths."""
    channels = 4 if alpha else 3
    header = struct.pack(">IIBBBBB", width, height, 16, 6 if alpha else 2, 0, 0, 0)
    row = np.full((width, channels), 0x8080, dtype=">u2").tobytes()
    rows = zlib.compress(b"".join(b"\x00" + row for _ in range(height)))
    return _png(header, rows)


def jpeg_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A small valid JPEG whose frame header (SOF0) is patched to claim ``width x height``."""
    data = bytearray(encode(gradient(16, 16), "JPEG", quality=50))
    sof = data.index(b"\xff\xc0")
    # SOF0: marker(2) length(2) precision(1) height(2) width(2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_bomb(width: int = 65_535, height: int = 65_535) -> bytes:
    """A small GIF whose logical screen claims ``width x height``."""
    data = bytearray(encode(Image.new("P", (4, 4), 1), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


# Valid images in unusual modes/containers: all must decode to RGB.
CONVERTIBLE = {
    "cmyk_jpeg": cmyk_jpeg,
    "png_16bit_grey": png_16bit_grey,
    "palette_png": palette_png,
    "palette_png_transparent": lambda: palette_png(transparent=True),
    "rgba_png": rgba_png,
    "la_png": la_png,
    "grey_jpeg": grey_jpeg,
    "bilevel_png": bilevel_png,
    "animated_gif": animated_gif,
    "multipage_tiff": multipage_tiff,
    "webp": webp,
    "exif_rotated_jpeg": exif_rotated_jpeg,
    "one_pixel_png": one_pixel_png,
    "thin_png": thin_png,
}

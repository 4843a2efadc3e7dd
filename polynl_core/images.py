"""Image bytes -> checked, oriented 8-bit RGB: the first step of the data path.

The one decoder of the project: the service decodes uploads with it, and the evaluation, the
export's parity check and the benchmarks read files with :func:`read_rgb`, so all of them see
the same pixels for the same file. Knows nothing about HTTP or models. It enforces the pixel
limit from the image header before any pixel is decoded (decompression bombs), applies the
EXIF orientation, takes the first frame of animated or multi-page files, and converts every
colour mode (CMYK, 16-bit, palette, alpha, LA, I;16, float...) to 8-bit RGB instead of
rejecting it (transparent pixels are composited on white).

A consumer that needs far fewer pixels than a JPEG has (a 32x32 classifier, a 640x640
detector bucket, given a 12-megapixel photo) passes ``needed`` to :func:`load_image` /
:func:`decode_image`: given the picture's (width, height) it says the fewest pixels the
consumer uses (``polynl_core.preprocess``'s ``*_needed_size``), and the JPEG is decoded at 1/2,
1/4 or 1/8 scale in the DCT domain (libjpeg's own scaling, through Pillow's ``draft``), the
largest reduction that keeps both sides at least that. The result says by how much
(``reduction``) and keeps the original size, so that coordinates map back exactly.

Failures raise an :class:`ImageError` whose ``code`` says what went wrong
(``empty_body``, ``unsupported_image``, ``corrupt_image``, ``image_too_large``);
``service/errors.py`` maps each code to its HTTP status in one table.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_WHITE = (255, 255, 255)
# Files the evaluation, the parity check and the training data readers take as images.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# read_rgb's pixel limit: local files are trusted more than uploads, but not without bound.
FILE_MAX_PIXELS = 200_000_000


class ImageError(ValueError):
    """Bytes that do not make a usable image; ``code`` is stable (the service's error code)."""

    code = "image_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EmptyImage(ImageError):
    code = "empty_body"


class UnsupportedImage(ImageError):
    """Not an image in a format Pillow decodes."""

    code = "unsupported_image"


class CorruptImage(ImageError):
    """The format was recognised, the pixels cannot be decoded (truncated, corrupt)."""

    code = "corrupt_image"


class ImageTooLarge(ImageError):
    """More pixels than the limit (checked from the header, before decoding)."""

    code = "image_too_large"


# (width, height) of a picture -> the fewest (width, height) pixels its consumer needs.
NeededSize = Callable[[int, int], tuple[int, int]]


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, EXIF orientation applied; ``reduction`` times smaller than ``size``
    format: str  # what Pillow identified ("JPEG", "PNG", ...)
    original_mode: str
    size: tuple[int, int]  # (width, height) of the full-size picture, EXIF orientation applied
    reduction: int = 1  # original pixels per decoded pixel along each axis (1, 2, 4 or 8)

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]


# EXIF orientations that swap width and height (transpose, 90 degrees, transverse, 270 degrees).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_ORIENTATION_TAG = 0x0112


def _swaps_axes(image: Image.Image) -> bool:
    try:
        return image.getexif().get(_ORIENTATION_TAG) in _SWAPPING_ORIENTATIONS
    except Exception:  # a broken EXIF block: exif_transpose will ignore it as well
        return False


def display_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image once its EXIF orientation is applied (header only)."""
    width, height = image.size
    return (height, width) if _swaps_axes(image) else (width, height)


def can_reduce(image: Image.Image) -> bool:
    """Whether :func:`load_image` can decode this opened image smaller (a JPEG)."""
    return image.format == "JPEG"


def _reduce_jpeg(image: Image.Image, min_size: tuple[int, int]) -> int:
    """Ask libjpeg for a DCT-scaled decode that keeps both sides >= ``min_size`` (display
    orientation); the reduction it chose (1 when it cannot reduce)."""
    width, height = min_size
    if _swaps_axes(image):
        width, height = height, width
    stored_width = image.size[0]
    drafted = image.draft(image.mode, (max(1, width), max(1, height)))
    if drafted is None:
        return 1
    return max(1, round(stored_width / drafted[1][2]))


def allow_pixels(max_image_pixels: int) -> None:
    """Keep Pillow's global bomb guard (a hard error at 2x its value) from firing before the
    service's own check, which gives the clearer 413: lift it to never below ours."""
    if Image.MAX_IMAGE_PIXELS is not None and max_image_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_image_pixels


def _open(data: bytes, max_image_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image has more than {max_image_pixels} pixels") from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedImage("the upload is not an image in a supported format") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Formats whose header parser fails on garbage raise these instead.
        raise UnsupportedImage("the upload is not an image in a supported format") from exc


def _check_pixels(image: Image.Image, max_image_pixels: int) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise CorruptImage("image has an empty size")
    if width * height > max_image_pixels:
        raise ImageTooLarge(f"image is {width}x{height}, more than the {max_image_pixels} pixels accepted")


def _rescale_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """High bit depth / float grey -> 8 bits, keeping the full range visible (not clipped)."""
    if mode.startswith("I;16"):
        return (array.astype(np.uint32) // 257).astype(np.uint8)
    if mode == "F":
        values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0 if values.max() <= 255.0 else values.max()
        return np.clip(values / top * 255.0, 0, 255).astype(np.uint8)
    # "I" (32-bit int): 16-bit PNGs open in this mode on some Pillow versions.
    peak = int(array.max(initial=0))
    top = 255 if peak <= 255 else 65535 if peak <= 65535 else peak
    return np.clip(array.astype(np.float64) * (255.0 / top), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparent pixels are composited on white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "F") or mode.startswith("I;16"):
        grey = Image.fromarray(_rescale_to_uint8(np.asarray(image), mode), mode="L")
        return grey.convert("RGB")
    if mode == "P":
        # Palette images may carry transparency in the palette; go through RGBA then.
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode == "RGB":
        return image
    return image.convert("RGB")


def open_image(data: bytes, max_image_pixels: int) -> Image.Image:
    """Bytes -> an image whose header is read and within the pixel limit; no pixel decoded.

    Cheap (header only), so the service calls it on the event loop and then decides, from
    the size, whether the decode itself is small enough to run there too."""
    if not data:
        raise EmptyImage("the image is empty (0 bytes)")
    image = _open(data, max_image_pixels)
    _check_pixels(image, max_image_pixels)
    return image


def decode_image(data: bytes, max_image_pixels: int, needed: NeededSize | None = None) -> DecodedImage:
    """Bytes -> RGB image, or an :class:`ImageError` (``needed``: see :func:`load_image`)."""
    return load_image(open_image(data, max_image_pixels), max_image_pixels, needed)


def load_image(image: Image.Image, max_image_pixels: int, needed: NeededSize | None = None) -> DecodedImage:
    """An image from :func:`open_image` -> RGB image, or an :class:`ImageError` (decodes the pixels).

    ``needed``: the fewest pixels the caller uses from a picture of a given (width, height,
    after EXIF orientation); a JPEG is then decoded no larger (see the module docstring)."""
    image_format = str(image.format or "unknown")
    original_mode = image.mode
    original_size = display_size(image)
    try:
        reduction = 1
        if needed is not None and can_reduce(image):
            reduction = _reduce_jpeg(image, needed(*original_size))
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)  # animated / multi-page: the first frame is the picture
        image.load()
        image = ImageOps.exif_transpose(image) or image
        rgb = to_rgb(image)
        rgb.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image has more than {max_image_pixels} pixels") from exc
    except (OSError, SyntaxError, ValueError, IndexError, EOFError) as exc:
        # Truncated data, broken chunks, bad EXIF: the format was recognised but is unusable.
        raise CorruptImage(f"the {image_format} image cannot be decoded (truncated or corrupt)") from exc
    _check_pixels(rgb, max_image_pixels)
    if reduction == 1:
        original_size = rgb.size  # what was decoded is the picture (EXIF applied or not)
    return DecodedImage(
        image=rgb, format=image_format, original_mode=original_mode, size=original_size, reduction=reduction
    )


def read_rgb(source: str | Path | bytes, max_image_pixels: int = FILE_MAX_PIXELS) -> Image.Image:
    """A file (or its bytes) decoded exactly as the service decodes an upload: RGB image."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return decode_image(data, max_image_pixels).image

"""Classification data: an ImageFolder-style tree (``root/<class>/<image>``), or a .tar.gz of one.

The whole set is decoded once into a uint8 array (N, H, W, 3) at the model's input size,
using the served transform (:func:`polynl_core.preprocess.classifier_input` geometry: shorter
side to the size, centre crop) and cached as ``.npz`` next to the run, so epochs cost no
JPEG decoding. CIFAR-10 (50,000 images of 32x32) takes 150 MB this way.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from polynl_core.images import IMAGE_SUFFIXES, read_rgb

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    labels: np.ndarray  # (N,) int64
    classes: list[str]


def _find_root(path: Path) -> Path:
    """The folder whose sub-folders are the classes (skips single wrapper folders)."""
    while True:
        subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
        files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if len(subdirs) == 1 and not files:
            inner = subdirs[0]
            if any(p.is_dir() for p in inner.iterdir()):
                path = inner
                continue
        return path


def fit_to_size(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Shorter side to ``size`` then centre crop: the served classifier geometry, uint8 RGB."""
    target_h, target_w = size
    image = image.convert("RGB")
    width, height = image.size
    if (width, height) != (target_w, target_h):
        scale = max(target_w / width, target_h / height)
        new_w, new_h = max(target_w, round(width * scale)), max(target_h, round(height * scale))
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = (new_w - target_w) // 2, (new_h - target_h) // 2
        image = image.crop((left, top, left + target_w, top + target_h))
    return np.asarray(image, dtype=np.uint8)


def read_image_folder(root: Path, size: tuple[int, int], classes: list[str] | None = None) -> ImageSet:
    root = _find_root(root)
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = found
    unknown = set(found) - set(classes)
    if unknown:
        raise ValueError(f"{root} has class folders not in the label list: {sorted(unknown)}")
    images: list[np.ndarray] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            # Decoded as the service decodes an upload (alpha on white, 16-bit, EXIF).
            images.append(fit_to_size(read_rgb(file), size))
            labels.append(index)
    if not images:
        raise ValueError(f"no images found under {root}")
    return ImageSet(np.stack(images), np.asarray(labels, dtype=np.int64), classes)


def load_image_set(
    source: str | Path,
    size: tuple[int, int],
    cache_dir: Path | None = None,
    classes: list[str] | None = None,
) -> ImageSet:
    """Read an ImageFolder tree or .tar.gz, with an .npz cache keyed by path, size and mtime."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"training data not found: {source}")
    key = hashlib.sha256(f"{source.resolve()}|{source.stat().st_mtime}|{size}|{classes}".encode()).hexdigest()
    cache = cache_dir / f"{source.name}-{key[:12]}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache) as data:
            return ImageSet(data["images"], data["labels"], [str(c) for c in data["classes"]])
    log.info("decoding %s (first time; cached afterwards)", source)
    if source.is_file() and source.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(source) as archive:
                archive.extractall(tmp, filter="data")
            image_set = read_image_folder(Path(tmp), size, classes)
    else:
        image_set = read_image_folder(source, size, classes)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Written under a private name, then renamed: runs started side by side share one cache.
        partial = cache.with_name(f"{cache.stem}.{os.getpid()}.partial.npz")
        np.savez(
            partial, images=image_set.images, labels=image_set.labels, classes=np.array(image_set.classes)
        )
        partial.replace(cache)
    return image_set


def to_normalised_tensor(images: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, ``(x / 255 - mean) / std`` (as the service)."""
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    return (tensor - mean_t) / std_t


def augment_batch(batch: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop with reflect padding and random horizontal flip, on a normalised batch."""
    n, _, h, w = batch.shape
    if padding > 0:
        padded = torch.nn.functional.pad(batch, (padding,) * 4, mode="reflect")
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
        batch_index = torch.arange(n).view(n, 1, 1, 1)
        channel_index = torch.arange(batch.shape[1]).view(1, -1, 1, 1)
        batch = padded[batch_index, channel_index, rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    batch[flip] = batch[flip].flip(-1)
    return batch

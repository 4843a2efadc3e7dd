"""Detector training data: annotation readers, RetinaFace augmentation, batching.

Data path (training only): annotation file -> ``Sample`` (HWC uint8 RGB image, boxes
x1y1x2y2 in pixels, landmarks as 10 values, -1 where unknown) -> :func:`augment` (random
square crop, photometric distortion, pad to square, horizontal flip with left/right landmark
swap, resize to the training size) -> :func:`to_training_batch` (normalised tensors).

Readers:
- :class:`WiderFaceLabels`: the widely used RetinaFace ``label.txt`` layout: ``# relative/path.jpg``
  lines, each followed by one line per face ``x y w h lx0 ly0 v0 ... lx4 ly4 v4 blur`` (landmarks
  ``-1`` when unknown); images under ``<root>/images/`` (or next to ``label.txt``).
- :class:`BoxListDataset`: a JSON box list (``{"images": [{"file", "faces": [{"box": [x1, y1, x2,
  y2], "landmarks": [[x, y] x5]}]}]}``, as ``cmumit-val/labels.json``) or a CSV with columns
  ``file,x1,y1,x2,y2`` and optionally ``lx0,ly0,...,lx4,ly4`` (one row per face).

Normalisation (:data:`PREPROCESS`): RetinaFace's ``pixel - (123, 117, 104)`` in RGB order,
written as ``(rgb / 255 - mean) / std`` with ``std = 1/255`` so the service's one
preprocessing function reproduces it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from polynl_core.images import read_rgb

MEAN_RGB = (123.0 / 255.0, 117.0 / 255.0, 104.0 / 255.0)
STD_RGB = (1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0)
PREPROCESS: dict[str, Any] = {
    "resize": "letterbox",
    "mean": list(MEAN_RGB),
    "std": list(STD_RGB),
    "pad_value": 0.0,
}
# Horizontal mirror of the 5 landmarks: eyes swap, nose stays, mouth corners swap.
FLIP_ORDER = (1, 0, 2, 4, 3)
CROP_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray  # (N, 4) float32 x1y1x2y2 pixels
    landmarks: np.ndarray  # (N, 10) float32 x, y pairs; -1 = unknown


def _load_rgb(path: Path) -> np.ndarray:
    """Decoded as the service decodes an upload (polynl_core.images), so training, evaluation
    and serving see the same pixels of a file."""
    return np.asarray(read_rgb(path), dtype=np.uint8)


def _sample(path: Path, boxes: list[list[float]], landmarks: list[list[float]]) -> Sample:
    return Sample(
        image=_load_rgb(path),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        landmarks=np.asarray(landmarks, dtype=np.float32).reshape(-1, 10),
    )


def parse_wider_labels(label_file: str | Path) -> list[tuple[str, list[list[float]]]]:
    """``label.txt`` -> [(relative image path, [[x, y, w, h, lx0, ly0, v0, ..., blur], ...])]."""
    entries: list[tuple[str, list[list[float]]]] = []
    for line in Path(label_file).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            entries.append((line[1:].strip(), []))
        elif entries:
            entries[-1][1].append([float(v) for v in line.split()])
    return entries


def wider_face_arrays(rows: Sequence[Sequence[float]]) -> tuple[list[list[float]], list[list[float]]]:
    """Rows of a ``label.txt`` entry -> boxes x1y1x2y2 and landmarks (10 values, -1 if unknown)."""
    boxes, landmarks = [], []
    for row in rows:
        x, y, w, h = row[:4]
        if w <= 0 or h <= 0:
            continue
        boxes.append([x, y, x + w, y + h])
        points = [row[i] for i in (4, 5, 7, 8, 10, 11, 13, 14, 16, 17)] if len(row) >= 18 else []
        landmarks.append(points if points and min(points) >= 0 else [-1.0] * 10)
    return boxes, landmarks


class WiderFaceLabels:
    """WIDER FACE with RetinaFace landmark annotations (``label.txt``)."""

    def __init__(self, label_file: str | Path, image_root: str | Path | None = None) -> None:
        label_file = Path(label_file)
        root = Path(image_root) if image_root else label_file.parent / "images"
        if not root.is_dir():
            root = label_file.parent
        self.root = root
        self.entries = parse_wider_labels(label_file)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Sample:
        path, rows = self.entries[index]
        boxes, landmarks = wider_face_arrays(rows)
        return _sample(self.root / path, boxes, landmarks)


class BoxListDataset:
    """Boxes (and optional landmarks) from a JSON or CSV list; paths relative to its folder."""

    def __init__(self, path: str | Path, image_root: str | Path | None = None) -> None:
        path = Path(path)
        self.root = Path(image_root) if image_root else path.parent
        self.items: list[tuple[str, list[list[float]], list[list[float]]]] = (
            self._read_csv(path) if path.suffix.lower() == ".csv" else self._read_json(path)
        )

    @staticmethod
    def _read_json(path: Path) -> list[tuple[str, list[list[float]], list[list[float]]]]:
        items = []
        for image in json.loads(path.read_text())["images"]:
            boxes, landmarks = [], []
            for face in image.get("faces", []):
                boxes.append([float(v) for v in face["box"]])
                points = face.get("landmarks")
                landmarks.append([float(v) for p in points for v in p] if points else [-1.0] * 10)
            items.append((image["file"], boxes, landmarks))
        return items

    @staticmethod
    def _read_csv(path: Path) -> list[tuple[str, list[list[float]], list[list[float]]]]:
        grouped: dict[str, tuple[list[list[float]], list[list[float]]]] = {}
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                boxes, landmarks = grouped.setdefault(row["file"], ([], []))
                if not row.get("x1"):
                    continue  # an image listed without faces: all background
                boxes.append([float(row[k]) for k in ("x1", "y1", "x2", "y2")])
                keys = [f"l{axis}{i}" for i in range(5) for axis in "xy"]
                has = all(row.get(k) not in (None, "") for k in keys)
                landmarks.append([float(row[k]) for k in keys] if has else [-1.0] * 10)
        return [(file, b, lm) for file, (b, lm) in grouped.items()]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        file, boxes, landmarks = self.items[index]
        return _sample(self.root / file, boxes, landmarks)


# ---------------------------------------------------------------- augmentation (RetinaFace)


def flip_horizontal(sample: Sample) -> Sample:
    """Mirror the image; boxes mirror, landmarks mirror and swap left/right points."""
    width = sample.image.shape[1]
    boxes = sample.boxes.copy()
    boxes[:, [0, 2]] = width - sample.boxes[:, [2, 0]]
    points = sample.landmarks.reshape(-1, 5, 2).copy()
    known = (points >= 0).all(axis=(1, 2))
    points[:, :, 0] = width - points[:, :, 0]
    points = points[:, list(FLIP_ORDER)]
    points[~known] = -1.0
    return Sample(np.ascontiguousarray(sample.image[:, ::-1]), boxes, points.reshape(-1, 10))


def random_square_crop(rng: np.random.Generator, sample: Sample, tries: int = 250) -> Sample:
    """RetinaFace's crop: a square of 0.3..1 x the short side keeping faces whose centre is inside."""
    height, width = sample.image.shape[:2]
    for _ in range(tries):
        side = int(CROP_SCALES[int(rng.integers(len(CROP_SCALES)))] * min(height, width))
        x0 = int(rng.integers(0, width - side + 1))
        y0 = int(rng.integers(0, height - side + 1))
        centres = (sample.boxes[:, :2] + sample.boxes[:, 2:]) / 2
        inside = ((centres > [x0, y0]) & (centres < [x0 + side, y0 + side])).all(axis=1)
        if sample.boxes.shape[0] and not inside.any():
            continue
        boxes = sample.boxes[inside] - np.array([x0, y0, x0, y0], dtype=np.float32)
        boxes = np.clip(boxes, 0, side)
        points = sample.landmarks[inside].reshape(-1, 5, 2).copy()
        known = (points >= 0).all(axis=(1, 2))
        points = points - np.array([x0, y0], dtype=np.float32)
        points[~known] = -1.0
        keep = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) > 1.0
        image = sample.image[y0 : y0 + side, x0 : x0 + side]
        return Sample(image, boxes[keep], points.reshape(-1, 10)[keep])
    return sample


def photometric_distort(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Random brightness, contrast, saturation and hue (each with probability 0.5)."""
    pixels = image.astype(np.float32)
    if rng.random() < 0.5:
        pixels += rng.uniform(-32, 32)
    if rng.random() < 0.5:
        pixels *= rng.uniform(0.5, 1.5)
    pixels = np.clip(pixels, 0, 255)
    if rng.random() < 0.5 or rng.random() < 0.5:
        hsv = np.asarray(Image.fromarray(pixels.astype(np.uint8)).convert("HSV"), dtype=np.float32)
        if rng.random() < 0.5:
            hsv[:, :, 1] *= rng.uniform(0.5, 1.5)
        if rng.random() < 0.5:
            hsv[:, :, 0] = (hsv[:, :, 0] + rng.uniform(-18, 18) * 256 / 360) % 256
        hsv = np.clip(hsv, 0, 255).astype(np.uint8)
        pixels = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"), dtype=np.float32)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def pad_to_square(sample: Sample) -> Sample:
    """Pad right/bottom with the mean colour (the service letterboxes the same way)."""
    height, width = sample.image.shape[:2]
    side = max(height, width)
    if height == width:
        return sample
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    canvas[:] = np.round(np.asarray(MEAN_RGB) * 255).astype(np.uint8)
    canvas[:height, :width] = sample.image
    return Sample(canvas, sample.boxes, sample.landmarks)


def resize_square(sample: Sample, size: int) -> Sample:
    side = sample.image.shape[0]
    if side == size:
        return sample
    scale = size / side
    image = np.asarray(Image.fromarray(sample.image).resize((size, size), Image.Resampling.BILINEAR))
    points = sample.landmarks.reshape(-1, 5, 2).copy()
    known = (points >= 0).all(axis=(1, 2))
    points = points * scale
    points[~known] = -1.0
    return Sample(image, sample.boxes * scale, points.reshape(-1, 10))


def augment(rng: np.random.Generator, sample: Sample, size: int) -> Sample:
    """The RetinaFace training transform of one real image."""
    sample = random_square_crop(rng, sample)
    sample = Sample(photometric_distort(rng, sample.image), sample.boxes, sample.landmarks)
    sample = pad_to_square(sample)
    if rng.random() < 0.5:
        sample = flip_horizontal(sample)
    return resize_square(sample, size)


class Augmented:
    """Wrap a dataset of real images with :func:`augment`; deterministic per (seed, epoch, index)."""

    def __init__(self, dataset: Any, size: int, seed: int = 0) -> None:
        self.dataset = dataset
        self.size = size
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return augment(rng, self.dataset[index], self.size)


def normalise(image: np.ndarray) -> torch.Tensor:
    """HWC uint8 RGB -> CHW float ``(rgb / 255 - mean) / std`` (as polynl_core.preprocess.normalize)."""
    mean = torch.tensor(MEAN_RGB).view(3, 1, 1)
    std = torch.tensor(STD_RGB).view(3, 1, 1)
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 255.0
    return (tensor - mean) / std


def to_training_batch(
    samples: Sequence[Sample],
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Same-size samples -> (images (B, 3, S, S), boxes per image, landmarks per image)."""
    images = torch.stack([normalise(s.image) for s in samples])
    boxes = [torch.from_numpy(s.boxes.astype(np.float32)).reshape(-1, 4) for s in samples]
    landmarks = [torch.from_numpy(s.landmarks.astype(np.float32)).reshape(-1, 10) for s in samples]
    return images, boxes, landmarks

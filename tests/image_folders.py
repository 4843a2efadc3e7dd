"""Tiny image-folder datasets for the classifier training tests (written to disk as PNGs).

Importable from any test because ``tests/`` holds the root ``conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_two_colour_classes(root: Path, per_class: int = 24, size: int = 16, varied: bool = False) -> None:
    """Two visually separable classes, ``blue`` and ``red``: noisy squares whose one channel is
    strong. ``varied``: heights from ``size`` to ``size + 4`` (odd shapes for the resizing)."""
    rng = np.random.default_rng(0)
    for name, channel in (("blue", 2), ("red", 0)):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            height = size + i % 5 if varied else size
            pixels = rng.integers(0, 90, (height, size, 3), dtype=np.uint8)
            pixels[..., channel] = rng.integers(160, 255, pixels.shape[:2], dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")

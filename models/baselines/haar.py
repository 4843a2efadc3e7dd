"""OpenCV Haar cascade baseline (Viola-Jones frontal face cascade shipped with OpenCV).

Scores: the cascade's final-stage level weight (``detectMultiScale3`` with reject levels), so
that the PR curve can be traced; boxes are the cascade's square face boxes.
"""

from __future__ import annotations

import numpy as np

from models.baselines._cv2 import import_cv2
from models.detection_metrics import ImageDetections

CASCADE = "haarcascade_frontalface_default.xml"


class HaarDetector:
    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 3, min_size: int = 20) -> None:
        cv2 = import_cv2()
        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(str(cv2.data.haarcascades) + CASCADE)
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV could not load {CASCADE} from cv2.data")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def __call__(self, rgb: np.ndarray) -> ImageDetections:
        cv2 = self._cv2
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        rects, _levels, weights = self._cascade.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
            outputRejectLevels=True,
        )
        if len(rects) == 0:
            return ImageDetections.empty()
        xywh = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
        boxes = np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]]
        return ImageDetections(boxes=boxes, scores=np.asarray(weights, dtype=np.float32).reshape(-1))

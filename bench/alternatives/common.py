"""What the alternative servers share with ours: the model, its session and the image steps.

Both alternatives (``plain_fastapi``, ``litserve_app``) read the classifier from the same
model repository with the one loader, open ONNX Runtime with the service's own session
options, and decode / preprocess / post-process with the service's functions. Only the
serving strategy differs, which is the thing ``bench.service`` compares.

Environment: ``POLYNL_MODEL_REPOSITORY`` (default ``model_repository``) and
``POLYNL_INTRA_OP_THREADS`` (default 0 = ONNX Runtime's choice), as for the service.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.images import decode_image
from service.postprocess import softmax, top_k
from service.preprocess import classifier_input
from service.repository import LoadedModel, load_repository
from service.runtime import session_options
from service.settings import Settings

MAX_IMAGE_PIXELS = 40_000_000


class Classifier:
    """The repository's classifier: bytes -> (3, H, W) input -> batched logits -> top-k dicts."""

    def __init__(self, repository: Path | None = None, threads: int | None = None) -> None:
        repository = repository or Path(os.environ.get("POLYNL_MODEL_REPOSITORY", "model_repository"))
        threads = threads if threads is not None else int(os.environ.get("POLYNL_INTRA_OP_THREADS", "0"))
        self.model: LoadedModel = load_repository(repository)["classifier"]
        settings = Settings(intra_op_threads=threads, providers=["CPUExecutionProvider"])
        self.session = ort.InferenceSession(
            str(self.model.onnx_path), session_options(settings), providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.labels = self.model.config.labels

    def prepare(self, data: bytes) -> np.ndarray:
        """Decode (EXIF, RGB) and preprocess exactly as the service does."""
        image = decode_image(data, MAX_IMAGE_PIXELS).image
        return classifier_input(image, self.model.config.preprocess)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        logits: np.ndarray = self.session.run(None, {self.input_name: batch})[0]
        return logits

    def answer(self, logits: np.ndarray, k: int = 5) -> dict[str, Any]:
        ranked = top_k(softmax(logits), k)
        return {
            "labels": [{"id": i, "label": self.labels[i], "probability": p} for i, p in ranked],
            "model": {"name": self.model.config.name, "version": self.model.config.version},
        }

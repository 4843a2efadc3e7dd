"""ONNX Runtime vs PyTorch on real images, through the served preprocessing.

Data path: ``model.onnx`` (from :mod:`export.onnx_export`) and the PyTorch module it was
traced from -> **this module** -> pass/fail for :mod:`export.__main__`. Inputs are made by
``polynl_core.preprocess.classifier_input`` / ``letterbox`` from real photos, so the numbers
compared are the ones the service will compute; detections go through the service's one NMS
(``polynl_core.postprocess.select_faces``).

Tolerances (fp32, CPU execution provider), elementwise ``|ort - torch| <= atol + rtol*|torch|``:

- classifier logits: atol 1e-4, rtol 1e-5;
- detector boxes and landmarks (input pixels): atol 1e-3 px, rtol 1e-5 (the relative term
  only matters for the huge boxes an untrained model can emit); scores: atol 1e-5;
- after thresholding and NMS (the service's defaults) the same faces, in the same order
  (same count; boxes within 0.01 px). Where scores tie within their tolerance (an untrained
  model, or saturated scores), NMS order is noise: both sides then use PyTorch's scores, so
  the boxes must still lead to the same suppressions.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn

from polynl_core.images import is_image_file
from polynl_core.postprocess import Faces, select_faces
from polynl_core.preprocess import classifier_input, letterbox
from polynl_core.repository import Preprocess


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float = 0.0


FP32_TOLERANCES: dict[str, Tolerance] = {
    "logits": Tolerance(1e-4, 1e-5),
    "boxes": Tolerance(1e-3, 1e-5),
    "landmarks": Tolerance(1e-3, 1e-5),
    "scores": Tolerance(1e-5),
}
# NMS settings for the "same detections" check: the service's defaults.
SCORE_THRESHOLD = 0.5
NMS_IOU = 0.4
MAX_FACES = 750


@dataclass
class ParityResult:
    """One comparison (a batch of images at one size) and its verdict."""

    label: str
    max_abs_diff: dict[str, float]
    failures: list[str] = field(default_factory=list)
    detections: int | None = None  # faces kept after NMS over the batch (detector only)
    tie_ordered: int = 0  # images whose NMS was compared in PyTorch's score order (near ties)

    @property
    def ok(self) -> bool:
        return not self.failures

    def describe(self) -> str:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in self.max_abs_diff.items())
        faces = ""
        if self.detections is not None:
            faces = f", {self.detections} faces after NMS identical"
            if self.tie_ordered:
                faces += f" ({self.tie_ordered} images with near-tied scores: in PyTorch's score order)"
        verdict = "ok" if self.ok else "FAIL: " + "; ".join(self.failures)
        return f"{self.label}: max |diff| {diffs}{faces}: {verdict}"


def find_images(folders: Iterable[Path], per_folder: int = 8) -> list[Path]:
    """Up to ``per_folder`` images (sorted by name) from each existing folder."""
    found: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if is_image_file(p))
            found.extend(files[:per_folder])
    return found


def cpu_session(onnx_path: Path, threads: int = 0) -> ort.InferenceSession:
    """A CPU session with the optimisation level the service uses (ONNX Runtime's default).

    ``threads`` = 0 lets ONNX Runtime choose (one per core).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def _cycle(items: Sequence[np.ndarray], count: int) -> np.ndarray:
    """``count`` inputs, repeating the list when it is shorter (batch sizes above #images)."""
    return np.stack(list(itertools.islice(itertools.cycle(items), count)))


def _compare(name: str, got: np.ndarray, want: np.ndarray, tolerance: Tolerance) -> tuple[float, str | None]:
    got = got.astype(np.float64)
    want = want.astype(np.float64)
    if got.shape != want.shape:
        return float("inf"), f"{name} shape {got.shape} != {want.shape}"
    diff = np.abs(got - want)
    max_diff = float(diff.max()) if diff.size else 0.0
    bound = tolerance.atol + tolerance.rtol * np.abs(want)
    if not np.all(np.isfinite(got)) or np.any(diff > bound):
        worst = int(np.argmax(diff - bound)) if diff.size else 0
        return max_diff, (
            f"{name} differ by {max_diff:.3e} (at value {want.flat[worst]:.4g}; "
            f"tolerance {tolerance.atol:g} + {tolerance.rtol:g}*|x|)"
        )
    return max_diff, None


def _run_torch(module: nn.Module, batch: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(torch.from_numpy(batch))
    outputs = out if isinstance(out, tuple | list) else (out,)
    return [t.detach().cpu().numpy() for t in outputs]


def _run_ort(session: ort.InferenceSession, input_name: str, batch: np.ndarray) -> list[np.ndarray]:
    input_type = session.get_inputs()[0].type
    feed = batch.astype(np.float16) if "float16" in input_type else batch
    return [np.asarray(o) for o in session.run(None, {input_name: feed})]


def classifier_parity(
    module: nn.Module,
    session: ort.InferenceSession,
    images: Sequence[Image.Image],
    preprocess: Preprocess,
    batch_sizes: Sequence[int] = (1, 3, 8),
    tolerances: dict[str, Tolerance] = FP32_TOLERANCES,
    input_name: str = "images",
) -> list[ParityResult]:
    """Logits of ONNX Runtime vs PyTorch, and the same top-1 class, at each batch size."""
    tensors = [classifier_input(image, preprocess) for image in images]
    results = []
    for batch_size in batch_sizes:
        batch = _cycle(tensors, batch_size)
        (want,) = _run_torch(module, batch)
        (got,) = _run_ort(session, input_name, batch)
        max_diff, failure = _compare("logits", got, want, tolerances["logits"])
        result = ParityResult(f"classifier batch {batch_size}", {"logits": max_diff})
        if failure:
            result.failures.append(failure)
        elif not np.array_equal(got.argmax(-1), want.argmax(-1)):
            result.failures.append("top-1 classes differ")
        results.append(result)
    return results


def _faces(outputs: list[np.ndarray], index: int, scores: np.ndarray | None = None) -> Faces:
    boxes, own_scores, landmarks = (o[index] for o in outputs)
    chosen = own_scores if scores is None else scores
    return select_faces(boxes, chosen, landmarks, SCORE_THRESHOLD, NMS_IOU, MAX_FACES)


def _equal_faces(a: Faces, b: Faces) -> bool:
    return len(a.scores) == len(b.scores) and bool(np.allclose(a.boxes, b.boxes, atol=1e-2, rtol=1e-4))


def has_near_ties(scores: np.ndarray, atol: float) -> bool:
    """Whether NMS order among candidates is set by differences below the score tolerance.

    An untrained model scores every prior about 0.5 and a trained one saturates many priors
    at 1.0: their order (and so which box suppresses which) is then numerical noise.
    """
    candidates = np.sort(scores[scores >= SCORE_THRESHOLD - atol])
    if candidates.size == 0:
        return False
    return bool(np.any(np.diff(candidates) <= 2 * atol) or abs(candidates[0] - SCORE_THRESHOLD) <= atol)


def _same_detections(
    got: list[np.ndarray], want: list[np.ndarray], index: int, score_atol: float
) -> tuple[int, bool, str | None]:
    """(faces kept by PyTorch, compared with a shared score order?, failure)."""
    theirs = _faces(want, index)
    if _equal_faces(_faces(got, index), theirs):
        return len(theirs.scores), False, None
    # Scores already match elementwise; with ties, fix the order to PyTorch's and check that
    # ONNX Runtime's boxes make the same suppression decisions.
    if has_near_ties(want[1][index], score_atol) and _equal_faces(
        _faces(got, index, scores=want[1][index]), theirs
    ):
        return len(theirs.scores), True, None
    ours = _faces(got, index)
    return (
        len(theirs.scores),
        False,
        (f"image {index}: faces after NMS differ ({len(ours.scores)} vs {len(theirs.scores)} in PyTorch)"),
    )


def detector_parity(
    module: nn.Module,
    session: ort.InferenceSession,
    images: Sequence[Image.Image],
    preprocess: Preprocess,
    buckets: Sequence[tuple[int, int]],
    batch_sizes: Sequence[int] = (1, 3),
    tolerances: dict[str, Tolerance] = FP32_TOLERANCES,
    input_name: str = "images",
) -> list[ParityResult]:
    """Decoded boxes/scores/landmarks of ONNX Runtime vs PyTorch per bucket and batch size,
    and the same faces after the service's NMS.

    Batch size 1 runs every image (so the faces in the photos are compared, not only the
    first image's); larger batches run the first images, cycled to fill the batch.
    """
    results = []
    for bucket in buckets:
        tensors = [letterbox(image, bucket, preprocess).tensor for image in images]
        for batch_size in batch_sizes:
            batches = [t[None] for t in tensors] if batch_size == 1 else [_cycle(tensors, batch_size)]
            result = ParityResult(f"face_detector {bucket[0]}x{bucket[1]} batch {batch_size}", {})
            result.detections = 0
            for batch in batches:
                want = _run_torch(module, batch)
                got = _run_ort(session, input_name, batch)
                for name, g, w in zip(("boxes", "scores", "landmarks"), got, want, strict=True):
                    diff, failure = _compare(name, g, w, tolerances[name])
                    result.max_abs_diff[name] = max(diff, result.max_abs_diff.get(name, 0.0))
                    if failure:
                        result.failures.append(failure)
                if not result.ok:
                    break
                for index in range(len(batch)):
                    count, tied, failure = _same_detections(got, want, index, tolerances["scores"].atol)
                    result.detections += count
                    result.tie_ordered += int(tied)
                    if failure:
                        result.failures.append(failure)
            if not result.ok:
                result.detections = None
            results.append(result)
    return results

"""Model outputs -> answers: softmax/top-k for the classifier, NMS for the detector.

NumPy only. This is the one NMS of the project: the service, the evaluation code, the
detection metrics and the export's parity checks all call :func:`nms` / :func:`select_faces`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k(probabilities: np.ndarray, k: int) -> list[tuple[int, float]]:
    """(class id, probability) of the k most probable classes, most probable first."""
    k = max(1, min(k, probabilities.shape[-1]))
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(int(i), float(probabilities[i])) for i in order]


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1y1x2y2 box against many (pixel-continuous coordinates, no +1)."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = max(float((box[2] - box[0]) * (box[3] - box[1])), 0.0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, highest score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


@dataclass(frozen=True)
class Faces:
    boxes: np.ndarray  # (F, 4) x1y1x2y2
    scores: np.ndarray  # (F,)
    landmarks: np.ndarray  # (F, 5, 2)


def select_faces(
    boxes: np.ndarray,
    scores: np.ndarray,
    landmarks: np.ndarray,
    score_threshold: float,
    nms_iou: float,
    max_faces: int,
    pre_nms_top_k: int = 5000,
) -> Faces:
    """One image's decoded detector outputs (P priors) -> its faces after threshold and NMS."""
    candidates = np.flatnonzero(scores >= score_threshold)
    if candidates.size > pre_nms_top_k:
        candidates = candidates[np.argsort(-scores[candidates], kind="stable")[:pre_nms_top_k]]
    kept = candidates[nms(boxes[candidates], scores[candidates], nms_iou)][:max_faces]
    return Faces(
        boxes=boxes[kept].astype(np.float32),
        scores=scores[kept].astype(np.float32),
        landmarks=landmarks[kept].reshape(-1, 5, 2).astype(np.float32),
    )


def faces_to_original(faces: Faces, scale: float, width: int, height: int) -> Faces:
    """Letterbox (bucket) pixels -> pixels of the original image.

    The letterbox pastes the scaled image at the top-left corner, so the mapping is a
    division by the scale; boxes and landmarks are then clipped to the image, because the
    detector may reach into the padding.
    """
    if scale <= 0:
        raise ValueError(f"letterbox scale must be positive, got {scale}")
    limits = np.asarray([width, height], dtype=np.float32)
    boxes = faces.boxes.reshape(-1, 2, 2) / np.float32(scale)
    boxes = np.clip(boxes, 0.0, limits).reshape(-1, 4)
    landmarks = np.clip(faces.landmarks.reshape(-1, 5, 2) / np.float32(scale), 0.0, limits)
    return Faces(
        boxes=boxes.astype(np.float32),
        scores=faces.scores,
        landmarks=landmarks.astype(np.float32),
    )

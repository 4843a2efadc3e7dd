"""Face-detection metrics: AP the WIDER FACE way, landmark NME, and precision-recall plots.

Where it sits: at the very end of the evaluation path
``image -> detector (ours, ONNX, or a baseline) -> faces -> [this module] -> JSON / PNG``.
It only sees boxes, scores and landmarks in original-image pixels, so every detector is scored
by the same code. NumPy only (matplotlib is imported lazily for the plot, scipy lazily for the
WIDER ``.mat`` files); the IoU is :func:`polynl_core.postprocess.box_iou`, the project's one IoU.

How AP is computed (the method of WIDER FACE's official evaluation, ``wider_eval.m`` and its
widely used Python port), step by step:

1. Scores of all detections of the whole data set are min-max normalised to [0, 1].
2. Per image, detections are sorted by score (highest first). Each detection is assigned to the
   ground-truth face it overlaps most (max IoU), and nothing else. If that IoU reaches the
   threshold: when the face is *ignored* in the current setting (e.g. a "hard" face while
   scoring "easy") the detection is dropped from the proposals altogether; otherwise the face
   counts as recalled. A second detection on an already recalled face stays a proposal but
   adds no recall, so duplicates lower the precision, exactly like a false positive.
3. For 1000 score thresholds ``t = 1 - k/1000`` (k = 1..1000) the number of proposals and of
   recalled faces with score >= t are summed over images; precision = recalled / proposals,
   recall = recalled / number of (non-ignored) faces.
4. AP is the area under the interpolated PR curve (VOC 2010+ style: precision made monotone
   non-increasing from the right, summed over every recall step).

Differences from the official code, on purpose and documented:
- IoU uses continuous pixel coordinates (no ``+1`` on widths), the project's convention.
- The official code skips images without ground truth, so detections on face-free images are
  never counted as false positives. We follow it for ``ap`` and also report ``ap_strict``,
  which counts every detection on a face-free image as a false positive.
- A threshold bin with no proposal gets precision 0 (the official code divides by zero); such
  bins have recall 0 and so never change the area.

Landmark error (NME): for every non-ignored face with landmarks, the highest-scoring detection
assigned to it (same max-IoU rule) at IoU >= the threshold is its match; the error is the mean
distance of the 5 points divided by the distance between the two labelled eye centres (the
labels hold eye centres, so this "inter-ocular" distance is the inter-pupil one).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polynl_core.postprocess import box_iou

THRESHOLD_BINS = 1000  # as in WIDER FACE's evaluation
NME_FAILURE = 0.1  # a face whose NME exceeds this counts as a landmark failure


class NotSupportedError(RuntimeError):
    """The requested evaluation mode is not available for this input."""


@dataclass(frozen=True)
class ImageGroundTruth:
    """Labelled faces of one image. ``keep[i]`` False means face i is ignored in this setting."""

    file: str
    boxes: np.ndarray  # (G, 4) x1y1x2y2 pixels
    landmarks: np.ndarray | None = None  # (G, 5, 2) or None when not labelled
    keep: np.ndarray | None = None  # (G,) bool; None = all faces count
    width: int | None = None
    height: int | None = None

    @property
    def kept(self) -> np.ndarray:
        if self.keep is None:
            return np.ones(len(self.boxes), dtype=bool)
        return self.keep.astype(bool)


@dataclass(frozen=True)
class ImageDetections:
    """One detector's output on one image, in original-image pixels."""

    boxes: np.ndarray  # (D, 4) x1y1x2y2
    scores: np.ndarray  # (D,)
    landmarks: np.ndarray | None = None  # (D, 5, 2) or None for detectors without landmarks

    @staticmethod
    def empty(with_landmarks: bool = False) -> ImageDetections:
        return ImageDetections(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            landmarks=np.zeros((0, 5, 2), np.float32) if with_landmarks else None,
        )


@dataclass(frozen=True)
class PRCurve:
    """Precision and recall at each score threshold (thresholds high to low)."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    ap: float

    def to_dict(self, points: int = 100) -> dict[str, list[float]]:
        """A thinned copy for JSON (every n-th bin plus the last one)."""
        step = max(1, len(self.thresholds) // points)
        idx = np.unique(np.r_[np.arange(0, len(self.thresholds), step), len(self.thresholds) - 1])
        return {
            "threshold": [round(float(v), 4) for v in self.thresholds[idx]],
            "precision": [round(float(v), 5) for v in self.precision[idx]],
            "recall": [round(float(v), 5) for v in self.recall[idx]],
        }


@dataclass(frozen=True)
class NMEResult:
    mean: float | None
    median: float | None
    failure_rate: float | None  # share of matched faces with NME > NME_FAILURE
    matched: int
    labelled: int
    iou: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "median": self.median,
            f"failure_rate_at_{NME_FAILURE}": self.failure_rate,
            "matched_faces": self.matched,
            "labelled_faces": self.labelled,
            "match_iou": self.iou,
        }


@dataclass
class DetectionReport:
    """Everything one detector scored on one data set."""

    images: int
    faces: int
    detections: int
    ap: dict[float, float]
    ap_strict: dict[float, float]
    curves: dict[float, PRCurve]
    nme: NMEResult | None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, curve_points: int = 100) -> dict[str, Any]:
        return {
            "images": self.images,
            "faces": self.faces,
            "detections": self.detections,
            "ap": {f"{iou:g}": round(v, 4) for iou, v in self.ap.items()},
            "ap_strict": {f"{iou:g}": round(v, 4) for iou, v in self.ap_strict.items()},
            "nme": None if self.nme is None else self.nme.to_dict(),
            "pr_curves": {f"{iou:g}": c.to_dict(curve_points) for iou, c in self.curves.items()},
            **self.extra,
        }


# --------------------------------------------------------------------------- ground truth


def load_box_list(labels_path: str | Path) -> list[ImageGroundTruth]:
    """Read a ``labels.json`` box list (the cmumit-val layout: ``images[]`` of ``file``,
    ``width``, ``height``, ``faces[]`` of ``box`` and optional 5-point ``landmarks``; optional
    ``ignore``: boxes ``[x1, y1, x2, y2]`` of faces that neither count nor penalise, as WIDER
    FACE's ignored faces: too small, or too occluded to label)."""
    data = json.loads(Path(labels_path).read_text())
    images = data["images"] if isinstance(data, dict) else data
    out: list[ImageGroundTruth] = []
    for entry in images:
        faces = entry.get("faces", [])
        ignored = entry.get("ignore", [])
        boxes = np.asarray([f["box"] for f in faces] + list(ignored), dtype=np.float64).reshape(-1, 4)
        has_landmarks = not ignored and all(f.get("landmarks") is not None for f in faces)
        landmarks = (
            np.asarray([f["landmarks"] for f in faces], dtype=np.float64).reshape(-1, 5, 2)
            if has_landmarks
            else None
        )
        out.append(
            ImageGroundTruth(
                file=entry["file"],
                boxes=boxes,
                landmarks=landmarks,
                keep=np.asarray([True] * len(faces) + [False] * len(ignored)) if ignored else None,
                width=entry.get("width"),
                height=entry.get("height"),
            )
        )
    return out


def load_wider_split(gt_dir: str | Path, setting: str) -> list[ImageGroundTruth]:
    """WIDER FACE validation ground truth for ``setting`` in easy | medium | hard.

    Reads the official ``wider_face_val.mat`` (boxes, x y w h) and ``wider_<setting>_val.mat``
    (1-based indices of the faces that count in that setting; the rest are ignored, as in the
    official evaluation). ``file`` is ``<event>/<name>.jpg`` relative to ``WIDER_val/images``.
    """
    if setting not in ("easy", "medium", "hard"):
        raise NotSupportedError(f"unknown WIDER FACE setting {setting!r}; use easy, medium or hard")
    gt_dir = Path(gt_dir)
    try:
        from scipy.io import loadmat
    except ImportError as exc:  # scipy ships with the dev extra
        raise NotSupportedError("reading WIDER FACE .mat files needs scipy (pip install scipy)") from exc
    main_file = gt_dir / "wider_face_val.mat"
    split_file = gt_dir / f"wider_{setting}_val.mat"
    for path in (main_file, split_file):
        if not path.is_file():
            raise NotSupportedError(f"WIDER FACE ground truth file not found: {path}")
    main = loadmat(str(main_file))
    split = loadmat(str(split_file))
    events = main["event_list"]
    files = main["file_list"]
    boxes = main["face_bbx_list"]
    keeps = split["gt_list"]
    out: list[ImageGroundTruth] = []
    for e in range(len(events)):
        event = str(events[e][0][0])
        for i in range(len(files[e][0])):
            name = str(files[e][0][i][0][0])
            xywh = np.asarray(boxes[e][0][i][0], dtype=np.float64).reshape(-1, 4)
            xyxy = np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]]
            keep_idx = np.asarray(keeps[e][0][i][0], dtype=np.int64).reshape(-1)
            keep = np.zeros(len(xyxy), dtype=bool)
            if keep_idx.size:
                keep[keep_idx - 1] = True
            out.append(ImageGroundTruth(file=f"{event}/{name}.jpg", boxes=xyxy, keep=keep))
    return out


# --------------------------------------------------------------------------- matching


def iou_matrix(boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """(D, G) IoU of every detection against every ground-truth box."""
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return np.zeros((len(boxes), len(gt_boxes)))
    gt = np.asarray(gt_boxes, dtype=np.float64)
    return np.stack([box_iou(np.asarray(b, dtype=np.float64), gt) for b in boxes])


def assign(boxes: np.ndarray, gt_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each detection's best-overlapping face and that IoU (-1 / 0 when there is no face)."""
    overlaps = iou_matrix(boxes, gt_boxes)
    if overlaps.shape[1] == 0:
        return np.full(len(boxes), -1, dtype=np.int64), np.zeros(len(boxes))
    best = overlaps.argmax(axis=1)
    return best, overlaps[np.arange(len(boxes)), best]


def image_eval(
    sorted_boxes: np.ndarray, gt: ImageGroundTruth, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """WIDER's per-image step on score-sorted detections.

    Returns ``recalled[h]``: faces recalled by detections 0..h, and ``proposal[h]``: 1 if
    detection h counts as a proposal, 0 if it matched an ignored face.
    """
    kept = gt.kept
    best, best_iou = assign(sorted_boxes, gt.boxes)
    status = np.zeros(len(gt.boxes), dtype=np.int8)  # 0 unseen, 1 recalled, -1 ignored-hit
    recalled = np.zeros(len(sorted_boxes), dtype=np.int64)
    proposal = np.ones(len(sorted_boxes), dtype=np.int64)
    for h in range(len(sorted_boxes)):
        if best[h] >= 0 and best_iou[h] >= iou_threshold:
            face = best[h]
            if not kept[face]:
                status[face] = -1
                proposal[h] = 0
            elif status[face] == 0:
                status[face] = 1
        recalled[h] = int((status == 1).sum())
    return recalled, proposal


# --------------------------------------------------------------------------- AP


def normalise_scores(detections: Sequence[ImageDetections]) -> list[np.ndarray]:
    """Min-max normalise all scores of the data set to [0, 1] (step 1 of WIDER's method)."""
    all_scores = [d.scores for d in detections if len(d.scores)]
    if not all_scores:
        return [np.zeros(0) for _ in detections]
    stacked = np.concatenate(all_scores).astype(np.float64)
    low, high = float(stacked.min()), float(stacked.max())
    span = high - low
    # One distinct score (e.g. a detector without scores): every detection sits at 1.0.
    return [
        (d.scores.astype(np.float64) - low) / span if span > 0 else np.ones(len(d.scores)) for d in detections
    ]


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the PR curve with precision made monotone from the right (VOC 2010+)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def pr_curve(
    detections: Sequence[ImageDetections],
    ground_truth: Sequence[ImageGroundTruth],
    iou_threshold: float,
    count_empty_images: bool = False,
    bins: int = THRESHOLD_BINS,
) -> PRCurve:
    """The data set's precision-recall curve and AP (steps 1-4 of the module docstring)."""
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} detection lists for {len(ground_truth)} images")
    thresholds = 1.0 - np.arange(1, bins + 1) / bins
    proposals = np.zeros(bins)
    recalled = np.zeros(bins)
    faces = sum(int(gt.kept.sum()) for gt in ground_truth)
    for det, gt, scores in zip(detections, ground_truth, normalise_scores(detections), strict=True):
        if len(scores) == 0:
            continue
        order = np.argsort(-scores, kind="stable")
        scores = scores[order]
        # Number of detections with score >= t, for every threshold t (scores descending).
        counts = np.searchsorted(-scores, -thresholds, side="right")
        has_any = counts > 0
        last = np.maximum(counts - 1, 0)
        if len(gt.boxes) == 0:
            if count_empty_images:  # every detection is a false positive
                proposals += counts
            continue
        image_recalled, image_proposal = image_eval(det.boxes[order], gt, iou_threshold)
        cum_proposals = np.cumsum(image_proposal)
        proposals += np.where(has_any, cum_proposals[last], 0)
        recalled += np.where(has_any, image_recalled[last], 0)
    precision = np.divide(recalled, proposals, out=np.zeros(bins), where=proposals > 0)
    recall = recalled / faces if faces else np.zeros(bins)
    return PRCurve(thresholds=thresholds, precision=precision, recall=recall, ap=voc_ap(recall, precision))


def average_precision(
    detections: Sequence[ImageDetections],
    ground_truth: Sequence[ImageGroundTruth],
    iou_threshold: float = 0.5,
    count_empty_images: bool = False,
) -> float:
    return pr_curve(detections, ground_truth, iou_threshold, count_empty_images).ap


# --------------------------------------------------------------------------- landmarks


def landmark_nme(
    detections: Sequence[ImageDetections],
    ground_truth: Sequence[ImageGroundTruth],
    iou_threshold: float = 0.5,
) -> NMEResult | None:
    """Mean/median NME over matched faces; None when detector or labels lack landmarks."""
    if any(d.landmarks is None and len(d.scores) for d in detections):
        return None
    errors: list[float] = []
    labelled = 0
    for det, gt in zip(detections, ground_truth, strict=True):
        if gt.landmarks is None or len(gt.boxes) == 0:
            continue
        kept = gt.kept
        labelled += int(kept.sum())
        if len(det.scores) == 0 or det.landmarks is None:
            continue
        order = np.argsort(-det.scores, kind="stable")
        best, best_iou = assign(det.boxes[order], gt.boxes)
        matched: set[int] = set()
        for rank, h in enumerate(order):
            face = int(best[rank])
            if face < 0 or best_iou[rank] < iou_threshold or not kept[face] or face in matched:
                continue
            matched.add(face)
            truth = gt.landmarks[face]
            inter_ocular = float(np.linalg.norm(truth[0] - truth[1]))
            if inter_ocular <= 0:
                continue
            points = det.landmarks[h].reshape(5, 2)
            errors.append(float(np.linalg.norm(points - truth, axis=1).mean() / inter_ocular))
    if labelled == 0:
        return None
    arr = np.asarray(errors)
    return NMEResult(
        mean=round(float(arr.mean()), 4) if arr.size else None,
        median=round(float(np.median(arr)), 4) if arr.size else None,
        failure_rate=round(float((arr > NME_FAILURE).mean()), 4) if arr.size else None,
        matched=int(arr.size),
        labelled=labelled,
        iou=iou_threshold,
    )


# --------------------------------------------------------------------------- all together


def evaluate_detections(
    detections: Sequence[ImageDetections],
    ground_truth: Sequence[ImageGroundTruth],
    ious: Sequence[float] = (0.5, 0.3),
    nme_iou: float | None = None,
) -> DetectionReport:
    """AP (WIDER protocol and strict) at each IoU, PR curves, and NME.

    NME matches faces at ``nme_iou`` (default: the lowest IoU asked for, so that landmark
    quality is measured on as many detected faces as possible).
    """
    curves = {float(iou): pr_curve(detections, ground_truth, iou) for iou in ious}
    strict = {float(iou): pr_curve(detections, ground_truth, iou, count_empty_images=True).ap for iou in ious}
    return DetectionReport(
        images=len(ground_truth),
        faces=sum(int(gt.kept.sum()) for gt in ground_truth),
        detections=sum(len(d.scores) for d in detections),
        ap={iou: c.ap for iou, c in curves.items()},
        ap_strict=strict,
        curves=curves,
        nme=landmark_nme(detections, ground_truth, nme_iou if nme_iou is not None else min(ious)),
    )


def plot_pr_curves(
    curves: dict[str, dict[float, PRCurve]],
    path: str | Path,
    title: str = "Face detection: precision-recall",
) -> Path:
    """One PNG: a colour per detector, a line style per IoU threshold, AP in the legend."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=100)
    for colour, (name, by_iou) in enumerate(curves.items()):
        for style, (iou, curve) in enumerate(sorted(by_iou.items(), reverse=True)):
            # Bins before the first counted detection have recall 0; they would draw a spike.
            shown = curve.recall > 0
            ax.plot(
                curve.recall[shown],
                curve.precision[shown],
                color=f"C{colour % 10}",
                linestyle=styles[style % len(styles)],
                label=f"{name} IoU {iou:g} (AP {curve.ap:.3f})",
            )
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

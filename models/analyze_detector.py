"""``python -m models.analyze_detector``: where a face detector's AP is lost on a labelled set.

The evaluation (:mod:`models.evaluate`) gives the figures; this gives the reasons behind them,
for the model card:

- the labelled faces that get no detection at the IoU threshold at all (the recall ceiling),
  with their width, and those whose best detection there scores under 0.5 (found, but ranked
  low);
- the highest-scoring detections that match no face (false positives);
- what-ifs, each scored with the same AP code: dropping boxes narrower than N pixels, running
  on the image scaled by a factor, and adding a horizontally flipped pass (union + NMS).

The what-ifs look at the evaluation set itself, so they are diagnostics, never settings to
ship on the strength of this set alone.

    python -m models.analyze_detector --checkpoint models/weights/face_detector.pt \\
        --data tests/data/cmumit-val --pyramid
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from models.detection_metrics import ImageDetections, evaluate_detections, iou_matrix, load_box_list
from models.evaluate import FaceSelection, TorchFaceDetector
from polynl_core.images import read_rgb
from polynl_core.postprocess import select_faces

Detect = Callable[[Image.Image], ImageDetections]


def _landmarks(found: ImageDetections) -> np.ndarray:
    """Our detector always reports landmarks; (F, 10) zeros stand in where a detector has none."""
    if found.landmarks is None:
        return np.zeros((len(found.scores), 10), dtype=np.float32)
    return found.landmarks


def scaled(detect: Detect, factor: float) -> Detect:
    """Detect on the image resized by ``factor``; boxes back in original pixels."""

    def run(image: Image.Image) -> ImageDetections:
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        found = detect(image.resize(size, Image.Resampling.BILINEAR))
        return ImageDetections(
            boxes=found.boxes / factor, scores=found.scores, landmarks=_landmarks(found) / factor
        )

    return run


def with_flip(detect: Detect, selection: FaceSelection) -> Detect:
    """The union of the image's and its mirror's detections, through one NMS."""

    def run(image: Image.Image) -> ImageDetections:
        plain = detect(image)
        mirrored = detect(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
        boxes = mirrored.boxes[:, [2, 1, 0, 3]].copy()
        boxes[:, [0, 2]] = image.width - boxes[:, [0, 2]]
        marks = _landmarks(mirrored).reshape(-1, 5, 2)[:, [1, 0, 2, 4, 3]].copy()
        marks[:, :, 0] = image.width - marks[:, :, 0]
        faces = select_faces(
            np.concatenate([plain.boxes, boxes]),
            np.concatenate([plain.scores, mirrored.scores]),
            np.concatenate([_landmarks(plain).reshape(-1, 10), marks.reshape(-1, 10)]),
            selection.score_threshold,
            selection.nms_iou,
            selection.max_faces,
        )
        return ImageDetections(boxes=faces.boxes, scores=faces.scores, landmarks=faces.landmarks)

    return run


def min_width(found: ImageDetections, pixels: float) -> ImageDetections:
    keep = (found.boxes[:, 2] - found.boxes[:, 0]) >= pixels
    return ImageDetections(
        boxes=found.boxes[keep], scores=found.scores[keep], landmarks=_landmarks(found)[keep]
    )


def analyze(args: argparse.Namespace) -> dict[str, Any]:
    data = Path(args.data)
    truth = load_box_list(data / "labels.json")
    images = [read_rgb(data / gt.file) for gt in truth]
    selection = FaceSelection(pyramid=None if args.pyramid is None else tuple(args.pyramid))
    detector = TorchFaceDetector(args.checkpoint, selection)
    levels = detector.pyramid

    def detect(image: Image.Image) -> ImageDetections:
        return detector(np.asarray(image))

    def ap(found: Sequence[ImageDetections]) -> dict[str, float]:
        return evaluate_detections(found, truth, ious=[0.5, args.iou]).to_dict()["ap"]

    base = [detect(image) for image in images]
    missed: list[dict[str, Any]] = []
    weak: list[dict[str, Any]] = []
    false_positives: list[dict[str, Any]] = []
    for gt, found in zip(truth, base, strict=True):
        faces = np.asarray(gt.boxes, dtype=np.float64).reshape(-1, 4)
        overlap = iou_matrix(found.boxes, faces) if len(found.boxes) and len(faces) else None
        for j, face in enumerate(faces):
            width = round(float(face[2] - face[0]))
            matched = None if overlap is None else overlap[:, j] >= args.iou
            if matched is None or not matched.any():
                missed.append({"file": gt.file, "width": width})
            elif (best := float(found.scores[matched].max())) < 0.5:
                weak.append({"file": gt.file, "width": width, "best_score": round(best, 3)})
        for i, score in enumerate(found.scores):
            if overlap is None or overlap[i].max() < args.iou:
                box = [round(float(v)) for v in found.boxes[i]]
                false_positives.append({"file": gt.file, "score": round(float(score), 3), "box": box})
    false_positives.sort(key=lambda fp: -fp["score"])
    report: dict[str, Any] = {
        "pyramid": list(levels),
        "ap": ap(base),
        "faces": sum(len(gt.boxes) for gt in truth),
        "detections": int(sum(len(f.scores) for f in base)),
        f"missed_at_iou_{args.iou}": missed,
        "found_below_0.5": sorted(weak, key=lambda face: face["best_score"]),
        "top_false_positives": false_positives[: args.top],
        "what_if": {},
        "what_if_dropped": {},  # boxes removed by each --min-width value
    }
    for pixels in args.min_width:
        kept = [min_width(f, pixels) for f in base]
        dropped = report["detections"] - sum(len(f.scores) for f in kept)
        report["what_if_dropped"][pixels] = dropped
        report["what_if"][f"drop boxes under {pixels:g} px ({dropped} detections)"] = ap(kept)
    for factor in args.scales:
        report["what_if"][f"image scaled by {factor:g}"] = ap([scaled(detect, factor)(im) for im in images])
    if args.flip:
        report["what_if"]["plus a flipped pass"] = ap([with_flip(detect, selection)(im) for im in images])
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="a face_detector checkpoint (.pt)")
    parser.add_argument("--data", required=True, help="folder with labels.json and its images")
    parser.add_argument("--iou", type=float, default=0.3, help="IoU for 'missed' and false positives")
    parser.add_argument(
        "--pyramid", type=float, nargs="*", default=None, help="as models.evaluate (alone: one pass)"
    )
    parser.add_argument("--top", type=int, default=20, help="false positives to list")
    parser.add_argument("--min-width", type=float, nargs="*", default=[16, 20])
    parser.add_argument("--scales", type=float, nargs="*", default=[0.75])
    parser.add_argument("--flip", action="store_true", help="also score a flipped extra pass")
    args = parser.parse_args(argv)
    report = analyze(args)
    iou = args.iou
    counts = f"{report['detections']} detections, {report['faces']} faces, pyramid {report['pyramid']}"
    print(f"AP@0.5 {report['ap']['0.5']:.3f}  AP@{iou:g} {report['ap'][str(iou)]:.3f}  ({counts})")
    missed = report[f"missed_at_iou_{iou}"]
    print(f"{len(missed)} faces without any detection at IoU {iou:g}:")
    for face in missed:
        print(f"  {face['file']}  {face['width']} px wide")
    weak = report["found_below_0.5"]
    print(f"{len(weak)} faces found at IoU {iou:g} but scoring under 0.5 (lowest first):")
    for face in weak[: args.top]:
        print(f"  {face['best_score']:.3f}  {face['file']}  {face['width']} px wide")
    print(f"top {len(report['top_false_positives'])} false positives:")
    for fp in report["top_false_positives"]:
        print(f"  {fp['score']:.3f}  {fp['file']}  {fp['box']}")
    for name, value in report["what_if"].items():
        print(f"what if {name}: AP@0.5 {value['0.5']:.3f}  AP@{iou:g} {value[str(iou)]:.3f}")
    return report


if __name__ == "__main__":
    main()

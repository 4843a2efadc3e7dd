"""``python -m models.evaluate``: score the classifier and the face detector on held-out data.

Where it sits: beside training, at the end of the model side. It runs the models exactly as
they are served: the classifier through :func:`polynl_core.preprocess.classifier_input`, the
detector through :func:`polynl_core.pyramid.pyramid_inputs` (letterbox and pyramid levels),
:func:`polynl_core.pyramid.merge_levels` and :func:`polynl_core.postprocess.select_faces`, either the
PyTorch checkpoint or the exported ONNX model (``--onnx model_repository/<name>``). Detector metrics come from
:mod:`models.detection_metrics`, the same code that scores the baselines.

Commands::

    python -m models.evaluate classifier --checkpoint models/weights/classifier.pt \
        --data ../shared/data/cifar10-val.tar.gz [--onnx model_repository/classifier] [--json out.json]
    python -m models.evaluate detector --checkpoint models/weights/face_detector.pt \
        --data tests/data/cmumit-val [--labels labels.json] [--iou 0.5 0.3] \
        [--baselines haar res10 mtcnn] [--plot pr.png] [--json out.json]
    python -m models.evaluate baseline --name haar res10 mtcnn --data tests/data/cmumit-val

For WIDER FACE, ``--wider-gt DIR --wider-setting easy|medium|hard`` reads the official
``.mat`` ground truth instead of a ``labels.json``; ``--data`` is then ``WIDER_val/images``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from models.baselines import BASELINE_NAMES
from models.detection_metrics import (
    DetectionReport,
    ImageDetections,
    ImageGroundTruth,
    PRCurve,
    evaluate_detections,
    load_box_list,
    load_wider_split,
    plot_pr_curves,
)
from polynl_core.buckets import DEFAULT_BUCKETS, choose_bucket
from polynl_core.images import IMAGE_SUFFIXES, read_rgb
from polynl_core.postprocess import select_faces
from polynl_core.preprocess import classifier_input
from polynl_core.pyramid import DEFAULT_LEVELS as DEFAULT_PYRAMID_LEVELS
from polynl_core.pyramid import detect_levels, pyramid_inputs
from polynl_core.repository import Preprocess

DETECTOR_NAME = "polynl-retinaface"

FaceDetector = Callable[[np.ndarray], ImageDetections]


def _progress(iterable: Any, total: int | None, desc: str) -> Any:
    """A tqdm bar on stderr (stdout stays for the results); plain iteration without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="img", file=sys.stderr, mininterval=1.0)


# =========================================================================== classifier


@dataclass(frozen=True)
class LabelledImage:
    name: str
    class_name: str
    data: bytes


def iter_image_folder(path: str | Path) -> Iterator[LabelledImage]:
    """Images of an ImageFolder tree (``<class>/<image>``) or of a .tar/.tar.gz holding one.

    The class is the image's parent folder name; wrapper folders above it (``val/``) are fine.
    Archives are streamed, never extracted.
    """
    path = Path(path)
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                yield LabelledImage(str(file.relative_to(path)), file.parent.name, file.read_bytes())
        return
    if not tarfile.is_tarfile(path):
        raise ValueError(f"{path} is neither a folder nor a tar archive")
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            if not member.isfile() or not member.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            parts = Path(member.name).parts
            if len(parts) < 2:
                continue
            handle = archive.extractfile(member)
            if handle is not None:
                yield LabelledImage(member.name, parts[-2], handle.read())


def count_images(path: str | Path) -> int | None:
    path = Path(path)
    if path.is_dir():
        return sum(1 for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    return None  # counting a .tar.gz means reading it twice; the bar runs without a total


def torch_classifier(
    checkpoint: str | Path,
) -> tuple[Callable[[np.ndarray], np.ndarray], list[str], Preprocess]:
    import torch

    from models.checkpoint import load_model

    model, meta = load_model(checkpoint)
    if meta.task != "classifier":
        raise SystemExit(f"{checkpoint} holds a {meta.task}, not a classifier")

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).numpy()

    return predict, meta.labels, Preprocess.from_checkpoint(meta.preprocess)


def onnx_classifier(
    model_dir: str | Path,
) -> tuple[Callable[[np.ndarray], np.ndarray], list[str], Preprocess]:
    import onnxruntime as ort

    from polynl_core.repository import load_model as load_repository_model

    loaded = load_repository_model(Path(model_dir))
    session = ort.InferenceSession(str(loaded.onnx_path), providers=["CPUExecutionProvider"])
    input_name = loaded.config.input.name

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {input_name: batch})[0])

    return predict, list(loaded.config.labels), loaded.config.preprocess


def evaluate_classifier(
    predict: Callable[[np.ndarray], np.ndarray],
    labels: Sequence[str],
    preprocess: Preprocess,
    data: str | Path,
    batch_size: int = 256,
    limit: int | None = None,
) -> dict[str, Any]:
    """Top-1 / top-5 accuracy (overall and per class) with the served transform."""
    index = {name: i for i, name in enumerate(labels)}
    k = min(5, len(labels))
    correct1 = correct5 = seen = 0
    per_class: dict[str, list[int]] = {name: [0, 0] for name in labels}  # [correct top-1, seen]
    batch: list[np.ndarray] = []
    targets: list[int] = []

    def flush() -> None:
        nonlocal correct1, correct5, seen
        logits = predict(np.stack(batch).astype(np.float32))
        top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        for row, target in zip(top, targets, strict=True):
            hit1 = int(row[0] == target)
            correct1 += hit1
            correct5 += int(target in row)
            per_class[labels[target]][0] += hit1
            per_class[labels[target]][1] += 1
        seen += len(targets)
        batch.clear()
        targets.clear()

    total = count_images(data)
    if limit is not None:
        total = min(total, limit) if total is not None else limit
    started = time.perf_counter()
    for n, item in enumerate(_progress(iter_image_folder(data), total, "classifier")):
        if limit is not None and n >= limit:
            break
        if item.class_name not in index:
            raise SystemExit(f"class folder {item.class_name!r} ({item.name}) is not a label of the model")
        batch.append(classifier_input(read_rgb(item.data), preprocess))
        targets.append(index[item.class_name])
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if seen == 0:
        raise SystemExit(f"no labelled images found in {data}")
    return {
        "images": seen,
        "top1": round(correct1 / seen, 4),
        f"top{k}": round(correct5 / seen, 4),
        "per_class_top1": {name: round(c / s, 4) if s else None for name, (c, s) in per_class.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }


# =========================================================================== detector


def full_image_bucket(width: int, height: int, multiple: int = 32) -> tuple[int, int]:
    """(height, width) rounded up to the network stride, so the whole image fits unscaled."""
    return (math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple)


@dataclass(frozen=True)
class FaceSelection:
    """Pyramid, threshold and NMS as the service applies them, for scoring.

    The score threshold is far below the service's, so the PR curve reaches high recall. The
    pyramid levels (polynl_core/pyramid.py) default, as in the service, to the model's own
    (``preprocess.pyramid`` of its checkpoint or config.json); ``()`` is one pass.
    """

    score_threshold: float = 0.02
    nms_iou: float = 0.4
    max_faces: int = 750
    pyramid: tuple[float, ...] | None = None

    def levels_for(self, preprocess: Preprocess) -> tuple[float, ...]:
        return preprocess.pyramid if self.pyramid is None else self.pyramid


def faces_to_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    landmarks: np.ndarray,
    scale: float,
    selection: FaceSelection,
) -> ImageDetections:
    """One image's decoded outputs (input pixels) -> NMS'd faces in original pixels."""
    faces = select_faces(
        boxes, scores, landmarks, selection.score_threshold, selection.nms_iou, selection.max_faces
    )
    return ImageDetections(boxes=faces.boxes / scale, scores=faces.scores, landmarks=faces.landmarks / scale)


class TorchFaceDetector:
    """Our detector from a checkpoint, run the served way (letterbox, decode, select_faces)."""

    def __init__(
        self,
        checkpoint: str | Path,
        selection: FaceSelection | None = None,
    ) -> None:
        import torch

        from models.checkpoint import load_model
        from models.retinaface.inference import DecodedRetinaFace
        from models.retinaface.net import RetinaFace

        model, meta = load_model(checkpoint)
        if meta.task != "face_detector":
            raise SystemExit(f"{checkpoint} holds a {meta.task}, not a face detector")
        self._torch = torch
        assert isinstance(model, RetinaFace)  # task checked above; narrows the type
        self.network = DecodedRetinaFace(model).eval()
        self.preprocess = Preprocess.from_checkpoint(meta.preprocess)
        self.selection = selection or FaceSelection()
        self.pyramid = self.selection.levels_for(self.preprocess)
        self.settings = {**asdict(self.selection), "pyramid": list(self.pyramid)}
        self.describe = {"checkpoint": str(checkpoint), "sha256": meta.sha256, "arch": meta.arch}

    def __call__(self, rgb: np.ndarray) -> ImageDetections:
        image = Image.fromarray(rgb)
        inputs = pyramid_inputs(image, full_image_bucket(*image.size), self.preprocess, self.pyramid)

        def run(batch: np.ndarray) -> list[np.ndarray]:
            with self._torch.inference_mode():
                return [output.numpy() for output in self.network(self._torch.from_numpy(batch))]

        return faces_to_detections(*detect_levels(inputs, run), 1.0, self.selection)


class OnnxFaceDetector:
    """The exported detector of a model repository folder, via ONNX Runtime on CPU.

    By default each image runs at its full resolution (rounded up to the stride). With
    ``served=True`` it is letterboxed into the repository's size buckets exactly as the
    service does (``config.json`` ``size_buckets``, else the service's defaults), so the
    figures are those of ``POST /detect-faces``.
    """

    def __init__(
        self,
        model_dir: str | Path,
        selection: FaceSelection | None = None,
        served: bool = False,
    ) -> None:
        import onnxruntime as ort

        from polynl_core.repository import load_model as load_repository_model

        loaded = load_repository_model(Path(model_dir))
        self.config = loaded.config
        self.session = ort.InferenceSession(str(loaded.onnx_path), providers=["CPUExecutionProvider"])
        self.preprocess = loaded.config.preprocess
        self.selection = selection or FaceSelection()
        self.settings = {
            **asdict(self.selection),
            "pyramid": list(self.selection.levels_for(self.preprocess)),
        }
        self.describe = {"onnx": str(loaded.onnx_path), "sha256": loaded.config.onnx_sha256}
        # A graph with a fixed input size can only take the configured buckets (maybe downscaling).
        fixed = self.config.input.height is not None and self.config.input.width is not None
        self.fixed_buckets = [(self.config.input.height, self.config.input.width)] if fixed else None
        if served and not fixed:
            self.served_buckets: list[tuple[int, int]] | None = [
                (int(h), int(w)) for h, w in (self.config.size_buckets or DEFAULT_BUCKETS)
            ]
            self.settings["buckets"] = [f"{h}x{w}" for h, w in self.served_buckets]
        else:
            self.served_buckets = None

    def __call__(self, rgb: np.ndarray) -> ImageDetections:
        image = Image.fromarray(rgb)
        pyramid = self.selection.levels_for(self.preprocess)
        if self.fixed_buckets is not None:
            bucket = choose_bucket(image.width, image.height, self.fixed_buckets)  # type: ignore[arg-type]
            pyramid = ()  # a fixed-size graph takes no smaller copies
        elif self.served_buckets is not None:
            bucket = choose_bucket(image.width, image.height, self.served_buckets)
        else:
            bucket = full_image_bucket(image.width, image.height)
        names = [o.name for o in self.session.get_outputs()]

        def run(batch: np.ndarray) -> list[np.ndarray]:
            outputs = dict(zip(names, self.session.run(None, {self.config.input.name: batch}), strict=True))
            return [outputs["boxes"], outputs["scores"], outputs["landmarks"]]

        inputs = pyramid_inputs(image, bucket, self.preprocess, pyramid)
        return faces_to_detections(*detect_levels(inputs, run), 1.0, self.selection)


BOX_CONVENTIONS = ("as-is", "tight-from-landmarks")


def tight_boxes_from_landmarks(detector: FaceDetector) -> FaceDetector:
    """A fixed box-convention mapping for labels that are tight eye-to-mouth boxes (cmumit-val).

    Each detection's box is replaced by the box that the labels' own rule draws around its
    five landmarks (:func:`models.retinaface.synth.box_from_landmarks`: width 3.03 x the eye
    distance, height 3.25 x the eye-to-mouth distance, eyes at 37.2 % of the height), so a
    detector whose boxes follow another convention (WIDER FACE: forehead to chin; MTCNN) is
    scored on where it puts the face, not on how it draws the box. Detectors without
    landmarks pass unchanged. Scores and the order of detections are kept.
    """
    from models.retinaface.synth import box_from_landmarks

    def mapped(rgb: np.ndarray) -> ImageDetections:
        found = detector(rgb)
        if found.landmarks is None or not len(found.scores):
            return found
        boxes = box_from_landmarks(found.landmarks.reshape(-1, 5, 2))
        return ImageDetections(boxes=boxes, scores=found.scores, landmarks=found.landmarks)

    for attribute in ("settings", "describe"):
        if hasattr(detector, attribute):
            setattr(mapped, attribute, getattr(detector, attribute))
    return mapped


def run_detector(
    detector: FaceDetector,
    ground_truth: Sequence[ImageGroundTruth],
    image_root: Path,
    desc: str,
) -> tuple[list[ImageDetections], float]:
    """Detections for every image, and the mean seconds per image."""
    detections: list[ImageDetections] = []
    started = time.perf_counter()
    for gt in _progress(ground_truth, len(ground_truth), desc):
        rgb = np.asarray(read_rgb(image_root / gt.file))
        detections.append(detector(rgb))
    elapsed = time.perf_counter() - started
    return detections, elapsed / max(1, len(ground_truth))


def load_ground_truth(args: argparse.Namespace) -> tuple[list[ImageGroundTruth], Path, dict[str, Any]]:
    data = Path(args.data)
    if args.wider_gt:
        ground_truth = load_wider_split(args.wider_gt, args.wider_setting)
        source = {"wider_gt": str(args.wider_gt), "setting": args.wider_setting}
    else:
        labels = Path(args.labels) if args.labels else data / "labels.json"
        if not labels.is_file():
            raise SystemExit(f"labels not found: {labels} (pass --labels)")
        ground_truth = load_box_list(labels)
        source = {"labels": str(labels)}
    if args.limit is not None:
        ground_truth = ground_truth[: args.limit]
    return ground_truth, data, {"data": str(data), **source}


def report_line(name: str, report: DetectionReport, seconds: float) -> str:
    aps = "  ".join(f"AP@{iou:g} {ap:.3f}" for iou, ap in report.ap.items())
    strict = "  ".join(f"strict@{iou:g} {ap:.3f}" for iou, ap in report.ap_strict.items())
    nme = "n/a" if report.nme is None or report.nme.mean is None else f"{report.nme.mean:.4f}"
    return f"{name:<18} {aps}  {strict}  NME {nme}  {seconds * 1000:.0f} ms/img"


def evaluate_face_detectors(
    detectors: dict[str, Callable[[], FaceDetector]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Run each detector on the data set, score it, print a line each, plot, write JSON."""
    ground_truth, image_root, dataset = load_ground_truth(args)
    results: dict[str, Any] = {}
    curves: dict[str, dict[float, PRCurve]] = {}
    for name, build in detectors.items():
        detector = build()
        if getattr(args, "box_convention", "as-is") == "tight-from-landmarks":
            detector = tight_boxes_from_landmarks(detector)
        detections, seconds = run_detector(detector, ground_truth, image_root, name)
        report = evaluate_detections(detections, ground_truth, ious=args.iou)
        entry = report.to_dict()
        entry["ms_per_image_wall"] = round(seconds * 1000, 1)
        entry["settings"] = getattr(detector, "settings", {})
        entry["model"] = getattr(detector, "describe", {"baseline": name})
        results[name] = entry
        curves[name] = report.curves
        print(report_line(name, report, seconds), flush=True)
    output = {
        "box_convention": getattr(args, "box_convention", "as-is"),
        "dataset": {
            **dataset,
            "images": len(ground_truth),
            "faces": sum(int(g.kept.sum()) for g in ground_truth),
        },
        "protocol": (
            "WIDER FACE evaluation method (models/detection_metrics.py): per-image max-IoU "
            "assignment of score-sorted detections, 1000 score thresholds on min-max normalised "
            "scores, AP = area under the interpolated PR curve; ap_strict also counts "
            "detections on face-free images as false positives; NME = mean 5-point error / "
            "eye-centre distance on faces matched at the lowest IoU"
        ),
        "timing": "ms_per_image_wall: wall-clock per image on this CPU host, load included; indicative only",
        "detectors": results,
    }
    if args.plot:
        plot_pr_curves(curves, args.plot, title=f"Precision-recall on {Path(args.data).name}")
        print(f"PR curves: {args.plot}")
    if args.json:
        write_results(args.json, output)
    return output


def write_results(path: str | Path, results: dict[str, Any]) -> None:
    """The results as indented JSON (folders created), and a line saying where."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {path}")


# =========================================================================== CLI


def _add_detection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="folder with labels.json and the images it names")
    parser.add_argument("--labels", help="box-list labels.json (default: DATA/labels.json)")
    parser.add_argument("--iou", type=float, nargs="+", default=[0.5, 0.3], help="IoU thresholds for AP")
    parser.add_argument("--limit", type=int, help="only the first N images (quick checks)")
    parser.add_argument("--plot", help="write precision-recall curves to this PNG")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--wider-gt", help="folder with WIDER FACE's wider_face_val.mat and split files")
    parser.add_argument("--wider-setting", default="hard", choices=["easy", "medium", "hard"])
    parser.add_argument(
        "--box-convention",
        choices=BOX_CONVENTIONS,
        default="as-is",
        help="tight-from-landmarks: score boxes drawn from each detection's landmarks by the "
        "cmumit-val labels' rule (a fixed mapping for tight eye-to-mouth labels)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    cls = sub.add_parser("classifier", help="top-1/top-5 on an ImageFolder tree or .tar.gz of one")
    source = cls.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a classifier checkpoint (.pt)")
    source.add_argument("--onnx", help="a model repository folder, e.g. model_repository/classifier")
    cls.add_argument("--data", required=True, help="ImageFolder tree or .tar(.gz) of one")
    cls.add_argument("--batch-size", type=int, default=256)
    cls.add_argument("--limit", type=int, help="only the first N images")
    cls.add_argument("--json", help="write the results to this JSON file")

    det = sub.add_parser("detector", help="AP/NME of our face detector (checkpoint or ONNX)")
    det_source = det.add_mutually_exclusive_group(required=True)
    det_source.add_argument("--checkpoint", help="a face_detector checkpoint (.pt)")
    det_source.add_argument("--onnx", help="a model repository folder, e.g. model_repository/face_detector")
    _add_detection_args(det)
    det.add_argument("--score-threshold", type=float, default=0.02, help="low, so the PR curve is complete")
    det.add_argument("--nms-iou", type=float, default=0.4)
    det.add_argument("--max-faces", type=int, default=750)
    det.add_argument(
        "--pyramid",
        type=float,
        nargs="*",
        default=None,
        help="extra passes on smaller copies, as the service's POLYNL_DETECTOR_PYRAMID, e.g. "
        f"{' '.join(map(str, DEFAULT_PYRAMID_LEVELS))} (default: the model's own preprocess.pyramid; "
        "'--pyramid' alone: one pass)",
    )
    det.add_argument(
        "--served",
        action="store_true",
        help="with --onnx: letterbox into the repository's size buckets as the service does "
        "(default: each image at full resolution)",
    )
    det.add_argument("--baselines", nargs="*", default=[], help="also run these baselines (same plot/JSON)")

    base = sub.add_parser("baseline", help="AP/NME of OpenCV Haar, res10 SSD or MTCNN")
    base.add_argument("--name", nargs="+", required=True, choices=list(BASELINE_NAMES))
    _add_detection_args(base)
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.command == "classifier":
        predict, labels, preprocess = (
            torch_classifier(args.checkpoint) if args.checkpoint else onnx_classifier(args.onnx)
        )
        result = evaluate_classifier(predict, labels, preprocess, args.data, args.batch_size, args.limit)
        result = {"model": args.checkpoint or args.onnx, "data": str(args.data), **result}
        top_k = next(key for key in result if key.startswith("top") and key != "top1")
        print(f"top-1 {result['top1']:.4f}  {top_k} {result[top_k]:.4f}  on {result['images']} images")
        if args.json:
            write_results(args.json, result)
        return result

    from models.baselines import make_baseline

    detectors: dict[str, Callable[[], FaceDetector]] = {}
    if args.command == "detector":
        pyramid = None if args.pyramid is None else tuple(args.pyramid)
        selection = FaceSelection(args.score_threshold, args.nms_iou, args.max_faces, pyramid)
        if args.checkpoint:
            detectors[DETECTOR_NAME] = partial(TorchFaceDetector, args.checkpoint, selection)
        else:
            name = f"{DETECTOR_NAME} (onnx{', served buckets' if args.served else ''})"
            detectors[name] = partial(OnnxFaceDetector, args.onnx, selection, args.served)
        names = args.baselines
    else:
        names = args.name
    for name in names:
        detectors[name] = partial(make_baseline, name)
    return evaluate_face_detectors(detectors, args)


if __name__ == "__main__":
    main()

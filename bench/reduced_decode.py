"""Benchmark: what decoding JPEGs at 1/2-1/8 scale (``POLYNL_REDUCED_DECODE``) costs in accuracy.

Issue 19, item 3. Not on the serving path: it starts the real service (``python -m service``,
one worker, the repository's own buckets and pyramid) twice on 127.0.0.1, one at a time, once
with ``POLYNL_REDUCED_DECODE=true`` and once with ``false``, and sends the same files to both
over HTTP:

- every image of each detection set to ``POST /detect-faces`` (score threshold 0.02,
  ``max_faces`` 750, as ``models.evaluate`` scores), scored by the project's own
  :mod:`models.detection_metrics` (AP@0.5 / AP@0.3 the WIDER FACE way, ``ignore`` boxes
  honoured); the sets are ``tests/data/cmumit-val``, ``tests/data/colour-faces``, and both
  upscaled x3 and x5 (bicubic, JPEG quality 92, labels scaled alike) because most of their
  images fit a bucket already, so that reduced decode would rarely apply to them;
- a class-balanced subset of ``../shared/data/cifar10-val.tar.gz`` to ``POST /classify``,
  upscaled x8 (256x256) and x32 (1024x1024), JPEG quality 92: the classifier needs 32x32, so
  every one of them is decoded reduced (the originals are 32x32 and never are).

Per set it reports AP on/off and the difference, the detections at the service's default
threshold 0.5, how far the boxes of matched detections moved between the two runs, top-1
accuracy and label agreement for the classifier, and the mean ``timing.decode_ms`` of the
answers (decode + preprocess). The upscaled files are written once under
``runs/reduced-decode`` (git-ignored).

    python -m bench.reduced_decode                      # everything (about 5 minutes on 2 cores)
    python -m bench.reduced_decode --limit 5 --cifar-per-class 5 --out runs/reduced-decode/smoke
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.machine import machine_info, machine_markdown, write_report
from bench.service import Server, ServerSpec, running, service_spec
from models.detection_metrics import (
    ImageDetections,
    ImageGroundTruth,
    average_precision,
    evaluate_detections,
    load_box_list,
)
from models.evaluate import iter_image_folder
from models.retinaface.synth import box_from_landmarks
from polynl_core.buckets import DEFAULT_BUCKETS, choose_bucket
from polynl_core.images import decode_image
from polynl_core.postprocess import box_iou
from polynl_core.preprocess import letterbox_needed_size
from polynl_core.repository import load_repository

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "runs" / "reduced-decode"  # git-ignored: the upscaled sets
DETECTION_SETS = (ROOT / "tests" / "data" / "cmumit-val", ROOT / "tests" / "data" / "colour-faces")
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-val.tar.gz"
JPEG_QUALITY = 92
SCORE_THRESHOLD = 0.02  # low, so the PR curve reaches high recall (models.evaluate's default)
MAX_FACES = 750
DEFAULT_THRESHOLD = 0.5  # the service's default score_threshold
MATCH_IOU = 0.5  # a detection of one run is the same face as one of the other run
MAX_PIXELS = 40_000_000  # the service's default max_image_pixels


# --- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectionSet:
    name: str
    root: Path  # labels.json's ``file`` entries are relative to it
    ground_truth: list[ImageGroundTruth]
    # Labels are tight eye-to-mouth boxes (cmumit-val): AP@0.5 is also given with each box
    # redrawn from its landmarks by the labels' rule (models.evaluate's tight-from-landmarks).
    tight_labels: bool = False


def _scaled_entry(entry: dict[str, Any], factor: int) -> dict[str, Any]:
    """A labels.json image entry in the pixels of the image upscaled ``factor`` times
    (continuous coordinates: a box edge at x lies at factor * x)."""
    out = copy.deepcopy(entry)
    out["width"], out["height"] = entry["width"] * factor, entry["height"] * factor
    for face in out.get("faces", []):
        face["box"] = [v * factor for v in face["box"]]
        if face.get("landmarks") is not None:
            face["landmarks"] = [[x * factor, y * factor] for x, y in face["landmarks"]]
    out["ignore"] = [[v * factor for v in box] for box in entry.get("ignore", [])]
    return out


def upscaled(image: Image.Image, factor: int) -> bytes:
    """The image ``factor`` times larger (bicubic), as a JPEG of quality 92."""
    big = image.convert("RGB").resize((image.width * factor, image.height * factor), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def upscale_set(source: Path, factor: int, out: Path) -> Path:
    """``source`` (a labels.json set) upscaled ``factor`` times into ``out``; kept once written."""
    labels = json.loads((source / "labels.json").read_text())
    if (out / "labels.json").is_file():
        return out
    entries = labels["images"]
    for n, entry in enumerate(entries, 1):
        target = out / entry["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(source / entry["file"]) as image:
            if image.size != (entry["width"], entry["height"]):
                raise SystemExit(f"{source / entry['file']}: size {image.size} is not the labelled one")
            target.write_bytes(upscaled(image, factor))
        if n % 20 == 0 or n == len(entries):
            print(f"  upscaling {source.name} x{factor}: {n}/{len(entries)}", flush=True)
    scaled = {**labels, "images": [_scaled_entry(e, factor) for e in entries]}
    (out / "labels.json").write_text(json.dumps(scaled, indent=1))
    return out


def detection_sets(factors: list[int], limit: int | None) -> list[DetectionSet]:
    sets = []
    for source in DETECTION_SETS:
        for factor in [1, *factors]:
            root = source if factor == 1 else upscale_set(source, factor, WORK / f"{source.name}-x{factor}")
            truth = load_box_list(root / "labels.json")[:limit]
            name = source.name + ("" if factor == 1 else f" x{factor}")
            sets.append(DetectionSet(name, root, truth, tight_labels=source.name == "cmumit-val"))
    return sets


@dataclass(frozen=True)
class ClassifiedImage:
    data: bytes
    label: str


def cifar_subset(path: Path, per_class: int, factors: list[int]) -> dict[str, list[ClassifiedImage]]:
    """The first ``per_class`` images of each class, upscaled by each factor (JPEG q92)."""
    taken: dict[str, int] = {}
    sets: dict[str, list[ClassifiedImage]] = {f"cifar10-val x{f}": [] for f in factors}
    for item in iter_image_folder(path):
        if taken.get(item.class_name, 0) >= per_class:
            continue
        taken[item.class_name] = taken.get(item.class_name, 0) + 1
        with Image.open(io.BytesIO(item.data)) as image:
            for factor in factors:
                sets[f"cifar10-val x{factor}"].append(
                    ClassifiedImage(upscaled(image, factor), item.class_name)
                )
    return sets


def detector_reduction(data: bytes, buckets: list[tuple[int, int]]) -> int:
    """The factor the service decodes this file down by (the rule of
    ``service.pipelines.DetectorPipeline.needed_size``: the picture as it sits in its bucket)."""

    def needed(width: int, height: int) -> tuple[int, int]:
        return letterbox_needed_size(width, height, choose_bucket(width, height, buckets))

    return decode_image(data, MAX_PIXELS, needed).reduction


# --- the service -----------------------------------------------------------------------------


def service(repository: Path, reduced: bool, threads: int) -> ServerSpec:
    """The service with each model's own batching and pyramid (the shipped detector: one pass)."""
    env = {
        "POLYNL_REDUCED_DECODE": "true" if reduced else "false",
        "POLYNL_MAX_UPLOAD_BYTES": str(64 * 1024 * 1024),  # the x5 files reach ~10 MB
    }
    name = f"polynl-serve (reduced decode {'on' if reduced else 'off'})"
    spec = service_spec(repository, threads, None, None, env=env, name=name)
    del spec.env["POLYNL_DETECTOR_PYRAMID"]  # the model's own (config.json)
    return spec


@dataclass(frozen=True)
class Answer:
    detections: ImageDetections | None
    top1: str | None
    width: int
    height: int
    decode_ms: float


def post(client: httpx.Client, endpoint: str, name: str, data: bytes, params: dict[str, Any]) -> Answer:
    response = client.post(endpoint, params=params, files={"file": (name, data, "image/jpeg")})
    if response.status_code != 200:
        raise RuntimeError(f"{endpoint} {name}: {response.status_code} {response.text[:300]}")
    body = response.json()
    result = body["results"][0]
    detections = top1 = None
    if "faces" in result:
        faces = result["faces"]
        detections = ImageDetections(
            boxes=np.asarray([f["box"] for f in faces], dtype=np.float64).reshape(-1, 4),
            scores=np.asarray([f["score"] for f in faces], dtype=np.float64),
            landmarks=np.asarray([list(f["landmarks"].values()) for f in faces], dtype=np.float64).reshape(
                -1, 5, 2
            ),
        )
    else:
        top1 = result["top_k"][0]["label"]
    timing = body["timing"]
    # decode + preprocess (one field, decode_ms, before preprocess_ms was split out)
    decode_ms = timing["decode_ms"] + timing.get("preprocess_ms", 0.0)
    return Answer(detections, top1, result["width"], result["height"], decode_ms)


@contextmanager
def client_of(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=180.0) as client:
        yield client


def run_detection(client: httpx.Client, dataset: DetectionSet, label: str) -> list[Answer]:
    answers = []
    params = {"score_threshold": SCORE_THRESHOLD, "max_faces": MAX_FACES}
    for n, truth in enumerate(dataset.ground_truth, 1):
        path = dataset.root / truth.file
        answer = post(client, "/detect-faces", path.name, path.read_bytes(), params)
        if (answer.width, answer.height) != (truth.width, truth.height):
            raise RuntimeError(f"{path}: answered {answer.width}x{answer.height}, labelled otherwise")
        answers.append(answer)
        if n % 20 == 0 or n == len(dataset.ground_truth):
            print(f"  [{label}] {dataset.name}: {n}/{len(dataset.ground_truth)}", flush=True)
    return answers


def run_classifier(
    client: httpx.Client, name: str, images: list[ClassifiedImage], label: str
) -> list[Answer]:
    answers = []
    for n, item in enumerate(images, 1):
        answers.append(post(client, "/classify", f"{n}.jpg", item.data, {"top_k": 1}))
        if n % 250 == 0 or n == len(images):
            print(f"  [{label}] {name}: {n}/{len(images)}", flush=True)
    return answers


# --- comparison ------------------------------------------------------------------------------


def box_deviations(on: list[Answer], off: list[Answer]) -> dict[str, Any]:
    """Detections at the default threshold matched across the two runs (greedy, highest IoU
    first, IoU >= 0.5); per matched pair the largest coordinate difference, in pixels and
    relative to the larger side of the full-decode box."""
    pixels: list[float] = []
    relative: list[float] = []
    unmatched = 0
    for a, b in zip(on, off, strict=True):
        assert a.detections is not None and b.detections is not None
        boxes_on = a.detections.boxes[a.detections.scores >= DEFAULT_THRESHOLD]
        boxes_off = b.detections.boxes[b.detections.scores >= DEFAULT_THRESHOLD]
        pairs: list[tuple[float, int, int]] = []
        for i, box in enumerate(boxes_on):
            if len(boxes_off):
                for j, iou in enumerate(box_iou(box, boxes_off)):
                    if iou >= MATCH_IOU:
                        pairs.append((float(iou), i, j))
        used_on: set[int] = set()
        used_off: set[int] = set()
        for _, i, j in sorted(pairs, reverse=True):
            if i in used_on or j in used_off:
                continue
            used_on.add(i)
            used_off.add(j)
            difference = float(np.abs(boxes_on[i] - boxes_off[j]).max())
            size = float(max(boxes_off[j][2] - boxes_off[j][0], boxes_off[j][3] - boxes_off[j][1]))
            pixels.append(difference)
            relative.append(difference / size if size > 0 else 0.0)
        unmatched += len(boxes_on) - len(used_on) + len(boxes_off) - len(used_off)

    def stats(values: list[float], digits: int) -> dict[str, float | None]:
        if not values:
            return {"max": None, "median": None}
        return {"max": round(max(values), digits), "median": round(statistics.median(values), digits)}

    return {
        "matched": len(pixels),
        "unmatched": unmatched,
        "px": stats(pixels, 2),
        "relative_to_box": stats(relative, 4),
    }


def mean_decode_ms(answers: list[Answer]) -> float:
    return round(statistics.fmean(a.decode_ms for a in answers), 2) if answers else 0.0


def compare_detection(
    dataset: DetectionSet, on: list[Answer], off: list[Answer], buckets: list[tuple[int, int]]
) -> dict[str, Any]:
    reductions = [
        detector_reduction((dataset.root / gt.file).read_bytes(), buckets) for gt in dataset.ground_truth
    ]
    reduced = [i for i, factor in enumerate(reductions) if factor > 1]
    runs: dict[str, dict[str, Any]] = {}
    for label, answers in (("on", on), ("off", off)):
        detections = [a.detections for a in answers if a.detections is not None]
        report = evaluate_detections(detections, dataset.ground_truth, ious=(0.5, 0.3))
        runs[label] = {
            "ap": {f"{k:g}": round(v, 4) for k, v in report.ap.items()},
            "nme_mean": None if report.nme is None else report.nme.mean,
            "faces_at_0.5": sum(int((d.scores >= DEFAULT_THRESHOLD).sum()) for d in detections),
            "decode_ms_mean": mean_decode_ms(answers),
        }
        if dataset.tight_labels:
            tight = [
                ImageDetections(box_from_landmarks(d.landmarks), d.scores, d.landmarks)
                for d in detections
                if d.landmarks is not None
            ]
            runs[label]["ap_tight_0.5"] = round(average_precision(tight, dataset.ground_truth, 0.5), 4)
        if reduced:  # the images that reduced decode changes, alone
            subset = evaluate_detections(
                [detections[i] for i in reduced], [dataset.ground_truth[i] for i in reduced], ious=(0.5, 0.3)
            )
            runs[label]["ap_reduced_images"] = {f"{k:g}": round(v, 4) for k, v in subset.ap.items()}
    return {
        "set": dataset.name,
        "images": len(dataset.ground_truth),
        "faces": sum(int(gt.kept.sum()) for gt in dataset.ground_truth),
        "decoded_reduced": {str(f): reductions.count(f) for f in sorted(set(reductions))},
        "reduced_images_faces": sum(int(dataset.ground_truth[i].kept.sum()) for i in reduced),
        "on": runs["on"],
        "off": runs["off"],
        "ap_difference": {
            iou: round(runs["on"]["ap"][iou] - runs["off"]["ap"][iou], 4) for iou in ("0.5", "0.3")
        },
        "nme_difference": (
            round(runs["on"]["nme_mean"] - runs["off"]["nme_mean"], 4)
            if runs["on"]["nme_mean"] is not None and runs["off"]["nme_mean"] is not None
            else None
        ),
        "box_deviation": box_deviations(on, off),
    }


def compare_classifier(
    name: str, images: list[ClassifiedImage], on: list[Answer], off: list[Answer]
) -> dict[str, Any]:
    def top1(answers: list[Answer]) -> float:
        return round(statistics.fmean(a.top1 == i.label for a, i in zip(answers, images, strict=True)), 4)

    return {
        "set": name,
        "images": len(images),
        "size": f"{on[0].width}x{on[0].height}" if on else None,
        "on": {"top1": top1(on), "decode_ms_mean": mean_decode_ms(on)},
        "off": {"top1": top1(off), "decode_ms_mean": mean_decode_ms(off)},
        "top1_difference": round(top1(on) - top1(off), 4),
        "top1_label_agreement": round(
            statistics.fmean(a.top1 == b.top1 for a, b in zip(on, off, strict=True)), 4
        ),
    }


# --- report ----------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        "## Reduced JPEG decode (POLYNL_REDUCED_DECODE): accuracy on and off",
        "",
        f"The service (one worker, {settings['threads']} ONNX Runtime thread(s), the repository's "
        f"buckets {settings['buckets']}) started twice, reduced decode on then off; every image "
        "sent alone over HTTP. Detection: score_threshold "
        f"{SCORE_THRESHOLD}, max_faces {MAX_FACES}, AP by `models.detection_metrics` (ignore boxes "
        f"honoured). Upscaled sets: bicubic, JPEG q{JPEG_QUALITY}, labels scaled alike. `decoded at` "
        "counts images per decode factor with reduced decode on (1 = full size). Box deviation: "
        "detections >= 0.5 matched across the runs at IoU >= 0.5; largest coordinate difference "
        "per pair, in px and relative to the box's larger side. decode_ms: the answers' "
        "`timing.decode_ms` + `timing.preprocess_ms` (decode + preprocess), mean per image.",
        "",
        machine_markdown(report["machine"]),
        "",
        "| set | images | decoded at | AP@0.5 on / off (diff) | AP@0.3 on / off (diff) "
        "| faces >= 0.5 on / off | box dev. px max / median | relative max / median | unmatched "
        "| decode ms on / off |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["detection"]:
        on, off, dev = row["on"], row["off"], row["box_deviation"]
        factors = ", ".join(f"1/{f}: {n}" for f, n in row["decoded_reduced"].items())
        aps = [
            f"{on['ap'][iou]:.4f} / {off['ap'][iou]:.4f} ({row['ap_difference'][iou]:+.4f})"
            for iou in ("0.5", "0.3")
        ]
        lines.append(
            f"| {row['set']} | {row['images']} | {factors} | {aps[0]} | {aps[1]} "
            f"| {on['faces_at_0.5']} / {off['faces_at_0.5']} | {dev['px']['max']} / {dev['px']['median']} "
            f"| {dev['relative_to_box']['max']} / {dev['relative_to_box']['median']} | {dev['unmatched']} "
            f"| {on['decode_ms_mean']} / {off['decode_ms_mean']} |"
        )
    lines += [
        "",
        "The images decoded reduced alone (AP over them only), and for the sets with landmark labels "
        "AP@0.5 with each box redrawn from its landmarks by the labels' rule (`--box-convention "
        "tight-from-landmarks`; the labels are tight eye-to-mouth boxes) and the landmark NME (mean):",
        "",
        "| set | reduced images (faces) | their AP@0.5 on / off | their AP@0.3 on / off "
        "| AP@0.5 tight on / off (diff) | NME on / off (diff) |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["detection"]:
        on, off = row["on"], row["off"]
        count = sum(n for f, n in row["decoded_reduced"].items() if f != "1")
        subset = [
            f"{on['ap_reduced_images'][iou]:.4f} / {off['ap_reduced_images'][iou]:.4f}"
            if "ap_reduced_images" in on
            else "n/a"
            for iou in ("0.5", "0.3")
        ]
        tight = (
            f"{on['ap_tight_0.5']:.4f} / {off['ap_tight_0.5']:.4f} "
            f"({on['ap_tight_0.5'] - off['ap_tight_0.5']:+.4f})"
            if "ap_tight_0.5" in on
            else "n/a"
        )
        nme = (
            f"{on['nme_mean']:.4f} / {off['nme_mean']:.4f} ({row['nme_difference']:+.4f})"
            if row["nme_difference"] is not None
            else "n/a"
        )
        lines.append(
            f"| {row['set']} | {count} ({row['reduced_images_faces']}) | {subset[0]} | {subset[1]} "
            f"| {tight} | {nme} |"
        )
    if report["classifier"]:
        lines += [
            "",
            "| set | images | size | top-1 on / off (diff) | top-1 labels agree | decode ms on / off |",
            "|---|---|---|---|---|---|",
        ]
        for row in report["classifier"]:
            on, off = row["on"], row["off"]
            lines.append(
                f"| {row['set']} | {row['images']} | {row['size']} "
                f"| {on['top1']:.4f} / {off['top1']:.4f} ({row['top1_difference']:+.4f}) "
                f"| {row['top1_label_agreement']:.4f} | {on['decode_ms_mean']} / {off['decode_ms_mean']} |"
            )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--factors", default="3,5", help="upscaling factors of the detection sets")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per detection set")
    parser.add_argument("--cifar", type=Path, default=CIFAR)
    parser.add_argument("--cifar-per-class", type=int, default=100, help="0: no classifier part")
    parser.add_argument("--cifar-factors", default="8,32")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "reduced-decode", help="path stem for .json/.md"
    )
    args = parser.parse_args(argv)

    factors = [int(f) for f in args.factors.split(",") if f]
    started = time.monotonic()
    machine = machine_info()  # before our servers start: the background load of others
    print("preparing the sets", flush=True)
    sets = detection_sets(factors, args.limit)
    cifar = (
        cifar_subset(args.cifar, args.cifar_per_class, [int(f) for f in args.cifar_factors.split(",") if f])
        if args.cifar_per_class
        else {}
    )
    config = load_repository(args.repository, verify=False)["face_detector"].config
    buckets = [(int(h), int(w)) for h, w in (config.size_buckets or DEFAULT_BUCKETS)]

    answers: dict[str, dict[str, list[Answer]]] = {"on": {}, "off": {}}
    for label, reduced in (("on", True), ("off", False)):
        spec = service(args.repository, reduced, args.threads)
        print(f"starting {spec.name}", flush=True)
        with running(spec) as server, client_of(server) as client:
            for dataset in sets:
                answers[label][dataset.name] = run_detection(client, dataset, label)
            for name, images in cifar.items():
                answers[label][name] = run_classifier(client, name, images, label)

    report: dict[str, Any] = {
        "benchmark": "reduced JPEG decode: accuracy on and off",
        "machine": machine,
        "settings": {
            "repository": str(args.repository),
            "buckets": ", ".join(f"{h}x{w}" for h, w in buckets),
            "threads": args.threads,
            "workers": 1,
            "score_threshold": SCORE_THRESHOLD,
            "max_faces": MAX_FACES,
            "limit": args.limit,
            "jpeg_quality": JPEG_QUALITY,
            "cifar_per_class": args.cifar_per_class,
        },
        "detection": [
            compare_detection(d, answers["on"][d.name], answers["off"][d.name], buckets) for d in sets
        ],
        "classifier": [
            compare_classifier(name, images, answers["on"][name], answers["off"][name])
            for name, images in cifar.items()
        ],
        "seconds": round(time.monotonic() - started, 1),
    }
    text = markdown(report)
    write_report(args.out, report, text)
    print(text)
    print(f"wrote {args.out.with_suffix('.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

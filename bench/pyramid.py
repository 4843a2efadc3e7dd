"""Benchmark: what the detector's image pyramid costs per image, against one pass.

The service's detector path minus HTTP and batching, for each image of a folder: letterbox into
the service's bucket (plus the pyramid's smaller copies), ONNX Runtime on each input, merge of
the levels, threshold + NMS (``polynl_core.pyramid``, ``polynl_core.postprocess``). One pass and the
pyramid run interleaved image by image, in rounds, on the same session; per-image time is the
median over rounds, and the report gives the totals and their ratio.

    python -m bench.pyramid --repository model_repository --images tests/data/cmumit-val/images
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import onnxruntime as ort
from PIL import Image

from bench.machine import machine_info, machine_markdown, write_report
from polynl_core.buckets import DEFAULT_BUCKETS, choose_bucket
from polynl_core.images import is_image_file, read_rgb
from polynl_core.postprocess import select_faces
from polynl_core.pyramid import DEFAULT_LEVELS, detect_levels, pyramid_inputs
from polynl_core.repository import load_repository

RESULTS = Path(__file__).resolve().parent / "results"


def detect(session: ort.InferenceSession, image: Image.Image, model: Any, levels: tuple[float, ...]) -> int:
    """Faces found in one image the service's way (score 0.5, NMS 0.4); returns their count."""
    bucket = choose_bucket(*image.size, model.config.size_buckets or DEFAULT_BUCKETS)
    inputs = pyramid_inputs(image, bucket, model.config.preprocess, levels)
    merged = detect_levels(inputs, lambda batch: session.run(None, {model.config.input.name: batch}))
    return len(select_faces(*merged, 0.5, 0.4, 100).scores)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--images", type=Path, default=Path("tests/data/cmumit-val/images"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "pyramid")
    args = parser.parse_args(argv)

    model = load_repository(args.repository)["face_detector"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(model.onnx_path), options, providers=["CPUExecutionProvider"])
    paths = sorted(p for p in args.images.iterdir() if is_image_file(p))
    images = [read_rgb(p) for p in paths]
    variants = {"one pass": (), "pyramid": tuple(DEFAULT_LEVELS)}
    seconds: dict[str, list[list[float]]] = {name: [[] for _ in images] for name in variants}
    faces: dict[str, int] = {}
    for name, levels in variants.items():  # warm-up: every input shape once
        faces[name] = sum(detect(session, image, model, levels) for image in images)
    for _ in range(args.rounds):
        for index, image in enumerate(images):
            for name, levels in variants.items():
                started = time.perf_counter()
                detect(session, image, model, levels)
                seconds[name][index].append(time.perf_counter() - started)
    totals = {name: sum(statistics.median(per) for per in runs) for name, runs in seconds.items()}
    ratio = totals["pyramid"] / totals["one pass"]
    info = machine_info()
    report = {
        "benchmark": "detector pyramid cost",
        "images": len(images),
        "folder": str(args.images),
        "rounds": args.rounds,
        "threads": args.threads,
        "levels": list(DEFAULT_LEVELS),
        "ms_per_image": {name: round(1000 * total / len(images), 2) for name, total in totals.items()},
        "pyramid_over_one_pass": round(ratio, 3),
        "faces_at_0.5": faces,
        "machine": info,
    }
    lines = [
        "## Detector pyramid: cost per image",
        "",
        f"{len(images)} images of `{args.images}`, each through the service's detector path without HTTP "
        f"(letterbox, ONNX Runtime with {args.threads} thread(s), merge, NMS); one pass and the pyramid "
        f"{list(DEFAULT_LEVELS)} interleaved per image, median of {args.rounds} rounds.",
        "",
        machine_markdown(info),
        "",
        "| variant | ms per image | faces at score 0.5 |",
        "|---|---|---|",
        *(f"| {n} | {report['ms_per_image'][n]} | {faces[n]} |" for n in variants),
        "",
        f"Pyramid / one pass: x{ratio:.2f}",
        "",
    ]
    write_report(args.out, report, "\n".join(lines))
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()

"""In-process timing of one code tree's decode-to-tensor path, for ``bench.lean``.

Run by ``bench.lean`` once per tree (the baseline revision and the current checkout) as
``python -P bench/lean_probe.py ...`` with ``PYTHONPATH`` set to that tree, so that
``service`` and ``polynl_core`` come from the tree being measured. Standard library and the
tree's own modules only: never import ``bench`` here (the baseline has no such file). Prints
one JSON object.

- ``prepare``: the classifier pipeline's decode + preprocess of one upload
  (``ModelPipeline.prepare``: bytes -> (3, H, W) float32 input), built the way the service
  builds it (``service.app.load_models``). If a later tree changes that API, adapt
  :func:`classifier_prepare` (and only it).
- ``pillow``: Pillow's bare decode of the file (open + load, RGB), for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def classifier_prepare(repository: Path) -> Callable[[bytes], Any]:
    """The tree's classifier prepare function (decode + preprocess of one upload)."""
    os.environ.update(
        {
            "POLYNL_MODEL_REPOSITORY": str(repository),
            "POLYNL_PROVIDERS": "CPUExecutionProvider",
            "POLYNL_INTRA_OP_THREADS": "1",
            "POLYNL_WORKERS": "1",
            "POLYNL_LOG_LEVEL": "warning",
        }
    )
    from polynl_core.tasks import Task
    from service.app import load_models
    from service.metrics import Metrics
    from service.settings import Settings

    pipeline = load_models(Settings(), Metrics()).find(Task.CLASSIFICATION)
    prepare = pipeline.prepare
    if inspect.iscoroutinefunction(prepare):
        return lambda data: asyncio.run(prepare(data))
    return prepare


def pillow_decode(data: bytes) -> Any:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB") if image.mode != "RGB" else image


def time_calls(function: Callable[[bytes], Any], data: bytes, repeats: int) -> dict[str, Any]:
    result = function(data)  # warm-up: first-call imports and allocations
    times: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        function(data)
        times.append((time.perf_counter() - started) * 1000.0)
    array = getattr(result, "array", result)
    shape = list(getattr(array, "shape", getattr(array, "size", ())))
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "times_ms": times,
        "repeats": repeats,
        "output_shape": shape,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/lean_probe.py")
    parser.add_argument("what", choices=("prepare", "pillow"))
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    data = args.image.read_bytes()
    function = classifier_prepare(args.repository) if args.what == "prepare" else pillow_decode
    report = time_calls(function, data, args.repeats)
    report.update({"what": args.what, "image": str(args.image), "bytes": len(data)})
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark 2: whole models in ONNX Runtime, Poly-NL vs non-local vs no block, per batch size.

Not on the serving path: it measures what the service's ONNX Runtime call costs for each
model family and what the context block adds to it. Every variant is the same architecture
built from one config (``block: none | nonlocal | polynl``) with random weights (speed does
not depend on them; the blocks' output BN is randomised so they are not a zero branch), and
exported with the project's exporter (``export.onnx_export.export_onnx``), exactly as
``python -m export`` writes the shipped files.

Models:
  - ``classifier``: the shipped classifier's architecture (read from ``models/weights/classifier.pt``:
    CIFAR ResNet-20, width 32, blocks before the last block of stages 2 and 3), 32x32;
  - ``detector``: the shipped RetinaFace MobileNet-0.25 (block at stride 16), decoded outputs,
    at the detector's default 320x320 bucket (and 640x640 with ``--detector-size``);
  - ``resnet50``: the paper-size classifier, ResNet-50 with a block before the last block of
    res4 (C = 1024, 14x14 positions), 224x224.

For each batch size the variants run in interleaved rounds, so they see the same background
load and their ratios hold even when absolute figures move.

    python -m bench.models                                   # all three, default batch sizes
    python -m bench.models --models classifier --batches 1,8 --repeats 3   # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import machine_info, machine_markdown, write_report

VARIANTS = ("none", "polynl", "nonlocal")
MODELS = ("classifier", "detector", "resnet50")
DEFAULT_BATCHES = {"classifier": "1,8,32,128", "detector": "1,4,8", "resnet50": "1,4,16"}
RESULTS = Path(__file__).resolve().parent / "results"
SHIPPED_CLASSIFIER = Path(__file__).resolve().parents[1] / "models" / "weights" / "classifier.pt"


def build_variant(model: str, block: str, detector_size: int) -> tuple[Any, Any, tuple[int, int]]:
    """(module in eval mode, ExportSpec, (H, W)) of one model family with one block type."""
    import torch

    from export.onnx_export import classifier_spec, detector_spec
    from models.resnet import resnet50

    torch.manual_seed(0)
    module: torch.nn.Module
    if model == "classifier":
        module, spec, hw = shipped_classifier_variant(block), classifier_spec(32, 32), (32, 32)
    elif model == "resnet50":
        module, spec, hw = resnet50(1000, block=block), classifier_spec(224, 224), (224, 224)
    elif model == "detector":
        from models.retinaface.inference import DecodedRetinaFace
        from models.retinaface.net import RetinaFace, RetinaFaceConfig

        module = DecodedRetinaFace(RetinaFace(RetinaFaceConfig(block=block)))
        hw = (detector_size, detector_size)
        spec = detector_spec(*hw)
    else:
        raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
    _randomise_block_outputs(module)
    return module.eval(), spec, hw


def shipped_classifier_variant(block: str) -> Any:
    """The shipped classifier's architecture (depth, width, block places) with ``block`` in them."""
    import dataclasses

    from models.checkpoint import load_checkpoint
    from models.resnet import ResNet, ResNetConfig

    shipped = ResNetConfig.from_dict(load_checkpoint(SHIPPED_CLASSIFIER).arch)
    return ResNet(dataclasses.replace(shipped, block=block))


def _randomise_block_outputs(module: Any) -> None:
    import torch

    from models.blocks import NonLocal, PolyNL

    with torch.no_grad():
        for block in module.modules():
            if isinstance(block, PolyNL | NonLocal):
                block.bn.weight.normal_(0.0, 0.1)
                block.bn.bias.normal_(0.0, 0.1)


def export_variant(
    model: str, block: str, folder: Path, detector_size: int
) -> tuple[Path, int, tuple[int, int]]:
    """Export one variant; returns (ONNX path, parameter count, (H, W))."""
    from export.onnx_export import export_onnx

    module, spec, hw = build_variant(model, block, detector_size)
    path = folder / f"{model}_{block}.onnx"
    export_onnx(module, spec, path)
    return path, sum(p.numel() for p in module.parameters()), hw


def make_session(path: Path, threads: int, providers: Sequence[str]) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=list(providers))


def time_sessions(
    sessions: dict[str, Any], batch: np.ndarray, repeats: int, warmup: int, budget_s: float
) -> dict[str, dict[str, Any]]:
    """Median / min latency of each session on ``batch``, measured in interleaved rounds.

    Round-robin (A, B, C, A, B, C, ...) rather than all of A then all of B: a burst of
    background load then hits every variant alike, which keeps the ratios honest.
    """
    feeds = {name: {s.get_inputs()[0].name: batch} for name, s in sessions.items()}
    for _ in range(warmup):
        for name, session in sessions.items():
            session.run(None, feeds[name])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    end = time.perf_counter() + budget_s
    for _ in range(repeats):
        for name, session in sessions.items():
            started = time.perf_counter()
            session.run(None, feeds[name])
            times[name].append((time.perf_counter() - started) * 1000.0)
        if time.perf_counter() > end:
            break
    return {
        name: {
            "latency_ms": statistics.median(t),
            "min_ms": min(t),
            "runs": len(t),
            "images_per_s": batch.shape[0] * 1000.0 / statistics.median(t),
            "images_per_s_best": batch.shape[0] * 1000.0 / min(t),
        }
        for name, t in times.items()
    }


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    exports: dict[str, Any] = {}
    providers = args.providers.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        for model in args.models.split(","):
            batches = [int(b) for b in (args.batches or DEFAULT_BATCHES[model]).split(",")]
            sessions = {}
            for block in VARIANTS:
                path, params, hw = export_variant(model, block, Path(tmp), args.detector_size)
                sessions[block] = make_session(path, args.threads, providers)
                exports[f"{model}/{block}"] = {
                    "parameters": params,
                    "onnx_mb": path.stat().st_size / 1e6,
                    "input_hw": list(hw),
                    "providers": sessions[block].get_providers(),
                }
            rng = np.random.default_rng(0)
            for batch_size in batches:
                batch = rng.standard_normal((batch_size, 3, *hw), dtype=np.float32)
                timings = time_sessions(sessions, batch, args.repeats, args.warmup, args.budget_s)
                for block, timing in timings.items():
                    row = {"model": model, "block": block, "batch": batch_size, **timing}
                    rows.append(row)
                    print(
                        f"{model:>10} {block:>8} batch {batch_size:>4}: {timing['latency_ms']:9.2f} ms "
                        f"{timing['images_per_s']:8.1f} img/s",
                        flush=True,
                    )
            del sessions
    return {
        "benchmark": "models",
        "settings": {
            "threads": args.threads,
            "providers": providers,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "detector_size": args.detector_size,
            "weights": "random (speed only); context blocks' output BN randomised",
            "exporter": "export.onnx_export.export_onnx (opset 17, blocks as ONNX functions)",
        },
        "exports": exports,
        "rows": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "## Whole models in ONNX Runtime",
        "",
        f"ONNX Runtime {', '.join(s['providers'])}, {s['threads']} intra-op thread(s); latency = best of up "
        f"to {s['repeats']} runs after {s['warmup']} warm-up runs (median in the JSON); random weights. "
        "'vs no block' = latency relative to the same model without a context block, same batch, "
        "measured in interleaved rounds.",
        "",
        machine_markdown(report["machine"]),
        "| model | input | block | params | batch | latency ms | images/s | vs no block |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = {(r["model"], r["batch"]): r["min_ms"] for r in report["rows"] if r["block"] == "none"}
    for r in report["rows"]:
        info = report["exports"][f"{r['model']}/{r['block']}"]
        h, w = info["input_hw"]
        slowdown = r["min_ms"] / base[(r["model"], r["batch"])]
        lines.append(
            f"| {r['model']} | {h}x{w} | {r['block']} | {info['parameters'] / 1e6:.2f} M | {r['batch']} "
            f"| {r['min_ms']:.2f} | {r['images_per_s_best']:.1f} | x{slowdown:.2f} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {MODELS}")
    parser.add_argument("--batches", default=None, help="batch sizes (default per model)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--providers", default="CPUExecutionProvider", help="ORT providers, comma-separated")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=20.0, help="time cap per (variant, batch)")
    parser.add_argument("--detector-size", type=int, default=320)
    parser.add_argument("--out", type=Path, default=RESULTS / "models", help="path stem for .json/.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    machine = machine_info()
    report = run_benchmark(args)
    report["machine"] = machine
    write_report(args.out, report, markdown(report))
    print(f"wrote {args.out.with_suffix('.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

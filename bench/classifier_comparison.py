"""Benchmark 3: the context block in the ResNet-9 classifier, accuracy and latency side by side.

Not on the serving path: it answers issue 21's question, "what does the block buy in a strong
network?". For every variant (no block, non-local, Poly-NL ``projected``, Poly-NL
``paper-scalar``) and every seed it trains the ResNet-9 recipe
(``models/classification/configs/resnet9.json``, the same options for all, only ``--block``,
``--block-form`` and ``--seed`` change) with the project's training CLI, evaluates the final
(EMA) checkpoint with the served transform (``models.evaluate``'s classifier evaluation on the
validation archive), then exports one checkpoint per variant with the project's exporter and
times them all in ONNX Runtime in interleaved rounds (``bench.models.time_sessions``).

Every run writes to ``OUT/<variant>-seed<k>/`` and resumes from its ``last.pt``: a stopped
comparison continues where it stopped when the same command is run again; finished runs are
not retrained.

    # the full comparison (4 variants x 2 seeds x 24 epochs), on a GPU
    python -m bench.classifier_comparison --data ../shared/data/cifar10-train.tar.gz \\
        --val ../shared/data/cifar10-val.tar.gz --out runs/comparison --device cuda
    # a CPU smoke run of the driver (minutes; the accuracies mean nothing)
    python -m bench.classifier_comparison --data ... --val ... --out runs/comparison-smoke \\
        --epochs 1 --train-subset 1024 --no-val-each-epoch --threads 2 \\
        --report runs/comparison-smoke/report
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import machine_info, machine_markdown, write_report
from bench.models import make_session, time_sessions

RESULTS = Path(__file__).resolve().parent / "results"
RECIPE = Path(__file__).resolve().parents[1] / "models" / "classification" / "configs" / "resnet9.json"
SHIPPED_CLASSIFIER = Path(__file__).resolve().parents[1] / "models" / "weights" / "classifier.pt"
REFERENCE = "shipped-resnet20"  # the latency reference: today's shipped classifier
# variant name -> (--block, --block-form)
VARIANTS: dict[str, tuple[str, str]] = {
    "none": ("none", "projected"),
    "nonlocal": ("nonlocal", "projected"),
    "polynl-projected": ("polynl", "projected"),
    "polynl-paper-scalar": ("polynl", "paper-scalar"),
}


def run_dir(out: Path, variant: str, seed: int) -> Path:
    return out / f"{variant}-seed{seed}"


def _finished(final: Path, epochs: int) -> bool:
    if not final.is_file():
        return False
    from models.checkpoint import load_checkpoint

    history = load_checkpoint(final).training.get("history", [])
    return bool(history) and history[-1].get("epoch") == epochs


def train_variant(args: argparse.Namespace, variant: str, seed: int) -> Path:
    """Train (or resume, or skip when done) one run; returns its final checkpoint."""
    from models.train import main as train_main

    folder = run_dir(args.out, variant, seed)
    final = folder / "final.pt"
    if _finished(final, args.epochs):
        print(f"[{variant} seed {seed}] done already: {final}", flush=True)
        return final
    block, form = VARIANTS[variant]
    argv = [
        "classifier", "--config", str(args.recipe), "--data", str(args.data), "--out", str(folder),
        "--cache-dir", str(args.out / "cache"), "--block", block, "--block-form", form,
        "--seed", str(seed), "--epochs", str(args.epochs), "--device", args.device,
    ]  # fmt: skip
    if args.val_each_epoch:
        argv += ["--val", str(args.val)]
    if args.train_subset:
        argv += ["--train-subset", str(args.train_subset)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    print(f"[{variant} seed {seed}] python -m models.train {' '.join(argv)}", flush=True)
    if train_main(argv) != 0:
        raise SystemExit(f"training {variant} seed {seed} failed")
    return final


def evaluate_run(final: Path, val: Path, limit: int | None) -> dict[str, Any]:
    """Top-1/top-5 with the served transform, as ``python -m models.evaluate classifier``."""
    from models.checkpoint import load_checkpoint
    from models.evaluate import evaluate_classifier, torch_classifier

    predict, labels, preprocess = torch_classifier(final)
    result = evaluate_classifier(predict, labels, preprocess, val, limit=limit)
    training = load_checkpoint(final).training
    return {
        "top1": result["top1"],
        "top5": result.get("top5"),
        "images": result["images"],
        "train_seconds": training.get("train_seconds"),
        "device": training.get("device"),
        "epochs": len(training.get("history", [])),
    }


def export_variant(final: Path, folder: Path) -> tuple[Path, int, tuple[int, int]]:
    """The checkpoint as ONNX through the project's exporter; (path, parameter count, (H, W))."""
    from export.onnx_export import classifier_spec, export_onnx
    from models.checkpoint import load_model

    model, meta = load_model(final)
    height, width = meta.preprocess["size"]
    path = folder / f"{final.parent.name}.onnx"
    export_onnx(model, classifier_spec(height, width), path)
    return path, sum(p.numel() for p in model.parameters()), (int(height), int(width))


def summarise(runs: list[dict[str, Any]], variants: list[str]) -> list[dict[str, Any]]:
    rows = []
    for variant in variants:
        top1 = [r["top1"] for r in runs if r["variant"] == variant]
        if not top1:
            continue
        rows.append(
            {
                "variant": variant,
                "seeds": [r["seed"] for r in runs if r["variant"] == variant],
                "top1": top1,
                "top1_mean": statistics.fmean(top1),
                "top1_std": statistics.stdev(top1) if len(top1) > 1 else None,
                "top1_range": max(top1) - min(top1),
            }
        )
    return rows


def run_comparison(args: argparse.Namespace) -> dict[str, Any]:
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; expected from {list(VARIANTS)}")
    runs: list[dict[str, Any]] = []
    finals: dict[str, Path] = {}
    for seed in args.seeds:  # seed-major: a stopped comparison has every variant at seed 0 first
        for variant in variants:
            final = train_variant(args, variant, seed)
            finals.setdefault(variant, final)
            started = time.perf_counter()
            result = {"variant": variant, "seed": seed, **evaluate_run(final, args.val, args.val_limit)}
            runs.append(result)
            print(
                f"[{variant} seed {seed}] top-1 {result['top1']:.4f} on {result['images']} images "
                f"({time.perf_counter() - started:.0f} s to evaluate)",
                flush=True,
            )
    latency: list[dict[str, Any]] = []
    exports: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-classifier-") as tmp:
        sessions = {}
        timed = dict(finals)
        if args.reference is not None and args.reference.is_file():
            timed[REFERENCE] = args.reference
        input_hw = (32, 32)
        for variant, final in timed.items():
            path, params, hw = export_variant(final, Path(tmp))
            if variant != REFERENCE:
                input_hw = hw  # the trained variants' size; the graphs' H and W are dynamic
            sessions[variant] = make_session(path, args.ort_threads, ["CPUExecutionProvider"])
            exports[variant] = {
                "parameters": params,
                "onnx_mb": path.stat().st_size / 1e6,
                "from": str(final),
            }
        rng = np.random.default_rng(0)
        for batch_size in (int(b) for b in args.batches.split(",")):
            batch = rng.standard_normal((batch_size, 3, *input_hw), dtype=np.float32)
            for variant, timing in time_sessions(sessions, batch, args.repeats, 2, args.budget_s).items():
                latency.append({"variant": variant, "batch": batch_size, **timing})
                print(
                    f"{variant:>20} batch {batch_size:>3}: {timing['min_ms']:8.2f} ms "
                    f"({timing['images_per_s_best']:.0f} images/s)",
                    flush=True,
                )
    return {
        "benchmark": "classifier_comparison",
        "settings": {
            "recipe": str(args.recipe),
            "epochs": args.epochs,
            "seeds": list(args.seeds),
            "device": args.device,
            "train_subset": args.train_subset or None,
            "val": str(args.val),
            "val_limit": args.val_limit,
            "ort_threads": args.ort_threads,
            "input_hw": list(input_hw),
            "latency": "ONNX Runtime CPU, best of the interleaved rounds (median in the rows)",
            "reference": str(args.reference) if args.reference is not None else None,
        },
        "runs": runs,
        "summary": summarise(runs, variants),
        "exports": exports,
        "latency": latency,
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    subset = f", trained on a {s['train_subset']}-image subset" if s["train_subset"] else ""
    lines = [
        "## The context block in the ResNet-9 classifier",
        "",
        f"Recipe `{Path(s['recipe']).name}`, {s['epochs']} epochs, seeds {s['seeds']}, trained on "
        f"`{s['device']}`{subset}; top-1 on {s['val_limit'] or 'all'} images of `{Path(s['val']).name}` "
        f"with the served transform. Latency: {s['latency']}, {s['ort_threads']} thread(s).",
        "",
        machine_markdown(report["machine"]),
    ]
    batches = sorted({r["batch"] for r in report["latency"]})
    by_key = {(r["variant"], r["batch"]): r for r in report["latency"]}
    header = "| block | params | top-1 per seed | mean | std | "
    header += " | ".join(f"ORT ms, batch {b} | vs none" for b in batches) + " |"
    lines += [header, "|" + "---|" * (5 + 2 * len(batches))]
    for row in report["summary"]:
        variant = row["variant"]
        cells = [
            variant,
            f"{report['exports'][variant]['parameters'] / 1e6:.2f} M",
            " / ".join(f"{t:.4f}" for t in row["top1"]),
            f"{row['top1_mean']:.4f}",
            f"{row['top1_std']:.4f}" if row["top1_std"] is not None else "-",
        ]
        for b in batches:
            timing, base = by_key.get((variant, b)), by_key.get(("none", b))
            cells.append(f"{timing['min_ms']:.2f}" if timing else "-")
            cells.append(f"x{timing['min_ms'] / base['min_ms']:.2f}" if timing and base else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if REFERENCE in report["exports"]:
        cells = [
            f"{REFERENCE} (latency reference, `{Path(report['settings']['reference']).name}`)",
            f"{report['exports'][REFERENCE]['parameters'] / 1e6:.2f} M",
            "see its card",
            "",
            "",
        ]
        for b in batches:
            timing, base = by_key.get((REFERENCE, b)), by_key.get(("none", b))
            cells.append(f"{timing['min_ms']:.2f}" if timing else "-")
            cells.append(f"x{timing['min_ms'] / base['min_ms']:.2f}" if timing and base else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.classifier_comparison",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, required=True, help="training archive or folder")
    parser.add_argument("--val", type=Path, required=True, help="validation archive or folder")
    parser.add_argument("--out", type=Path, default=Path("runs/comparison"), help="one folder per run")
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="training options (JSON)")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for training (0: default)")
    parser.add_argument("--train-subset", type=int, default=0, help="smoke runs: train on N images")
    parser.add_argument(
        "--val-limit",
        type=int,
        help="evaluate on the first N validation images only (in archive order, which may be class by class: "
        "for smoke runs only)",
    )
    parser.add_argument(
        "--no-val-each-epoch",
        dest="val_each_epoch",
        action="store_false",
        help="do not evaluate during training (the final evaluation still runs)",
    )
    parser.add_argument("--batches", default="1,32", help="ONNX Runtime batch sizes to time")
    parser.add_argument(
        "--reference",
        type=Path,
        default=SHIPPED_CLASSIFIER,
        help="a checkpoint timed beside the variants (default: the shipped classifier)",
    )
    parser.add_argument("--ort-threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=20.0)
    parser.add_argument(
        "--report", type=Path, default=RESULTS / "classifier-comparison", help="path stem for .json/.md"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    report = run_comparison(args)
    report["machine"] = machine
    report["cpu_count"] = os.cpu_count()
    write_report(args.report, report, markdown(report))
    print(f"wrote {args.report.with_suffix('.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

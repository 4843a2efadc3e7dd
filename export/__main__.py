"""``python -m export``: checkpoints -> checked ONNX files -> the model repository.

Data path (the export side of the one arrow to the service)::

    checkpoint.pt --load_model--> nn.Module --onnx_export--> model.onnx
        --graph_check (linear in positions, BN folded)--> --parity (ORT vs PyTorch)-->
        --repository--> <out>/<name>/<version>/{model.onnx, config.json} + <out>/<name>/config.pbtxt

Examples::

    python -m export --all                                  # shipped weights -> model_repository/
    python -m export --only classifier --classifier-checkpoint runs/cls/final.pt --version 2
    python -m export --all --out /tmp/repo --buckets 320x320,480x640,640x640

Exit status: 0 when every model was exported and passed every check; 1 when a check failed
(nothing is published for that model); 2 for a usage or checkpoint error (one line naming
the file).
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import onnx

from export.graph_check import GraphCheckError
from export.pipeline import (
    DEFAULT_CHECKPOINTS,
    ExportFailed,
    ExportOptions,
    export_model,
)
from models.checkpoint import CheckpointError
from polynl_core.buckets import DEFAULT_BUCKETS, format_buckets, parse_buckets
from polynl_core.repository import RepositoryError, VersionPolicy, check_pyramid, load_repository
from polynl_core.tasks import Task, UnknownTask, parse_task

MODEL_NAMES = tuple(task.model_name for task in Task)
# Set in the child process that does the work (see run_with_retries).
WORKER_ENV = "POLYNL_EXPORT_WORKER"
ATTEMPTS = 3
RETRIED_SIGNALS = (signal.SIGSEGV, signal.SIGBUS)


def _buckets(text: str) -> list[tuple[int, int]]:
    try:
        return parse_buckets(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model_name(text: str) -> str:
    try:
        return parse_task(text).model_name
    except UnknownTask as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _batch_size(text: str) -> int:
    value = _positive_int(text)
    if value > 1024:
        raise argparse.ArgumentTypeError(f"{text} is over 1024")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _pyramid(text: str) -> tuple[float, ...]:
    try:
        return check_pyramid([float(part) for part in text.split(",") if part.strip()])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _version_policy(text: str) -> VersionPolicy:
    try:
        return VersionPolicy.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export Poly-NL checkpoints to a checked, versioned ONNX model repository.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="export the classifier and the face detector")
    which.add_argument(
        "--only",
        type=_model_name,
        help=f"export one model: {' | '.join(MODEL_NAMES)} (a task name such as 'detector' works too)",
    )
    parser.add_argument("--out", type=Path, default=Path("model_repository"), help="repository folder")
    parser.add_argument("--classifier-checkpoint", type=Path, default=None, help="default: shipped weights")
    parser.add_argument("--detector-checkpoint", type=Path, default=None, help="default: shipped weights")
    parser.add_argument(
        "--version", type=int, default=1, help="version folder to write (replaced if present)"
    )
    parser.add_argument(
        "--buckets",
        type=_buckets,
        default=list(DEFAULT_BUCKETS),
        help="detector size buckets HxW,HxW,... written to config.json and checked for parity "
        f"(default {format_buckets(DEFAULT_BUCKETS)})",
    )
    serving = parser.add_argument_group(
        "serving settings",
        "written to config.json (batching, version_policy, preprocess.pyramid) and config.pbtxt; "
        "unset: each model's defaults (classifier: batch 32, 2 ms; face_detector: batch 4, 5 ms; "
        "queue 128; newest version only; the checkpoint's pyramid). They apply to every model "
        "exported in this run (use --only to set one model's).",
    )
    serving.add_argument("--max-batch-size", type=_batch_size, default=None, help="largest batch")
    serving.add_argument(
        "--max-wait-ms", type=_non_negative_float, default=None, help="longest wait for a batch to fill"
    )
    serving.add_argument("--queue-size", type=_positive_int, default=None, help="queued inputs before 503")
    serving.add_argument(
        "--pyramid",
        type=_pyramid,
        default=None,
        help="detector pyramid levels, e.g. 0.5,0.25 ('' = one pass); default: the checkpoint's",
    )
    serving.add_argument(
        "--version-policy",
        type=_version_policy,
        default=None,
        help="versions the service (and Triton) serve: latest[:N] | all | 1,3 (default latest:1)",
    )
    parser.add_argument(
        "--parity-images",
        type=Path,
        action="append",
        default=None,
        help="folder of real images for the parity check (repeatable; default: samples/, "
        "tests/data/parity/, tests/data/cmumit-val/images/)",
    )
    args = parser.parse_args(argv)
    if args.version < 1:
        parser.error("--version must be >= 1")
    if not args.buckets:
        parser.error("--buckets needs at least one HEIGHTxWIDTH")
    return args


def selected_models(args: argparse.Namespace) -> list[str]:
    """--all, --only, or else the models whose checkpoint was given."""
    if args.all:
        return list(MODEL_NAMES)
    if args.only:
        return [args.only]
    chosen = []
    if args.classifier_checkpoint is not None:
        chosen.append("classifier")
    if args.detector_checkpoint is not None:
        chosen.append("face_detector")
    return chosen


def _one_line(message: str, limit: int = 400) -> str:
    flat = " ".join(message.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = selected_models(args)
    if not names:
        print("error: nothing to export: use --all, --only NAME or a --*-checkpoint PATH", file=sys.stderr)
        return 2
    checkpoints = {
        "classifier": args.classifier_checkpoint or DEFAULT_CHECKPOINTS["classifier"],
        "face_detector": args.detector_checkpoint or DEFAULT_CHECKPOINTS["face_detector"],
    }
    options = ExportOptions(
        out=args.out,
        version=args.version,
        buckets=args.buckets,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
        pyramid=args.pyramid,
        version_policy=args.version_policy,
        parity_folders=args.parity_images,
    )
    started = time.perf_counter()
    for name in names:
        try:
            export_model(name, checkpoints[name], options, log=print)
        except CheckpointError as exc:
            print(f"error: {_one_line(str(exc))}", file=sys.stderr)
            return 2
        except (ExportFailed, GraphCheckError, onnx.checker.ValidationError) as exc:
            # Every failed check, including the graph checker's own errors: one line, no traceback.
            print(f"error: {name}: {_one_line(str(exc))}", file=sys.stderr)
            return 1
    try:
        loaded = load_repository(args.out)
    except RepositoryError as exc:
        print(f"error: the written repository does not load: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{n} v{m.config.version}" for n, m in loaded.items())
    print(f"repository {args.out} loads with polynl_core.repository: {summary}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def run_with_retries(argv: Sequence[str], program: Sequence[str] | None = None) -> int:
    """Run the export in a child process, and again (up to ``ATTEMPTS`` in all) if it crashes.

    torch 2.13's TorchScript exporter used to die with SIGSEGV in the pass that turns each
    Poly-NL block into an ONNX function (``_jit_pass_onnx_function_extraction``): about one
    run in six for the shipped detector, and a fresh process got through. That pass is no
    longer used (:mod:`export.block_functions` builds the functions); this stays as a guard
    against native crashes in the exporter.
    A crashed run publishes nothing (versions are staged, then moved into place), so running
    it again is safe. Other exits, including other signals (Ctrl-C), pass straight through.
    """
    command = [*(program or [sys.executable, "-m", "export"]), *argv]
    env = {**os.environ, WORKER_ENV: "1"}
    for attempt in range(1, ATTEMPTS + 1):
        code = subprocess.call(command, env=env)
        if code >= 0:
            return code
        if -code not in RETRIED_SIGNALS:
            return 128 - code
        again = "running it again" if attempt < ATTEMPTS else "giving up"
        print(
            f"export: the exporter process died by {signal.Signals(-code).name} (a known, intermittent "
            f"crash inside torch's TorchScript exporter); {again} (attempt {attempt}/{ATTEMPTS})",
            file=sys.stderr,
            flush=True,
        )
    return 1


if __name__ == "__main__":
    # A native crash inside torch's exporter prints the Python stack where it happened.
    faulthandler.enable()
    if os.environ.get(WORKER_ENV):
        sys.exit(main())
    sys.exit(run_with_retries(sys.argv[1:]))

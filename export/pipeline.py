"""One model through the export: load, trace, check the graph, check parity, publish.

Data path: ``python -m export`` (:mod:`export.__main__`) calls :func:`export_model` per model;
it runs :mod:`export.onnx_export` -> :mod:`export.graph_check` -> :mod:`export.parity` ->
:mod:`export.repository` in that order and raises :class:`ExportFailed` at the first failed
check, before anything is published. Tests call :func:`export_model` directly.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image
from pydantic import ValidationError
from torch import nn

from export import graph_check, parity
from export.onnx_export import OPSET, ExportError, ExportSpec, classifier_spec, detector_spec, export_onnx
from export.repository import (
    ONNX_FILE,
    ModelFacts,
    build_config,
    publish,
    staging_dir,
    write_triton_config,
)
from models.blocks import DEFAULT_POLYNL_FORM, PolyNL
from models.checkpoint import Checkpoint, CheckpointError, load_model
from polynl_core.buckets import DEFAULT_BUCKETS
from polynl_core.images import read_rgb
from polynl_core.repository import (
    DEFAULT_BATCHING,
    Batching,
    InputSpec,
    Preprocess,
    PriorSpec,
    VersionPolicy,
    check_pyramid,
    write_model_config,
)
from polynl_core.tasks import DETECTOR_OUTPUTS, Task, parse_task

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINTS = {
    "classifier": PROJECT_ROOT / "models" / "weights" / "classifier.pt",
    "face_detector": PROJECT_ROOT / "models" / "weights" / "face_detector.pt",
}
DEFAULT_PARITY_FOLDERS = (
    PROJECT_ROOT / "samples",
    PROJECT_ROOT / "tests" / "data" / "parity",
    PROJECT_ROOT / "tests" / "data" / "cmumit-val" / "images",
)
CLASSIFIER_BATCH_SIZES = (1, 3, 8)
DETECTOR_BATCH_SIZES = (1, 3)
# The graph check's input: large enough that N = H*W at every block dwarfs its channels.
CLASSIFIER_CHECK_SCALE = 16
DETECTOR_CHECK_SIZE = (2048, 2048)
EXPORT_THREADS = 1

Log = Callable[[str], None]


class ExportFailed(RuntimeError):
    """A check failed: nothing was published for this model."""


@dataclass
class ExportOptions:
    """What to write; ``None`` serving settings take the task's defaults
    (:data:`polynl_core.repository.DEFAULT_BATCHING`) or, for the pyramid, the checkpoint's."""

    out: Path = Path("model_repository")
    version: int = 1
    buckets: Sequence[tuple[int, int]] = DEFAULT_BUCKETS
    max_batch_size: int | None = None
    max_wait_ms: float | None = None
    queue_size: int | None = None
    pyramid: Sequence[float] | None = None  # detector only
    version_policy: VersionPolicy | None = None
    parity_folders: Sequence[Path] | None = None
    images_per_folder: int = 6

    def batching(self, task: Task) -> Batching:
        """The task's default batching with this export's explicit values on top."""
        given = {
            "max_batch_size": self.max_batch_size,
            "max_wait_ms": self.max_wait_ms,
            "queue_size": self.queue_size,
        }
        values = {**DEFAULT_BATCHING[task].model_dump(), **{k: v for k, v in given.items() if v is not None}}
        return Batching.model_validate(values)


@dataclass
class ExportResult:
    """What the export wrote and measured for one model (for the CLI summary and the tests)."""

    version_dir: Path
    onnx_bytes: int
    graph: graph_check.GraphReport
    fp32_parity: list[parity.ParityResult] = field(default_factory=list)


@dataclass
class _Plan:
    """Task-specific choices: what to trace, its names and shapes, where to check it."""

    module: nn.Module
    spec: ExportSpec
    facts: ModelFacts
    check_shape: tuple[int, int, int, int]
    priors: PriorSpec | None = None
    buckets: Sequence[tuple[int, int]] | None = None


def _load(name: str, path: Path) -> tuple[nn.Module, Checkpoint, Preprocess]:
    model, checkpoint = load_model(path)
    if checkpoint.task != name:
        raise CheckpointError(f"{path} is a {checkpoint.task} checkpoint, not a {name} one")
    try:
        preprocess = Preprocess.model_validate(checkpoint.preprocess)
    except ValidationError as exc:
        raise CheckpointError(f"checkpoint {path} has an invalid preprocess section: {exc}") from exc
    return model, checkpoint, preprocess


def _classifier_plan(model: nn.Module, checkpoint: Checkpoint, preprocess: Preprocess, version: int) -> _Plan:
    if preprocess.size is None or preprocess.resize != "shorter_side_center_crop":
        raise CheckpointError(
            f"classifier checkpoint {checkpoint.path} needs preprocess resize "
            "'shorter_side_center_crop' with a size"
        )
    height, width = preprocess.size
    facts = ModelFacts(
        name="classifier",
        version=version,
        opset=OPSET,
        input=InputSpec(height=height, width=width),
        outputs=["logits"],
        output_dims={"logits": [len(checkpoint.labels)]},
        block=str(checkpoint.arch.get("block", "none")),
    )
    scale = max(CLASSIFIER_CHECK_SCALE, math.ceil(512 / min(height, width)))
    return _Plan(model, classifier_spec(height, width), facts, (2, 3, height * scale, width * scale))


def _detector_plan(
    model: nn.Module,
    checkpoint: Checkpoint,
    preprocess: Preprocess,
    version: int,
    buckets: Sequence[tuple[int, int]],
) -> _Plan:
    from models.retinaface.inference import DecodedRetinaFace

    if preprocess.resize != "letterbox":
        raise CheckpointError(f"detector checkpoint {checkpoint.path} needs preprocess resize 'letterbox'")
    decoded = DecodedRetinaFace(model)  # type: ignore[arg-type]
    facts = ModelFacts(
        name="face_detector",
        version=version,
        opset=OPSET,
        input=InputSpec(height=None, width=None),
        outputs=list(DETECTOR_OUTPUTS),
        output_dims={"boxes": [-1, 4], "scores": [-1], "landmarks": [-1, 10]},
        block=str(checkpoint.arch.get("block", "none")),
    )
    priors = PriorSpec(
        min_sizes=[list(s) for s in decoded.min_sizes],
        steps=list(decoded.steps),
        variances=(float(decoded.variances[0]), float(decoded.variances[1])),
    )
    check = (2, 3, *DETECTOR_CHECK_SIZE)
    return _Plan(decoded, detector_spec(), facts, check, priors=priors, buckets=list(buckets))


def _parity_images(options: ExportOptions, log: Log) -> list[Image.Image]:
    folders = options.parity_folders or DEFAULT_PARITY_FOLDERS
    paths = parity.find_images([Path(f) for f in folders], options.images_per_folder)
    if paths:
        log(f"  parity images: {len(paths)} from {', '.join(sorted({p.parent.name for p in paths}))}")
        return [read_rgb(path) for path in paths]
    # A pip-installed copy has no test images; synthetic gradients still exercise every op.
    log("  WARNING: no real parity images found; using synthetic gradient images")
    yy, xx = np.mgrid[0:97, 0:131]
    rgb = np.stack([xx * 255 // 130, yy * 255 // 96, (xx + yy) % 256], axis=-1).astype(np.uint8)
    return [Image.fromarray(rgb), Image.fromarray(rgb[::-1, ::-1].copy())]


def _run_parity(
    plan: _Plan,
    onnx_path: Path,
    images: Sequence[Image.Image],
    preprocess: Preprocess,
    tolerances: dict[str, parity.Tolerance],
) -> list[parity.ParityResult]:
    session = parity.cpu_session(onnx_path, threads=EXPORT_THREADS)
    if plan.facts.name == "classifier":
        return parity.classifier_parity(
            plan.module, session, images, preprocess, CLASSIFIER_BATCH_SIZES, tolerances
        )
    return parity.detector_parity(
        plan.module,
        session,
        images,
        preprocess,
        plan.buckets or DEFAULT_BUCKETS,
        DETECTOR_BATCH_SIZES,
        tolerances,
    )


def _check_graph(plan: _Plan, model: onnx.ModelProto, log: Log) -> graph_check.GraphReport:
    try:
        report = graph_check.check_graph(model, plan.check_shape)
    except (graph_check.GraphCheckError, onnx.checker.ValidationError) as exc:
        raise ExportFailed(f"graph check: {exc}") from exc
    for line in graph_check.format_report(report):
        log(f"  {line}")
    expected = sum(1 for m in plan.module.modules() if isinstance(m, PolyNL))
    if report.block_count("PolyNL") != expected:
        raise ExportFailed(
            f"graph check: {report.block_count('PolyNL')} polynl.PolyNL functions in the graph, "
            f"the model has {expected} Poly-NL blocks"
        )
    if not report.ok:
        raise ExportFailed("graph check failed: " + "; ".join(report.all_findings[:4]))
    return report


def _check_parity(results: list[parity.ParityResult], log: Log, what: str) -> None:
    for result in results:
        log(f"  {what} {result.describe()}")
    failed = [r for r in results if not r.ok]
    if failed:
        raise ExportFailed(f"{what} failed: " + "; ".join(f"{r.label}: {r.failures[0]}" for r in failed[:3]))


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def export_model(name: str, checkpoint_path: Path, options: ExportOptions, log: Log = print) -> ExportResult:
    """Export one model to ``options.out``; raises CheckpointError or ExportFailed."""
    # Small models, small batches: one intra-op thread is several times faster than many on a
    # busy machine (thread oversubscription), and the numbers do not depend on it.
    with _torch_threads(EXPORT_THREADS):
        return _export_model(name, checkpoint_path, options, log)


def _export_model(name: str, checkpoint_path: Path, options: ExportOptions, log: Log) -> ExportResult:
    started = time.perf_counter()
    log(f"[{name}] checkpoint {checkpoint_path}")
    model, checkpoint, preprocess = _load(name, Path(checkpoint_path))
    task = parse_task(checkpoint.task)
    if task is Task.CLASSIFICATION:
        plan = _classifier_plan(model, checkpoint, preprocess, options.version)
    else:
        if options.pyramid is not None:
            preprocess = preprocess.model_copy(update={"pyramid": check_pyramid(options.pyramid)})
        plan = _detector_plan(model, checkpoint, preprocess, options.version, options.buckets)
    batching = options.batching(task)
    policy = options.version_policy or VersionPolicy()
    log(f"  batching {batching.model_dump()}, version policy {policy.describe()}")
    log(f"  arch {checkpoint.arch}")
    staged = staging_dir(options.out, name, options.version)
    try:
        result = _export_checked(plan, checkpoint, preprocess, staged, options, log)
        config = build_config(
            plan.facts,
            staged,
            checkpoint.task,
            preprocess,
            checkpoint.labels,
            checkpoint.arch,
            checkpoint.sha256 or "",
            plan.priors,
            plan.buckets,
            batching,
            options.version_policy,
        )
        write_model_config(staged, config)
        result.version_dir = publish(staged, options.out, name, options.version)
        write_triton_config(options.out, plan.facts, batching, policy)
    finally:
        if staged.exists():
            shutil.rmtree(staged)
    log(f"[{name}] wrote {result.version_dir} in {time.perf_counter() - started:.1f} s")
    return result


def _export_checked(
    plan: _Plan,
    checkpoint: Checkpoint,
    preprocess: Preprocess,
    staged: Path,
    options: ExportOptions,
    log: Log,
) -> ExportResult:
    onnx_path = staged / ONNX_FILE
    metadata = {
        "polynl.task": checkpoint.task,
        "polynl.block": plan.facts.block,
        "polynl.block_form": str(checkpoint.arch.get("block_form", DEFAULT_POLYNL_FORM)),
        "polynl.source_checkpoint_sha256": checkpoint.sha256 or "",
    }
    clock = time.perf_counter()
    try:
        model = export_onnx(
            plan.module, plan.spec, onnx_path, OPSET, metadata, doc=f"polynl-serve {plan.facts.name}"
        )
    except ExportError as exc:
        raise ExportFailed(str(exc)) from exc
    size = onnx_path.stat().st_size
    took = time.perf_counter() - clock
    log(f"  {onnx_path.name}: {size / 1e6:.2f} MB, opset {OPSET}, checker ok ({took:.1f} s)")
    clock = time.perf_counter()
    report = _check_graph(plan, model, log)
    log(f"  graph check ok ({time.perf_counter() - clock:.1f} s)")
    clock = time.perf_counter()
    images = _parity_images(options, log)
    results = _run_parity(plan, onnx_path, images, preprocess, parity.FP32_TOLERANCES)
    _check_parity(results, log, "parity fp32")
    log(f"  parity ok ({time.perf_counter() - clock:.1f} s)")
    result = ExportResult(staged, size, report, results)
    return result

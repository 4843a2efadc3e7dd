"""Checked ONNX files -> the versioned model repository the service (and Triton) loads.

Data path: ``model.onnx`` that passed :mod:`export.graph_check` and :mod:`export.parity` ->
**this module** -> ``<out>/<model>/<version>/{model.onnx, config.json}`` and
``<out>/<model>/config.pbtxt``. ``config.json`` is written with
``polynl_core.repository.write_model_config`` (the one format and loader, shared with the
service); this module only fills in the values.

``config.pbtxt`` sits at the model level, where Triton Inference Server looks for it (one
config for all versions of a model; Triton picks ``<version>/model.onnx``). It is generated
from the same :class:`~polynl_core.repository.Batching` and
:class:`~polynl_core.repository.VersionPolicy` values that ``config.json`` carries, so Triton
and our service batch the same way; our service reads ``config.json`` only.

A version is staged in a hidden sibling folder and moved into place only when every check
has passed, so a failed export never leaves a half-written version behind, and re-exporting
a version replaces it whole.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from polynl_core.repository import (
    ONNX_FILE,
    Batching,
    InputSpec,
    ModelConfig,
    Preprocess,
    PriorSpec,
    VersionPolicy,
    sha256_of,
)
from polynl_core.tasks import parse_task

TRITON_CONFIG = "config.pbtxt"


def exporter_version() -> str:
    """``polynl-serve <version> (torch <v>, onnx <v>)``: what produced the files."""
    try:
        package = importlib.metadata.version("polynl-serve")
    except importlib.metadata.PackageNotFoundError:
        package = "0+unknown"
    return f"polynl-serve {package} (torch {torch.__version__}, onnx {onnx.__version__})"


def staging_dir(out: Path, name: str, version: int) -> Path:
    """A fresh hidden folder beside the version folder (not a digit name: loaders skip it)."""
    path = out / name / f".staging-{version}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def publish(staged: Path, out: Path, name: str, version: int) -> Path:
    """Move a fully checked staging folder to ``<out>/<name>/<version>``, replacing an old one."""
    final = out / name / str(version)
    if final.exists():
        retired = out / name / f".retired-{version}"
        if retired.exists():
            shutil.rmtree(retired)
        final.rename(retired)
        staged.rename(final)
        shutil.rmtree(retired)
    else:
        staged.rename(final)
    return final


@dataclass(frozen=True)
class ModelFacts:
    """What the export knows about one model version, beyond the checkpoint."""

    name: str
    version: int
    opset: int
    input: InputSpec
    outputs: list[str]
    output_dims: dict[str, list[int]]  # per sample (no batch axis); -1 = dynamic
    block: str


def build_config(
    facts: ModelFacts,
    version_dir: Path,
    task: str,
    preprocess: Preprocess,
    labels: Sequence[str],
    arch: dict[str, object],
    checkpoint_sha256: str,
    priors: PriorSpec | None = None,
    size_buckets: Sequence[tuple[int, int]] | None = None,
    batching: Batching | None = None,
    version_policy: VersionPolicy | None = None,
) -> ModelConfig:
    """The ``config.json`` content for the ONNX file(s) already in ``version_dir``."""
    return ModelConfig(
        name=facts.name,
        version=facts.version,
        task=parse_task(task),
        onnx_file=ONNX_FILE,
        onnx_sha256=sha256_of(version_dir / ONNX_FILE),
        opset=facts.opset,
        input=facts.input,
        outputs=list(facts.outputs),
        preprocess=preprocess,
        labels=list(labels),
        priors=priors,
        size_buckets=[(int(h), int(w)) for h, w in size_buckets] if size_buckets else None,
        batching=batching,
        version_policy=version_policy,
        block=facts.block,
        arch=dict(arch),
        source_checkpoint_sha256=checkpoint_sha256,
        exporter_version=exporter_version(),
    )


def _dims(values: Sequence[int | None]) -> str:
    return "[ " + ", ".join(str(-1 if v is None else v) for v in values) + " ]"


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two from 4 up to ``max_batch_size``, and ``max_batch_size`` itself."""
    sizes = [size for size in (4, 8, 16, 32, 64, 128, 256, 512) if size < max_batch_size]
    return [*sizes, max_batch_size]


def triton_config_text(facts: ModelFacts, batching: Batching, version_policy: VersionPolicy) -> str:
    """A Triton ``config.pbtxt``: ONNX Runtime backend, dynamic batching, typed inputs/outputs,
    with the batch size, queue delay, queue size and version policy of ``config.json``."""
    lines = [
        f'name: "{facts.name}"',
        'backend: "onnxruntime"',
        f'default_model_filename: "{ONNX_FILE}"',
        f"max_batch_size: {batching.max_batch_size}",
        f"version_policy: {version_policy.pbtxt()}",
        "input [",
        "  {",
        f'    name: "{facts.input.name}"',
        "    data_type: TYPE_FP32",
        "    format: FORMAT_NCHW",
        f"    dims: {_dims([3, facts.input.height, facts.input.width])}",
        "  }",
        "]",
        "output [",
    ]
    for index, name in enumerate(facts.outputs):
        lines += [
            "  {",
            f'    name: "{name}"',
            "    data_type: TYPE_FP32",
            f"    dims: {_dims(facts.output_dims[name])}",
            "  }" + ("," if index < len(facts.outputs) - 1 else ""),
        ]
    preferred = ", ".join(str(b) for b in preferred_batch_sizes(batching.max_batch_size))
    lines += [
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {preferred} ]",
        f"  max_queue_delay_microseconds: {round(batching.max_wait_ms * 1000)}",
        f"  default_queue_policy: {{ max_queue_size: {batching.queue_size} }}",
        "}",
        "instance_group [ { kind: KIND_AUTO, count: 1 } ]",
    ]
    return "\n".join(lines) + "\n"


def write_triton_config(
    out: Path, facts: ModelFacts, batching: Batching, version_policy: VersionPolicy
) -> Path:
    path = out / facts.name / TRITON_CONFIG
    path.write_text(triton_config_text(facts, batching, version_policy))
    return path

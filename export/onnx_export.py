"""PyTorch model -> ONNX file, with each context block kept as an ONNX local function.

Data path: checkpoint (``models.checkpoint.load_model``) -> **this module** -> ``model.onnx``
-> :mod:`export.graph_check` and :mod:`export.parity` -> :mod:`export.repository`.

How the blocks become functions: the TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``) traces the model with every Poly-NL / non-local
block wrapped so that its ops carry a unique scope in their names; then
:mod:`export.block_functions` moves each block's ops into one ``FunctionProto`` per block class
(``polynl.PolyNL``, ``polynl.NonLocal``: Netron shows the blocks) and leaves one call node per
block instance, with the block's weights passed in as inputs. Constant folding in eval mode
folds the block's trailing BatchNorm into its last 1x1 convolution (and every backbone
BatchNorm into the conv before it), so the body of a Poly-NL function of form ``projected`` is
``Conv x3, Mul, ReduceMean, Mul, Conv, Add``; form ``paper-scalar`` (no BatchNorm; scalars a and
b) is ``Mul (a*X), Conv x2, Mul, ReduceMean, Mul, Conv, Mul (b*...), Add``. ONNX Runtime
inlines local functions when it loads the file, so serving costs nothing.

torch's own ``export_modules_as_functions`` would do the grouping, but in torch 2.13 the pass
behind it intermittently crashes the process with SIGSEGV (see :mod:`export.block_functions`).

The torch.export-based exporter (the default in torch 2.13) was not used: the TorchScript
path traces the detector's input-size-dependent prior generation as ``Shape`` ops.

Opset :data:`OPSET` = 17: supported by every ONNX Runtime since 1.14 (including the builds
inside current Triton images); ``ReduceMean`` still takes its axes as an attribute there,
which keeps the mean over positions readable in Netron.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from export.block_functions import BLOCK_DOMAIN, BlockFunctionError, extract_block_functions, marked_blocks
from models.blocks import NonLocal, PolyNL

OPSET = 17
BLOCK_CLASSES: tuple[type[nn.Module], ...] = (PolyNL, NonLocal)


class ExportError(RuntimeError):
    """The model could not be exported, or the exported file failed a check."""


@dataclass(frozen=True)
class ExportSpec:
    """Names and dynamic axes of the exported graph and the example input used to trace it."""

    input_name: str
    output_names: tuple[str, ...]
    example_shape: tuple[int, int, int, int]
    # per tensor name: axis index -> symbolic name
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)


def classifier_spec(height: int, width: int) -> ExportSpec:
    """Classifier: ``images (B, 3, H, W) -> logits (B, K)``.

    Height and width are dynamic in the graph although the service feeds the trained size
    (``config.json``): the graph check re-infers shapes at a large input to prove that the
    blocks stay linear in the number of positions, on the very file that is shipped.
    """
    image_axes = {0: "batch", 2: "height", 3: "width"}
    return ExportSpec(
        input_name="images",
        output_names=("logits",),
        example_shape=(2, 3, height, width),
        dynamic_axes={"images": image_axes, "logits": {0: "batch"}},
    )


def detector_spec(height: int = 320, width: int = 320) -> ExportSpec:
    """Face detector: ``images (B, 3, H, W) -> boxes (B, P, 4), scores (B, P), landmarks (B, P, 10)``.

    P (the number of priors) follows from H and W; the priors are computed inside the graph.
    """
    return ExportSpec(
        input_name="images",
        output_names=("boxes", "scores", "landmarks"),
        example_shape=(2, 3, height, width),
        dynamic_axes={
            "images": {0: "batch", 2: "height", 3: "width"},
            "boxes": {0: "batch", 1: "priors"},
            "scores": {0: "batch", 1: "priors"},
            "landmarks": {0: "batch", 1: "priors"},
        },
    )


def _trace_to_onnx(module: nn.Module, spec: ExportSpec, path: Path, opset: int) -> onnx.ModelProto:
    example = torch.randn(*spec.example_shape, generator=torch.Generator().manual_seed(0))
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings(), marked_blocks(module, BLOCK_CLASSES) as blocks:
        # The TorchScript exporter is deprecated in favour of dynamo, and tracing warns about
        # shape-dependent Python values; both are expected here (see the module docstring).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[spec.input_name],
            output_names=list(spec.output_names),
            dynamic_axes=spec.dynamic_axes,
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.EVAL,
        )
    model = onnx.load(str(path))
    extract_block_functions(model, blocks, opset)
    return model


def drop_initializer_identities(model: onnx.ModelProto) -> int:
    """Remove ``Identity`` nodes that only alias an initializer; returns how many.

    The exporter de-duplicates equal constants (e.g. the all-zero folded BatchNorm biases of
    a fresh model) by routing them through ``Identity``; wiring the consumers to the
    initializer directly keeps the graph readable. ONNX Runtime would drop them anyway.
    """
    initializers = {init.name for init in model.graph.initializer}
    graph_outputs = {o.name for o in model.graph.output}
    aliases = {
        n.output[0]: n.input[0]
        for n in model.graph.node
        if n.op_type == "Identity" and n.input[0] in initializers and n.output[0] not in graph_outputs
    }
    if not aliases:
        return 0
    kept = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in aliases)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in aliases:
                node.input[i] = aliases[name]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return len(aliases)


def export_onnx(
    module: nn.Module,
    spec: ExportSpec,
    path: Path,
    opset: int = OPSET,
    metadata: dict[str, str] | None = None,
    doc: str = "",
) -> onnx.ModelProto:
    """Trace ``module`` (in eval mode) to ``path`` and run the ONNX checker on the result."""
    module.eval()
    try:
        model = _trace_to_onnx(module, spec, path, opset)
    except BlockFunctionError as exc:
        raise ExportError(f"could not group the context blocks into ONNX functions: {exc}") from exc
    except Exception as exc:  # the exporter raises many types; name the step that failed
        raise ExportError(f"torch.onnx.export failed: {exc.__class__.__name__}: {exc}") from exc
    drop_initializer_identities(model)
    model.doc_string = doc
    for key, value in (metadata or {}).items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"ONNX checker rejected the exported graph: {exc}") from exc
    onnx.save(model, str(path))
    return model


def block_call_count(model: onnx.ModelProto, op_type: str = "PolyNL") -> int:
    """How many ``polynl.<op_type>`` function calls the main graph holds."""
    return sum(1 for n in model.graph.node if n.domain == BLOCK_DOMAIN and n.op_type == op_type)


def output_names(model: onnx.ModelProto) -> Sequence[str]:
    return [o.name for o in model.graph.output]

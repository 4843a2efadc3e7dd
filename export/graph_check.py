"""Static checks on an exported graph: the blocks are element-wise, linear in the positions.

Data path: ``model.onnx`` from :mod:`export.onnx_export` -> **this module** (and
:mod:`export.parity`) -> :mod:`export.repository`. The export runs it on every file it
writes and fails if it finds anything; the tests run it too.

The paper's claim, checked on the artefact: shape inference is re-run with the symbolic
input dims replaced by a large concrete input (so N = H*W positions at each block is large).
For every ``polynl.*`` function call, the function body is shape-inferred on its own with
the call's concrete input shapes, and

- a tensor with two axes of size N, or with at least N*N elements per sample, is quadratic
  (the non-local affinity is ``(B, N, N)``; Poly-NL's largest tensor is ``(B, C', H, W)``);
- a tensor whose shape cannot be inferred is a finding too: linearity must be proven;
- a Poly-NL body may only hold 1x1 ``Conv`` (or ``MatMul`` over channels), ``Mul``,
  ``ReduceMean`` over the position axes and ``Add`` (plus the few ops of the optional
  ``context_norm="l2"``, which act on the pooled ``(B, C', 1, 1)`` context).

The whole graph, functions inlined as ONNX Runtime sees it, is checked for two position axes
as well, and for a ``BatchNormalization`` left behind a ``Conv`` (it must be folded).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import onnx
from onnx import helper, inliner, shape_inference

from export.onnx_export import BLOCK_DOMAIN

# Ops a Poly-NL function body may contain. The last group serves context_norm="l2" only.
POLYNL_ALLOWED_OPS = frozenset(
    {"Conv", "MatMul", "Mul", "ReduceMean", "Add"} | {"ReduceL2", "Clip", "Max", "Div", "Constant"}
)
POSITION_AXES = (2, 3)


@dataclass
class BlockReport:
    """One ``polynl.*`` call: where it sits, its positions, its biggest tensor, its findings."""

    node_name: str
    op_type: str
    input_shape: tuple[int, ...]
    positions: int
    body_ops: Counter[str]
    largest_tensor: tuple[str, tuple[int, ...]] | None
    findings: list[str] = field(default_factory=list)

    @property
    def is_quadratic(self) -> bool:
        return any(f.startswith("quadratic") for f in self.findings)


@dataclass
class GraphReport:
    """Everything the export prints about a graph, and what is wrong with it."""

    input_shape: tuple[int, ...]
    op_histogram: Counter[str]  # main graph; function calls as "domain.Op"
    inlined_histogram: Counter[str]  # what ONNX Runtime runs after inlining
    function_bodies: dict[str, Counter[str]]
    blocks: list[BlockReport]
    findings: list[str]  # graph-level findings; block findings are in ``blocks``

    @property
    def all_findings(self) -> list[str]:
        return self.findings + [f"{b.node_name}: {f}" for b in self.blocks for f in b.findings]

    @property
    def ok(self) -> bool:
        return not self.all_findings

    @property
    def is_quadratic(self) -> bool:
        return any("quadratic" in f for f in self.all_findings)

    def block_count(self, op_type: str = "PolyNL") -> int:
        return sum(1 for b in self.blocks if b.op_type == op_type)


class GraphCheckError(RuntimeError):
    """The exported graph failed the element-wise / linear-in-positions check."""


def _dims(value: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def _concrete(dims: tuple[int | str | None, ...] | None) -> tuple[int, ...] | None:
    if dims is None or not all(isinstance(d, int) for d in dims):
        return None
    return tuple(int(d) for d in dims)  # type: ignore[arg-type]


def with_input_shape(model: onnx.ModelProto, shape: tuple[int, ...]) -> onnx.ModelProto:
    """A copy whose (single) graph input has the concrete ``shape``; inferred shapes cleared."""
    concrete = onnx.ModelProto()
    concrete.CopyFrom(model)
    graph_input = concrete.graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise GraphCheckError(f"input {graph_input.name} has rank {len(dims)}, not {len(shape)}")
    for dim, size in zip(dims, shape, strict=True):
        dim.Clear()
        dim.dim_value = size
    del concrete.graph.value_info[:]
    for output in concrete.graph.output:
        output.type.tensor_type.ClearField("shape")
    return concrete


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise GraphCheckError(f"shape inference failed: {exc}") from exc


def _known_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int | str | None, ...] | None]:
    shapes: dict[str, tuple[int | str | None, ...] | None] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        shapes[value.name] = _dims(value)
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info]}
    types.update({init.name: init.data_type for init in graph.initializer})
    return types


def quadratic_reason(shape: tuple[int, ...], positions: int) -> str | None:
    """Why a tensor of ``shape`` is quadratic in ``positions`` (None when it is not)."""
    if positions <= 1 or len(shape) < 2:
        return None
    per_sample = shape[1:]
    if sum(1 for d in per_sample if d == positions) >= 2:
        return f"two axes of size N={positions}"
    if math.prod(per_sample) >= positions * positions:
        return f"{math.prod(per_sample)} elements per sample >= N*N={positions * positions}"
    return None


def _bind_attributes(function: onnx.FunctionProto, call: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The body's nodes with attribute references (``ref_attr_name``) replaced by the call's values.

    The exporter turns per-instance Python constants (e.g. the non-local block's inner
    channel count) into function attributes.
    """
    values = {a.name: a for a in call.attribute}
    nodes = []
    for original in function.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        bound = []
        for attribute in node.attribute:
            if attribute.ref_attr_name:
                if attribute.ref_attr_name not in values:
                    continue  # optional attribute left unset by the call
                value = onnx.AttributeProto()
                value.CopyFrom(values[attribute.ref_attr_name])
                value.name = attribute.name
                bound.append(value)
            else:
                bound.append(attribute)
        del node.attribute[:]
        node.attribute.extend(bound)
        nodes.append(node)
    return nodes


def _body_model(
    function: onnx.FunctionProto, call: onnx.NodeProto, input_types: list[tuple[int, tuple[int, ...]]]
) -> onnx.ModelProto:
    inputs = [
        helper.make_tensor_value_info(name, elem_type, list(shape))
        for name, (elem_type, shape) in zip(function.input, input_types, strict=True)
    ]
    outputs = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in function.output]
    graph = helper.make_graph(_bind_attributes(function, call), f"{function.name}_body", inputs, outputs)
    return helper.make_model(graph, opset_imports=list(function.opset_import))


def _check_polynl_ops(function: onnx.FunctionProto, shapes: dict[str, tuple[int, ...] | None]) -> list[str]:
    findings = []
    for node in function.node:
        if node.op_type not in POLYNL_ALLOWED_OPS or node.domain not in ("", "ai.onnx"):
            findings.append(
                f"op {node.domain + '.' if node.domain else ''}{node.op_type} is not element-wise"
            )
        elif node.op_type == "Conv":
            weight = shapes.get(node.input[1])
            if weight is None or tuple(weight[2:]) != (1, 1):
                findings.append(f"Conv {node.name or node.output[0]} is not 1x1 (weight {weight})")
        elif node.op_type == "ReduceMean" and not _reduces_positions(node, shapes):
            findings.append(f"ReduceMean {node.name or node.output[0]} is not a mean over positions")
    return findings


def _reduces_positions(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...] | None]) -> bool:
    axes: list[int] = []
    for attribute in node.attribute:
        if attribute.name == "axes":
            axes = list(attribute.ints)
    if not axes and len(node.input) > 1:  # opset >= 18 passes axes as an input
        return True  # only reachable with a newer opset; shape findings still apply
    rank = len(shapes.get(node.input[0]) or (0, 0, 0, 0))
    return sorted(a % rank for a in axes) == list(POSITION_AXES)


def check_block_call(
    node: onnx.NodeProto,
    function: onnx.FunctionProto,
    outer_shapes: dict[str, tuple[int | str | None, ...] | None],
    outer_types: dict[str, int],
) -> BlockReport:
    """Shape-infer one function body at the call's concrete input shapes and judge it."""
    name = node.name or node.output[0]
    input_types: list[tuple[int, tuple[int, ...]]] = []
    findings: list[str] = []
    for outer in node.input:
        shape = _concrete(outer_shapes.get(outer))
        if shape is None:
            findings.append(f"input {outer} has no concrete shape {outer_shapes.get(outer)}")
            shape = ()
        input_types.append((outer_types.get(outer, onnx.TensorProto.FLOAT), shape))
    x_shape = input_types[0][1]
    positions = math.prod(x_shape[2:]) if len(x_shape) == 4 else 0
    report = BlockReport(
        name, node.op_type, x_shape, positions, Counter(n.op_type for n in function.node), None
    )
    if positions <= (x_shape[1] if len(x_shape) > 1 else 0):
        # With N <= C a linear (B, C, N) tensor already holds N*N elements: use a larger input.
        findings.append(f"check input too small: N={positions} positions <= {x_shape[1]} channels")
    if findings:
        report.findings = findings
        return report
    inferred = _infer(_body_model(function, node, input_types))
    shapes = {k: _concrete(v) for k, v in _known_shapes(inferred.graph).items()}
    largest: tuple[str, tuple[int, ...]] | None = None
    produced = [out for n in function.node for out in n.output] + list(function.output)
    for tensor in dict.fromkeys(produced):
        shape = shapes.get(tensor)
        if shape is None:
            findings.append(f"shape of {tensor} could not be inferred: linearity unproven")
            continue
        if largest is None or math.prod(shape[1:]) > math.prod(largest[1][1:]):
            largest = (tensor, shape)
        reason = quadratic_reason(shape, positions)
        if reason:
            findings.append(f"quadratic tensor {tensor} {list(shape)}: {reason}")
    if node.op_type == "PolyNL":
        findings.extend(_check_polynl_ops(function, shapes))
    report.largest_tensor = largest
    report.findings = findings
    return report


def _bn_after_conv(graph: onnx.GraphProto) -> list[str]:
    producers = {out: n for n in graph.node for out in n.output}
    findings = []
    for node in graph.node:
        if node.op_type == "BatchNormalization":
            source = producers.get(node.input[0])
            if source is not None and source.op_type == "Conv":
                findings.append(f"BatchNormalization {node.name} after Conv {source.name} was not folded")
    return findings


def _two_position_axes(graph: onnx.GraphProto, positions: set[int]) -> list[str]:
    findings = []
    for name, dims in _known_shapes(graph).items():
        shape = _concrete(dims)
        if shape is None:
            continue
        for n in positions:
            if n > 1 and sum(1 for d in shape[1:] if d == n) >= 2:
                findings.append(f"quadratic tensor {name} {list(shape)} in the inlined graph (N={n})")
    return findings


def check_graph(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> GraphReport:
    """Run every check at the concrete ``input_shape`` (e.g. ``(2, 3, 512, 512)``)."""
    onnx.checker.check_model(model, full_check=False)
    inferred = _infer(with_input_shape(model, input_shape))
    outer_shapes = _known_shapes(inferred.graph)
    outer_types = _elem_types(inferred.graph)
    functions = {(f.domain, f.name): f for f in model.functions}

    blocks = [
        check_block_call(node, functions[(node.domain, node.op_type)], outer_shapes, outer_types)
        for node in inferred.graph.node
        if node.domain == BLOCK_DOMAIN and (node.domain, node.op_type) in functions
    ]
    inlined = inliner.inline_local_functions(with_input_shape(model, input_shape))
    inlined = _infer(inlined)
    findings = _bn_after_conv(inlined.graph)
    findings += _two_position_axes(inlined.graph, {b.positions for b in blocks})
    return GraphReport(
        input_shape=input_shape,
        op_histogram=Counter(f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in model.graph.node),
        inlined_histogram=Counter(n.op_type for n in inlined.graph.node),
        function_bodies={f"{f.domain}.{f.name}": Counter(n.op_type for n in f.node) for f in model.functions},
        blocks=blocks,
        findings=findings,
    )


def format_report(report: GraphReport) -> list[str]:
    """Human-readable lines for the export's progress output."""
    lines = [
        "op histogram: " + ", ".join(f"{op} {n}" for op, n in report.op_histogram.most_common()),
        "inlined (as ONNX Runtime runs it): "
        + ", ".join(f"{op} {n}" for op, n in report.inlined_histogram.most_common()),
    ]
    for name, ops in report.function_bodies.items():
        lines.append(f"function {name}: " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))
    shape = "x".join(map(str, report.input_shape))
    lines.append(f"graph check at input {shape}: {report.block_count('PolyNL')} Poly-NL calls")
    for block in report.blocks:
        largest = "n/a"
        if block.largest_tensor is not None:
            largest = "x".join(map(str, block.largest_tensor[1]))
        verdict = "QUADRATIC" if block.is_quadratic else ("FAIL" if block.findings else "linear")
        lines.append(
            f"  {block.op_type} {block.node_name}: input {'x'.join(map(str, block.input_shape))}, "
            f"N={block.positions}, largest tensor {largest}: {verdict}"
        )
    lines.extend(f"  finding: {f}" for f in report.all_findings)
    return lines

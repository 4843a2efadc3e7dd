"""Turn each context block of a flat ONNX export into a call of an ONNX local function.

Data path: :mod:`export.onnx_export` traces the model with every Poly-NL / non-local block
wrapped in a :class:`_Marked` module (:func:`marked_blocks`), so each op the block emits
carries a unique scope segment in its node name (``/.../stride16/__block0__/w1/Conv``).
:func:`extract_block_functions` then moves those nodes into one ``FunctionProto`` per block
class (domain :data:`BLOCK_DOMAIN`: ``polynl.PolyNL``, ``polynl.NonLocal``) and replaces them
with one call node per block instance. Both Poly-NL forms (``projected``, ``paper-scalar``) are
``polynl.PolyNL`` functions: the graph check treats them alike, and the function's doc string
gives the form's formula. One model holds one form (two forms would trace to different bodies
of one function, which is refused like any other mismatch).

Why not torch's ``export_modules_as_functions``: in torch 2.13 the pass behind it
(``_jit_pass_onnx_function_extraction``) intermittently crashes the process with SIGSEGV
(about one export in six of the shipped detector). Building the functions here from the
plain trace gives the same graph without that pass.

Function signature: the block input first, then every other value the block reads (its
folded weights and biases, in order of first use); outputs are the values the rest of the
graph reads. All instances of one class share one function: their bodies must match op for
op once value names are canonical. Where instances differ only in the value of a ``Constant``
node (the non-local block's inner channel count in a reshape), that value becomes a function
attribute (``value_<i>``) that each call sets, as torch's own pass does, so shape inference
still sees it. Anything else that differs is an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import onnx
from onnx import helper
from torch import Tensor, nn

BLOCK_DOMAIN = "polynl"
_MARK = "__block{}__"

FUNCTION_DOCS = {
    "PolyNL": (
        "Poly-NL block, form 'projected' (our reconstruction, after Babiloni et al., ICCV 2021): "
        "Y = X + W4((X W1) * mean_n((X W2) * (X W3))), BatchNorm folded into W4; linear in the "
        "number of positions N = H*W."
    ),
    "PolyNL/paper-scalar": (
        "Poly-NL block, form 'paper-scalar' (our reconstruction, after Babiloni et al., ICCV 2021): "
        "Y = a*X + b*W3((X W1) * mean_n((X W2) * X)), full channel width; linear in the number of "
        "positions N = H*W."
    ),
    "NonLocal": (
        "Non-local block (Wang et al., CVPR 2018): softmax(theta phi^T) g, an N x N affinity; "
        "quadratic in the number of positions."
    ),
}


class BlockFunctionError(RuntimeError):
    """The traced blocks could not be turned into ONNX functions."""


class _Marked(nn.Module):
    """Calls the wrapped block under a unique attribute name, which lands in the op names."""

    def __init__(self, block: nn.Module, index: int) -> None:
        super().__init__()
        self.mark = _MARK.format(index)
        self.add_module(self.mark, block)

    def forward(self, x: Tensor) -> Tensor:
        block: nn.Module = getattr(self, self.mark)
        return block(x)


@dataclass(frozen=True)
class MarkedBlock:
    scope: str  # the unique segment in the block's node names
    class_name: str  # PolyNL / NonLocal: the function's name
    doc: str = ""  # the function's doc string


def function_doc(block: nn.Module) -> str:
    """The doc string of a block's function: its formula (per form, for Poly-NL)."""
    name = type(block).__name__
    form = getattr(block, "form", None)
    if name == "PolyNL" and form not in (None, "projected"):
        name = f"{name}/{form}"
    return FUNCTION_DOCS.get(name, "")


@contextmanager
def marked_blocks(module: nn.Module, classes: tuple[type[nn.Module], ...]) -> Iterator[list[MarkedBlock]]:
    """Wrap every instance of ``classes`` in ``module`` for the duration of a trace."""
    found = [(name, child) for name, child in module.named_modules() if isinstance(child, classes) and name]
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    marks = []
    try:
        for index, (name, block) in enumerate(found):
            parent_name, _, attribute = name.rpartition(".")
            parent = module.get_submodule(parent_name)
            parent._modules[attribute] = _Marked(block, index)
            swapped.append((parent, attribute, block))
            marks.append(
                MarkedBlock(
                    scope=_MARK.format(index), class_name=type(block).__name__, doc=function_doc(block)
                )
            )
        yield marks
    finally:
        for parent, attribute, block in swapped:
            parent._modules[attribute] = block


@dataclass
class _Instance:
    """One block instance's nodes, lifted out of the main graph."""

    block: MarkedBlock
    nodes: list[onnx.NodeProto]
    inputs: list[str]  # outer names, in order of first use (the block input first)
    outputs: list[str]  # outer names read outside the block
    indices: list[int]  # positions of the block's ops in the main graph


def _integer_constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Integer constants of the graph (axes, shapes, indices: unscoped Constant nodes, or
    initializers after constant folding), by value name."""
    constants = {init.name: init for init in graph.initializer if init.data_type == onnx.TensorProto.INT64}
    for node in graph.node:
        value = node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 else None
        if value is not None and value.name == "value" and value.t.data_type == onnx.TensorProto.INT64:
            constants[node.output[0]] = value.t
    return constants


def _instance(
    graph: onnx.GraphProto, block: MarkedBlock, integer_constants: dict[str, onnx.TensorProto]
) -> _Instance:
    segment = f"/{block.scope}/"
    indices = [i for i, node in enumerate(graph.node) if segment in node.name]
    if not indices:
        raise BlockFunctionError(f"no ops of {block.class_name} ({block.scope}) in the traced graph")
    nodes = [graph.node[i] for i in indices]
    produced = {out for node in nodes for out in node.output}
    # Integer constants the block reads go into the body as Constant nodes, as in torch's own
    # functions: shape inference inside the function then knows their values.
    constants: list[onnx.NodeProto] = []
    inputs: list[str] = []
    for node in nodes:
        for name in node.input:
            if not name or name in produced or name in inputs:
                continue
            if name in integer_constants:
                constants.append(
                    helper.make_node("Constant", [], [name], value=integer_constants[name], name=name)
                )
                produced.add(name)
            else:
                inputs.append(name)
    nodes = constants + nodes
    members = set(indices)
    read_outside = {name for i, node in enumerate(graph.node) if i not in members for name in node.input}
    read_outside |= {o.name for o in graph.output}
    outputs = [out for node in nodes for out in node.output if out in read_outside]
    if not outputs:
        raise BlockFunctionError(f"{block.class_name} ({block.scope}) has no output used by the graph")
    return _Instance(block, nodes, inputs, outputs, indices)


def _attribute_name(index: int) -> str:
    return f"value_{index}"


def _canonical_body(instance: _Instance, lifted: set[int]) -> list[onnx.NodeProto]:
    """The instance's nodes with canonical value names; ``lifted`` Constants read an attribute."""
    rename = {name: f"x{position}" for position, name in enumerate(instance.inputs)}
    body = []
    for index, node in enumerate(instance.nodes):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{node.op_type}_{index}"
        if index in lifted:
            reference = onnx.AttributeProto(
                name="value", ref_attr_name=_attribute_name(index), type=onnx.AttributeProto.TENSOR
            )
            del copy.attribute[:]
            copy.attribute.append(reference)
        for i, name in enumerate(copy.input):
            if name:
                copy.input[i] = rename[name]
        for i, name in enumerate(copy.output):
            rename[name] = f"t{index}_{i}"
            copy.output[i] = rename[name]
        body.append(copy)
    for position, name in enumerate(instance.outputs):
        old = rename[name]
        new = f"y{position}"
        for node in body:
            for i, value in enumerate(node.output):
                if value == old:
                    node.output[i] = new
            for i, value in enumerate(node.input):
                if value == old:
                    node.input[i] = new
        rename[name] = new
    return body


def _differing_constants(first: _Instance, other: _Instance) -> set[int] | None:
    """Positions of Constant nodes whose values differ; None if anything else differs."""
    if len(first.nodes) != len(other.nodes) or len(first.inputs) != len(other.inputs):
        return None
    differing = set()
    for index, (a, b) in enumerate(zip(first.nodes, other.nodes, strict=True)):
        if a.op_type != b.op_type:
            return None
        if list(a.attribute) == list(b.attribute):
            continue
        values_only = [x.name for x in a.attribute] == [x.name for x in b.attribute] == ["value"]
        if a.op_type != "Constant" or not values_only:
            return None
        differing.add(index)
    return differing


def _body_signature(body: list[onnx.NodeProto]) -> bytes:
    return b"".join(node.SerializeToString() for node in body)


def extract_block_functions(model: onnx.ModelProto, blocks: list[MarkedBlock], opset: int) -> None:
    """Replace each marked block's nodes with a call of its class's function, in place."""
    if not blocks:
        return
    graph = model.graph
    integer_constants = _integer_constants(graph)
    instances = [_instance(graph, block, integer_constants) for block in blocks]
    by_class: dict[str, list[_Instance]] = {}
    for instance in instances:
        by_class.setdefault(instance.block.class_name, []).append(instance)

    calls: dict[int, onnx.NodeProto] = {}  # main-graph position -> call node
    functions = []
    for class_name, members in by_class.items():
        lifted: set[int] = set()
        for other in members[1:]:
            differing = _differing_constants(members[0], other)
            if differing is None:
                raise BlockFunctionError(
                    f"the {class_name} blocks {members[0].block.scope} and {other.block.scope} "
                    "traced to different op sequences; they cannot share one ONNX function"
                )
            lifted |= differing
        signature = None
        for instance in members:
            body = _canonical_body(instance, lifted)
            if signature is None:
                signature = _body_signature(body)
                functions.append(
                    helper.make_function(
                        BLOCK_DOMAIN,
                        class_name,
                        [f"x{i}" for i in range(len(instance.inputs))],
                        [f"y{i}" for i in range(len(instance.outputs))],
                        body,
                        opset_imports=[helper.make_opsetid("", opset)],
                        attributes=[_attribute_name(i) for i in sorted(lifted)],
                        doc_string=instance.block.doc,
                    )
                )
            elif _body_signature(body) != signature:
                raise BlockFunctionError(f"the {class_name} blocks differ beyond constants")
            # Named like the block's ops, without the marker: /model/stride16/PolyNL.
            scope = graph.node[instance.indices[0]].name.split(f"/{instance.block.scope}/")[0]
            call = helper.make_node(
                class_name,
                list(instance.inputs),
                list(instance.outputs),
                name=f"{scope}/{class_name}",
                domain=BLOCK_DOMAIN,
            )
            for index in sorted(lifted):
                value = next(a for a in instance.nodes[index].attribute if a.name == "value")
                call.attribute.append(helper.make_attribute(_attribute_name(index), value.t))
            calls[max(instance.indices)] = call

    removed = {index for instance in instances for index in instance.indices}
    kept = []
    for position, node in enumerate(graph.node):
        if position in calls:
            kept.append(calls[position])
        if position not in removed:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)  # the originals go when the node list is replaced below
            kept.append(copy)
    # A call sits where its block's last op was: everything it reads is computed before that.
    # Any op between the block's first and last op that reads a block output would now come
    # first; the block's ops are contiguous in a trace, and the checker would catch it anyway.
    inner = {out for instance in instances for node in instance.nodes for out in node.output}
    inner -= {out for instance in instances for out in instance.outputs}
    # Constants only the blocks read now live in the function bodies.
    read_by_kept = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    kept = [n for n in kept if n.op_type != "Constant" or n.output[0] in read_by_kept]
    del graph.node[:]
    graph.node.extend(kept)
    value_info = [v for v in graph.value_info if v.name not in inner]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    initializers = [init for init in graph.initializer if init.name in read]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    model.functions.extend(functions)
    model.opset_import.append(helper.make_opsetid(BLOCK_DOMAIN, 1))

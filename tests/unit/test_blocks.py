"""The Poly-NL block and its non-local baseline (models/blocks.py)."""

from __future__ import annotations

import pytest
import torch

from models.blocks import NonLocal, PolyNL, make_block


def _randomise_residual(block: torch.nn.Module) -> None:
    """Give the zero-initialised output BN a non-trivial affine so the branch is visible."""
    torch.nn.init.normal_(block.bn.weight)
    torch.nn.init.normal_(block.bn.bias)


@pytest.mark.parametrize("block_cls", [PolyNL, NonLocal])
def test_fresh_block_is_the_identity(block_cls: type[torch.nn.Module]) -> None:
    torch.manual_seed(0)
    block = block_cls(32).train()
    x = torch.randn(2, 32, 9, 7)
    assert torch.equal(block(x), x)
    block.eval()
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("block_cls", [PolyNL, NonLocal])
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


@pytest.mark.parametrize("block_cls", [PolyNL, NonLocal])
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


def test_polynl_memory_grows_linearly_and_nonlocal_quadratically() -> None:
    channels = 16
    poly, nl = PolyNL(channels).train(), NonLocal(channels).train()
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
    assert isinstance(make_block("polynl", 8), PolyNL)
    assert isinstance(make_block("nonlocal", 8), NonLocal)
    assert isinstance(make_block("none", 8), torch.nn.Identity)
    with pytest.raises(ValueError, match="unknown block type"):
        make_block("attention", 8)


def test_context_norm_option_bounds_the_pooled_context() -> None:
    block = PolyNL(8, context_norm="l2")
    ctx = block.context(torch.randn(2, 8, 5, 5) * 100)
    torch.testing.assert_close(ctx.norm(dim=1), torch.ones(2, 1, 1))
    with pytest.raises(ValueError):
        PolyNL(8, context_norm="batch")  # type: ignore[arg-type]

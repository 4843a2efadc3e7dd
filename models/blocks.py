"""Non-local context blocks: the Poly-NL block and the classic non-local baseline.

Both map a ``(B, C, H, W)`` feature map to the same shape and start as the identity
(the residual branch ends in a BatchNorm whose weight is initialised to zero), so a block
can be dropped into a trained network without changing its outputs.

``PolyNL`` is a third-order polynomial of the input, our reconstruction after Babiloni et al.
(ICCV 2021; the paper's text could not be consulted). It comes in two forms:

- ``form="projected"`` (the default; every shipped checkpoint uses it)::

      Y = X + BN( W4( (X W1) * mean_n( (X W2) * (X W3) ) ) )

  three 1x1 projections to C' = C / reduction channels, W4 back to C, BN weight at zero;
- ``form="paper-scalar"`` (the arrangement other authors' descriptions of Poly-NL suggest)::

      Y = a*X + b*W3( (X W1) * mean_n( (X W2) * X ) )

  one factor the raw input X, full channel width (W1, W2, W3 all C -> C; ``reduction`` is
  not used), learnable scalars a (initialised to 1) and b (initialised to 0).

``*`` is element-wise and ``mean_n`` the average over the N = H*W positions, broadcast
back to every position. Cost is O(N * C * C') (C' = C for the paper-scalar form); no N x N
tensor is ever formed.

``NonLocal`` (Wang et al., CVPR 2018) computes ``softmax(theta(X) phi(X)^T) g(X)``
(embedded Gaussian) or ``theta(X) phi(X)^T g(X) / N`` (dot product): an N x N affinity,
cost O(N^2 * C'). Poly-NL equals the dot-product response with the C' x C' matrix
``phi^T g / N`` cut to its diagonal (see ``tests/unit/test_blocks.py``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

BLOCK_TYPES: tuple[str, ...] = ("none", "nonlocal", "polynl")
PolyNLForm = Literal["projected", "paper-scalar"]
POLYNL_FORMS: tuple[str, ...] = ("projected", "paper-scalar")
DEFAULT_POLYNL_FORM = "projected"  # what checkpoints without a ``block_form`` field hold


def _conv1x1(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)


def _zero_init_bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    nn.init.zeros_(bn.weight)
    nn.init.zeros_(bn.bias)
    return bn


def _reduced(channels: int, reduction: int) -> int:
    if channels < 1 or reduction < 1:
        raise ValueError(f"channels and reduction must be >= 1, got {channels}, {reduction}")
    return max(1, channels // reduction)


class PolyNL(nn.Module):
    """The Poly-NL block (our reconstruction, after Babiloni et al.): linear in the positions.

    Args:
        channels: C, channels of the input and output.
        reduction: C' = C // reduction channels for the three input projections of the
            ``projected`` form; the ``paper-scalar`` form is always full width (C' = C).
        context_norm: optional normalisation of the pooled context (shape (B, C', 1, 1)):
            ``"identity"`` (default) or ``"l2"`` (unit L2 norm over channels, which bounds
            the third-order term for large inputs).
        form: ``"projected"`` (default) ``Y = X + BN(W4((X W1) * mean_n((X W2) * (X W3))))``
            or ``"paper-scalar"`` ``Y = a*X + b*W3((X W1) * mean_n((X W2) * X))``. Both
            start as the identity (BN weight 0, resp. b = 0).
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 2,
        context_norm: Literal["identity", "l2"] = "identity",
        form: PolyNLForm = "projected",
    ) -> None:
        super().__init__()
        if form not in POLYNL_FORMS:
            raise ValueError(f"form must be one of {POLYNL_FORMS}, got {form!r}")
        inner = _reduced(channels, reduction) if form == "projected" else _reduced(channels, 1)
        if context_norm not in ("identity", "l2"):
            raise ValueError(f"context_norm must be 'identity' or 'l2', got {context_norm!r}")
        self.channels = channels
        self.inner_channels = inner
        self.context_norm = context_norm
        self.form = form
        self.w1 = _conv1x1(channels, inner)
        self.w2 = _conv1x1(channels, inner)
        if form == "projected":
            self.w3 = _conv1x1(channels, inner)
            self.w4 = _conv1x1(inner, channels)
            self.bn = _zero_init_bn(channels)
        else:
            self.w3 = _conv1x1(inner, channels)  # the output projection in this form
            self.a = nn.Parameter(torch.ones(()))
            self.b = nn.Parameter(torch.zeros(()))  # b = 0: the block starts as the identity

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled second-order context, shape (B, C', 1, 1): mean_n((X W2) * (X W3))
        (projected) or mean_n((X W2) * X) (paper-scalar)."""
        other = self.w3(x) if self.form == "projected" else x
        ctx = (self.w2(x) * other).mean(dim=(2, 3), keepdim=True)
        if self.context_norm == "l2":
            ctx = ctx / ctx.norm(dim=1, keepdim=True).clamp_min(1e-6)
        return ctx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "projected":
            return x + self.bn(self.w4(self.w1(x) * self.context(x)))
        # x first: the exported function takes the block input as its first argument, and the
        # trace lists a function's inputs in order of first use.
        return x * self.a + self.w3(self.w1(x) * self.context(x)) * self.b

    def extra_repr(self) -> str:
        return f"form={self.form!r}, channels={self.channels}, inner_channels={self.inner_channels}"


class NonLocal(nn.Module):
    """The non-local block of Wang et al. (2018): quadratic in the number of positions.

    Args:
        channels: C, channels of the input and output.
        reduction: C' = C // reduction channels for theta, phi and g.
        mode: ``"embedded_gaussian"`` (softmax over positions) or ``"dot_product"``
            (affinity divided by N).
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 2,
        mode: Literal["embedded_gaussian", "dot_product"] = "embedded_gaussian",
    ) -> None:
        super().__init__()
        if mode not in ("embedded_gaussian", "dot_product"):
            raise ValueError(f"mode must be 'embedded_gaussian' or 'dot_product', got {mode!r}")
        inner = _reduced(channels, reduction)
        self.channels = channels
        self.inner_channels = inner
        self.mode = mode
        self.theta = _conv1x1(channels, inner)
        self.phi = _conv1x1(channels, inner)
        self.g = _conv1x1(channels, inner)
        self.out = _conv1x1(inner, channels)
        self.bn = _zero_init_bn(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C')
        phi = self.phi(x).flatten(2)  # (B, C', N)
        g = self.g(x).flatten(2).transpose(1, 2)  # (B, N, C')
        affinity = torch.bmm(theta, phi)  # (B, N, N): the quadratic part
        affinity = affinity.softmax(dim=-1) if self.mode == "embedded_gaussian" else affinity / (h * w)
        y = torch.bmm(affinity, g).transpose(1, 2).reshape(b, self.inner_channels, h, w)
        return x + self.bn(self.out(y))


def make_block(kind: str, channels: int, reduction: int = 2, form: str = DEFAULT_POLYNL_FORM) -> nn.Module:
    """Build a context block by its config name: ``none``, ``nonlocal`` or ``polynl``
    (``form`` picks the Poly-NL form and is ignored by the other kinds)."""
    if kind == "polynl":
        if form not in POLYNL_FORMS:
            raise ValueError(f"unknown Poly-NL form {form!r}; expected one of {POLYNL_FORMS}")
        return PolyNL(channels, reduction, form=form)  # type: ignore[arg-type]
    if kind == "nonlocal":
        return NonLocal(channels, reduction)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown block type {kind!r}; expected one of {BLOCK_TYPES}")

"""RetinaFace anchors ("priors"): the fixed boxes that the heads' outputs are relative to.

Data path: input size -> priors -> (``codec``) decode of the head outputs. Training uses the
same priors to encode the targets, and :class:`models.retinaface.inference.DecodedRetinaFace`
generates them inside the exported graph from the input tensor's height and width, so the
ONNX model accepts any size.

Convention: centre form ``(cx, cy, w, h)`` in **input pixels** (not normalised). The encoded
offsets are invariant to a per-axis rescaling, so these priors give exactly the same
regression targets as the public RetinaFace code's normalised priors.

Order (matching the heads' ``permute(0, 2, 3, 1).reshape(B, -1, k)``): stride by stride
(8, 16, 32), then row, column, then the anchors of that level (``min_sizes[level]``).
A level with stride ``s`` has ``ceil(H / s) x ceil(W / s)`` locations, the size of the
backbone's feature map for padding-1 stride-2 convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_MIN_SIZES: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
DEFAULT_STEPS: tuple[int, ...] = (8, 16, 32)
DEFAULT_VARIANCES: tuple[float, float] = (0.1, 0.2)


def feature_map_size(height: int, width: int, step: int) -> tuple[int, int]:
    """(rows, cols) of the feature map with stride ``step``: ceil division."""
    return (height + step - 1) // step, (width + step - 1) // step


def num_priors(
    height: int,
    width: int,
    min_sizes: Sequence[Sequence[int]] = DEFAULT_MIN_SIZES,
    steps: Sequence[int] = DEFAULT_STEPS,
) -> int:
    total = 0
    for sizes, step in zip(min_sizes, steps, strict=True):
        rows, cols = feature_map_size(height, width, step)
        total += rows * cols * len(sizes)
    return total


def generate_priors(
    height: int | torch.SymInt,
    width: int | torch.SymInt,
    min_sizes: Sequence[Sequence[int]] = DEFAULT_MIN_SIZES,
    steps: Sequence[int] = DEFAULT_STEPS,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Priors for an input of ``height x width`` pixels: (P, 4) ``cx, cy, w, h`` in pixels.

    Written with tensor ops only (``arange``/``meshgrid``), so that when ``height``/``width``
    come from a traced tensor's shape the exporter records the computation, not constants.
    """
    levels = []
    for sizes, step in zip(min_sizes, steps, strict=True):
        rows = (height + step - 1) // step
        cols = (width + step - 1) // step
        ys = (torch.arange(rows, device=device, dtype=dtype) + 0.5) * step
        xs = (torch.arange(cols, device=device, dtype=dtype) + 0.5) * step
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)  # (rows*cols, 1, 2)
        wh = torch.tensor(sizes, device=device, dtype=dtype).reshape(1, -1, 1).expand(-1, -1, 2)
        centres = centres.expand(-1, len(sizes), -1)
        wh = wh.expand(centres.shape[0], -1, -1)
        levels.append(torch.cat([centres, wh], dim=-1).reshape(-1, 4))
    return torch.cat(levels, dim=0)


def priors_for(
    images: torch.Tensor,
    min_sizes: Sequence[Sequence[int]] = DEFAULT_MIN_SIZES,
    steps: Sequence[int] = DEFAULT_STEPS,
) -> torch.Tensor:
    """Priors for a batch ``(B, C, H, W)``, from its (possibly symbolic) height and width."""
    return generate_priors(
        images.shape[-2], images.shape[-1], min_sizes, steps, device=images.device, dtype=images.dtype
    )


def point_form(priors: torch.Tensor) -> torch.Tensor:
    """``cx, cy, w, h`` -> ``x1, y1, x2, y2``."""
    half = priors[..., 2:] / 2
    return torch.cat([priors[..., :2] - half, priors[..., :2] + half], dim=-1)

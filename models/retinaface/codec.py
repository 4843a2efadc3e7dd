"""Box and landmark coding against the priors, exactly as RetinaFace (variances 0.1, 0.2).

Data path: training encodes matched ground truth into regression targets (``encode_*``);
inference decodes head outputs into pixels (``decode_*``). Priors are ``cx, cy, w, h``
(see ``priors``); boxes are ``x1, y1, x2, y2``; landmarks are five ``x, y`` pairs flattened
to 10 values. All functions broadcast over leading dimensions (e.g. a batch axis).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.retinaface.priors import DEFAULT_VARIANCES


def encode_boxes(
    boxes: torch.Tensor, priors: torch.Tensor, variances: Sequence[float] = DEFAULT_VARIANCES
) -> torch.Tensor:
    """x1y1x2y2 boxes -> offsets ``((c - pc) / (v0 * pwh), log(wh / pwh) / v1)``."""
    centres = (boxes[..., :2] + boxes[..., 2:]) / 2
    sizes = (boxes[..., 2:] - boxes[..., :2]).clamp_min(1e-6)
    offsets = (centres - priors[..., :2]) / (variances[0] * priors[..., 2:])
    scales = torch.log(sizes / priors[..., 2:]) / variances[1]
    return torch.cat([offsets, scales], dim=-1)


def decode_boxes(
    loc: torch.Tensor, priors: torch.Tensor, variances: Sequence[float] = DEFAULT_VARIANCES
) -> torch.Tensor:
    """Offsets -> x1y1x2y2 boxes in the priors' units (pixels)."""
    centres = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:]
    sizes = priors[..., 2:] * torch.exp(loc[..., 2:] * variances[1])
    return torch.cat([centres - sizes / 2, centres + sizes / 2], dim=-1)


def _repeat_priors(priors: torch.Tensor, points: int) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.cat([priors[..., :2]] * points, dim=-1)
    sizes = torch.cat([priors[..., 2:]] * points, dim=-1)
    return centres, sizes


def encode_landmarks(
    landmarks: torch.Tensor, priors: torch.Tensor, variances: Sequence[float] = DEFAULT_VARIANCES
) -> torch.Tensor:
    """(…, 2K) x/y pairs -> ``(p - pc) / (v0 * pwh)`` per point."""
    centres, sizes = _repeat_priors(priors, landmarks.shape[-1] // 2)
    return (landmarks - centres) / (variances[0] * sizes)


def decode_landmarks(
    pre: torch.Tensor, priors: torch.Tensor, variances: Sequence[float] = DEFAULT_VARIANCES
) -> torch.Tensor:
    """Landmark offsets -> (…, 2K) x/y pairs in pixels."""
    centres, sizes = _repeat_priors(priors, pre.shape[-1] // 2)
    return centres + pre * variances[0] * sizes

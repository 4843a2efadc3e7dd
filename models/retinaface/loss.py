"""Training targets and the multi-task loss of RetinaFace.

Data path (training only): ground-truth boxes/landmarks per image -> :func:`match` against the
priors -> encoded targets -> :class:`MultiBoxLoss` (smooth-L1 boxes, smooth-L1 landmarks,
cross-entropy with hard negative mining) against the outputs of
:class:`models.retinaface.net.RetinaFace`.

Matching follows RetinaFace: a prior is positive when its IoU with a face is at least
``iou_threshold`` (0.35); every face also claims its best prior; faces whose best prior
overlaps less than 0.2 are ignored. Landmarks equal to -1 (unknown, e.g. WIDER FACE faces
without landmark labels or synthetic faces without derived landmarks) are masked out of the
landmark loss only; the face still counts for boxes and scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.retinaface.codec import encode_boxes, encode_landmarks
from models.retinaface.priors import DEFAULT_VARIANCES, point_form


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of x1y1x2y2 boxes: (N, 4) x (M, 4) -> (N, M)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(dim=-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp_min(0).prod(dim=-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp_min(0).prod(dim=-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp_min(1e-9)


@dataclass
class MatchedTargets:
    loc: torch.Tensor  # (P, 4) encoded box targets
    landm: torch.Tensor  # (P, 10) encoded landmark targets
    positive: torch.Tensor  # (P,) bool: prior matched to a face
    landm_valid: torch.Tensor  # (P,) bool: positive and the face has landmarks

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MatchedTargets:
        return MatchedTargets(
            *(
                t.to(device, non_blocking=non_blocking)
                for t in (self.loc, self.landm, self.positive, self.landm_valid)
            )
        )


def match(
    boxes: torch.Tensor,
    landmarks: torch.Tensor,
    priors: torch.Tensor,
    iou_threshold: float = 0.35,
    variances: Sequence[float] = DEFAULT_VARIANCES,
    min_best_iou: float = 0.2,
) -> MatchedTargets:
    """Assign each prior to a face (or background) for one image."""
    num_priors = priors.shape[0]
    if boxes.numel() == 0:
        zeros = torch.zeros(num_priors, dtype=torch.bool, device=priors.device)
        return MatchedTargets(
            loc=priors.new_zeros(num_priors, 4),
            landm=priors.new_zeros(num_priors, 10),
            positive=zeros,
            landm_valid=zeros,
        )
    overlaps = box_iou(boxes, point_form(priors))  # (F, P)
    best_prior_iou, best_prior = overlaps.max(dim=1)  # per face
    best_face_iou, best_face = overlaps.max(dim=0)  # per prior
    usable = best_prior_iou >= min_best_iou
    # Every usable face keeps its best prior, whatever that prior's IoU (small faces).
    for face in torch.nonzero(usable).flatten().tolist():
        prior = int(best_prior[face])
        best_face[prior] = face
        best_face_iou[prior] = 2.0
    positive = best_face_iou >= iou_threshold
    matched_boxes = boxes[best_face]
    matched_landm = landmarks[best_face]
    has_landmarks = (landmarks >= 0).all(dim=1)[best_face]
    return MatchedTargets(
        loc=encode_boxes(matched_boxes, priors, variances),
        landm=encode_landmarks(matched_landm, priors, variances),
        positive=positive,
        landm_valid=positive & has_landmarks,
    )


class MultiBoxLoss(nn.Module):
    """``loss = loc_weight * L_box + L_cls + landm_weight * L_landm`` (all / number of positives).

    Hard negative mining keeps, per image, the ``neg_pos_ratio`` x positives background priors
    with the highest classification loss (at least ``min_negatives``, which lets images with
    no faces contribute hard negatives too).
    """

    def __init__(
        self,
        iou_threshold: float = 0.35,
        neg_pos_ratio: float = 7.0,
        min_negatives: int = 0,
        loc_weight: float = 2.0,
        landm_weight: float = 1.0,
        variances: Sequence[float] = DEFAULT_VARIANCES,
    ) -> None:
        super().__init__()
        self.iou_threshold = iou_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.min_negatives = min_negatives
        self.loc_weight = loc_weight
        self.landm_weight = landm_weight
        self.variances = tuple(variances)

    def targets(
        self, boxes: Sequence[torch.Tensor], landmarks: Sequence[torch.Tensor], priors: torch.Tensor
    ) -> MatchedTargets:
        per_image = [
            match(b, lm, priors, self.iou_threshold, self.variances)
            for b, lm in zip(boxes, landmarks, strict=True)
        ]
        return MatchedTargets(
            loc=torch.stack([t.loc for t in per_image]),
            landm=torch.stack([t.landm for t in per_image]),
            positive=torch.stack([t.positive for t in per_image]),
            landm_valid=torch.stack([t.landm_valid for t in per_image]),
        )

    def forward(
        self,
        outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        priors: torch.Tensor,
        boxes: Sequence[torch.Tensor],
        landmarks: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Outputs of ``RetinaFace`` and per-image ground truth -> the loss terms and ``total``."""
        with torch.no_grad():
            targets = self.targets(boxes, landmarks, priors)
        return self.from_targets(outputs, targets)

    def from_targets(
        self, outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], t: MatchedTargets
    ) -> dict[str, torch.Tensor]:
        """The loss against targets already matched by :meth:`targets` (e.g. in data-loader workers)."""
        loc_p, conf_p, landm_p = outputs
        pos = t.positive
        num_pos = pos.sum().clamp_min(1).float()

        loss_loc = F.smooth_l1_loss(loc_p[pos], t.loc[pos], reduction="sum") / num_pos
        num_landm = t.landm_valid.sum().clamp_min(1).float()
        loss_landm = (
            F.smooth_l1_loss(landm_p[t.landm_valid], t.landm[t.landm_valid], reduction="sum") / num_landm
        )

        labels = pos.long()
        ce = F.cross_entropy(conf_p.reshape(-1, 2), labels.reshape(-1), reduction="none").view_as(labels)
        negatives = self._hard_negatives(ce.detach(), pos)
        loss_conf = ce[pos | negatives].sum() / num_pos

        total = self.loc_weight * loss_loc + loss_conf + self.landm_weight * loss_landm
        return {"total": total, "loc": loss_loc, "conf": loss_conf, "landm": loss_landm}

    def _hard_negatives(self, ce: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Per image, the background priors with the largest loss: (B, P) bool."""
        mining = ce.masked_fill(pos, 0.0)
        _, order = mining.sort(dim=1, descending=True)
        _, rank = order.sort(dim=1)
        num_pos = pos.sum(dim=1, keepdim=True)
        num_neg = (self.neg_pos_ratio * num_pos).long().clamp_min(self.min_negatives)
        num_neg = num_neg.clamp_max(pos.shape[1] - 1)
        return (rank < num_neg) & ~pos

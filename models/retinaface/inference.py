"""Decoded RetinaFace: raw head outputs -> boxes, scores and landmarks in input pixels.

Data path: this is the module the export turns into ONNX. ``forward(images)`` runs the
network, generates the priors inside the graph from the input's height and width (so the
ONNX model takes a dynamic batch, height and width), decodes with the RetinaFace codec and
applies the softmax. Thresholding and NMS happen afterwards in the service
(``polynl_core.postprocess.select_faces``), on every prior's prediction.
"""

from __future__ import annotations

import torch
from torch import nn

from models.retinaface.codec import decode_boxes, decode_landmarks
from models.retinaface.net import RetinaFace
from models.retinaface.priors import priors_for


class DecodedRetinaFace(nn.Module):
    """``forward(images) -> (boxes (B,P,4) x1y1x2y2, scores (B,P), landmarks (B,P,10))``."""

    def __init__(self, model: RetinaFace) -> None:
        super().__init__()
        self.model = model
        self.min_sizes = [list(s) for s in model.config.min_sizes]
        self.steps = list(model.config.steps)
        self.variances = tuple(model.config.variances)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loc, conf, landm = self.model(images)
        priors = priors_for(images, self.min_sizes, self.steps)
        boxes = decode_boxes(loc, priors, self.variances)
        scores = conf.softmax(dim=-1)[..., 1]
        landmarks = decode_landmarks(landm, priors, self.variances)
        return boxes, scores, landmarks

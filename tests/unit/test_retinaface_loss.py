"""Prior matching and the multi-task loss (hard negative mining, masked landmarks)."""

from __future__ import annotations

import pytest
import torch

from models.retinaface.loss import MultiBoxLoss, box_iou, match
from models.retinaface.net import RetinaFace
from models.retinaface.priors import generate_priors, point_form

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_box_iou_matches_a_hand_computed_case() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[50.0 / 150.0, 0.0]]))


def test_every_face_claims_its_best_prior_even_below_the_threshold() -> None:
    priors = generate_priors(64, 64)
    # A 12 x 12 face: IoU with the 16 x 16 prior at (28, 28) is 144 / 256 = 0.56; at (4, 4) lower.
    face = torch.tensor([[22.0, 22.0, 34.0, 34.0]])
    targets = match(face, torch.full((1, 10), -1.0), priors, iou_threshold=0.9)
    best = int(box_iou(face, point_form(priors)).argmax())
    assert targets.positive.nonzero().flatten().tolist() == [best]
    assert not targets.landm_valid.any()  # landmarks -1: masked


def test_unknown_landmarks_are_masked_but_the_face_still_counts() -> None:
    priors = generate_priors(64, 64)
    boxes = torch.tensor([[4.0, 4.0, 36.0, 36.0], [30.0, 30.0, 62.0, 62.0]])
    landmarks = torch.stack([torch.full((10,), 20.0), torch.full((10,), -1.0)])
    targets = match(boxes, landmarks, priors)
    ious = box_iou(boxes, point_form(priors))
    owner = ious.argmax(dim=0)
    assert targets.positive.any()
    assert bool((targets.landm_valid == (targets.positive & (owner == 0))).all())


def test_hard_negative_mining_keeps_ratio_times_positives_per_image() -> None:
    loss = MultiBoxLoss(neg_pos_ratio=3.0)
    ce = torch.arange(10.0).repeat(2, 1)
    pos = torch.zeros(2, 10, dtype=torch.bool)
    pos[0, 9] = True  # one positive in image 0; none in image 1
    negatives = loss._hard_negatives(ce, pos)
    assert negatives[0].nonzero().flatten().tolist() == [6, 7, 8]
    assert not negatives[1].any()
    with_floor = MultiBoxLoss(neg_pos_ratio=3.0, min_negatives=2)._hard_negatives(ce, pos)
    assert with_floor[1].nonzero().flatten().tolist() == [8, 9]


def test_loss_goes_down_on_a_tiny_fixture_in_a_few_steps() -> None:
    torch.manual_seed(0)
    model = RetinaFace()
    images = torch.randn(2, 3, 64, 64) * 30
    images[0, :, 16:48, 16:48] += 80.0  # a bright square "face"
    images[1, :, 4:28, 30:54] += 80.0
    boxes = [torch.tensor([[16.0, 16.0, 48.0, 48.0]]), torch.tensor([[30.0, 4.0, 54.0, 28.0]])]
    landmarks = [
        torch.tensor([[24.0, 26.0, 40.0, 26.0, 32.0, 32.0, 26.0, 40.0, 38.0, 40.0]]),
        torch.full((1, 10), -1.0),
    ]
    priors = generate_priors(64, 64)
    criterion = MultiBoxLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(12):
        losses = criterion(model(images), priors, boxes, landmarks)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
        history.append(losses["total"].item())
    assert history[-1] < 0.6 * history[0]
    assert all(torch.isfinite(torch.tensor(history)))

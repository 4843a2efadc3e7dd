"""Priors and the box/landmark codec of the RetinaFace detector."""

from __future__ import annotations

import math

import pytest
import torch

from models.retinaface.codec import decode_boxes, decode_landmarks, encode_boxes, encode_landmarks
from models.retinaface.priors import feature_map_size, generate_priors, num_priors, point_form


@pytest.mark.parametrize(("height", "width"), [(640, 640), (97, 131), (1, 1), (33, 64)])
def test_prior_count_is_two_per_location_on_ceil_sized_maps(height: int, width: int) -> None:
    expected = sum(2 * math.ceil(height / s) * math.ceil(width / s) for s in (8, 16, 32))
    assert generate_priors(height, width).shape == (expected, 4)
    assert num_priors(height, width) == expected


def test_priors_are_pixel_centred_boxes_in_stride_row_column_anchor_order() -> None:
    priors = generate_priors(64, 96)
    # stride 8: 8 x 12 locations, two anchors (16, 32) each
    assert priors[0].tolist() == [4.0, 4.0, 16.0, 16.0]
    assert priors[1].tolist() == [4.0, 4.0, 32.0, 32.0]
    assert priors[2].tolist() == [12.0, 4.0, 16.0, 16.0]  # next column
    assert priors[2 * 12].tolist() == [4.0, 12.0, 16.0, 16.0]  # next row
    level2 = 2 * 8 * 12
    assert priors[level2].tolist() == [8.0, 8.0, 64.0, 64.0]
    assert priors[level2 + 1].tolist() == [8.0, 8.0, 128.0, 128.0]
    level3 = level2 + 2 * 4 * 6
    assert priors[level3].tolist() == [16.0, 16.0, 256.0, 256.0]
    assert priors[-1].tolist() == [80.0, 48.0, 512.0, 512.0]


def test_feature_map_size_is_ceil_division() -> None:
    assert feature_map_size(97, 131, 8) == (13, 17)
    assert feature_map_size(96, 128, 32) == (3, 4)


def test_point_form_converts_centre_size_to_corners() -> None:
    assert point_form(torch.tensor([[10.0, 20.0, 4.0, 8.0]])).tolist() == [[8.0, 16.0, 12.0, 24.0]]


def test_box_encode_decode_round_trip() -> None:
    torch.manual_seed(0)
    priors = generate_priors(64, 64)
    xy = torch.rand(priors.shape[0], 2) * 64
    wh = torch.rand(priors.shape[0], 2) * 100 + 2
    boxes = torch.cat([xy, xy + wh], dim=1)
    assert torch.allclose(decode_boxes(encode_boxes(boxes, priors), priors), boxes, atol=1e-3)


def test_landmark_encode_decode_round_trip_and_zero_offsets_decode_to_prior_centre() -> None:
    priors = generate_priors(32, 48)
    points = torch.rand(priors.shape[0], 10) * 48
    assert torch.allclose(decode_landmarks(encode_landmarks(points, priors), priors), points, atol=1e-4)
    centres = decode_landmarks(torch.zeros(priors.shape[0], 10), priors)
    assert torch.equal(centres[:, 4:6], priors[:, :2])


def test_encoding_uses_retinaface_variances() -> None:
    prior = torch.tensor([[50.0, 50.0, 20.0, 20.0]])
    box = torch.tensor([[42.0, 40.0, 62.0, 60.0]])  # centre (52, 50), size 20 x 20
    # (52 - 50) / (0.1 * 20) = 1; log(20 / 20) / 0.2 = 0
    assert torch.allclose(encode_boxes(box, prior), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    wide = torch.tensor([[30.0, 40.0, 70.0, 60.0]])  # width 40 -> log(2) / 0.2
    assert math.isclose(float(encode_boxes(wide, prior)[0, 2]), math.log(2) / 0.2, rel_tol=1e-5)

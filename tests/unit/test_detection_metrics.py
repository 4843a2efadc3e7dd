"""AP (WIDER FACE method), NME and the PR plot, against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.detection_metrics import (
    ImageDetections,
    ImageGroundTruth,
    NotSupportedError,
    average_precision,
    evaluate_detections,
    landmark_nme,
    load_box_list,
    load_wider_split,
    plot_pr_curves,
    pr_curve,
    voc_ap,
)

CMUMIT = Path(__file__).resolve().parents[1] / "data" / "cmumit-val"


def _gt(boxes: list[list[float]], landmarks: np.ndarray | None = None, keep: list[bool] | None = None):
    return ImageGroundTruth(
        file="x.jpg",
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        landmarks=landmarks,
        keep=None if keep is None else np.asarray(keep),
    )


def _det(boxes: list[list[float]], scores: list[float], landmarks: np.ndarray | None = None):
    return ImageDetections(
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        scores=np.asarray(scores, dtype=np.float64),
        landmarks=landmarks,
    )


def _perfect(gts: list[ImageGroundTruth]) -> list[ImageDetections]:
    rng = np.random.default_rng(0)
    return [
        ImageDetections(
            boxes=g.boxes.copy(), scores=rng.uniform(0.5, 1.0, len(g.boxes)), landmarks=g.landmarks
        )
        for g in gts
    ]


def test_perfect_predictions_give_ap_one_and_zero_nme_on_cmumit_labels() -> None:
    gts = load_box_list(CMUMIT / "labels.json")
    report = evaluate_detections(_perfect(gts), gts, ious=(0.5, 0.3))
    assert report.faces == 256
    assert report.ap == {0.5: pytest.approx(1.0), 0.3: pytest.approx(1.0)}
    assert report.ap_strict[0.5] == pytest.approx(1.0)
    assert report.nme is not None
    assert report.nme.mean == 0.0
    assert report.nme.matched == report.nme.labelled == 256


def test_shifted_boxes_and_extra_false_positives_lower_the_ap() -> None:
    gts = load_box_list(CMUMIT / "labels.json")
    perfect = _perfect(gts)
    shifted = []
    for det in perfect:
        boxes = det.boxes.copy()
        width = boxes[:, 2] - boxes[:, 0]
        # Every other face moved by 40% of its width: IoU about 0.43, below 0.5, above 0.3.
        boxes[::2, [0, 2]] += 0.4 * width[::2, None]
        shifted.append(ImageDetections(boxes=boxes, scores=det.scores, landmarks=det.landmarks))
    # At IoU 0.5 at most about half of the faces can be recalled, at a precision near 1/2.
    ap_05 = average_precision(shifted, gts, 0.5)
    assert 0.1 < ap_05 < 0.6
    # At IoU 0.3 nearly all count (a few shifted boxes in crowded photos meet a neighbour more).
    assert average_precision(shifted, gts, 0.3) > 0.95

    with_noise = [
        ImageDetections(boxes=np.r_[d.boxes, [[0, 0, 5, 5]]], scores=np.r_[d.scores, 0.99], landmarks=None)
        for d in perfect
    ]
    assert average_precision(with_noise, gts, 0.5) < 1.0


def test_hand_computed_ap_on_a_tiny_case() -> None:
    # Image 1: faces A, B. Detections: A (0.9, hit), far away (0.8, miss), B (0.3, hit).
    # Image 2: face C. Detections: C (0.6, hit), C again (0.5, duplicate = false positive).
    # Score order: hit, miss, hit, dup, hit -> (P, R): (1, 1/3) (1/2, 1/3) (2/3, 2/3) (2/4, 2/3)
    # (3/5, 1). Interpolated area: 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5 = 34/45.
    gts = [_gt([[0, 0, 10, 10], [20, 0, 30, 10]]), _gt([[0, 0, 10, 10]])]
    dets = [
        _det([[0, 0, 10, 10], [50, 50, 60, 60], [20, 0, 30, 10]], [0.9, 0.8, 0.3]),
        _det([[0, 0, 10, 10], [1, 0, 11, 10]], [0.6, 0.5]),
    ]
    assert average_precision(dets, gts, 0.5) == pytest.approx(34 / 45, abs=1e-9)


def test_voc_ap_is_the_area_under_the_monotone_envelope() -> None:
    recall = np.array([0.5, 0.5, 1.0])
    precision = np.array([1.0, 0.5, 0.75])
    assert voc_ap(recall, precision) == pytest.approx(0.5 * 1.0 + 0.5 * 0.75)


def test_detection_on_an_ignored_face_is_neither_hit_nor_false_positive() -> None:
    # Face 2 is ignored in this setting (as "hard" faces are when scoring "easy").
    gts = [_gt([[0, 0, 10, 10], [20, 0, 30, 10]], keep=[True, False])]
    dets = [_det([[20, 0, 30, 10], [0, 0, 10, 10]], [0.9, 0.8])]
    assert average_precision(dets, gts, 0.5) == pytest.approx(1.0)


def test_detections_on_face_free_images_count_only_in_the_strict_ap() -> None:
    gts = [_gt([[0, 0, 10, 10]]), _gt([])]
    dets = [_det([[0, 0, 10, 10]], [0.5]), _det([[0, 0, 10, 10]], [0.9])]
    assert average_precision(dets, gts, 0.5) == pytest.approx(1.0)  # WIDER skips such images
    assert average_precision(dets, gts, 0.5, count_empty_images=True) == pytest.approx(0.5)


def test_pr_curve_is_monotone_in_recall_and_ends_at_all_detections() -> None:
    gts = [_gt([[0, 0, 10, 10], [20, 0, 30, 10]])]
    dets = [_det([[0, 0, 10, 10], [40, 0, 50, 10]], [0.9, 0.1])]
    curve = pr_curve(dets, gts, 0.5)
    assert np.all(np.diff(curve.recall) >= 0)
    assert curve.recall[-1] == pytest.approx(0.5)
    assert curve.precision[-1] == pytest.approx(0.5)


def test_nme_is_divided_by_the_eye_distance() -> None:
    truth = np.array([[[10, 10], [30, 10], [20, 20], [12, 30], [28, 30]]], dtype=np.float64)
    moved = truth + np.array([2.0, 0.0])  # every point 2 px off, eyes 20 px apart
    gts = [_gt([[5, 5, 35, 35]], landmarks=truth)]
    result = landmark_nme([_det([[5, 5, 35, 35]], [0.9], landmarks=moved)], gts, 0.5)
    assert result is not None
    assert result.mean == pytest.approx(0.1)
    assert result.matched == 1
    assert landmark_nme([_det([[5, 5, 35, 35]], [0.9])], gts, 0.5) is None  # no landmarks


def test_pr_plot_writes_a_png(tmp_path: Path) -> None:
    gts = [_gt([[0, 0, 10, 10]])]
    curve = pr_curve([_det([[0, 0, 10, 10]], [0.9])], gts, 0.5)
    out = plot_pr_curves({"toy": {0.5: curve}}, tmp_path / "pr.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wider_split_reads_the_official_mat_layout(tmp_path: Path) -> None:
    scipy_io = pytest.importorskip("scipy.io")

    def cell(items: list[object]) -> np.ndarray:
        out = np.empty((len(items), 1), dtype=object)
        for i, item in enumerate(items):
            out[i, 0] = item
        return out

    scipy_io.savemat(
        tmp_path / "wider_face_val.mat",
        {
            "event_list": cell(["0--Parade"]),
            "file_list": cell([cell(["0_Parade_1", "0_Parade_2"])]),
            "face_bbx_list": cell(
                [
                    cell(
                        [
                            np.array([[10, 20, 30, 40], [100, 100, 5, 5]], float),
                            np.array([[1, 2, 3, 4]], float),
                        ]
                    )
                ]
            ),
        },
    )
    scipy_io.savemat(
        tmp_path / "wider_easy_val.mat",
        {"gt_list": cell([cell([np.array([[1]]), np.zeros((0, 1))])])},
    )
    gts = load_wider_split(tmp_path, "easy")
    assert [g.file for g in gts] == ["0--Parade/0_Parade_1.jpg", "0--Parade/0_Parade_2.jpg"]
    np.testing.assert_allclose(gts[0].boxes[0], [10, 20, 40, 60])
    assert gts[0].kept.tolist() == [True, False]
    assert gts[1].kept.tolist() == [False]
    with pytest.raises(NotSupportedError, match="not found"):
        load_wider_split(tmp_path, "hard")


def test_box_list_reads_landmarks_and_face_free_images(tmp_path: Path) -> None:
    labels = {
        "images": [
            {
                "file": "a.jpg",
                "width": 50,
                "height": 40,
                "faces": [{"box": [1, 2, 11, 12], "landmarks": [[3, 4], [8, 4], [6, 6], [4, 9], [8, 9]]}],
            },
            {"file": "b.jpg", "width": 50, "height": 40, "faces": []},
        ]
    }
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(labels))
    gts = load_box_list(path)
    assert gts[0].landmarks is not None and gts[0].landmarks.shape == (1, 5, 2)
    assert gts[1].boxes.shape == (0, 4)


def test_ignored_faces_neither_count_nor_penalise(tmp_path: Path) -> None:
    labels = tmp_path / "labels.json"
    entry = {
        "file": "a.jpg",
        "faces": [{"box": [0, 0, 10, 10], "landmarks": None}],
        "ignore": [[50, 50, 60, 60]],
    }
    labels.write_text(json.dumps({"images": [entry]}))
    [gt] = load_box_list(labels)
    assert gt.kept.tolist() == [True, False]
    found = ImageDetections(
        boxes=np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32),
        scores=np.array([0.9, 0.8], np.float32),
    )
    report = evaluate_detections([found], [gt], ious=[0.5])
    assert report.ap[0.5] == pytest.approx(1.0)  # the ignored face's detection is no false positive
    assert report.faces == 1

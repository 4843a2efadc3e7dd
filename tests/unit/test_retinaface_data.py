"""Detector data: annotation readers, augmentation (flip with landmark swap), synthesis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from models.retinaface.data import (
    BoxListDataset,
    Sample,
    WiderFaceLabels,
    augment,
    flip_horizontal,
    random_square_crop,
    to_training_batch,
)
from models.retinaface.synth import (
    CROP_LANDMARKS,
    SynthConfig,
    SyntheticFaces,
    box_from_landmarks,
)


def _sample() -> Sample:
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    image[:, :10] = 255  # left third white
    boxes = np.array([[2.0, 3.0, 12.0, 15.0]], dtype=np.float32)
    # left eye, right eye, nose, left mouth, right mouth
    landmarks = np.array([[4.0, 6.0, 10.0, 6.0, 7.0, 9.0, 5.0, 12.0, 9.0, 12.0]], dtype=np.float32)
    return Sample(image, boxes, landmarks)


def test_flip_mirrors_boxes_and_swaps_left_right_landmarks() -> None:
    flipped = flip_horizontal(_sample())
    assert flipped.image[:, -10:].min() == 255 and flipped.image[:, :10].max() == 0
    assert flipped.boxes.tolist() == [[18.0, 3.0, 28.0, 15.0]]
    points = flipped.landmarks.reshape(5, 2).tolist()
    # the old right eye (10, 6) becomes the new left eye at x = 30 - 10
    assert points == [[20.0, 6.0], [26.0, 6.0], [23.0, 9.0], [21.0, 12.0], [25.0, 12.0]]
    left_eye, right_eye = points[0], points[1]
    assert left_eye[0] < right_eye[0]  # "left" stays the smaller x, as in the labels


def test_flip_keeps_unknown_landmarks_unknown() -> None:
    sample = _sample()
    sample.landmarks[:] = -1.0
    assert (flip_horizontal(sample).landmarks == -1.0).all()


def test_random_crop_and_augment_keep_faces_inside_and_resize() -> None:
    rng = np.random.default_rng(0)
    sample = _sample()
    cropped = random_square_crop(rng, sample)
    h, w = cropped.image.shape[:2]
    assert h == w and len(cropped.boxes) == 1
    assert (cropped.boxes >= 0).all() and (cropped.boxes <= w).all()
    out = augment(rng, sample, 48)
    assert out.image.shape == (48, 48, 3) and out.image.dtype == np.uint8
    assert out.boxes.shape[1] == 4 and out.landmarks.shape[1] == 10


def test_wider_face_label_txt_is_read_with_landmarks_and_missing_landmarks(tmp_path: Path) -> None:
    images = tmp_path / "images" / "0--Parade"
    images.mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(images / "a.jpg")
    (tmp_path / "label.txt").write_text(
        "# 0--Parade/a.jpg\n"
        "1 2 10 12 3.0 5.0 0.0 8.0 5.0 0.0 5.5 8.0 0.0 4.0 10.0 0.0 7.0 10.0 0.0 0.8\n"
        "20 5 8 8 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0\n"
    )
    dataset = WiderFaceLabels(tmp_path / "label.txt")
    sample = dataset[0]
    assert len(dataset) == 1 and sample.image.shape == (30, 40, 3)
    assert sample.boxes.tolist() == [[1.0, 2.0, 11.0, 14.0], [20.0, 5.0, 28.0, 13.0]]
    assert sample.landmarks[0].tolist() == [3.0, 5.0, 8.0, 5.0, 5.5, 8.0, 4.0, 10.0, 7.0, 10.0]
    assert (sample.landmarks[1] == -1).all()


def test_json_and_csv_box_lists_are_read(tmp_path: Path) -> None:
    Image.new("L", (50, 40)).save(tmp_path / "x.png")
    labels = {
        "images": [
            {
                "file": "x.png",
                "faces": [{"box": [1, 2, 21, 24], "landmarks": [[5, 8]] * 5}, {"box": [30, 5, 40, 15]}],
            }
        ]
    }
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    sample = BoxListDataset(tmp_path / "labels.json")[0]
    assert sample.image.shape == (40, 50, 3)
    assert sample.boxes.tolist() == [[1, 2, 21, 24], [30, 5, 40, 15]]
    assert sample.landmarks[0].tolist() == [5, 8] * 5 and (sample.landmarks[1] == -1).all()
    (tmp_path / "boxes.csv").write_text("file,x1,y1,x2,y2\nx.png,1,2,21,24\nx.png,30,5,40,15\n")
    from_csv = BoxListDataset(tmp_path / "boxes.csv")[0]
    assert from_csv.boxes.tolist() == sample.boxes.tolist() and (from_csv.landmarks == -1).all()


def test_box_from_landmarks_follows_the_eye_to_mouth_label_convention() -> None:
    # eyes 20 px apart at y = 50, mouth 20 px below: width 3.03 * 20, height 3.25 * 20
    points = np.array([[[40, 50], [60, 50], [50, 60], [42, 70], [58, 70]]], dtype=np.float32)
    box = box_from_landmarks(points)[0]
    assert np.allclose(box[2] - box[0], 60.6) and np.allclose(box[3] - box[1], 65.0)
    assert np.isclose((box[0] + box[2]) / 2, 50.0)
    assert np.isclose(50 - box[1], 0.372 * 65.0)
    crop_box = box_from_landmarks(CROP_LANDMARKS[None])[0]
    assert np.allclose(crop_box, [1.5, -1.5, 35, 36], atol=1.0)  # ~ the whole 36 x 36 crop


def _fixture_dirs(tmp_path: Path) -> tuple[Path, Path]:
    faces, backgrounds = tmp_path / "faces", tmp_path / "backgrounds"
    faces.mkdir()
    backgrounds.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        crop = np.full((36, 36), 180, dtype=np.uint8)
        crop[11:14, 11:14] = crop[11:14, 22:25] = 40  # eyes
        crop[23:25, 14:23] = 60  # mouth
        Image.fromarray(crop).save(faces / f"f{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(backgrounds / f"b{i}.jpg")
    return faces, backgrounds


def test_synthetic_images_are_reproducible_and_labels_lie_inside(tmp_path: Path) -> None:
    faces, backgrounds = _fixture_dirs(tmp_path)
    config = SynthConfig(image_size=96, min_face=12, max_face=60, empty_prob=0.0)
    dataset = SyntheticFaces(faces, backgrounds, config, seed=3)
    first, again = dataset[5], SyntheticFaces(faces, backgrounds, config, seed=3)[5]
    assert np.array_equal(first.image, again.image) and np.array_equal(first.boxes, again.boxes)
    total = 0
    for i in range(6):
        sample = dataset[i]
        assert sample.image.shape == (96, 96, 3)
        points = sample.landmarks.reshape(-1, 5, 2)
        total += len(points)
        assert np.allclose(box_from_landmarks(points), sample.boxes)
        assert (points >= -1).all() and (points <= 97).all()
        # eyes and mouth corners keep their left/right order (rotations are small)
        assert (points[:, 0, 0] < points[:, 1, 0]).all() and (points[:, 3, 0] < points[:, 4, 0]).all()
    assert total > 0
    images, boxes, landmarks = to_training_batch([dataset[0], dataset[1]])
    assert images.shape == (2, 3, 96, 96) and len(boxes) == len(landmarks) == 2

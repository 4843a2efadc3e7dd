"""``python -m models.evaluate detector|baseline`` end to end on a slice of cmumit-val."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import run_export_cli

from models.checkpoint import Checkpoint, build_model, save_checkpoint
from models.evaluate import main

CMUMIT = Path(__file__).resolve().parents[1] / "data" / "cmumit-val"
SHIPPED = Path(__file__).resolve().parents[2] / "models" / "weights" / "face_detector.pt"
# Small photos with faces, so a random network's thousands of candidates stay quick to NMS.
SLICE = ("images/gpripe.jpg", "images/trekcolr.jpg", "images/window.jpg")


def _write_slice(folder: Path, picked: list[dict[str, object]]) -> Path:
    path = folder / "labels.json"
    path.write_text(json.dumps({"images": picked}))
    return path


@pytest.fixture(scope="module")
def slice_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    labels = json.loads((CMUMIT / "labels.json").read_text())
    picked = [entry for entry in labels["images"] if entry["file"] in SLICE]
    assert len(picked) == len(SLICE)
    return _write_slice(tmp_path_factory.mktemp("labels"), picked)


@pytest.fixture(scope="module")
def small_photos_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 12 smallest photos with faces (16 faces): a quick but real check of a model."""
    labels = json.loads((CMUMIT / "labels.json").read_text())
    with_faces = [entry for entry in labels["images"] if entry["faces"]]
    picked = sorted(with_faces, key=lambda e: (e["width"] * e["height"], e["file"]))[:12]
    return _write_slice(tmp_path_factory.mktemp("small"), picked)


@pytest.fixture(scope="module")
def random_detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.retinaface.data import PREPROCESS
    from models.retinaface.net import RetinaFaceConfig

    arch = RetinaFaceConfig().to_dict()
    model = build_model("face_detector", arch)
    path = tmp_path_factory.mktemp("ckpt") / "detector.pt"
    save_checkpoint(
        path,
        Checkpoint(
            task="face_detector",
            arch=arch,
            state_dict=model.state_dict(),
            labels=["face"],
            preprocess=dict(PREPROCESS),
        ),
    )
    return path


def test_detector_cli_scores_a_checkpoint_and_writes_json_and_plot(
    random_detector: Path, slice_labels: Path, tmp_path: Path
) -> None:
    out_json, out_png = tmp_path / "eval.json", tmp_path / "pr.png"
    result = main(
        [
            "detector",
            "--checkpoint",
            str(random_detector),
            "--data",
            str(CMUMIT),
            "--labels",
            str(slice_labels),
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
        ]
    )
    written = json.loads(out_json.read_text())
    assert written["dataset"]["images"] == 3
    entry = written["detectors"]["polynl-retinaface"]
    assert set(entry["ap"]) == {"0.5", "0.3"}
    assert all(0.0 <= ap <= 1.0 for ap in entry["ap"].values())
    assert entry["nme"]["labelled_faces"] == sum(
        len(e["faces"]) for e in json.loads(slice_labels.read_text())["images"]
    )
    assert entry["detections"] > 0  # an untrained net still scores ~0.5 everywhere
    assert result["detectors"].keys() == written["detectors"].keys()
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_baseline_cli_runs_haar_through_the_same_metrics(slice_labels: Path, tmp_path: Path) -> None:
    pytest.importorskip("cv2", reason="baselines extra (opencv-python-headless) not installed")
    result = main(
        [
            "baseline",
            "--name",
            "haar",
            "--data",
            str(CMUMIT),
            "--labels",
            str(slice_labels),
            "--json",
            str(tmp_path / "haar.json"),
        ]
    )
    haar = result["detectors"]["haar"]
    assert haar["nme"] is None  # Haar gives no landmarks
    assert haar["ap"]["0.3"] > 0.5  # these frontal faces are easy for the cascade


@pytest.mark.skipif(not SHIPPED.is_file(), reason=f"shipped weights {SHIPPED} not trained yet")
def test_shipped_detector_finds_faces_on_a_cmumit_slice(small_photos_labels: Path, tmp_path: Path) -> None:
    result = main(
        [
            "detector",
            "--checkpoint",
            str(SHIPPED),
            "--data",
            str(CMUMIT),
            "--labels",
            str(small_photos_labels),
            "--json",
            str(tmp_path / "eval.json"),
        ]
    )
    entry = result["detectors"]["polynl-retinaface"]
    # Full-set figures: models/cards/face_detector_eval.json. These small, clear photos are easy:
    # Haar, res10 SSD and MTCNN all reach AP@0.3 = 1.0 here, so 0.7 is a floor, not a target.
    assert entry["ap"]["0.3"] > 0.7
    assert entry["nme"]["matched_faces"] > 0


@pytest.mark.slow
def test_onnx_export_scores_the_same_as_its_checkpoint(
    random_detector: Path, slice_labels: Path, tmp_path: Path
) -> None:
    # The CLI in its own process, as a user runs it (it guards against native crashes of
    # torch's exporter by re-running itself; in-process, such a crash would take pytest down).
    repo = tmp_path / "repo"
    command = [sys.executable, "-m", "export", "--only", "face_detector"]
    done = run_export_cli([*command, "--detector-checkpoint", str(random_detector), "--out", str(repo)])
    assert done.returncode == 0, done.stdout + done.stderr
    common = ["--data", str(CMUMIT), "--labels", str(slice_labels)]
    torch_run = main(["detector", "--checkpoint", str(random_detector), *common])
    onnx_run = main(["detector", "--onnx", str(repo / "face_detector"), *common])
    ours = torch_run["detectors"]["polynl-retinaface"]
    exported = onnx_run["detectors"]["polynl-retinaface (onnx)"]
    assert exported["detections"] == ours["detections"]
    assert exported["ap"] == pytest.approx(ours["ap"], abs=1e-3)


def test_tight_from_landmarks_redraws_boxes_by_the_labels_rule() -> None:
    import numpy as np

    from models.detection_metrics import ImageDetections
    from models.evaluate import tight_boxes_from_landmarks
    from models.retinaface.synth import box_from_landmarks

    points = np.array([[[40, 50], [60, 50], [50, 60], [42, 70], [58, 70]]], np.float32)
    wide = ImageDetections(
        boxes=np.array([[20, 10, 80, 95]], np.float32), scores=np.array([0.9], np.float32), landmarks=points
    )
    mapped = tight_boxes_from_landmarks(lambda rgb: wide)(np.zeros((4, 4, 3), np.uint8))
    assert np.allclose(mapped.boxes, box_from_landmarks(points))
    assert mapped.scores.tolist() == wide.scores.tolist()
    no_landmarks = ImageDetections(boxes=wide.boxes, scores=wide.scores)
    assert tight_boxes_from_landmarks(lambda rgb: no_landmarks)(np.zeros((4, 4, 3), np.uint8)) is no_landmarks

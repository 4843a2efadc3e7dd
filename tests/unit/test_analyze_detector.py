"""``python -m models.analyze_detector`` on three real cmumit-val photos with the shipped
detector: every labelled face is accounted for, and each what-if is scored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from models.analyze_detector import main

ROOT = Path(__file__).resolve().parents[2]
CMUMIT = ROOT / "tests" / "data" / "cmumit-val"
SHIPPED = ROOT / "models" / "weights" / "face_detector.pt"


@pytest.mark.skipif(not SHIPPED.is_file(), reason="needs the shipped detector weights")
def test_analysis_accounts_for_every_face_and_scores_each_what_if(tmp_path: Path) -> None:
    labels = json.loads((CMUMIT / "labels.json").read_text())
    with_faces = [entry for entry in labels["images"] if entry["faces"]]
    picked = sorted(with_faces, key=lambda e: (e["width"] * e["height"], e["file"]))[:3]
    (tmp_path / "images").mkdir()
    for entry in picked:
        shutil.copy(CMUMIT / entry["file"], tmp_path / entry["file"])
    (tmp_path / "labels.json").write_text(json.dumps({**labels, "images": picked}))

    report = main(["--checkpoint", str(SHIPPED), "--data", str(tmp_path), "--flip", "--scales", "0.75"])
    faces = sum(len(entry["faces"]) for entry in picked)
    assert report["faces"] == faces
    assert len(report["missed_at_iou_0.3"]) + len(report["found_below_0.5"]) <= faces
    assert set(report["what_if"]) == {
        f"drop boxes under 16 px ({report['what_if_dropped'][16]} detections)",
        f"drop boxes under 20 px ({report['what_if_dropped'][20]} detections)",
        "image scaled by 0.75",
        "plus a flipped pass",
    }
    for figures in report["what_if"].values():
        assert 0.0 <= figures["0.5"] <= 1.0 and 0.0 <= figures["0.3"] <= 1.0

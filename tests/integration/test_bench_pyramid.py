"""``python -m bench.pyramid`` on two real photos and the test model repository: it runs both
variants on the same images and writes a report whose figures add up."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import SAMPLES

from bench.pyramid import main


def test_pyramid_benchmark_times_both_variants_and_writes_its_report(
    model_repository: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("face_astronaut.jpg", "faces_group.jpg"):
        shutil.copy(SAMPLES / name, images / name)
    out = tmp_path / "pyramid"
    report = main(
        ["--repository", str(model_repository), "--images", str(images), "--rounds", "1", "--out", str(out)]
    )
    assert report["images"] == 2
    assert set(report["ms_per_image"]) == {"one pass", "pyramid"}
    assert all(ms > 0 for ms in report["ms_per_image"].values())
    ratio = report["ms_per_image"]["pyramid"] / report["ms_per_image"]["one pass"]
    assert abs(ratio - report["pyramid_over_one_pass"]) < 0.01
    assert json.loads(out.with_suffix(".json").read_text())["benchmark"] == "detector pyramid cost"
    assert "Pyramid / one pass" in out.with_suffix(".md").read_text()

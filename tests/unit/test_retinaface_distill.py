"""The block distiller: only the Poly-NL block trains, a run resumes, it writes a checkpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import Checkpoint, load_checkpoint, load_model, save_checkpoint
from models.retinaface.data import PREPROCESS
from models.retinaface.distill import distill_loss, main
from models.retinaface.net import RetinaFace, RetinaFaceConfig


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def _teacher(path: Path, block: str = "polynl") -> Path:
    torch.manual_seed(0)
    config = RetinaFaceConfig(block=block)
    model = RetinaFace(config)
    save_checkpoint(
        path,
        Checkpoint("face_detector", config.to_dict(), model.state_dict(), ["face"], dict(PREPROCESS)),
    )
    return path


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    faces, backgrounds = tmp_path / "faces", tmp_path / "backgrounds"
    faces.mkdir()
    backgrounds.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(60, 200, (36, 36), dtype=np.uint8)).save(faces / f"f{i}.png")
        Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(backgrounds / f"b{i}.png")
    return faces, backgrounds


def test_only_the_block_trains_and_a_run_resumes(tmp_path: Path) -> None:
    teacher = _teacher(tmp_path / "teacher.pt")
    faces, backgrounds = _folders(tmp_path)
    out = tmp_path / "run"
    common = ["--teacher", str(teacher), "--faces", str(faces), "--backgrounds", str(backgrounds)]
    common += [
        "--out",
        str(out),
        "--size",
        "64",
        "--batch-size",
        "2",
        "--save-every",
        "1",
        "--log-every",
        "1",
    ]
    assert main([*common, "--steps", "3", "--max-steps", "2"]) == 0
    assert not (out / "model.pt").exists()
    assert main([*common, "--steps", "3"]) == 0  # resumes at step 2
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    before = load_checkpoint(teacher).state_dict
    after = load_checkpoint(out / "model.pt")
    changed = {k for k, v in after.state_dict.items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("context.") for k in changed)
    assert after.training["distilled"]["trained"] == "context.* only"
    model, _ = load_model(out / "model.pt")
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64))[0].shape[-1] == 4


def test_a_detector_without_a_block_is_refused(tmp_path: Path) -> None:
    teacher = _teacher(tmp_path / "plain.pt", block="none")
    faces, backgrounds = _folders(tmp_path)
    with pytest.raises(SystemExit, match="no context block"):
        main(["--teacher", str(teacher), "--faces", str(faces), "--backgrounds", str(backgrounds)])


def test_loss_is_zero_when_student_equals_teacher_on_faces_and_penalises_firing_on_negatives() -> None:
    torch.manual_seed(0)
    loc, landm = torch.randn(2, 5, 4), torch.randn(2, 5, 10)
    conf = torch.tensor([[[0.0, 5.0]] * 5, [[0.0, 5.0]] * 5])  # every prior sure of a face
    same = distill_loss((loc, conf, landm), (loc, conf, landm), torch.tensor([True, True]), 1.0)
    assert float(same["total"]) == pytest.approx(0.0, abs=1e-6)
    negative = distill_loss((loc, conf, landm), (loc, conf, landm), torch.tensor([True, False]), 1.0)
    assert float(negative["negative"]) > 10  # five priors firing on a face-free image

"""``python -m models.train detector``: a tiny run, resumed, ends in a loadable checkpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import load_model
from models.train import main as train_main


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # Training sets torch's threads (--threads, default 1); give the next tests theirs back.
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def _fixture_dirs(tmp_path: Path) -> tuple[Path, Path]:
    faces, backgrounds = tmp_path / "faces", tmp_path / "backgrounds"
    faces.mkdir()
    backgrounds.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        crop = np.full((36, 36), 170 + 10 * i, dtype=np.uint8)
        crop[11:14, 11:14] = crop[11:14, 22:25] = 40
        crop[23:25, 14:23] = 60
        Image.fromarray(crop).save(faces / f"f{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(backgrounds / f"b{i}.jpg")
    return faces, backgrounds


def test_detector_training_resumes_and_writes_a_face_detector_checkpoint(tmp_path: Path) -> None:
    faces, backgrounds = _fixture_dirs(tmp_path)
    out, final = tmp_path / "run", tmp_path / "face_detector.pt"
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "data": "synth",
                "faces": str(faces),
                "backgrounds": str(backgrounds),
                "size": 64,
                "batch_size": 2,
                "steps": 3,
                "warmup_steps": 1,
                "save_every": 1,
                "log_every": 1,
            }
        )
    )
    common = ["--config", str(config), "--out", str(out), "--final", str(final), "--no-progress"]
    assert train_main(["detector", *common, "--max-steps", "2"]) == 0
    assert (out / "last.pt").is_file() and not final.exists()
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2

    assert train_main(["detector", *common]) == 0  # resumes at step 2, runs step 3
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    model, meta = load_model(final)
    assert meta.task == "face_detector" and meta.labels == ["face"]
    assert meta.preprocess["resize"] == "letterbox" and meta.arch["block"] == "polynl"
    # composites hold only faces up to ~0.85 x the size: the model asks to be served with the pyramid
    assert meta.preprocess["pyramid"] == [0.5, 0.25]
    assert meta.training["steps"] == 3 and meta.training["seed"] == 0
    with torch.no_grad():
        loc, conf, landm = model(torch.zeros(1, 3, 64, 64))
    assert loc.shape[1] == conf.shape[1] == landm.shape[1]


def test_data_loader_workers_train_on_the_same_batches_as_the_training_process(tmp_path: Path) -> None:
    # Batches are a function of the step number, so worker processes change the speed, not the run.
    faces, backgrounds = _fixture_dirs(tmp_path)
    common = ["--data", "synth", "--faces", str(faces), "--backgrounds", str(backgrounds), "--size", "64",
              "--batch-size", "2", "--steps", "3", "--warmup-steps", "1", "--log-every", "1", "--no-progress",
              "--ema", "0", "--device", "cpu"]  # fmt: skip
    for workers in (0, 2):
        assert (
            train_main(
                ["detector", *common, "--workers", str(workers), "--out", str(tmp_path / f"w{workers}")]
            )
            == 0
        )
    losses = {
        workers: [json.loads(line)["total"] for line in (tmp_path / f"w{workers}" / "metrics.jsonl").open()]
        for workers in (0, 2)
    }
    assert len(losses[0]) == 3
    assert losses[2] == pytest.approx(losses[0], rel=1e-4)


@pytest.mark.parametrize("layout", ["json", "wider"])
def test_detector_trains_from_a_box_list_and_from_wider_label_txt(tmp_path: Path, layout: str) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(images / f"p{i}.jpg")
    if layout == "json":
        labels = tmp_path / "labels.json"
        faces = [{"box": [10, 10, 40, 44], "landmarks": [[18, 22], [32, 22], [25, 30], [20, 37], [30, 37]]}]
        entries = [{"file": f"images/p{i}.jpg", "faces": faces} for i in range(3)]
        labels.write_text(json.dumps({"images": entries}))
    else:
        labels = tmp_path / "label.txt"
        row = "10 10 30 34 18 22 0.0 32 22 0.0 25 30 0.0 20 37 0.0 30 37 0.0 0.9"
        labels.write_text("".join(f"# p{i}.jpg\n{row}\n" for i in range(3)))
    out = tmp_path / "run"
    argv = ["detector", "--data", layout, "--labels", str(labels), "--out", str(out), "--size", "64"]
    argv += ["--batch-size", "2", "--steps", "2", "--warmup-steps", "1", "--no-progress"]
    assert train_main(argv) == 0
    _, meta = load_model(out / "final.pt")
    assert meta.training["recipe"]["data"] == layout


def test_init_starts_a_new_run_from_a_detector_checkpoint_and_refuses_a_mismatch(tmp_path: Path) -> None:
    faces, backgrounds = _fixture_dirs(tmp_path)
    common = ["--data", "synth", "--faces", str(faces), "--backgrounds", str(backgrounds), "--size", "64",
              "--batch-size", "2", "--warmup-steps", "1", "--no-progress", "--ema", "0",
              "--lr", "0"]  # fmt: skip
    first = tmp_path / "first.pt"
    assert (
        train_main(["detector", *common, "--steps", "1", "--out", str(tmp_path / "a"), "--final", str(first)])
        == 0
    )
    base, base_meta = load_model(first)

    # lr 0: the fine-tuned weights are the initial ones (BN statistics aside), and the origin is recorded.
    tuned = tmp_path / "tuned.pt"
    argv = ["detector", *common, "--steps", "2", "--out", str(tmp_path / "b"), "--final", str(tuned)]
    assert train_main([*argv, "--init", str(first)]) == 0
    model, meta = load_model(tuned)
    assert meta.training["init"]["sha256"] == base_meta.sha256
    assert meta.training["init"]["steps"] == 1 and meta.training["steps"] == 2
    weights = {k: v for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    for key, value in weights.items():
        assert torch.equal(value, base.state_dict()[key]), key

    with pytest.raises(SystemExit, match="architecture"):
        train_main(
            [
                *argv[:-4],
                "--steps",
                "1",
                "--block",
                "none",
                "--out",
                str(tmp_path / "c"),
                "--init",
                str(first),
            ]
        )
    with pytest.raises(SystemExit, match="checkpoint not found"):
        train_main(
            [*argv[:-4], "--steps", "1", "--out", str(tmp_path / "d"), "--init", str(tmp_path / "nope.pt")]
        )

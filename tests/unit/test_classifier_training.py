"""Classifier training CLI (models/classification/train.py) on a tiny fixture it creates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from image_folders import write_two_colour_classes

from models.checkpoint import load_model
from models.train import main as train_main


def _history(checkpoint: Path) -> list[dict]:
    _, meta = load_model(checkpoint)
    return meta.training["history"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    write_two_colour_classes(root, size=20, varied=True)
    return root


def _args(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return ["classifier", "--data", str(data), "--val", str(data), "--out", str(out),
            "--depth", "8", "--width", "8", "--size", "16", "--batch-size", "8",
            "--epochs", str(epochs), "--lr", "0.05", "--warmup-epochs", "0.5", "--threads", "1",
            *extra]  # fmt: skip


def test_training_lowers_the_loss_and_writes_a_servable_checkpoint(
    image_folder: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    assert train_main(_args(image_folder, tmp_path, 4)) == 0
    history = _history(tmp_path / "final.pt")
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["top1"] >= 0.9  # two colour classes are easy

    model, meta = load_model(tmp_path / "final.pt")
    assert meta.labels == ["blue", "red"]
    assert meta.preprocess["size"] == [16, 16] and meta.preprocess["resize"] == "shorter_side_center_crop"
    assert model.config.block == "polynl" and len(model.context_blocks) == 2


def test_an_interrupted_run_resumes_where_it_stopped(image_folder: Path, tmp_path: Path) -> None:
    assert train_main(_args(image_folder, tmp_path, 3, "--max-steps", "6")) == 0  # stops in epoch 1
    assert len(_history(tmp_path / "final.pt")) == 1
    assert train_main(_args(image_folder, tmp_path, 3)) == 0
    assert [h["epoch"] for h in _history(tmp_path / "final.pt")] == [1, 2, 3]


def test_config_file_supplies_options_and_init_warm_starts(image_folder: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"block": "none", "depth": 8, "width": 8, "size": 16}))
    first = tmp_path / "first"
    assert train_main(["classifier", "--config", str(config), "--data", str(image_folder),
                       "--out", str(first), "--epochs", "1", "--batch-size", "8"]) == 0  # fmt: skip
    model, _ = load_model(first / "final.pt")
    assert model.config.block == "none"
    second = tmp_path / "second"
    assert train_main(["classifier", "--config", str(config), "--data", str(image_folder),
                       "--out", str(second), "--epochs", "1", "--batch-size", "8",
                       "--init", str(first / "final.pt")]) == 0  # fmt: skip
    history = _history(second / "final.pt")
    assert len(history) == 2 and history[-1]["warm_restart_from"] == str(first / "final.pt")


def test_unknown_task_prints_usage() -> None:
    assert train_main(["segmenter"]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_asking_for_cuda_without_a_gpu_fails_with_a_clear_message(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no CUDA device is available"):
        train_main(["classifier", "--data", str(image_folder), "--out", str(tmp_path), "--device", "cuda"])

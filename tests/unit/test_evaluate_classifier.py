"""``python -m models.evaluate classifier`` on a tiny ImageFolder (folder and .tar.gz)."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import Checkpoint, build_model, load_model, save_checkpoint
from models.evaluate import main
from polynl_core.images import read_rgb
from polynl_core.preprocess import classifier_input
from polynl_core.repository import Preprocess

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
SHIPPED = ROOT / "models" / "weights" / "classifier.pt"
CLASSES = ["airplane", "cat", "ship"]
PREPROCESS = {
    "resize": "shorter_side_center_crop",
    "size": [32, 32],
    "mean": [0.49, 0.48, 0.45],
    "std": [0.25, 0.24, 0.26],
}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """val/<class>/<image>: the CIFAR samples plus larger photos (cat.jpg is a cat, too)."""
    root = tmp_path_factory.mktemp("folder") / "val"
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        shutil.copy(SAMPLES / f"cifar_{name}.png", root / name / "a.png")
    shutil.copy(SAMPLES / "cat.jpg", root / "cat" / "b.jpg")
    shutil.copy(SAMPLES / "rocket.jpg", root / "airplane" / "b.jpg")
    return root


@pytest.fixture(scope="module")
def random_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    arch = {
        "depth": 8,
        "stem": "cifar",
        "num_classes": len(CLASSES),
        "block": "polynl",
        "block_positions": ["layer3.0"],
        "width": 8,
    }
    model = build_model("classifier", arch)
    path = tmp_path_factory.mktemp("ckpt") / "classifier.pt"
    save_checkpoint(
        path,
        Checkpoint(
            task="classifier", arch=arch, state_dict=model.state_dict(), labels=CLASSES, preprocess=PREPROCESS
        ),
    )
    return path


def _expected_top1(checkpoint: Path, folder: Path) -> float:
    """Reference: the model applied image by image, no batching, no CLI."""
    model, _ = load_model(checkpoint)
    preprocess = Preprocess.model_validate(PREPROCESS)
    hits = []
    for file in sorted(folder.rglob("*.*")):
        x = torch.from_numpy(classifier_input(read_rgb(file), preprocess))[None]
        with torch.inference_mode():
            hits.append(int(model(x).argmax()) == CLASSES.index(file.parent.name))
    return float(np.mean(hits))


def test_classifier_cli_reports_top1_of_the_served_transform(
    random_classifier: Path, image_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cls.json"
    result = main(
        [
            "classifier",
            "--checkpoint",
            str(random_classifier),
            "--data",
            str(image_folder),
            "--batch-size",
            "2",
            "--json",
            str(out),
        ]
    )
    assert result["images"] == 5
    assert result["top1"] == pytest.approx(_expected_top1(random_classifier, image_folder), abs=1e-4)
    assert result["top3"] == 1.0  # three classes: the true one is always in the top 3
    assert json.loads(out.read_text())["top1"] == result["top1"]


def test_classifier_cli_reads_a_tar_gz_of_the_tree_like_the_folder(
    random_classifier: Path, image_folder: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "val.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(image_folder, arcname="val")
    from_tar = main(["classifier", "--checkpoint", str(random_classifier), "--data", str(archive)])
    from_dir = main(["classifier", "--checkpoint", str(random_classifier), "--data", str(image_folder)])
    assert from_tar["images"] == from_dir["images"] == 5
    assert from_tar["top1"] == from_dir["top1"]


def test_classifier_cli_rejects_a_class_the_model_does_not_know(
    random_classifier: Path, tmp_path: Path
) -> None:
    (tmp_path / "val" / "zebra").mkdir(parents=True)
    shutil.copy(SAMPLES / "cifar_horse.png", tmp_path / "val" / "zebra" / "z.png")
    with pytest.raises(SystemExit, match="zebra"):
        main(["classifier", "--checkpoint", str(random_classifier), "--data", str(tmp_path / "val")])


@pytest.mark.skipif(not SHIPPED.is_file(), reason=f"shipped weights {SHIPPED} not trained yet")
def test_shipped_classifier_recognises_the_cifar_samples(tmp_path: Path) -> None:
    root = tmp_path / "val"
    for png in sorted(SAMPLES.glob("cifar_*.png")):
        name = png.stem.removeprefix("cifar_")
        (root / name).mkdir(parents=True)
        shutil.copy(png, root / name / png.name)
    result = main(["classifier", "--checkpoint", str(SHIPPED), "--data", str(root)])
    assert result["images"] == 10
    # samples/README.md promises each CIFAR sample's class; the shipped model must give it.
    assert result["top1"] == 1.0

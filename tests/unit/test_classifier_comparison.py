"""bench.classifier_comparison: the driver of the block comparison, end to end on a tiny recipe
(it is what a GPU lease runs; a bug found there costs the lease)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from image_folders import write_two_colour_classes

from bench.classifier_comparison import REFERENCE, main


@pytest.fixture
def tiny(tmp_path: Path) -> dict[str, Path]:
    data = tmp_path / "data"
    write_two_colour_classes(data, per_class=12)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({
        "arch": "resnet9", "width": 4, "size": 16, "batch_size": 8, "lr": 0.1, "schedule": "onecycle",
        "warmup_epochs": 0.5, "ema": 0.9, "label_smoothing": 0.2, "threads": 1,
    }))  # fmt: skip
    return {"data": data, "recipe": recipe, "out": tmp_path / "runs", "report": tmp_path / "report"}


def _argv(tiny: dict[str, Path]) -> list[str]:
    return ["--data", str(tiny["data"]), "--val", str(tiny["data"]), "--out", str(tiny["out"]),
            "--recipe", str(tiny["recipe"]), "--variants", "none,polynl-paper-scalar", "--seeds", "0", "1",
            "--epochs", "1", "--no-val-each-epoch", "--batches", "1,4", "--repeats", "2",
            "--report", str(tiny["report"])]  # fmt: skip


def test_comparison_trains_each_variant_and_seed_then_scores_and_times_them_side_by_side(tiny) -> None:
    assert main(_argv(tiny)) == 0
    report = json.loads(tiny["report"].with_suffix(".json").read_text())
    assert [(r["variant"], r["seed"]) for r in report["runs"]] == [
        ("none", 0), ("polynl-paper-scalar", 0), ("none", 1), ("polynl-paper-scalar", 1),
    ]  # fmt: skip
    assert all(r["images"] == 24 and 0.0 <= r["top1"] <= 1.0 for r in report["runs"])
    for row in report["summary"]:
        top1 = row["top1"]
        assert len(top1) == 2 and row["top1_mean"] == pytest.approx(sum(top1) / 2)
        assert row["top1_std"] is not None and row["top1_range"] == pytest.approx(max(top1) - min(top1))
    timed = {(r["variant"], r["batch"]) for r in report["latency"]}
    assert timed == {(v, b) for v in ("none", "polynl-paper-scalar", REFERENCE) for b in (1, 4)}
    assert report["settings"]["input_hw"] == [16, 16]
    table = tiny["report"].with_suffix(".md").read_text()
    assert "| polynl-paper-scalar |" in table and REFERENCE in table

    # Run again: every run is finished, so nothing is retrained (the checkpoints stay as they are).
    finals = sorted(tiny["out"].glob("*/final.pt"))
    assert len(finals) == 4
    stamps = [f.stat().st_mtime_ns for f in finals]
    assert main(_argv(tiny)) == 0
    assert [f.stat().st_mtime_ns for f in finals] == stamps


def test_cost_benchmark_counts_multiply_adds_by_hand() -> None:
    """bench.classifier_cost's MAC count, against a hand count on a tiny network."""
    from torch import nn

    from bench.classifier_cost import forward_macs

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 8x8 outputs x 4 channels x (3 x 3 x 3) = 6,912
        nn.Conv2d(4, 4, 3, padding=1, groups=2),  # 8x8 x 4 x (2 x 3 x 3) = 4,608
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),  # 256 x 10 = 2,560
    )
    assert forward_macs(model, 8) == 6_912 + 4_608 + 2_560

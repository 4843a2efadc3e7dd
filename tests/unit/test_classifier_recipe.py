"""The ResNet-9 recipe (models/resnet9.py, models/classification/recipe.py, the training CLI):
the pieces that can fail for real, on tiny inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from image_folders import write_two_colour_classes
from torch import nn

from export.pipeline import ExportFailed, ExportOptions, export_model
from models.blocks import NonLocal, PolyNL
from models.checkpoint import Checkpoint, load_checkpoint, load_model, save_checkpoint
from models.classification.recipe import WeightEma, lr_at, parameter_groups
from models.resnet import ResNet
from models.resnet9 import ResNet9, resnet9
from models.train import main as train_main

PARITY_IMAGES = Path(__file__).resolve().parents[1] / "data" / "parity"
# (block, form): every context block the recipe can put into the network.
VARIANTS = [
    ("none", "projected"),
    ("nonlocal", "projected"),
    ("polynl", "projected"),
    ("polynl", "paper-scalar"),
]
VARIANT_IDS = ["none", "nonlocal", "polynl-projected", "polynl-paper-scalar"]


# --- schedule, weight decay, EMA --------------------------------------------------------------


def test_onecycle_rises_linearly_to_the_peak_and_falls_to_zero() -> None:
    total, warmup, peak = 100, 20, 0.4
    lrs = [lr_at(step, total, warmup, peak, "onecycle") for step in range(total + 1)]
    assert lrs[0] == pytest.approx(peak / warmup)
    assert max(lrs) == pytest.approx(peak) and lrs.index(max(lrs)) in (warmup - 1, warmup)
    assert lrs[60] == pytest.approx(peak * 0.5)  # halfway down the linear decay
    assert lrs[total] == 0.0
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, total, warmup, peak, "step")


def test_batchnorm_bias_and_scalar_parameters_get_no_weight_decay() -> None:
    model = resnet9(block="polynl", block_form="paper-scalar", width=4)
    decay, no_decay = parameter_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    exempt = {id(p) for p in no_decay["params"]}
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert id(module.weight) in exempt and id(module.bias) in exempt, name
        if isinstance(module, nn.Conv2d | nn.Linear):
            assert id(module.weight) in decayed, name
            if module.bias is not None:
                assert id(module.bias) in exempt, name
    block = model.context_blocks["layer2"]
    assert isinstance(block, PolyNL)
    assert id(block.a) in exempt and id(block.b) in exempt
    assert len(decayed) + len(exempt) == len(list(model.parameters()))

    # And the optimizer really leaves them alone: a step with zero gradients shrinks only conv weights.
    optimizer = torch.optim.SGD(parameter_groups(model, 0.1), lr=1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = dict(model.named_parameters())
    assert torch.equal(after["prep.1.weight"], before["prep.1.weight"])  # BN scale
    assert torch.equal(after["context_blocks.layer2.a"], before["context_blocks.layer2.a"])
    torch.testing.assert_close(after["prep.0.weight"], before["prep.0.weight"] * 0.9)


def test_ema_averages_parameters_and_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 1)
    model = nn.Sequential(conv, nn.BatchNorm2d(3))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = WeightEma(model, decay=0.9)
    assert ema.current_decay() == pytest.approx(0.1)  # ramp: (1 + 0) / (10 + 0)

    model.train()
    model(torch.randn(4, 2, 5, 5))  # moves BN's running statistics and batch counter
    with torch.no_grad():
        conv.weight.add_(1.0)
    ema.update(model)
    current = model.state_dict()
    averaged = ema.module.state_dict()
    for key in ("0.weight", "0.bias", "1.running_mean", "1.running_var"):
        torch.testing.assert_close(averaged[key], 0.1 * start[key] + 0.9 * current[key])
    assert int(averaged["1.num_batches_tracked"]) == 1  # integer buffers are copied

    for _ in range(200):
        ema.update(model)
    assert ema.current_decay() == 0.9  # the ramp ends at the configured decay
    torch.testing.assert_close(ema.module.state_dict()["0.weight"], current["0.weight"])
    assert all(not p.requires_grad for p in ema.module.parameters())


def test_ema_state_round_trips() -> None:
    model = nn.Linear(3, 2)
    ema = WeightEma(model, decay=0.99)
    for _ in range(5):
        ema.update(model)
    copy = WeightEma(nn.Linear(3, 2), decay=0.5)
    copy.load_state_dict(ema.state_dict())
    assert copy.updates == 5 and copy.decay == 0.99
    torch.testing.assert_close(copy.module.state_dict(), ema.module.state_dict())


# --- the network --------------------------------------------------------------------------------


@pytest.mark.parametrize(("block", "form"), VARIANTS, ids=VARIANT_IDS)
def test_resnet9_forward_shape_for_each_block_and_fresh_blocks_change_nothing(block: str, form: str) -> None:
    torch.manual_seed(0)
    plain = resnet9(num_classes=7, block="none", width=8).eval()
    model = resnet9(num_classes=7, block=block, block_form=form, width=8).eval()
    expected = {"none": [], "nonlocal": [NonLocal], "polynl": [PolyNL]}[block]
    assert [type(b) for b in model.context_blocks.values()] == expected
    if block == "polynl":
        assert model.context_blocks["layer2"].form == form
    missing = model.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert all(k.startswith("context_blocks.") for k in missing)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (3, 7)
        torch.testing.assert_close(out, plain(x))  # blocks start as the identity
        assert model(torch.randn(1, 3, 48, 40)).shape == (1, 7)  # any size the pools divide


def test_resnet9_refuses_an_unknown_block_position() -> None:
    with pytest.raises(ValueError, match="bad block position"):
        resnet9(block="polynl", block_positions=["layer4"])


def test_checkpoints_without_architecture_or_form_load_as_projected_resnet(tmp_path: Path) -> None:
    """Checkpoints written before ``architecture`` and ``block_form`` existed keep loading."""
    from models.resnet import cifar_resnet

    model = cifar_resnet(8, block="polynl", width=8)
    arch = model.config.to_dict()
    del arch["architecture"], arch["block_form"]
    path = tmp_path / "old.pt"
    save_checkpoint(path, Checkpoint("classifier", arch, model.state_dict(), ["a"] * 10, {}))
    loaded, _ = load_model(path)
    assert isinstance(loaded, ResNet)
    assert [b.form for b in loaded.modules() if isinstance(b, PolyNL)] == ["projected", "projected"]


# --- training: resume -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    write_two_colour_classes(root)
    return root


def _recipe_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["classifier", "--arch", "resnet9", "--width", "4", "--block", "polynl",
            "--block-form", "paper-scalar", "--data", str(data), "--val", str(data), "--out", str(out),
            "--size", "16", "--batch-size", "8", "--epochs", "2", "--lr", "0.1",
            "--schedule", "onecycle", "--warmup-epochs", "0.5", "--ema", "0.9",
            "--label-smoothing", "0.2", "--threads", "1", *extra]  # fmt: skip


def test_a_stopped_run_resumes_at_the_next_epoch_with_the_same_state(
    image_folder: Path, tmp_path: Path
) -> None:
    """Stopped after epoch 1 and run again, the run ends bit for bit where an unbroken run ends."""
    steps_per_epoch = 48 // 8
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train_main(_recipe_args(image_folder, whole)) == 0
    assert train_main(_recipe_args(image_folder, split, "--max-steps", str(steps_per_epoch))) == 0
    stopped = torch.load(split / "last.pt", weights_only=False)
    assert stopped["epoch"] == 1 and stopped["ema"]["updates"] == steps_per_epoch
    assert train_main(_recipe_args(image_folder, split)) == 0

    resumed = torch.load(split / "last.pt", weights_only=False)
    unbroken = torch.load(whole / "last.pt", weights_only=False)
    assert resumed["epoch"] == unbroken["epoch"] == 2
    assert resumed["ema"]["updates"] == 2 * steps_per_epoch
    for key in ("model", "ema"):
        want = unbroken[key] if key == "model" else unbroken[key]["module"]
        got = resumed[key] if key == "model" else resumed[key]["module"]
        for name, tensor in want.items():
            assert torch.equal(got[name], tensor), f"{key}.{name}"
    assert [h["epoch"] for h in load_checkpoint(split / "final.pt").training["history"]] == [1, 2]

    # The final checkpoint holds the EMA weights, and rebuilds the same ResNet-9.
    model, meta = load_model(split / "final.pt")
    assert isinstance(model, ResNet9) and meta.training["weights"] == "ema"
    assert meta.arch["architecture"] == "resnet9" and meta.arch["block_form"] == "paper-scalar"
    for name, tensor in unbroken["ema"]["module"].items():
        assert torch.equal(meta.state_dict[name], tensor), name
    assert {"top1", "top1_raw", "images_per_s"} <= set(meta.training["final"])


# --- export ------------------------------------------------------------------------------------


def _random_resnet9_checkpoint(path: Path, block: str, form: str) -> Path:
    """Random weights, trained-looking BN statistics and an open block branch."""
    torch.manual_seed(0)
    model = resnet9(num_classes=3, block=block, block_form=form, width=8)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            if isinstance(module, PolyNL) and module.form == "paper-scalar":
                module.b.fill_(0.5)
    preprocess = {
        "resize": "shorter_side_center_crop",
        "size": [32, 32],
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
    }
    save_checkpoint(
        path,
        Checkpoint("classifier", model.config.to_dict(), model.state_dict(), ["a", "b", "c"], preprocess),
    )
    return path


@pytest.mark.parametrize(("block", "form"), VARIANTS, ids=VARIANT_IDS)
def test_resnet9_exports_through_the_pipeline_graph_check(tmp_path: Path, block: str, form: str) -> None:
    checkpoint = _random_resnet9_checkpoint(tmp_path / "c.pt", block, form)
    options = ExportOptions(out=tmp_path / "repo", parity_folders=[PARITY_IMAGES], images_per_folder=2)
    lines: list[str] = []
    if block == "nonlocal":  # the export refuses a quadratic block and publishes nothing
        with pytest.raises(ExportFailed, match="quadratic"):
            export_model("classifier", checkpoint, options, log=lines.append)
        assert not (tmp_path / "repo" / "classifier" / "1").exists()
        return
    result = export_model("classifier", checkpoint, options, log=lines.append)
    assert result.graph.ok, result.graph.all_findings
    assert result.graph.block_count("PolyNL") == (1 if block == "polynl" else 0)
    assert all(r.ok for r in result.fp32_parity)
    config = (result.version_dir / "config.json").read_text()
    assert '"architecture": "resnet9"' in config and f'"block_form": "{form}"' in config

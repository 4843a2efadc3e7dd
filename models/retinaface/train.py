"""Detector training: ``python -m models.train detector [--config CONFIG.json] [options]``.

Data path (training only): a data source (``synth``: face crops composited onto backgrounds;
``wider``: WIDER FACE ``label.txt``; ``json``: a JSON/CSV box list) -> same-size samples ->
:class:`models.retinaface.net.RetinaFace` -> :class:`models.retinaface.loss.MultiBoxLoss`.

Runs are resumable: ``OUT/last.pt`` (model, EMA, optimiser, step, elapsed time) is written every
``--save-every`` steps and picked up automatically when the same command is run again. The
deployable checkpoint (``models/checkpoint.py`` format: task ``face_detector``, ``arch`` =
``RetinaFaceConfig.to_dict()``, labels ``["face"]``, the letterbox ``preprocess``, the recipe in
``training``) is written to ``OUT/model.pt`` at every save and to ``--final`` at the end; it
holds the EMA weights when ``--ema`` is on. Progress goes to a tqdm bar on stderr and to
``OUT/metrics.jsonl``.

``--init CHECKPOINT`` starts a new run from the weights of a ``face_detector`` checkpoint of the
same architecture (fine-tuning, e.g. the shipped weights on your own ``--data json`` boxes): the
schedule, optimiser and EMA start afresh; a resumed run ignores it (``OUT/last.pt`` wins).

Example (the shipped default detector)::

    python -m models.train detector --config models/retinaface/configs/default.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from models.device import device_description, training_device
from models.retinaface.data import (
    PREPROCESS,
    Augmented,
    BoxListDataset,
    Sample,
    WiderFaceLabels,
    to_training_batch,
)
from models.retinaface.loss import MatchedTargets, MultiBoxLoss
from models.retinaface.net import RetinaFace, RetinaFaceConfig
from models.retinaface.priors import generate_priors
from models.retinaface.synth import SYNTH_PYRAMID

STATE_FILE = "last.pt"
MODEL_FILE = "model.pt"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m models.train detector",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="JSON file with any of the options below (CLI wins)")
    p.add_argument("--data", choices=["synth", "wider", "json"], default="synth")
    p.add_argument("--faces", type=Path, help="synth: folder of face crops (36x36)")
    p.add_argument("--backgrounds", type=Path, help="synth: folder of face-free photos")
    p.add_argument("--labels", type=Path, help="wider: label.txt; json: a .json or .csv box list")
    p.add_argument("--images", type=Path, help="image root for --labels (default: next to it)")
    p.add_argument("--out", type=Path, default=Path("runs/detector"))
    p.add_argument("--final", type=Path, help="final checkpoint path (default OUT/final.pt)")
    p.add_argument("--init", type=Path, help="start from this face_detector checkpoint's weights")
    p.add_argument("--backbone", choices=["mobilenet0.25", "resnet50"], default="mobilenet0.25")
    p.add_argument("--block", choices=["none", "nonlocal", "polynl"], default="polynl")
    p.add_argument("--block-positions", type=int, nargs="*", default=[16], help="backbone strides")
    p.add_argument("--block-reduction", type=int, default=2)
    p.add_argument("--size", type=int, default=320, help="square training size")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20000, help="total optimiser steps")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-steps", type=int, default=300)
    p.add_argument("--neg-pos-ratio", type=float, default=7.0)
    p.add_argument("--min-negatives", type=int, default=16, help="hard negatives per image at least")
    p.add_argument("--iou-threshold", type=float, default=0.35)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights (0: off)")
    p.add_argument("--max-distractors", type=int, default=3, help="synth: non-face patches per image")
    p.add_argument("--partial-face-prob", type=float, default=0.0, help="synth: face-part share")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument(
        "--device", default="cpu", help="torch device to train on: cpu, cuda, or auto (cuda when available)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="data-loader processes composing batches and matching targets (0: in this process)",
    )
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--max-steps", type=int, default=0, help="stop this process after N steps (tests)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    defaults = p.parse_args([])
    args = p.parse_args(argv)
    if args.config:
        config = json.loads(Path(args.config).read_text())
        for key, value in config.items():
            dest = key.replace("-", "_")
            if not hasattr(defaults, dest):
                p.error(f"unknown option {key!r} in {args.config}")
            # Values given on the command line win over the file.
            if getattr(args, dest) == getattr(defaults, dest):
                setattr(args, dest, Path(value) if isinstance(getattr(defaults, dest), Path) else value)
        for name in ("faces", "backgrounds", "labels", "images", "final", "init"):
            value = getattr(args, name)
            if isinstance(value, str):
                setattr(args, name, Path(value))
        args.out = Path(args.out)
    return args


def model_config(args: argparse.Namespace) -> RetinaFaceConfig:
    return RetinaFaceConfig(
        backbone=args.backbone,
        block=args.block,
        block_positions=list(args.block_positions),
        block_reduction=args.block_reduction,
    )


def build_dataset(args: argparse.Namespace) -> Any:
    if args.data == "synth":
        from models.retinaface.synth import SynthConfig, SyntheticFaces

        if not args.faces or not args.backgrounds:
            raise SystemExit("--data synth needs --faces and --backgrounds")
        synth = SynthConfig(
            image_size=args.size,
            max_distractors=args.max_distractors,
            partial_face_prob=args.partial_face_prob,
        )
        return SyntheticFaces(args.faces, args.backgrounds, synth, seed=args.seed)
    if not args.labels:
        raise SystemExit(f"--data {args.data} needs --labels")
    base = (
        WiderFaceLabels(args.labels, args.images)
        if args.data == "wider"
        else BoxListDataset(args.labels, args.images)
    )
    return Augmented(base, args.size, seed=args.seed)


def batch_samples(dataset: Any, args: argparse.Namespace, step: int) -> list[Sample]:
    """The samples of training step ``step``: a function of the step alone, so a resumed run
    and any number of data-loader workers see the batches an uninterrupted run would."""
    if args.data == "synth":
        return [dataset[step * args.batch_size + i] for i in range(args.batch_size)]
    steps_per_epoch = max(1, len(dataset) // args.batch_size)
    epoch, within = divmod(step, steps_per_epoch)
    dataset.epoch = epoch
    order = np.random.default_rng([args.seed, epoch]).permutation(len(dataset))
    chosen = order[within * args.batch_size : (within + 1) * args.batch_size]
    if len(chosen) < args.batch_size:  # tiny data sets: wrap around
        chosen = np.resize(order, args.batch_size)
    return [dataset[int(i)] for i in chosen]


class TrainingBatches(torch.utils.data.Dataset):
    """Step -> (normalised images, matched targets), computed on the CPU.

    A :class:`torch.utils.data.DataLoader` over the step numbers runs this in worker processes
    (``--workers``), so composing images and matching priors overlap the training step.
    """

    def __init__(
        self, dataset: Any, args: argparse.Namespace, criterion: MultiBoxLoss, priors: torch.Tensor
    ) -> None:
        self.dataset = dataset
        self.args = args
        self.criterion = criterion
        self.priors = priors

    def __getitem__(self, step: int) -> tuple[torch.Tensor, MatchedTargets]:
        images, boxes, landmarks = to_training_batch(batch_samples(self.dataset, self.args, step))
        with torch.no_grad():
            return images, self.criterion.targets(boxes, landmarks, self.priors)


def batch_loader(
    batches: TrainingBatches, start: int, stop: int, workers: int, pin_memory: bool
) -> Iterator[tuple[torch.Tensor, MatchedTargets]]:
    return iter(
        torch.utils.data.DataLoader(
            batches,
            batch_size=None,  # each item is already a batch
            sampler=range(start, stop),
            num_workers=workers,
            pin_memory=pin_memory,
            prefetch_factor=4 if workers else None,
        )
    )


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, then cosine decay to 1% of the peak."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = min(1.0, (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps))
    return args.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    # No weight decay on BN parameters and biases (1-D tensors).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=args.lr)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, m in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
        if e.dtype.is_floating_point:
            e.mul_(decay).add_(m.detach(), alpha=1 - decay)
        else:
            e.copy_(m)


def recipe(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"config", "out", "final", "max_steps", "no_progress", "save_every", "log_every", "init_origin"}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in skip}


def initial_weights(path: Path, config: RetinaFaceConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights of ``--init`` and a record of where they came from; exits on a mismatch."""
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as exc:
        raise SystemExit(f"--init: {exc}") from exc
    if checkpoint.task != "face_detector":
        raise SystemExit(f"--init: {path} holds a {checkpoint.task}, not a face_detector")
    if RetinaFaceConfig.from_dict(checkpoint.arch) != config:
        raise SystemExit(
            f"--init: {path} has the architecture {checkpoint.arch}, this run builds {config.to_dict()}"
        )
    origin = {
        "checkpoint": path.name,
        "sha256": checkpoint.sha256,
        "steps": checkpoint.training.get("steps"),
        "images_seen": checkpoint.training.get("images_seen"),
    }
    return checkpoint.state_dict, origin


def deployable(
    model: nn.Module,
    config: RetinaFaceConfig,
    args: argparse.Namespace,
    step: int,
    elapsed: float,
    metrics: dict[str, float],
) -> Checkpoint:
    return Checkpoint(
        task="face_detector",
        arch=config.to_dict(),
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        labels=["face"],
        # Synthetic composites hold faces up to ~217 px: such a model needs the pyramid's smaller
        # copies for larger faces (polynl_core/pyramid.py); real-photo training data covers them.
        preprocess={**PREPROCESS, "pyramid": list(SYNTH_PYRAMID)}
        if args.data == "synth"
        else dict(PREPROCESS),
        training={
            "recipe": recipe(args),
            "seed": args.seed,
            "steps": step,
            "images_seen": step * args.batch_size,
            "train_seconds": round(elapsed, 1),
            "threads": args.threads,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "device": device_description(training_device(args.device)),
            "torch": str(torch.__version__),
            "final_losses": metrics,
            **({"init": args.init_origin} if getattr(args, "init_origin", None) else {}),
        },
    )


def save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    device = training_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one fixed training size
    args.out.mkdir(parents=True, exist_ok=True)
    config = model_config(args)
    model = RetinaFace(config)
    criterion = MultiBoxLoss(
        iou_threshold=args.iou_threshold,
        neg_pos_ratio=args.neg_pos_ratio,
        min_negatives=args.min_negatives,
        variances=config.variances,
    )
    step, elapsed = 0, 0.0
    state_path = args.out / STATE_FILE
    state = torch.load(state_path, map_location="cpu", weights_only=True) if state_path.is_file() else None
    if state is not None:
        model.load_state_dict(state["model"])
        args.init_origin = state.get("init")
    elif args.init is not None:
        weights, args.init_origin = initial_weights(args.init, config)
        model.load_state_dict(weights)
        print(
            f"starting from the weights of {args.init} (sha256 {args.init_origin['sha256']})", file=sys.stderr
        )
    model.to(device)
    ema = copy.deepcopy(model) if args.ema > 0 else None
    optimizer = make_optimizer(model, args)
    if state is not None:
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])  # moves its state to the parameters' device
        step, elapsed = int(state["step"]), float(state["elapsed"])
        print(f"resuming from {state_path} at step {step}", file=sys.stderr)
    (args.out / "args.json").write_text(json.dumps(recipe(args), indent=2) + "\n")

    dataset = build_dataset(args)
    priors = generate_priors(args.size, args.size, config.min_sizes, config.steps)
    stop = args.steps if not args.max_steps else min(args.steps, step + args.max_steps)
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=args.steps, initial=step, desc="detector", dynamic_ncols=True)
    # Smoothed losses stay on the device between log lines: reading them every step would make
    # the CPU wait for the GPU each step.
    running: dict[str, torch.Tensor] = {}
    metrics_log = open(args.out / "metrics.jsonl", "a")  # noqa: SIM115 (closed below, lives across the loop)
    model.train()
    source = batch_loader(
        TrainingBatches(dataset, args, criterion, priors), step, stop, args.workers, device.type == "cuda"
    )
    started = time.monotonic() - elapsed
    while step < stop:
        images, targets = next(source)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        losses = criterion.from_targets(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        if ema is not None:
            update_ema(ema, model, min(args.ema, (1 + step) / (10 + step)))
        step += 1
        for key, value in losses.items():
            value = value.detach()
            running[key] = 0.9 * running[key] + 0.1 * value if key in running else value
        if progress is not None:
            progress.update(1)
        if step % args.log_every == 0 or step == stop:
            smoothed = {k: round(float(v), 4) for k, v in running.items()}
            record = {"step": step, "lr": lr_at(step - 1, args), "time": round(time.monotonic() - started, 1)}
            record.update(smoothed)
            metrics_log.write(json.dumps(record) + "\n")
            metrics_log.flush()
            if progress is not None:
                progress.set_postfix({k: f"{v:.3f}" for k, v in smoothed.items()})
        if step % args.save_every == 0 or step == stop:
            elapsed = time.monotonic() - started
            save_state(
                state_path,
                {
                    "model": model.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "elapsed": elapsed,
                    "init": getattr(args, "init_origin", None),
                },
            )
            snapshot = deployable(ema or model, config, args, step, elapsed, _floats(running))
            save_checkpoint(args.out / MODEL_FILE, snapshot)
    if progress is not None:
        progress.close()
    metrics_log.close()
    if step >= args.steps:
        final = args.final or args.out / "final.pt"
        elapsed = time.monotonic() - started
        digest = save_checkpoint(
            final, deployable(ema or model, config, args, step, elapsed, _floats(running))
        )
        print(f"wrote {final} (sha256 {digest})", file=sys.stderr)
    return 0


def _floats(running: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in running.items()}

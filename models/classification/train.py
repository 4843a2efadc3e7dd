"""Train a Poly-NL (or NL, or plain) ResNet classifier on an ImageFolder tree.

``python -m models.train classifier --data TRAIN --val VAL --out runs/classifier``

Recipe (the shipped CIFAR-10 default): CIFAR ResNet-20, SGD + Nesterov momentum 0.9,
batch 128, linear warm-up then cosine decay from lr 0.1, weight decay 5e-4, label
smoothing 0.1, random crop with 4-pixel reflect padding + horizontal flip.
Resumable: every epoch writes ``OUT/last.pt``; re-running the same command continues.
The final model is written in the project's checkpoint format (``models/checkpoint.py``)
with its labels and preprocessing, ready for ``python -m export``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from models.classification.data import augment_batch, load_image_set, to_normalised_tensor
from models.device import device_description, training_device
from models.resnet import ResNet, ResNetConfig

log = logging.getLogger("models.train.classifier")

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2470, 0.2435, 0.2616]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m models.train classifier",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="JSON file with any of the options below (CLI wins)")
    p.add_argument("--data", type=Path, help="training ImageFolder tree or .tar.gz")
    p.add_argument("--val", type=Path, help="validation ImageFolder tree or .tar.gz")
    p.add_argument("--out", type=Path, default=Path("runs/classifier"))
    p.add_argument("--final", type=Path, help="where to write the final checkpoint (default OUT/final.pt)")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--stem", choices=["cifar", "imagenet"], default="cifar")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--block", choices=["none", "nonlocal", "polynl"], default="polynl")
    p.add_argument(
        "--block-positions",
        nargs="*",
        help="e.g. layer2.2 layer3.2 (default: last block of the later stages)",
    )
    p.add_argument("--size", type=int, default=32, help="square input size")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--padding", type=int, default=4, help="random-crop padding (pixels)")
    p.add_argument("--mean", type=float, nargs=3, default=CIFAR_MEAN)
    p.add_argument("--std", type=float, nargs=3, default=CIFAR_STD)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--device",
        default="cpu",
        help="torch device to train on: cpu, cuda, cuda:1, or auto (cuda when available)",
    )
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (tests)")
    p.add_argument(
        "--init",
        type=Path,
        help="start from the weights of a classifier checkpoint (fine-tuning, a warm restart)",
    )
    p.add_argument(
        "--finalize",
        action="store_true",
        help="write the final checkpoint from OUT/last.pt now, without training (snapshot)",
    )
    args = p.parse_args(argv)
    if args.config:
        defaults = json.loads(args.config.read_text())
        explicit = {a.dest for a in p._actions if any(s in (argv or []) for s in a.option_strings)}
        for key, value in defaults.items():
            key = key.replace("-", "_")
            if key not in vars(args):
                p.error(f"unknown option {key!r} in {args.config}")
            if key not in explicit:
                setattr(args, key, Path(value) if key in ("data", "val", "out", "final", "init") else value)
    if args.data is None:
        p.error("--data is required (in the CLI or the config file)")
    return args


def model_config(args: argparse.Namespace, num_classes: int) -> ResNetConfig:
    positions = args.block_positions
    if not positions:
        if args.stem == "cifar":
            n = (args.depth - 2) // 6
            positions = [f"layer2.{n - 1}", f"layer3.{n - 1}"]
        else:
            positions = ["layer3.5"] if args.depth >= 50 else ["layer3.1"]
    width = args.width if args.stem == "cifar" else 64
    return ResNetConfig(
        depth=args.depth,
        stem=args.stem,
        num_classes=num_classes,
        block=args.block,
        block_positions=positions,
        width=width,
    )


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500
) -> dict[str, float]:
    model.eval()
    top1 = top5 = 0
    for i in range(0, len(images), batch):
        logits = model(images[i : i + batch].contiguous(memory_format=torch.channels_last))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        target = labels[i : i + batch].view(-1, 1)
        top1 += int((top[:, :1] == target).sum())
        top5 += int((top == target).any(dim=1).sum())
    return {"top1": top1 / len(images), "top5": top5 / len(images)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = training_device(args.device)
    if device.type == "cuda":
        # Fixed input size: let cuDNN pick the fastest kernels once.
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    size = (args.size, args.size)

    train_set = load_image_set(args.data, size, cache_dir=args.out / "cache")
    val_set = load_image_set(args.val, size, args.out / "cache", train_set.classes) if args.val else None
    log.info(
        "train: %d images, %d classes %s", len(train_set.labels), len(train_set.classes), train_set.classes
    )
    train_x = to_normalised_tensor(train_set.images, args.mean, args.std)
    train_y = torch.from_numpy(train_set.labels)
    # The training set stays on the CPU (augmentation draws from the CPU generator, so a run is
    # the same on any device); batches and the validation set go to the device.
    val_x = to_normalised_tensor(val_set.images, args.mean, args.std).to(device) if val_set else None
    val_y = torch.from_numpy(val_set.labels).to(device) if val_set else None
    log.info("training on %s", device)

    config = model_config(args, len(train_set.classes))
    # torch's stubs omit the memory_format keyword of Module.to.
    model = ResNet(config).to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        momentum=0.9,
        nesterov=True,
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    steps_per_epoch = len(train_y) // args.batch_size
    total_steps = steps_per_epoch * args.epochs
    warmup = int(args.warmup_epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(args.seed)

    start_epoch, history, elapsed = 0, [], 0.0
    if args.init:
        init = load_checkpoint(args.init)
        if init.task != "classifier" or ResNetConfig.from_dict(init.arch) != config:
            raise SystemExit(f"--init {args.init} is not a classifier of this architecture")
        model.load_state_dict(init.state_dict)
        history = list(init.training.get("history", []))
        elapsed = float(init.training.get("train_seconds", 0.0))
        log.info("initialised from %s (%d earlier epochs)", args.init, len(history))
    resume = args.out / "last.pt"
    if resume.is_file():
        state = torch.load(resume, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])  # moves its state to the parameters' device
        generator.set_state(state["generator"])
        start_epoch, history, elapsed = state["epoch"], state["history"], state.get("elapsed", 0.0)
        log.info("resumed from %s at epoch %d", resume, start_epoch)

    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, 0 if args.finalize else args.epochs):
        model.train()
        began = time.time()
        order = torch.randperm(len(train_y), generator=generator)
        running: torch.Tensor | float = 0.0
        seen = 0
        for i in range(steps_per_epoch):
            index = order[i * args.batch_size : (i + 1) * args.batch_size]
            batch = augment_batch(train_x[index], args.padding, generator)
            batch = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            target = train_y[index].to(device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup, args.lr)
            loss = criterion(model(batch), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            # Summed on the device: reading the loss every step would make the CPU wait for
            # the GPU each step instead of queueing the next one.
            running = running + loss.detach() * len(index)
            seen += len(index)
            if i % 50 == 0:
                log.info(
                    "epoch %d/%d step %d/%d loss %.4f lr %.4f",
                    epoch + 1,
                    args.epochs,
                    i,
                    steps_per_epoch,
                    float(running) / seen,
                    optimizer.param_groups[0]["lr"],
                )
            if args.max_steps and step >= args.max_steps:
                break
        elapsed += time.time() - began
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": float(running) / max(seen, 1),
            "seconds": round(time.time() - began, 1),
        }
        if val_x is not None and val_y is not None:
            record.update(evaluate(model, val_x, val_y))
        if args.init:
            record["warm_restart_from"] = str(args.init)
        history.append(record)
        log.info("epoch %d done: %s", epoch + 1, record)
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "epoch": epoch + 1,
                "history": history,
                "elapsed": elapsed,
            },
            resume,
        )
        if args.max_steps and step >= args.max_steps:
            break

    training = {
        "recipe": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "history": history,
        "train_seconds": round(elapsed, 1),
        "torch_threads": torch.get_num_threads(),
        "device": device_description(device),
        "torch": str(torch.__version__),
        "final": history[-1] if history else {},
    }
    preprocess = {
        "resize": "shorter_side_center_crop",
        "size": [args.size, args.size],
        "mean": list(args.mean),
        "std": list(args.std),
        "interpolation": "bilinear",
    }
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    checkpoint = Checkpoint(
        task="classifier",
        arch=config.to_dict(),
        state_dict=state_dict,
        labels=train_set.classes,
        preprocess=preprocess,
        training=training,
    )
    final = args.final or args.out / "final.pt"
    digest = save_checkpoint(final, checkpoint)
    log.info("wrote %s (sha256 %s): %s", final, digest, training["final"])
    return 0

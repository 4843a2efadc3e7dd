"""Train a Poly-NL (or NL, or plain) classifier on an ImageFolder tree.

``python -m models.train classifier --data TRAIN --val VAL --out runs/classifier``

Two architectures (``--arch``; the checkpoint records it as ``arch.architecture``):

- ``resnet`` (default; the shipped CIFAR-10 classifier): CIFAR ResNet-20, SGD + Nesterov momentum
  0.9, batch 128, linear warm-up then cosine decay from lr 0.1, weight decay 5e-4, label
  smoothing 0.1, random crop with 4-pixel reflect padding + horizontal flip.
- ``resnet9`` (``models/resnet9.py``, the DAWNBench ResNet-9 with a context block): the fast
  recipe in ``models/classification/configs/resnet9.json`` (``--config``): batch 512, one-cycle
  lr 0 -> 0.4 -> 0 peaking at epoch 5 of 24, weight decay 5e-4, label smoothing 0.2, EMA of the
  weights (decay 0.99 per step; the EMA is evaluated and exported), flip + 4-pixel translate.

Weight decay never applies to BatchNorm, biases or scalar parameters. ``--device cuda`` trains
on a GPU (bf16 autocast by default there, channels_last everywhere). Resumable: every epoch
writes ``OUT/last.pt`` (weights, EMA, optimizer, augmentation RNG); re-running the same command
continues at the next epoch. The final model is written in the project's checkpoint format
(``models/checkpoint.py``) with its labels and preprocessing, ready for ``python -m export``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.blocks import DEFAULT_POLYNL_FORM, POLYNL_FORMS
from models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from models.classification.data import augment_batch, load_image_set, to_normalised_tensor
from models.classification.recipe import SCHEDULES, WeightEma, lr_at, parameter_groups
from models.classifiers import ARCHITECTURES, ClassifierConfig, build_classifier, classifier_config
from models.device import device_description, training_device
from models.resnet import ResNetConfig
from models.resnet9 import ResNet9Config

log = logging.getLogger("models.train.classifier")

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2470, 0.2435, 0.2616]
PATH_OPTIONS = ("data", "val", "out", "final", "init", "cache_dir")


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
    p.add_argument(
        "--cache-dir", type=Path, help="where decoded data sets are cached (default OUT/cache; share it)"
    )
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), default="resnet", help="classifier family")
    p.add_argument("--depth", type=int, default=20, help="resnet only")
    p.add_argument("--stem", choices=["cifar", "imagenet"], default="cifar", help="resnet only")
    p.add_argument("--width", type=int, help="first-stage channels (default: resnet 16, resnet9 64)")
    p.add_argument("--block", choices=["none", "nonlocal", "polynl"], default="polynl")
    p.add_argument("--block-form", choices=list(POLYNL_FORMS), default=DEFAULT_POLYNL_FORM)
    p.add_argument(
        "--block-positions",
        nargs="*",
        help="resnet: e.g. layer2.2 layer3.2 (default: last block of the later stages); "
        "resnet9: stage names, e.g. layer2 (the default)",
    )
    p.add_argument("--size", type=int, default=32, help="square input size")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    p.add_argument("--schedule", choices=list(SCHEDULES), default="cosine")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="epochs to reach the peak lr")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay per step (0: no EMA)")
    p.add_argument("--padding", type=int, default=4, help="random-crop padding (pixels)")
    p.add_argument("--mean", type=float, nargs=3, default=CIFAR_MEAN)
    p.add_argument("--std", type=float, nargs=3, default=CIFAR_STD)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-subset", type=int, default=0, help="train on N images (seeded choice; 0: all)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--device",
        default="cpu",
        help="torch device to train on: cpu, cuda, cuda:1, or auto (cuda when available)",
    )
    p.add_argument(
        "--amp",
        choices=["auto", "bf16", "off"],
        default="auto",
        help="bf16 autocast: auto = on for CUDA, off on the CPU",
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
                setattr(args, key, Path(value) if key in PATH_OPTIONS else value)
    if args.data is None:
        p.error("--data is required (in the CLI or the config file)")
    return args


def model_config(args: argparse.Namespace, num_classes: int) -> ClassifierConfig:
    positions = args.block_positions
    if args.arch == "resnet9":
        return ResNet9Config(
            num_classes=num_classes,
            width=args.width or 64,
            block=args.block,
            block_form=args.block_form,
            block_positions=positions or ["layer2"],
        )
    if not positions:
        if args.stem == "cifar":
            n = (args.depth - 2) // 6
            positions = [f"layer2.{n - 1}", f"layer3.{n - 1}"]
        else:
            positions = ["layer3.5"] if args.depth >= 50 else ["layer3.1"]
    width = (args.width or 16) if args.stem == "cifar" else 64
    return ResNetConfig(
        depth=args.depth,
        stem=args.stem,
        num_classes=num_classes,
        block=args.block,
        block_form=args.block_form,
        block_positions=positions,
        width=width,
    )


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


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _subset(count: int, total: int, seed: int) -> torch.Tensor:
    """A seeded choice of ``count`` of ``total`` indices (the same for every run with that seed)."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count].sort().values


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = training_device(args.device)
    if device.type == "cuda":
        # Fixed input size: let cuDNN pick the fastest kernels once.
        torch.backends.cudnn.benchmark = True
    use_bf16 = args.amp == "bf16" or (args.amp == "auto" and device.type == "cuda")
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    size = (args.size, args.size)
    cache_dir = args.cache_dir or args.out / "cache"

    train_set = load_image_set(args.data, size, cache_dir=cache_dir)
    val_set = load_image_set(args.val, size, cache_dir, train_set.classes) if args.val else None
    log.info(
        "train: %d images, %d classes %s", len(train_set.labels), len(train_set.classes), train_set.classes
    )
    train_x = to_normalised_tensor(train_set.images, args.mean, args.std)
    train_y = torch.from_numpy(train_set.labels)
    if args.train_subset and args.train_subset < len(train_y):
        keep = _subset(args.train_subset, len(train_y), args.seed)
        train_x, train_y = train_x[keep], train_y[keep]
        log.info("training on a subset of %d images (seed %d)", len(train_y), args.seed)
    # The training set stays on the CPU (augmentation draws from the CPU generator, so a run is
    # the same on any device); batches and the validation set go to the device.
    val_x = to_normalised_tensor(val_set.images, args.mean, args.std).to(device) if val_set else None
    val_y = torch.from_numpy(val_set.labels).to(device) if val_set else None
    log.info("training on %s%s", device, " with bf16 autocast" if use_bf16 else "")

    config = model_config(args, len(train_set.classes))
    # torch's stubs omit the memory_format keyword of Module.to.
    model = build_classifier(config).to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.SGD(
        parameter_groups(model, args.weight_decay), lr=args.lr, momentum=0.9, nesterov=True
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    steps_per_epoch = len(train_y) // args.batch_size
    if steps_per_epoch == 0:
        raise SystemExit(f"--batch-size {args.batch_size} is larger than the {len(train_y)} training images")
    total_steps = steps_per_epoch * args.epochs
    warmup = int(args.warmup_epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(args.seed)

    start_epoch, history, elapsed = 0, [], 0.0
    if args.init:
        init = load_checkpoint(args.init)
        if init.task != "classifier" or classifier_config(init.arch) != config:
            raise SystemExit(f"--init {args.init} is not a classifier of this architecture")
        model.load_state_dict(init.state_dict)
        history = list(init.training.get("history", []))
        elapsed = float(init.training.get("train_seconds", 0.0))
        log.info("initialised from %s (%d earlier epochs)", args.init, len(history))
    # Made after --init, so the average starts from the weights training starts from.
    ema = WeightEma(model, args.ema) if args.ema else None
    resume = args.out / "last.pt"
    if resume.is_file():
        state = torch.load(resume, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])  # moves its state to the parameters' device
        generator.set_state(state["generator"])
        if ema is not None:
            if "ema" not in state:
                raise SystemExit(f"{resume} was written without --ema; resume it with the same options")
            ema.load_state_dict(state["ema"])
        start_epoch, history, elapsed = state["epoch"], state["history"], state.get("elapsed", 0.0)
        log.info("resumed from %s at epoch %d", resume, start_epoch + 1)

    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if use_bf16
        else contextlib.nullcontext()
    )
    step = start_epoch * steps_per_epoch
    run_began = time.time()
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
                group["lr"] = lr_at(step, total_steps, warmup, args.lr, args.schedule)
            with autocast:
                loss = criterion(model(batch).float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update(model)
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
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.time() - began
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": float(running) / max(seen, 1),
            "seconds": round(train_seconds, 1),
            "images_per_s": round(seen / max(train_seconds, 1e-9), 1),
        }
        if val_x is not None and val_y is not None:
            with autocast:
                record.update(evaluate(ema.module if ema is not None else model, val_x, val_y))
                if ema is not None:
                    raw = evaluate(model, val_x, val_y)
                    record.update(top1_raw=raw["top1"], top5_raw=raw["top5"])
        if args.init:
            record["warm_restart_from"] = str(args.init)
        history.append(record)
        elapsed += train_seconds  # training time only, as before: evaluation is not training
        per_epoch = (time.time() - run_began) / (epoch + 1 - start_epoch)
        log.info(
            "epoch %d/%d done in %s (%.0f images/s): %s | ETA %s",
            epoch + 1,
            args.epochs,
            _duration(time.time() - began),
            record["images_per_s"],
            {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()},
            _duration(per_epoch * (args.epochs - epoch - 1)),
        )
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "epoch": epoch + 1,
            "history": history,
            "elapsed": elapsed,
        }
        if ema is not None:
            state["ema"] = ema.state_dict()
        tmp = resume.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        tmp.replace(resume)  # a run killed while saving keeps the previous epoch's state
        if args.max_steps and step >= args.max_steps:
            break

    training = {
        "recipe": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "history": history,
        "train_seconds": round(elapsed, 1),
        "torch_threads": torch.get_num_threads(),
        "device": device_description(device),
        "torch": str(torch.__version__),
        "weights": "ema" if ema is not None else "last step",
        "final": history[-1] if history else {},
    }
    preprocess = {
        "resize": "shorter_side_center_crop",
        "size": [args.size, args.size],
        "mean": list(args.mean),
        "std": list(args.std),
        "interpolation": "bilinear",
    }
    shipped = ema.module if ema is not None else model
    state_dict = {k: v.detach().cpu().contiguous() for k, v in shipped.state_dict().items()}
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

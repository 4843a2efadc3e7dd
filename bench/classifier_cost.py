"""Benchmark 4: what one training run of the ResNet-9 recipe costs, from short measurements.

Not on the serving path: it gives the classifier card its CPU time estimate and the figures a
GPU estimate starts from, without training for hours. For each block variant of
``models/resnet9.py`` it measures

- the multiply-adds of one forward pass (conv and linear layers, counted with hooks);
- training images/s: steps of the recipe's own pieces (augmentation from the seeded CPU
  generator, channels_last, SGD with the recipe's weight-decay groups, label smoothing, EMA
  update) at the recipe's batch size, after one warm-up step, variants interleaved step by step
  so that background load hits them alike;
- the CPU side of the data path alone (gather + flip/translate of one batch), images/s per thread;

and extrapolates to ``--epochs`` x ``--images`` (24 x 50,000 by default).

    python -m bench.classifier_cost                         # CPU, 2 threads, 5 steps per variant
    python -m bench.classifier_cost --device cuda --steps 20 --amp bf16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.machine import machine_info, machine_markdown, write_report

RESULTS = Path(__file__).resolve().parent / "results"
RECIPE = Path(__file__).resolve().parents[1] / "models" / "classification" / "configs" / "resnet9.json"
VARIANTS: dict[str, tuple[str, str]] = {
    "none": ("none", "projected"),
    "nonlocal": ("nonlocal", "projected"),
    "polynl-projected": ("polynl", "projected"),
    "polynl-paper-scalar": ("polynl", "paper-scalar"),
}


def forward_macs(model: Any, size: int) -> int:
    """Multiply-adds of conv and linear layers for one image (the blocks' element-wise ops not counted)."""
    import torch
    from torch import nn

    total = 0

    def count(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * module.in_channels // module.groups * kh * kw
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return total


def augmentation_rate(batch: int, size: int, rounds: int = 20) -> float:
    """Images/s of gather + flip/translate on one CPU thread (the CPU side of a training step)."""
    import torch

    from models.classification.data import augment_batch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images = torch.randn(max(batch * rounds, 10_000), 3, size, size)
        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(len(images), generator=generator)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for i in range(rounds):
                index = order[(i * batch) % len(images) :][:batch]
                augment_batch(images[index], 4, generator).contiguous(memory_format=torch.channels_last)
            best = min(best, time.perf_counter() - started)
        return rounds * batch / best
    finally:
        torch.set_num_threads(previous)


def training_rates(args: argparse.Namespace, recipe: dict[str, Any]) -> dict[str, dict[str, Any]]:
    import torch
    from torch import nn

    from models.classification.data import augment_batch
    from models.classification.recipe import WeightEma, parameter_groups
    from models.resnet9 import resnet9

    device = torch.device(args.device)
    batch = int(recipe.get("batch_size", 512))
    generator = torch.Generator().manual_seed(0)
    pool = torch.randn(batch * 2, 3, args.size, args.size)
    labels = torch.randint(0, 10, (batch * 2,), generator=generator)
    criterion = nn.CrossEntropyLoss(label_smoothing=float(recipe.get("label_smoothing", 0.0)))
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if args.amp == "bf16"
        else contextlib.nullcontext()
    )
    setups = {}
    for name, (block, form) in VARIANTS.items():
        torch.manual_seed(0)
        # torch's stubs omit the memory_format keyword of Module.to.
        model = resnet9(block=block, block_form=form).to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        optimizer = torch.optim.SGD(
            parameter_groups(model, float(recipe.get("weight_decay", 5e-4))),
            lr=0.01,
            momentum=0.9,
            nesterov=True,
        )
        ema = WeightEma(model, float(recipe["ema"])) if recipe.get("ema") else None
        macs = forward_macs(resnet9(block=block, block_form=form), args.size)
        params = sum(p.numel() for p in model.parameters())
        setups[name] = (model, optimizer, ema, macs, params)

    def step(model: Any, optimizer: Any, ema: Any) -> float:
        started = time.perf_counter()
        index = torch.randperm(len(pool), generator=generator)[:batch]
        x = augment_batch(pool[index], 4, generator).to(device).contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = criterion(model.train()(x).float(), labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    times: dict[str, list[float]] = {name: [] for name in setups}
    for model, optimizer, ema, *_rest in setups.values():
        step(model, optimizer, ema)  # warm-up: kernel selection, allocations
    for _ in range(args.steps):
        for name, (model, optimizer, ema, *_rest) in setups.items():
            times[name].append(step(model, optimizer, ema))
    images = args.epochs * args.images
    out = {}
    for name, (_m, _o, _e, macs, params) in setups.items():
        best, median = min(times[name]), statistics.median(times[name])
        out[name] = {
            "parameters": params,
            "forward_mmac": round(macs / 1e6, 1),
            "steps": len(times[name]),
            "images_per_s_best": round(batch / best, 1),
            "images_per_s_median": round(batch / median, 1),
            "run_hours_at_median": round(images / (batch / median) / 3600, 2),
        }
        print(
            f"{name:>20}: {macs / 1e6:6.1f} MMAC, {batch / median:7.1f} images/s (best {batch / best:.1f}), "
            f"{images} images -> {out[name]['run_hours_at_median']:.2f} h of training steps",
            flush=True,
        )
    return out


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "## Cost of one ResNet-9 training run, extrapolated",
        "",
        f"`{s['device']}`, {s['threads']} thread(s), batch {s['batch']}, amp {s['amp']}, {s['steps']} timed "
        f"steps per variant after one warm-up step (interleaved); extrapolated to {s['epochs']} epochs x "
        f"{s['images']} images (training steps only; evaluation not included). CPU-side augmentation: "
        f"{report['augmentation_images_per_s_one_thread']:.0f} images/s on one thread.",
        "",
        machine_markdown(report["machine"]),
        "| block | params | forward MMAC | training images/s (median / best) | hours per run |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["variants"].items():
        lines.append(
            f"| {name} | {row['parameters'] / 1e6:.2f} M | {row['forward_mmac']} | "
            f"{row['images_per_s_median']} / {row['images_per_s_best']} | {row['run_hours_at_median']} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.classifier_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amp", choices=["off", "bf16"], default="off")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--images", type=int, default=50_000, help="training images per epoch")
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "classifier-cost", help="path stem for .json/.md"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    import torch

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = json.loads(args.recipe.read_text())
    machine = machine_info()
    augmentation = augmentation_rate(int(recipe.get("batch_size", 512)), args.size)
    print(f"CPU augmentation: {augmentation:.0f} images/s on one thread", flush=True)
    report = {
        "benchmark": "classifier_cost",
        "settings": {
            "device": args.device,
            "threads": args.threads,
            "amp": args.amp,
            "steps": args.steps,
            "batch": int(recipe.get("batch_size", 512)),
            "epochs": args.epochs,
            "images": args.images,
            "recipe": str(args.recipe),
        },
        "augmentation_images_per_s_one_thread": round(augmentation, 1),
        "variants": training_rates(args, recipe),
        "machine": machine,
    }
    write_report(args.out, report, markdown(report))
    print(f"wrote {args.out.with_suffix('.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fine-tune the Poly-NL block of an imported RetinaFace against its own teacher and known negatives.

``python -m models.retinaface.distill --teacher CHECKPOINT --faces DIR --backgrounds DIR --out DIR``

Why: the imported WIDER FACE weights (``import_weights --from-package``) come with the Poly-NL
block at the identity, so the detector is exactly the public RetinaFace. There are no labelled
real photos of faces here to train it on, so this asks the one question the offline data can
answer: can the block, trained alone, remove the teacher's false positives on photos known to
hold no face without changing its answers where faces are?

Data path (training only): :class:`models.retinaface.synth.SyntheticFaces` composites at
``--size`` (``--empty-prob`` of them hold no face at all: augmented crops of the face-free
backgrounds) -> the frozen teacher (the same weights, block at the identity) and the student
(the same network; only ``context.*`` trains, everything else frozen in eval mode) -> loss:
- images with faces: the teacher's answers are the targets (its face probability per prior by
  binary KL, and its box and landmark offsets by smooth L1 where it sees a face, p > 0.5). The
  composites' own tight-convention labels are never used, so the box convention stays WIDER's.
- images without faces: every prior is background; ``-log(1 - p_face)`` summed over priors,
  so only priors that fire contribute.

Resumable: ``OUT/last.pt`` every ``--save-every`` steps; ``OUT/metrics.jsonl`` and a progress
line per ``--log-every`` steps on stderr; ``OUT/model.pt`` (project checkpoint format) at the end.
Whether the result ships is decided by ``python -m models.evaluate`` on real photos, not here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.checkpoint import Checkpoint, load_model, save_checkpoint
from models.retinaface.data import PREPROCESS, to_training_batch
from models.retinaface.net import RetinaFace
from models.retinaface.synth import SynthConfig, SyntheticFaces
from polynl_core.repository import sha256_of

STATE_FILE = "last.pt"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m models.retinaface.distill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--teacher", type=Path, required=True, help="imported face_detector checkpoint")
    p.add_argument("--faces", type=Path, required=True, help="folder of face crops (synth)")
    p.add_argument("--backgrounds", type=Path, required=True, help="folder of face-free photos")
    p.add_argument("--out", type=Path, default=Path("runs/detector-distill"))
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3000, help="length of the schedule")
    p.add_argument(
        "--max-steps", type=int, help="stop (resumably) after this step; the schedule keeps --steps"
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--empty-prob", type=float, default=0.5, help="share of face-free images")
    p.add_argument("--negative-weight", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=20)
    return p.parse_args(argv)


def face_probability(conf_logits: torch.Tensor) -> torch.Tensor:
    return conf_logits.softmax(dim=-1)[..., 1]


def distill_loss(
    student: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    teacher: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    has_faces: torch.Tensor,
    negative_weight: float,
) -> dict[str, torch.Tensor]:
    """Per-batch losses (summed over priors, averaged over images); see the module doc."""
    s_loc, s_conf, s_landm = student
    t_loc, t_conf, t_landm = teacher
    s_logp = s_conf.log_softmax(dim=-1)
    t_p = t_conf.softmax(dim=-1)
    kl = (t_p * (t_p.clamp_min(1e-8).log() - s_logp)).sum(-1)  # (B, P)
    face = (face_probability(t_conf) > 0.5) & has_faces[:, None]
    regress = F.smooth_l1_loss(s_loc, t_loc, reduction="none").sum(-1) + F.smooth_l1_loss(
        s_landm, t_landm, reduction="none"
    ).sum(-1)
    negatives = -s_logp[..., 0]  # -log(1 - p_face)
    images = max(1, has_faces.numel())
    kd = (kl * has_faces[:, None]).sum() / images
    reg = (regress * face).sum() / images
    neg = (negatives * (~has_faces)[:, None]).sum() / images
    return {"kd": kd, "regress": reg, "negative": neg, "total": kd + reg + negative_weight * neg}


def build_student(teacher_path: Path) -> tuple[RetinaFace, RetinaFace, Checkpoint]:
    teacher, meta = load_model(teacher_path)
    student, _ = load_model(teacher_path)
    assert isinstance(teacher, RetinaFace) and isinstance(student, RetinaFace)
    if not len(student.context):
        raise SystemExit(f"{teacher_path} has no context block to train (arch.block = 'none')")
    if meta.preprocess.get("mean") != PREPROCESS["mean"]:
        raise SystemExit(f"{teacher_path} uses another mean than the training batches ({PREPROCESS['mean']})")
    teacher.eval().requires_grad_(False)
    student.eval().requires_grad_(False)
    student.context.train().requires_grad_(True)
    return teacher, student, meta


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    teacher, student, meta = build_student(args.teacher)
    optimiser = torch.optim.AdamW(student.context.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=args.lr, total_steps=args.steps, pct_start=0.05
    )
    synth = SynthConfig(image_size=args.size, empty_prob=args.empty_prob)
    data = SyntheticFaces(args.faces, args.backgrounds, synth, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    state_path, log_path = args.out / STATE_FILE, args.out / "metrics.jsonl"
    step, elapsed = 0, 0.0
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        student.context.load_state_dict(state["context"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        step, elapsed = state["step"], state["elapsed"]
        print(f"resumed {state_path} at step {step}", file=sys.stderr)
    started = time.perf_counter() - elapsed
    running: dict[str, float] = {}

    def save() -> None:
        torch.save(
            {
                "context": student.context.state_dict(),
                "optimiser": optimiser.state_dict(),
                "schedule": schedule.state_dict(),
                "step": step,
                "elapsed": time.perf_counter() - started,
            },
            state_path,
        )

    stop = min(args.steps, args.max_steps or args.steps)
    while step < stop:
        samples = [data[step * args.batch_size + i] for i in range(args.batch_size)]
        images, boxes, _ = to_training_batch(samples)
        has_faces = torch.tensor([len(b) > 0 for b in boxes])
        with torch.no_grad():
            targets = teacher(images)
        losses = distill_loss(student(images), targets, has_faces, args.negative_weight)
        optimiser.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimiser.step()
        schedule.step()
        step += 1
        for k, v in losses.items():
            value = v.item()
            running[k] = 0.98 * running.get(k, value) + 0.02 * value
        if step % args.log_every == 0 or step == args.steps:
            record = {
                "step": step,
                "seconds": round(time.perf_counter() - started, 1),
                "lr": schedule.get_last_lr()[0],
                **{k: round(v, 5) for k, v in running.items()},
            }
            with log_path.open("a") as log:
                log.write(json.dumps(record) + "\n")
            print(" ".join(f"{k}={v}" for k, v in record.items()), file=sys.stderr, flush=True)
        if step % args.save_every == 0:
            save()
    save()
    if step < args.steps:
        print(f"stopped at step {step} of {args.steps}; run the same command to resume", file=sys.stderr)
        return 0
    training: dict[str, Any] = {
        **meta.training,
        "distilled": {
            "teacher": str(args.teacher),
            "teacher_sha256": sha256_of(args.teacher),
            "trained": "context.* only",
            "steps": args.steps,
            "batch_size": args.batch_size,
            "size": args.size,
            "lr": args.lr,
            "empty_prob": args.empty_prob,
            "negative_weight": args.negative_weight,
            "seed": args.seed,
            "data": "SyntheticFaces composites of --faces on --backgrounds",
            "final_losses": {k: round(v, 5) for k, v in running.items()},
        },
    }
    out = Checkpoint(
        task="face_detector",
        arch=meta.arch,
        state_dict=student.state_dict(),
        labels=meta.labels,
        preprocess=meta.preprocess,
        training=training,
    )
    digest = save_checkpoint(args.out / "model.pt", out)
    print(f"wrote {args.out / 'model.pt'} (sha256 {digest})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Checkpoint files: one format for every model this project trains, exports and serves.

A checkpoint is a ``torch.save``d dict::

    {
      "format": "polynl-checkpoint/1",
      "task": "classifier" | "face_detector",
      "arch": {...},            # the model config (ResNetConfig / ResNet9Config / RetinaFaceConfig
                                # as a dict; a classifier's "architecture" names its family)
      "state_dict": {...},
      "labels": [...],          # class names (classifier) or ["face"] (detector)
      "preprocess": {...},      # the transform the export writes into config.json
      "training": {...},        # recipe, seed, epochs, metrics: what the model card reports
    }

``load_checkpoint`` validates the file and rebuilds the model; every failure is a
:class:`CheckpointError` with a message that names the file and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from polynl_core.repository import sha256_of
from polynl_core.tasks import Task

CHECKPOINT_FORMAT = "polynl-checkpoint/1"
# The checkpoint format stores the model name of the task (polynl_core.tasks.Task.model_name).
TASKS = tuple(task.model_name for task in Task)


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not in the expected layout."""


@dataclass
class Checkpoint:
    task: str
    arch: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    labels: list[str]
    preprocess: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "task": self.task,
            "arch": self.arch,
            "state_dict": self.state_dict,
            "labels": self.labels,
            "preprocess": self.preprocess,
            "training": self.training,
        }


def build_model(task: str, arch: dict[str, Any]) -> nn.Module:
    """Rebuild an (untrained) model of ``task`` from its stored config."""
    if task == Task.CLASSIFICATION.model_name:
        from models.classifiers import build_classifier, classifier_config

        try:
            return build_classifier(classifier_config(arch))
        except ValueError as exc:
            raise CheckpointError(f"cannot rebuild the classifier: {exc}") from exc
    if task == Task.FACE_DETECTION.model_name:
        from models.retinaface.net import RetinaFace, RetinaFaceConfig

        return RetinaFace(RetinaFaceConfig.from_dict(arch))
    raise CheckpointError(f"unknown task {task!r}; expected one of {TASKS}")


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> str:
    """Write atomically (temp file + rename) and return the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(checkpoint.to_dict(), tmp)
    tmp.replace(path)
    return sha256_of(path)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint file (weights only; no pickled code is executed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a {CHECKPOINT_FORMAT} checkpoint (to import third-party weights see "
            "models.resnet / models.retinaface loaders)"
        )
    missing = [k for k in ("task", "arch", "state_dict", "labels", "preprocess") if k not in raw]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the fields {missing}")
    if raw["task"] not in TASKS:
        raise CheckpointError(f"checkpoint {path} has unknown task {raw['task']!r}")
    return Checkpoint(
        task=raw["task"],
        arch=dict(raw["arch"]),
        state_dict=raw["state_dict"],
        labels=list(raw["labels"]),
        preprocess=dict(raw["preprocess"]),
        training=dict(raw.get("training", {})),
        path=path,
        sha256=sha256_of(path),
    )


def load_model(path: str | Path) -> tuple[nn.Module, Checkpoint]:
    """Load a checkpoint and return the model (in eval mode) with its metadata."""
    checkpoint = load_checkpoint(path)
    model = build_model(checkpoint.task, checkpoint.arch)
    try:
        model.load_state_dict(checkpoint.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weights in {path} do not match its architecture: {exc}") from exc
    model.eval()
    return model, checkpoint

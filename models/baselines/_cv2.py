"""Import OpenCV with a message that says which extra provides it."""

from __future__ import annotations

from types import ModuleType


def import_cv2() -> ModuleType:
    try:
        import cv2
    except ImportError as exc:
        raise ImportError("the face-detector baselines need OpenCV: pip install -e '.[baselines]'") from exc
    return cv2

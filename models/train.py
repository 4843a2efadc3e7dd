"""Training CLI: ``python -m models.train classifier|detector [options]``.

``classifier`` trains a (Poly-NL) ResNet on an ImageFolder tree (models/classification/train.py);
``detector`` trains a (Poly-NL) RetinaFace (models/retinaface/train.py). ``--help`` after the
task name lists each one's options.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("classifier", "detector"):
        print(__doc__, file=sys.stderr)
        return 2
    task, rest = argv[0], argv[1:]
    if task == "classifier":
        from models.classification.train import main as train_classifier

        return train_classifier(rest)
    from models.retinaface.train import main as train_detector

    return train_detector(rest)


if __name__ == "__main__":
    sys.exit(main())

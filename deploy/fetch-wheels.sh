#!/usr/bin/env bash
# Download, on the host, every Python wheel the images need, so `docker build` runs with no
# network at all (the Dockerfile installs with `pip install --no-index --find-links`).
#
#   deploy/fetch-wheels.sh [--cuda]
#
#   build/wheels/serve/   the service's dependencies: pyproject's [project].dependencies
#   build/wheels/export/  what the export adds: the `models` extra (torch CPU, onnx, onnxscript)
#   build/wheels/cuda/    with --cuda: NVIDIA's CUDA/cuDNN wheels, the onnxruntime-gpu
#                         [cuda,cudnn] extras (about 2.5 GB); used by --build-arg ORT_CUDA=1
#
# Pins come from pyproject.toml (the one place dependencies are written). Idempotent: pip
# skips wheels already in the folder. Uses the host's pip configuration (index, proxy CA).
# Wheels are for Linux x86_64, CPython 3.11 (the Python of both base images).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT=build/wheels
WITH_CUDA=0
[[ ${1:-} == --cuda ]] && WITH_CUDA=1
mkdir -p "$OUT/serve" "$OUT/export" "$OUT/cuda"

# requirements.txt files derived from pyproject.toml; the Dockerfile installs exactly these.
"$PY" - "$OUT" <<'PYEOF'
import sys
import tomllib
from pathlib import Path

out = Path(sys.argv[1])
project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
serve = project["dependencies"]
export = project["optional-dependencies"]["models"]
ort = next(req for req in serve if req.startswith("onnxruntime-gpu=="))
cuda = [ort.replace("onnxruntime-gpu==", "onnxruntime-gpu[cuda,cudnn]==")]
for name, reqs in (("serve", serve), ("export", export), ("cuda", cuda)):
    (out / name / "requirements.txt").write_text("\n".join(reqs) + "\n")
PYEOF

download() {  # download <folder> <requirements>
  local dest=$1 reqs=$2 stamp="$OUT/.downloaded-$(basename "$1")"  # outside the COPYed folder
  # Same pins as the last complete download: nothing to fetch (pip would re-resolve slowly).
  if cmp -s "$reqs" "$stamp"; then
    echo "  up to date"
    return 0
  fi
  "$PY" -m pip download --quiet --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
    --python-version 3.11 --implementation cp \
    -d "$dest" -r "$reqs" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  cp "$reqs" "$stamp"
}

echo "[wheels] serve"
download "$OUT/serve" "$OUT/serve/requirements.txt"
echo "[wheels] export"
download "$OUT/export" "$OUT/export/requirements.txt"
if [[ $WITH_CUDA == 1 ]]; then
  echo "[wheels] cuda"
  download "$OUT/cuda" "$OUT/cuda/requirements.txt"
fi
# The export and cuda images install on top of serve-deps: keep only what serve lacks there,
# so the build context (and the vfs layers) do not carry the same 250 MB wheel twice.
for part in export cuda; do
  for wheel in "$OUT/$part"/*.whl; do
    [[ -e $wheel ]] || continue
    [[ -e "$OUT/serve/$(basename "$wheel")" ]] && rm -f "$wheel"
  done
done
du -sh "$OUT"/serve "$OUT"/export "$OUT"/cuda

#!/usr/bin/env bash
# Tools for tests/deploy/test_k8s_manifests.py, called by .ci/run; each step does nothing when its
# tool is already there:
#  - kubectl (Debian's kubernetes-client) for `kubectl kustomize`;
#  - checkov in its own venv, build/checkov-venv, from deploy/k8s/checkov-constraints.txt (it cannot
#    share the project's venv: it pins packaging<24).
# kubernetes-validate is a Python package of the project's `k8s-check` extra.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if ! command -v kubectl >/dev/null; then
  SUDO=""
  [ "$(id -u)" != "0" ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends kubernetes-client
fi
echo "kubectl: $(kubectl version --client 2>&1 | head -1)"
VENV="$ROOT/build/checkov-venv"
if [ ! -x "$VENV/bin/checkov" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
  CHECKOV="$(grep -i '^checkov==' "$ROOT/deploy/k8s/checkov-constraints.txt")"
  "$VENV/bin/python" -m pip install --quiet -c "$ROOT/deploy/k8s/checkov-constraints.txt" "$CHECKOV"
fi
echo "checkov: $("$VENV/bin/checkov" --version)"

#!/usr/bin/env bash
# Run the checks: ruff (lint + format), mypy on the whole project, then pytest.
# Default: the fast suites. With CI=true (or --all) also the slow, docker, browser and cluster suites.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/setup.sh"
PY=.venv/bin/python
echo "==> ruff"
$PY -m ruff check .
$PY -m ruff format --check .
echo "==> mypy polynl_core service export models bench"
$PY -m mypy polynl_core service export models bench
MARKERS="not slow and not docker and not browser and not cluster"
if [ "${CI:-}" = "true" ] || [ "${1:-}" = "--all" ]; then
  # Everything: slow suites, the docker deploy smoke test (about 7 min cold here; skipped,
  # loudly, where Docker cannot run) and the browser test.
  MARKERS="${POLYNL_CI_MARKERS:-not browser or browser}"
  [ "${1:-}" = "--all" ] && shift
fi
echo "==> pytest -m \"$MARKERS\""
# pytest exits 5 when nothing was collected: that is a failure here too.
exec $PY -m pytest -m "$MARKERS" "$@"

#!/usr/bin/env bash
# Run the checks: ruff (lint + format), mypy on service/ and export/, then pytest.
# Default: the fast suites. With CI=true (or --all) also the slow and browser suites.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/setup.sh"
PY=.venv/bin/python
echo "==> ruff"
$PY -m ruff check .
$PY -m ruff format --check .
echo "==> mypy service export"
$PY -m mypy service export
MARKERS="not slow and not docker and not browser"
if [ "${CI:-}" = "true" ] || [ "${1:-}" = "--all" ]; then
  # The docker deploy smoke test has not yet passed end to end (issue 7): run it explicitly
  # with `pytest -m docker tests/deploy` (about 30 min cold) until it does.
  MARKERS="${POLYNL_CI_MARKERS:-not docker}"
  [ "${1:-}" = "--all" ] && shift
fi
echo "==> pytest -m \"$MARKERS\""
# pytest exits 5 when nothing was collected: that is a failure here too.
exec $PY -m pytest -m "$MARKERS" "$@"

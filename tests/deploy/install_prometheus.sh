#!/usr/bin/env bash
# Install Debian's Prometheus server and promtool for tests/integration/test_prometheus.py.
# Called by .ci/run. Does nothing when both are already there.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  echo "prometheus: $(prometheus --version 2>&1 | head -1)"
  exit 0
fi
"$(dirname "${BASH_SOURCE[0]}")/../../scripts/apt-install.sh" prometheus
# The package may start its own server on :9090 where an init system runs; the tests start theirs.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus || true
fi
prometheus --version 2>&1 | head -1

#!/usr/bin/env bash
# apt-get install the given Debian packages (no recommends), with sudo when not root.
# Used by the test suites' installers (tests/browser/install_chromium.sh,
# tests/deploy/install_prometheus.sh); they first check whether their tools are there.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != "0" ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends "$@"

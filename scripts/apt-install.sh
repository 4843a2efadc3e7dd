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
# Another apt-get (an earlier installer, the machine's own updates) may hold dpkg's lock for a
# while: wait for it instead of failing, which would silently skip that suite's tests.
LOCK_WAIT=(-o DPkg::Lock::Timeout="${APT_LOCK_TIMEOUT_S:-300}")
$SUDO apt-get "${LOCK_WAIT[@]}" update
$SUDO apt-get "${LOCK_WAIT[@]}" install -y --no-install-recommends "$@"

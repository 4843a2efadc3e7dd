#!/usr/bin/env bash
# Install Debian's Chromium and its driver for the browser test (tests/integration/test_demo_browser.py).
# Called by .ci/run before the browser suite. Playwright drives this Chromium; it never
# downloads a browser of its own. Does nothing when /usr/bin/chromium is already there.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo present)"
  exit 0
fi
"$(dirname "${BASH_SOURCE[0]}")/../../scripts/apt-install.sh" chromium chromium-driver fonts-dejavu-core
/usr/bin/chromium --version 2>/dev/null

"""Entry point of ``python -m bench.loadtest``."""

from __future__ import annotations

import sys

from bench.loadtest.cli import main

sys.exit(main())

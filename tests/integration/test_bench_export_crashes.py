"""``python -m bench.export_crashes``: one fresh detector export without the CLI's retry,
counted and reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.export_crashes import main, outcome


def test_outcomes_are_named_by_signal_or_exit_status() -> None:
    assert outcome(0) == "ok"
    assert outcome(-11) == "SIGSEGV"
    assert outcome(2) == "exit 2"


@pytest.mark.slow
def test_one_export_run_is_counted_and_reported(tmp_path: Path) -> None:
    out = tmp_path / "crashes"
    report = main(["--runs", "1", "--out", str(out)])
    assert report["outcomes"] == {"ok": 1}
    assert json.loads(out.with_suffix(".json").read_text())["runs"] == 1
    assert "1 runs of `python -m export" in out.with_suffix(".md").read_text()

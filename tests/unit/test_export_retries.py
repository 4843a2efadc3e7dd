"""``python -m export`` runs the export in a child process and runs it again after a crash.

The child here is a small script standing in for the exporter: it crashes with SIGSEGV (as
torch's TorchScript exporter intermittently does) while a marker file is missing, then exits
with the status it is given.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from export.__main__ import ATTEMPTS, run_with_retries

STAND_IN = """
import os, pathlib, signal, sys
marker, crashes, status, sig = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
done = int(marker.read_text()) if marker.exists() else 0
marker.write_text(str(done + 1))
if done < crashes:
    os.kill(os.getpid(), getattr(signal, sig))
sys.exit(status)
"""


def run(tmp_path: Path, crashes: int, status: int = 0, sig: str = "SIGSEGV") -> tuple[int, int]:
    marker = tmp_path / "runs"
    code = run_with_retries(
        [str(marker), str(crashes), str(status), sig], program=[sys.executable, "-c", STAND_IN]
    )
    return code, int(marker.read_text())


def test_a_crashed_export_is_run_again_and_its_status_kept(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path, crashes=1, status=0) == (0, 2)
    assert "died by SIGSEGV" in capfd.readouterr().err


def test_the_exit_status_of_a_finished_export_passes_through(tmp_path: Path) -> None:
    assert run(tmp_path, crashes=0, status=2) == (2, 1)


def test_it_gives_up_after_the_last_attempt(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, crashes=ATTEMPTS + 5) == (1, ATTEMPTS)
    assert "giving up" in capfd.readouterr().err


def test_other_signals_are_not_retried(tmp_path: Path) -> None:
    assert run(tmp_path, crashes=1, sig="SIGTERM") == (128 + 15, 1)

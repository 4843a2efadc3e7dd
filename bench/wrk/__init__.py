"""wrk, a C load generator, beside the Python load tester: the same multipart uploads for a
fraction of the client CPU, so the client does not take the cores the server needs.

Path: image paths -> ``wrk -s multipart.lua`` (closed loop: each connection sends its next
request when the previous one is answered) -> the script's ``done()`` prints one JSON line ->
:func:`run_wrk` returns it as a dict with the client's own CPU time added. Needs Debian's
``wrk`` (``scripts/apt-install.sh wrk``); :class:`WrkMissing` otherwise.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("multipart.lua")
MARKER = "WRK_JSON "


class WrkMissing(RuntimeError):
    """No ``wrk`` executable on PATH."""


class WrkFailed(RuntimeError):
    """wrk exited with an error or printed no summary."""


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissing("wrk is not installed (Debian: scripts/apt-install.sh wrk)")
    return path


def parse_output(stdout: str) -> dict[str, Any]:
    """The JSON line the Lua script's ``done()`` printed, with ``ok`` (2xx answers) added."""
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            summary: dict[str, Any] = json.loads(line[len(MARKER) :])
            summary["ok"] = sum(n for status, n in summary["by_status"].items() if status.startswith("2"))
            return summary
    raise WrkFailed(f"no {MARKER.strip()} line in wrk's output:\n{stdout[-2000:]}")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(
    url: str,
    images: list[Path],
    connections: int = 16,
    duration_s: float = 10.0,
    threads: int = 1,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """One closed-loop run of ``connections`` keep-alive connections against ``url`` (the
    endpoint, query included), cycling through ``images``; wrk's summary plus its CPU use."""
    command = [
        wrk_path(),
        f"-t{threads}",
        f"-c{max(connections, threads)}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(SCRIPT),
        url,
        "--",
        *(str(path) for path in images),
    ]
    # wrk is the only child that exits during the run, so the children's CPU time is its own.
    cpu_before = _children_cpu_s()
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
    cpu_s = _children_cpu_s() - cpu_before
    if done.returncode != 0:
        raise WrkFailed(f"wrk exited with {done.returncode}: {done.stderr.strip() or done.stdout[-2000:]}")
    summary = parse_output(done.stdout)
    summary["client_cpu_s"] = cpu_s
    summary["client_cpu_percent_of_one_core"] = 100.0 * cpu_s / summary["duration_s"]
    summary["command"] = " ".join(command[1:])
    return summary

"""Check: does the detector export still crash? N fresh exports, without the CLI's retry.

torch 2.13's function-extraction pass crashed about one detector export in six with SIGSEGV;
the export no longer uses it (:mod:`export.block_functions`). This runs
``python -m export --only face_detector`` N times, each in a fresh process with the CLI's
crash guard switched off (``POLYNL_EXPORT_WORKER=1``: the export runs in that process, so a
crash shows as a signal), and counts the outcomes.

    python -m bench.export_crashes --runs 20
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.machine import machine_info, machine_markdown, write_report
from export.__main__ import WORKER_ENV

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def outcome(returncode: int) -> str:
    if returncode == 0:
        return "ok"
    if returncode < 0:
        return signal.Signals(-returncode).name
    return f"exit {returncode}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--checkpoint", type=Path, help="detector checkpoint (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=RESULTS / "export-crashes")
    args = parser.parse_args(argv)

    env = {**os.environ, WORKER_ENV: "1"}
    outcomes: Counter[str] = Counter()
    seconds = []
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory() as repository:
            command = [sys.executable, "-m", "export", "--only", "face_detector", "--out", repository]
            if args.checkpoint:
                command += ["--detector-checkpoint", str(args.checkpoint)]
            started = time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
            seconds.append(time.perf_counter() - started)
        result = outcome(done.returncode)
        outcomes[result] += 1
        print(f"run {run}/{args.runs}: {result} in {seconds[-1]:.1f} s", flush=True)
        if result != "ok":
            print(done.stderr[-2000:], flush=True)
    info = machine_info()
    report = {"benchmark": "detector export crashes", "runs": args.runs, "outcomes": dict(outcomes),
              "mean_seconds": round(sum(seconds) / len(seconds), 1), "machine": info}  # fmt: skip
    lines = [
        "## Detector export: fresh processes, no retry",
        "",
        machine_markdown(info),
        "",
        f"{args.runs} runs of `python -m export --only face_detector` with `{WORKER_ENV}=1`: "
        + ", ".join(f"{name} {count}" for name, count in sorted(outcomes.items()))
        + f" (mean {report['mean_seconds']} s per run).",
        "",
    ]
    write_report(args.out, report, "\n".join(lines))
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()

"""Where a figure was measured: machine, package versions, and what else was running.

Every benchmark and load-test report embeds :func:`machine_info`, because a throughput
number without the machine (and its background load) behind it is not a claim anyone
can check. Standard library only, plus psutil when installed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PACKAGES = (
    "torch",
    "onnx",
    "onnxruntime-gpu",
    "onnxruntime",
    "numpy",
    "pillow",
    "fastapi",
    "uvicorn",
    "uvloop",
    "httptools",
    "httpx",
    "litserve",
    "prometheus-client",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    """GPU names from nvidia-smi, or an empty list on a machine without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def busy_processes(min_cpu_percent: float = 20.0, sample_s: float = 0.5) -> list[dict[str, Any]]:
    """Other processes using CPU right now (so a report says what it competed with)."""
    try:
        import psutil
    except ImportError:
        return []
    procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for proc in procs:
        try:
            proc.cpu_percent(None)
        except psutil.Error:
            continue
    time.sleep(sample_s)
    busy = []
    for proc in procs:
        try:
            cpu = proc.cpu_percent(None)
        except psutil.Error:
            continue
        if cpu >= min_cpu_percent and proc.pid != os.getpid():
            command = " ".join(proc.info.get("cmdline") or [proc.info.get("name") or "?"])
            busy.append({"pid": proc.pid, "cpu_percent": round(cpu, 1), "command": command[:160]})
    return sorted(busy, key=lambda p: -float(p["cpu_percent"]))


def machine_info(sample_background: bool = True) -> dict[str, Any]:
    """CPU model, cores, memory, GPU, OS, versions, load average and busy processes."""
    info: dict[str, Any] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpus": gpu_names(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    if sample_background:
        info["busy_processes"] = busy_processes()
    return info


def machine_markdown(info: dict[str, Any]) -> str:
    """A few lines for the top of a results table."""
    lines = [
        f"- Machine: {info['cpu_model']}, {info['usable_cores']} usable cores"
        + (f", {info['memory_gib']} GiB RAM" if "memory_gib" in info else "")
        + (f", GPU: {', '.join(info['gpus'])}" if info["gpus"] else ", no GPU"),
        f"- Measured: {info['measured_at']}, load average (1/5/15 min) at start: "
        + " / ".join(str(x) for x in info["load_average_1_5_15"]),
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items()),
    ]
    busy = info.get("busy_processes") or []
    if busy:
        lines.append(
            "- Also running at start: "
            + "; ".join(f"`{p['command'][:80]}` ({p['cpu_percent']}% CPU)" for p in busy[:5])
        )
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any], markdown: str) -> None:
    """``out``.json (the report, plus the load average at the end) and ``out``.md (its tables)."""
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown)

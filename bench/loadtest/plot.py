"""Sweep plot: latency percentiles against offered load (PNG, matplotlib).

Last step of ``--sweep``: the list of per-point summaries -> one figure. matplotlib comes
from the ``bench`` extra and is imported only here, so the load tester itself runs without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

PLOTTED = ("p50", "p90", "p99", "max")


def plot_sweep(points: Sequence[dict[str, Any]], x_label: str, title: str, path: Path) -> Path:
    """Latency percentiles (log scale) and achieved throughput against the swept load."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    xs = [float(p["load"]) for p in points]
    fig, (ax_lat, ax_tp) = plt.subplots(2, 1, figsize=(7, 7), sharex=True, height_ratios=[3, 2])
    for name in PLOTTED:
        ys = [p["summary"]["latency_ms"].get(name) for p in points]
        ax_lat.plot(xs, [y if y is not None else float("nan") for y in ys], marker="o", label=name)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency of successful requests (ms)")
    ax_lat.grid(True, which="both", alpha=0.3)
    ax_lat.legend()
    ax_lat.set_title(title)

    ax_tp.plot(xs, [p["summary"]["throughput_rps"] for p in points], marker="o", label="achieved (ok/s)")
    if x_label.startswith("offered"):
        ax_tp.plot(xs, xs, linestyle="--", color="grey", label="offered")
    errors = [p["summary"]["errors"] for p in points]
    if any(errors):
        ax_err = ax_tp.twinx()
        ax_err.bar(xs, errors, width=max(xs) * 0.02, color="tab:red", alpha=0.4, label="errors")
        ax_err.set_ylabel("errors")
    ax_tp.set_xlabel(x_label)
    ax_tp.set_ylabel("throughput (req/s)")
    ax_tp.grid(True, alpha=0.3)
    ax_tp.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""Latency statistics for the load tester: percentiles and the per-run summary.

Sits at the end of the load tester's path: request records (from ``runner``) -> these
summaries -> the JSON report. Pure Python, no NumPy, so the math is easy to check.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0)


@dataclass(frozen=True)
class RequestRecord:
    """One request as the client saw it.

    ``start`` is when the request was *due* (its scheduled arrival in open loop, the moment
    the client became free in closed loop), so a late send caused by a slow server or a busy
    client still counts against latency: no coordinated omission.
    """

    start: float  # seconds, monotonic clock
    end: float
    status: str  # "200", "503", ... or "timeout", "connect_error", "error"
    sent_late_s: float = 0.0  # how long after ``start`` the bytes actually left the client

    @property
    def latency_s(self) -> float:
        return self.end - self.start

    @property
    def ok(self) -> bool:
        return self.status.isdigit() and 200 <= int(self.status) < 300


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of sorted values, linear interpolation between ranks.

    Same definition as NumPy's default (``method="linear"``): rank ``(n - 1) * q / 100``.
    """
    if not sorted_values:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = rank - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def latency_summary_ms(latencies_s: Iterable[float]) -> dict[str, float | int]:
    """count, mean, p50/p90/p95/p99, min and max in milliseconds."""
    values = sorted(v * 1000.0 for v in latencies_s)
    summary: dict[str, float | int] = {"count": len(values)}
    if not values:
        return summary
    summary["mean"] = sum(values) / len(values)
    summary["min"] = values[0]
    for q in PERCENTILES:
        summary[f"p{q:g}"] = percentile(values, q)
    summary["max"] = values[-1]
    return summary


def summarize(records: Sequence[RequestRecord], scheduled: int) -> dict[str, object]:
    """Counts by status, throughput and latency of one run.

    ``throughput_rps`` is successful responses per second over the window from the first
    due request to the last completion, so a server that answers slowly at the end is not
    flattered by an early stop. ``steady_throughput_rps`` counts only the responses that
    completed while requests were still being sent (first to last due time): the
    saturated rate without the ramp-down, where a closed loop drains its last requests.
    """
    statuses = Counter(r.status for r in records)
    ok = [r for r in records if r.ok]
    window = max(r.end for r in records) - min(r.start for r in records) if records else 0.0
    late = sorted(r.sent_late_s * 1000.0 for r in records)
    steady = 0.0
    if records:
        first_due, last_due = min(r.start for r in records), max(r.start for r in records)
        if last_due > first_due:
            steady = sum(1 for r in ok if r.end <= last_due) / (last_due - first_due)
    return {
        "scheduled": scheduled,
        "completed": len(records),
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "by_status": dict(sorted(statuses.items())),
        "window_s": window,
        "throughput_rps": len(ok) / window if window > 0 else 0.0,
        "steady_throughput_rps": steady,
        "latency_ms": latency_summary_ms(r.latency_s for r in ok),
        "latency_all_ms": latency_summary_ms(r.latency_s for r in records),
        # JSON has no NaN: an empty run reports None.
        "send_lag_ms": {
            "p50": percentile(late, 50.0) if late else None,
            "p99": percentile(late, 99.0) if late else None,
            "max": late[-1] if late else None,
        },
    }

"""The server's own view of a load test: histograms read from ``GET /metrics``.

The load tester scrapes the Prometheus text before and after a run; the difference of a
histogram's cumulative buckets is what this run added. Used for the batch-size
distribution (did concurrent requests really share inference calls?) and the inference
time. Parsing is prometheus-client's own parser, so any exposition the service writes reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Histogram:
    """One labelled series of a Prometheus histogram: cumulative bucket counts by upper bound."""

    name: str
    labels: dict[str, str]
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    count: float = 0.0
    total: float = 0.0  # the _sum sample

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return self.name, tuple(sorted(self.labels.items()))


def parse_histograms(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], Histogram]:
    """Every histogram series in a Prometheus exposition, keyed by (name, labels)."""
    series: dict[tuple[str, tuple[tuple[str, str], ...]], Histogram] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            hist = Histogram(family.name, labels)
            hist = series.setdefault(hist.key, hist)
            if sample.name.endswith("_bucket"):
                hist.buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_count"):
                hist.count = sample.value
            elif sample.name.endswith("_sum"):
                hist.total = sample.value
    return series


def diff_histogram(before: Histogram | None, after: Histogram) -> dict[str, object]:
    """What a run added to one histogram: observations per bucket (not cumulative), count, mean."""
    previous = before.buckets if before is not None else {}
    cumulative = {le: after.buckets[le] - previous.get(le, 0.0) for le in sorted(after.buckets)}
    per_bucket: dict[str, int] = {}
    below = 0.0
    for le, total in cumulative.items():
        label = "+Inf" if math.isinf(le) else f"{le:g}"
        per_bucket[label] = round(total - below)
        below = total
    count = after.count - (before.count if before is not None else 0.0)
    added = after.total - (before.total if before is not None else 0.0)
    return {
        "metric": after.name,
        "labels": after.labels,
        "count": round(count),
        "sum": added,
        "mean": added / count if count > 0 else None,
        "buckets": per_bucket,
    }


def histogram_deltas(before_text: str | None, after_text: str, name_contains: str) -> list[dict[str, object]]:
    """Run deltas of every histogram whose name contains ``name_contains`` and that moved."""
    before = parse_histograms(before_text) if before_text else {}
    deltas = []
    for key, hist in sorted(parse_histograms(after_text).items()):
        if name_contains not in hist.name:
            continue
        delta = diff_histogram(before.get(key), hist)
        if delta["count"]:
            deltas.append(delta)
    return deltas

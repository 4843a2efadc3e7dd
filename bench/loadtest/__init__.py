"""Load tester for the polynl-serve endpoints (``python -m bench.loadtest --help``).

Closed loop (N concurrent clients) or open loop (Poisson arrivals, latency measured from
the scheduled arrival so queueing under overload is visible), bounded by request count
and/or duration, loopback-only unless ``--allow-remote``. Reports throughput, latency
percentiles, errors by status and the server's batch-size histogram from ``/metrics``.
"""

from bench.loadtest.runner import LoadConfig, Payload, RunResult, run_load
from bench.loadtest.stats import percentile, summarize

__all__ = ["LoadConfig", "Payload", "RunResult", "percentile", "run_load", "summarize"]

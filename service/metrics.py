"""Prometheus metrics: what every step of the data path reports, served at ``/metrics``.

One registry per app (so tests and benchmarks can run several apps in a process):
request counts by endpoint and status, request latency, queue depth, batch size and
inference time per model, and requests dropped before inference (deadline, cancelled,
overloaded). Admission control (``service.admission``): inference requests in flight, the
limit on them, and the requests refused at the door (``polynl_admission_refused_total``, by
endpoint; they never reach a model, so ``polynl_dropped`` does not count them).
``polynl_batch_size_count`` is the number of inference calls: the batching test compares it
with the number of requests.

With several worker processes (``POLYNL_WORKERS``), a scrape reaches one of them, so each
process writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
multiprocess mode, switched on by ``python -m service``) and ``/metrics`` answers the sum
over all workers: counters and histograms add up, the queue depth is the live workers' sum.

Also: each model's queue capacity and batch size limit and whether it is ready (so that
alerts can compare depth to capacity: ``deploy/prometheus/rules``), ``polynl_build_info``
(version, execution providers, models; value 1), and the standard process metrics
(``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ``process_open_fds``, ...):
with several workers, summed over the live worker processes (their maximum for
``process_max_fds``, the earliest for ``process_start_time_seconds``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The service's metric families, registered in their own registry."""

    def __init__(self) -> None:
        # prometheus_client picks its value store when first imported: the variable must be
        # set before then (python -m service sets it before it starts the workers).
        self.multiprocess_dir = os.environ.get(MULTIPROC_DIR_ENV) or None
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "polynl_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "polynl_request_duration_seconds",
            "HTTP request latency, first byte in to response start.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter("polynl_images", "Images decoded by model.", ["model"], registry=self.registry)
        self.queue_depth = Gauge(
            "polynl_queue_depth",
            "Images waiting in the batch queue.",
            ["model"],
            registry=self.registry,
            multiprocess_mode="livesum",  # summed over the workers that are running
        )
        self.batch_size = Histogram(
            "polynl_batch_size",
            "Network inputs per inference call: images, and for the detector each pyramid level "
            "of an image (the _count is the number of inference calls).",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "polynl_inference_seconds",
            "Duration of one ONNX Runtime call (one batch).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.dropped = Counter(
            "polynl_dropped",
            "Images that never reached inference, by reason (overloaded, deadline, cancelled).",
            ["model", "reason"],
            registry=self.registry,
        )
        self.admission_refused = Counter(
            "polynl_admission_refused",
            "Inference requests refused with 503 before their body was read: the worker had "
            "POLYNL_MAX_INFLIGHT_REQUESTS in flight (service.admission); also in polynl_requests.",
            ["endpoint"],
            registry=self.registry,
        )
        self.inflight_requests = Gauge(
            "polynl_inflight_requests",
            "Inference requests admitted and not yet answered (HTTP and gRPC).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.admission_limit = Gauge(
            "polynl_admission_limit",
            "Inference requests in flight before admission refuses with 503 (0 = no limit).",
            registry=self.registry,
            multiprocess_mode="livesum",  # the instance's total over its workers
        )
        self.queue_capacity = Gauge(
            "polynl_queue_capacity",
            "Network inputs a model's batch queue holds before it refuses with 503.",
            ["model"],
            registry=self.registry,
            multiprocess_mode="livesum",  # like the depth: the instance's total over its workers
        )
        self.max_batch_size = Gauge(
            "polynl_max_batch_size",
            "Largest batch a model's batcher sends to ONNX Runtime.",
            ["model"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.model_ready = Gauge(
            "polynl_model_ready",
            "1 once a model is loaded and warmed up and accepting requests, 0 while starting or stopping.",
            ["model"],
            registry=self.registry,
            multiprocess_mode="livemin",  # ready only when every live worker is
        )
        self.build_info = Gauge(
            "polynl_build_info",
            "Always 1; the labels say which version serves which models on which execution providers.",
            ["version", "models", "providers"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        if self.multiprocess_dir is None:
            ProcessCollector(registry=self.registry)

    def model_loaded(self, model: str, queue_size: int, max_batch_size: int) -> None:
        self.queue_capacity.labels(model).set(queue_size)
        self.max_batch_size.labels(model).set(max_batch_size)
        self.model_ready.labels(model).set(0)

    def model_ready_state(self, model: str, ready: bool) -> None:
        self.model_ready.labels(model).set(1 if ready else 0)

    def describe_build(self, version: str, models: Iterable[str], providers: Iterable[str]) -> None:
        self.build_info.labels(version, ",".join(sorted(models)), ",".join(sorted(set(providers)))).set(1)

    def observer(self, model: str) -> ModelObserver:
        return ModelObserver(self, model)

    def render(self) -> bytes:
        """Prometheus text: this process's registry, or every worker's values summed."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        registry.register(WorkerProcessCollector(self.multiprocess_dir))
        return generate_latest(registry)

    def process_exiting(self) -> None:
        """Drop this worker's live gauges (its counters stay in the totals)."""
        if self.multiprocess_dir is not None:
            mark_process_dead(os.getpid(), path=self.multiprocess_dir)


class ModelObserver:
    """The batcher's hooks (``service.batching.BatchObserver``) for one model."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._depth = metrics.queue_depth.labels(model)
        self._batch = metrics.batch_size.labels(model)
        self._inference = metrics.inference.labels(model)
        self._dropped = metrics.dropped
        self._model = model

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def batch_done(self, size: int, seconds: float) -> None:
        self._batch.observe(size)
        self._inference.observe(seconds)

    def dropped(self, reason: str) -> None:
        self._dropped.labels(self._model, reason).inc()


_PID_IN_FILE = re.compile(r"_(\d+)\.db$")
_MAX_OF = {"process_max_fds"}
_MIN_OF = {"process_start_time_seconds"}


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


class WorkerProcessCollector(Collector):
    """The standard process metrics of every live worker (pids from the multiprocess files),
    summed; the workers' parent, the supervisor, is not counted."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _pids(self) -> list[int]:
        pids = set()
        for name in os.listdir(self.path):
            match = _PID_IN_FILE.search(name)
            if match and os.path.exists(f"/proc/{match.group(1)}"):
                pids.add(int(match.group(1)))
        return sorted(pids)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        values: dict[str, list[float]] = {}
        for pid in self._pids():
            for metric in ProcessCollector(pid=_constant(pid), registry=None).collect():
                merged.setdefault(metric.name, metric)
                values.setdefault(metric.name, []).extend(sample.value for sample in metric.samples)
        for name, metric in merged.items():
            numbers = values[name]
            value = max(numbers) if name in _MAX_OF else min(numbers) if name in _MIN_OF else sum(numbers)
            sample = metric.samples[0]
            out = Metric(metric.name, metric.documentation, metric.type)
            out.add_sample(sample.name, sample.labels, value)
            yield out

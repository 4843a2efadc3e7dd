"""The load itself: closed-loop clients or open-loop Poisson arrivals over async HTTP.

Path of one run: payloads (image bytes) -> :func:`run_load` schedules requests (closed or
open loop) -> httpx sends them -> one :class:`~bench.loadtest.stats.RequestRecord` each ->
``stats.summarize``.

Closed loop gives each client its own keep-alive connection (its own ``httpx.AsyncClient``),
as separate users have: 32 clients sharing one connection pool spent 6 to 8 ms of client CPU
per request in the pool's bookkeeping (2 to 3 ms with one pool each), and the pool's
hand-over of connections put a 1.3 to 1.6 s p99 on every server measured, while the
service's own latency histogram showed all its answers under 0.25 s.

Open loop avoids coordinated omission: the arrival times are drawn up front from the
Poisson process and every request's latency is measured from its *scheduled* arrival,
not from when the client managed to send it. A server (or client) that falls behind
therefore shows the queueing it causes instead of silently slowing the arrivals.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TextIO

import httpx
import numpy as np

from bench.loadtest.stats import RequestRecord

if TYPE_CHECKING:
    from bench.loadtest.oip import OipTarget

Mode = Literal["closed", "open"]


@dataclass(frozen=True)
class Payload:
    """One image to upload: its bytes, content type and a name for multipart forms."""

    data: bytes
    content_type: str
    name: str


@dataclass
class LoadConfig:
    """How much load, of which shape, and when to stop (whichever bound comes first)."""

    mode: Mode = "closed"
    concurrency: int = 16  # closed loop: clients, each waits for its answer before sending again
    rate: float = 50.0  # open loop: mean arrivals per second (Poisson)
    requests: int | None = 500
    duration_s: float | None = 30.0
    timeout_s: float = 30.0  # per request, from its due time; then it counts as "timeout"
    max_connections: int = 256
    multipart: bool = False  # send a multipart "file" field instead of a raw image body
    seed: int = 0
    progress_interval_s: float = 1.0
    headers: dict[str, str] = field(default_factory=dict)  # e.g. Authorization for an API key

    def __post_init__(self) -> None:
        if self.requests is None and self.duration_s is None:
            raise ValueError("a load test needs a bound: a request count, a duration, or both")
        if self.mode == "closed" and self.concurrency < 1:
            raise ValueError("closed loop needs concurrency >= 1")
        if self.mode == "open" and self.rate <= 0:
            raise ValueError("open loop needs a positive rate")


@dataclass
class RunResult:
    records: list[RequestRecord]
    scheduled: int
    elapsed_s: float
    client_cpu_s: float  # CPU time of this process (all threads) during the run
    wall_started: float = field(default_factory=time.time)

    @property
    def client_cpu_percent(self) -> float:
        """Client CPU use in % of one core: the load client shares the machine with the server."""
        return 100.0 * self.client_cpu_s / self.elapsed_s if self.elapsed_s > 0 else 0.0


def poisson_arrivals(rate: float, requests: int | None, duration_s: float | None, seed: int) -> list[float]:
    """Arrival offsets (seconds from start) of a Poisson process, cut by count and duration."""
    rng = random.Random(seed)
    arrivals: list[float] = []
    t = 0.0
    while requests is None or len(arrivals) < requests:
        t += rng.expovariate(rate)
        if duration_s is not None and t > duration_s:
            break
        arrivals.append(t)
    return arrivals


class _Progress:
    """Counters shared by the senders and the periodic progress line."""

    def __init__(self, stream: TextIO | None, interval_s: float) -> None:
        self.stream = stream
        self.interval_s = interval_s
        self.sent = 0
        self.done = 0
        self.errors = 0

    async def report(self, t0: float, stop: asyncio.Event) -> None:
        if self.stream is None:
            return
        last_done, last_t = 0, t0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
            now = time.perf_counter()
            rate = (self.done - last_done) / max(now - last_t, 1e-9)
            last_done, last_t = self.done, now
            print(
                f"[{now - t0:6.1f}s] sent {self.sent:6d}  done {self.done:6d}  errors {self.errors:5d}"
                f"  in-flight {self.sent - self.done:4d}  {rate:7.1f} req/s",
                file=self.stream,
                flush=True,
            )


# Sends the payload of the given index; answers its status ("200", "503", ...).
SendFn = Callable[[int], Awaitable[str]]


@dataclass(frozen=True)
class Target:
    """What the requests go to: ``url`` over the service's JSON API (httpx), or the Open
    Inference Protocol through Triton's clients (``oip``, :mod:`bench.loadtest.oip`), with
    ``tensors[i]`` the preprocessed tensor of payload ``i`` for the tensor way in."""

    url: str
    payloads: Sequence[Payload]
    oip: OipTarget | None = None
    tensors: Sequence[np.ndarray] | None = None


@contextlib.asynccontextmanager
async def _sender(target: Target, config: LoadConfig, connections: int) -> AsyncIterator[SendFn]:
    payloads = target.payloads
    if target.oip is not None:
        client = target.oip.client(config.headers)
        tensors = target.tensors
        try:

            async def send_oip(index: int) -> str:
                tensor = tensors[index] if tensors is not None else None
                return await client.send(payloads[index], tensor)

            yield send_oip
        finally:
            await client.close()
        return
    async with _client(config, connections) as http:

        async def send(index: int) -> str:
            payload = payloads[index]
            if config.multipart:
                files = {"file": (payload.name, payload.data, payload.content_type)}
                response = await http.post(target.url, files=files)
            else:
                headers = {"content-type": payload.content_type}
                response = await http.post(target.url, content=payload.data, headers=headers)
            return str(response.status_code)

        yield send


async def _send(
    send: SendFn, index: int, config: LoadConfig, due: float, progress: _Progress
) -> RequestRecord:
    progress.sent += 1
    status = "error"
    sent_at = time.perf_counter()
    try:
        # The deadline counts from the due time, like the latency.
        async with asyncio.timeout(max(0.0, due + config.timeout_s - sent_at)):
            status = await send(index)
    except TimeoutError:
        status = "timeout"
    except httpx.ConnectError:
        status = "connect_error"
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    except Exception as exc:  # the OIP clients' transport errors (aiohttp, grpc)
        status = type(exc).__name__
    end = time.perf_counter()
    record = RequestRecord(start=due, end=end, status=status, sent_late_s=sent_at - due)
    progress.done += 1
    if not record.ok:
        progress.errors += 1
    return record


def _client(config: LoadConfig, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(config.timeout_s), headers=config.headers)


async def _closed_loop(
    target: Target, config: LoadConfig, progress: _Progress
) -> tuple[list[RequestRecord], int]:
    count = len(target.payloads)
    records: list[RequestRecord] = []
    t0 = time.perf_counter()
    deadline = t0 + config.duration_s if config.duration_s is not None else None
    issued = 0

    async def client_loop() -> None:
        nonlocal issued
        # One connection per client, not one shared pool (see the module docstring).
        async with _sender(target, config, 1) as send:
            while True:
                if config.requests is not None and issued >= config.requests:
                    return
                now = time.perf_counter()
                if deadline is not None and now >= deadline:
                    return
                index = issued
                issued += 1  # reserved before the await: the count bound is exact
                records.append(await _send(send, index % count, config, now, progress))

    await asyncio.gather(*(client_loop() for _ in range(config.concurrency)))
    return records, issued


async def _open_loop(
    target: Target, config: LoadConfig, progress: _Progress
) -> tuple[list[RequestRecord], int]:
    count = len(target.payloads)
    arrivals = poisson_arrivals(config.rate, config.requests, config.duration_s, config.seed)
    t0 = time.perf_counter()
    tasks: list[asyncio.Task[RequestRecord]] = []
    # Any number of requests may be in flight: one shared pool of connections.
    async with _sender(target, config, config.max_connections) as send:
        for index, offset in enumerate(arrivals):
            due = t0 + offset
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            # Never wait for earlier answers here: that would be coordinated omission.
            tasks.append(asyncio.create_task(_send(send, index % count, config, due, progress)))
        records = list(await asyncio.gather(*tasks))
    return records, len(arrivals)


async def run_load_async(
    url: str,
    payloads: Sequence[Payload],
    config: LoadConfig,
    progress_stream: TextIO | None = sys.stderr,
    oip: OipTarget | None = None,
    tensors: Sequence[np.ndarray] | None = None,
) -> RunResult:
    """Drive ``url`` (or the ``oip`` target) with ``payloads`` as ``config`` says; returns
    every request's record."""
    if not payloads:
        raise ValueError("no payloads to send")
    progress = _Progress(progress_stream, config.progress_interval_s)
    stop = asyncio.Event()
    cpu0, t0 = time.process_time(), time.perf_counter()
    wall = time.time()
    reporter = asyncio.create_task(progress.report(t0, stop))
    loop = _closed_loop if config.mode == "closed" else _open_loop
    try:
        records, scheduled = await loop(Target(url, payloads, oip, tensors), config, progress)
    finally:
        stop.set()
        await reporter
    elapsed = time.perf_counter() - t0
    return RunResult(
        records=records,
        scheduled=scheduled,
        elapsed_s=elapsed,
        client_cpu_s=time.process_time() - cpu0,
        wall_started=wall,
    )


def run_load(
    url: str,
    payloads: Sequence[Payload],
    config: LoadConfig,
    progress_stream: TextIO | None = sys.stderr,
    oip: OipTarget | None = None,
    tensors: Sequence[np.ndarray] | None = None,
) -> RunResult:
    """Synchronous wrapper of :func:`run_load_async` (its own event loop)."""
    return asyncio.run(run_load_async(url, payloads, config, progress_stream, oip, tensors))

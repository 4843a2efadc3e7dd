"""Benchmark: open-loop overload at 3x capacity, admission control off vs on, in one run.

Not on the serving path. One worker of ``python -m service`` with the small classifier
(``--repository``, default ``model_repository``) on 127.0.0.1:

1. capacity: a short closed loop (``--capacity-clients`` clients, ``--capacity-s`` seconds)
   against a server with admission off;
2. per limit of ``--limits`` (default ``0,32``: off, then the default), a fresh server and
   Poisson arrivals at ``--factor`` x that capacity for ``--duration`` seconds, while a side
   process polls ``/healthz`` every ``--health-interval-ms``.

Reported per run: counts of 200, 503 (with and without ``Retry-After``), other statuses, and
requests lost (connection reset or closed without an answer) or hung (no answer within
``--timeout`` seconds of their scheduled time); latency p50/p99/max of the 200s and of every
answered request, counted from the *scheduled* arrival (no coordinated omission);
``/healthz`` p50/p99/max and failures; server and client CPU. Targets (issue 19):
``/healthz`` p99 <= 100 ms, p99 of the answered requests <= 2 s, every request answered 200
or 503.

The load client speaks HTTP/1.1 over asyncio streams itself, with requests built once
(multipart ``file`` field, or ``--raw`` bodies): at 3x capacity httpx would spend more CPU
per request than the server, on the same 2 cores. Connections are pooled (idle ones expire
after 2 s, before uvicorn's 5 s keep-alive closes them) and capped by ``--max-connections``;
a connection the server answers with ``Connection: close`` is closed.

    python -m bench.overload                          # about 2 minutes
    python -m bench.overload --duration 10 --limits 0,32,64,128
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing
import sys
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.loadtest.runner import poisson_arrivals
from bench.loadtest.stats import percentile
from bench.machine import machine_info, machine_markdown, write_report
from bench.service import RESULTS, ServerSpec, running, small_repository, tree_cpu_s

HEALTH_TIMEOUT_S = 5.0
IDLE_EXPIRY_S = 2.0
ANSWERED = ("200", "503")


# --- the load client ---------------------------------------------------------------------------
def request_bytes(path: str, image: bytes, name: str, content_type: str, multipart: bool) -> bytes:
    """One complete HTTP/1.1 request, built once and sent as is."""
    if multipart:
        boundary = "polynlbenchboundary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                f"Content-Type: {content_type}\r\n\r\n"
            ).encode()
            + image
            + f"\r\n--{boundary}--\r\n".encode()
        )
        content_type = f"multipart/form-data; boundary={boundary}"
    else:
        body = image
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Outcome:
    due: float
    end: float
    status: str  # "200", "503", ...; "hung" (no answer in time) or "lost" (connection dropped)
    retry_after: bool = False

    @property
    def latency_s(self) -> float:
        return self.end - self.due


class RawClient:
    """Pooled keep-alive HTTP/1.1 connections to one host, requests sent as prepared bytes."""

    def __init__(self, host: str, port: int, max_connections: int) -> None:
        self.host, self.port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = time.monotonic()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if now - since < IDLE_EXPIRY_S and not writer.is_closing():
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    async def send(self, request: bytes) -> tuple[int, bool]:
        """(status, Retry-After present); raises on a dropped connection."""
        async with self._slots:
            reader, writer = await self._connection()
            keep = False
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ", 2)[1])
                headers = {}
                for line in lines[1:]:
                    key, _, value = line.partition(":")
                    headers[key.strip().lower()] = value.strip()
                await reader.readexactly(int(headers.get("content-length", "0")))
                keep = headers.get("connection", "").lower() != "close"
                return status, "retry-after" in headers
            finally:
                if keep:
                    self._idle.append((reader, writer, time.monotonic()))
                else:
                    writer.close()

    def close(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()


async def _one(client: RawClient, request: bytes, due: float, timeout_s: float) -> Outcome:
    delay = due - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    try:
        async with asyncio.timeout(max(0.0, due + timeout_s - time.perf_counter())):
            status, retry_after = await client.send(request)
        return Outcome(due, time.perf_counter(), str(status), retry_after)
    except TimeoutError:
        return Outcome(due, time.perf_counter(), "hung")
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
        return Outcome(due, time.perf_counter(), "lost")


async def open_loop(
    port: int, request: bytes, rate: float, duration_s: float, timeout_s: float, max_connections: int
) -> tuple[list[Outcome], float]:
    """Poisson arrivals at ``rate``, each scheduled up front; (outcomes, client CPU seconds)."""
    client = RawClient("127.0.0.1", port, max_connections)
    cpu0 = time.process_time()
    t0 = time.perf_counter() + 0.1
    arrivals = poisson_arrivals(rate, None, duration_s, seed=0)
    try:
        outcomes = await asyncio.gather(*(_one(client, request, t0 + a, timeout_s) for a in arrivals))
    finally:
        client.close()
    return list(outcomes), time.process_time() - cpu0


async def closed_loop(port: int, request: bytes, clients: int, duration_s: float) -> list[Outcome]:
    client = RawClient("127.0.0.1", port, clients)
    outcomes: list[Outcome] = []
    stop_at = time.perf_counter() + duration_s

    async def one_client() -> None:
        while time.perf_counter() < stop_at:
            outcomes.append(await _one(client, request, time.perf_counter(), 30.0))

    try:
        await asyncio.gather(*(one_client() for _ in range(clients)))
    finally:
        client.close()
    return outcomes


# --- the /healthz poller (its own process: the load client's busy loop must not delay it) --------
def poll_healthz(port: int, interval_s: float, stop: Connection, out: Connection) -> None:
    latencies: list[float] = []
    failures = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HEALTH_TIMEOUT_S)
    while not stop.poll(interval_s):
        started = time.perf_counter()
        try:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HEALTH_TIMEOUT_S)
        latencies.append(time.perf_counter() - started)
        failures += not ok
    conn.close()
    out.send((latencies, failures))


class HealthPoller:
    def __init__(self, port: int, interval_s: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop_recv, self._stop_send = context.Pipe(duplex=False)
        self._out_recv, self._out_send = context.Pipe(duplex=False)
        self._process = context.Process(
            target=poll_healthz, args=(port, interval_s, self._stop_recv, self._out_send), daemon=True
        )

    def __enter__(self) -> HealthPoller:
        self._process.start()
        return self

    def result(self) -> tuple[list[float], int]:
        self._stop_send.send(True)
        latencies, failures = self._out_recv.recv()
        self._process.join(10)
        return latencies, failures

    def __exit__(self, *exc: object) -> None:
        if self._process.is_alive():
            self._process.kill()


# --- runs ------------------------------------------------------------------------------------------
def server_spec(repository: Path, limit: int, threads: int) -> ServerSpec:
    return ServerSpec(
        name=f"polynl-serve (1 worker, max_inflight_requests={limit})",
        command=["-m", "service"],
        ready_path="/readyz",
        env={
            "POLYNL_MODEL_REPOSITORY": str(repository),
            "POLYNL_PROVIDERS": "CPUExecutionProvider",
            "POLYNL_WORKERS": "1",
            "POLYNL_INTRA_OP_THREADS": str(threads),
            "POLYNL_MAX_INFLIGHT_REQUESTS": str(limit),
            "POLYNL_GRPC": "false",
            "POLYNL_LOG_LEVEL": "warning",
        },
        listen_from_env=True,
        ours=True,
    )


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _ms(values: list[float], q: float) -> float | None:
    return round(percentile(values, q) * 1000.0, 1) if values else None


def latency_ms(outcomes: list[Outcome]) -> dict[str, Any]:
    values = sorted(o.latency_s for o in outcomes)
    return {
        "count": len(values),
        "p50": _ms(values, 50.0),
        "p99": _ms(values, 99.0),
        "max": round(values[-1] * 1000.0, 1) if values else None,
    }


def summarize(
    outcomes: list[Outcome], health: list[float], health_failures: int, rate: float, duration_s: float
) -> dict[str, Any]:
    statuses = Counter(o.status for o in outcomes)
    other = {k: v for k, v in statuses.items() if k not in (*ANSWERED, "hung", "lost")}
    answered = [o for o in outcomes if o.status in ANSWERED]
    health_sorted = sorted(health)
    return {
        "offered_rps": round(rate, 1),
        "requests": len(outcomes),
        "ok_200": statuses["200"],
        "refused_503": statuses["503"],
        "refused_503_without_retry_after": sum(o.status == "503" and not o.retry_after for o in outcomes),
        "other": other,
        "lost": statuses["lost"],
        "hung": statuses["hung"],
        "ok_rps": round(statuses["200"] / duration_s, 1),
        "latency_200_ms": latency_ms([o for o in outcomes if o.status == "200"]),
        "latency_answered_ms": latency_ms(answered),
        "healthz_ms": {
            "polls": len(health),
            "failures": health_failures,
            "p50": _ms(health_sorted, 50.0),
            "p99": _ms(health_sorted, 99.0),
            "max": round(health_sorted[-1] * 1000.0, 1) if health_sorted else None,
        },
    }


def targets_met(run: dict[str, Any]) -> dict[str, bool]:
    health_p99 = run["healthz_ms"]["p99"]
    answered_p99 = run["latency_answered_ms"]["p99"]
    return {
        "healthz_p99_le_100ms": health_p99 is not None
        and health_p99 <= 100.0
        and not run["healthz_ms"]["failures"],
        "answered_p99_le_2s": answered_p99 is not None and answered_p99 <= 2000.0,
        "all_answered_200_or_503": not (run["other"] or run["lost"] or run["hung"]),
    }


def overload_run(
    args: argparse.Namespace, repository: Path, limit: int, request: bytes, rate: float
) -> dict[str, Any]:
    with running(server_spec(repository, limit, args.threads)) as server:
        port = _port(server.url)
        asyncio.run(closed_loop(port, request, 4, 1.0))  # warm the path
        cpu0 = tree_cpu_s(server.pid)
        with HealthPoller(port, args.health_interval_ms / 1000.0) as poller:
            outcomes, client_cpu = asyncio.run(
                open_loop(port, request, rate, args.duration, args.timeout, args.max_connections)
            )
            health, failures = poller.result()
        server_cpu = tree_cpu_s(server.pid) - cpu0
    run = {"max_inflight_requests": limit, **summarize(outcomes, health, failures, rate, args.duration)}
    run["server_cpu_s"] = round(server_cpu, 1)
    run["client_cpu_s"] = round(client_cpu, 1)
    run["targets_met"] = targets_met(run)
    return run


def measure_capacity(args: argparse.Namespace, repository: Path, request: bytes) -> float:
    with running(server_spec(repository, 0, args.threads)) as server:
        port = _port(server.url)
        asyncio.run(closed_loop(port, request, args.capacity_clients, 1.0))
        outcomes = asyncio.run(closed_loop(port, request, args.capacity_clients, args.capacity_s))
    ok = sum(o.status == "200" for o in outcomes)
    return ok / args.capacity_s


# --- report ----------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "## Overload: open loop at 3x capacity, admission control off vs on",
        "",
        machine_markdown(report["machine"]),
        f"Command: `{report['command']}`",
        "",
        f"Model: {report['model']}; one worker, {s['threads']} ONNX Runtime intra-op thread(s), "
        f"batching from the model's `config.json`; one {s['image']} per request "
        f"({'multipart' if s['multipart'] else 'raw body'}). Capacity: closed loop, "
        f"{s['capacity_clients']} clients, {s['capacity_s']} s: **{report['capacity_rps']:.0f} req/s**. "
        f"Then Poisson arrivals at {s['factor']}x that ({report['offered_rps']:.0f} req/s) for "
        f"{s['duration_s']} s against a fresh server per row; `/healthz` polled every "
        f"{s['health_interval_ms']} ms from another process. Latency counts from each request's "
        f"scheduled arrival; a request without an answer within {s['timeout_s']} s is hung.",
        "",
        "| max_inflight_requests | requests | 200 | 503 | other | lost | hung | 200 p50 / p99 / max ms "
        "| answered p99 / max ms | /healthz p50 / p99 / max ms | server CPU s | client CPU s | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        ok, ans, hz = run["latency_200_ms"], run["latency_answered_ms"], run["healthz_ms"]
        met = run["targets_met"]
        lines.append(
            f"| {run['max_inflight_requests'] or 'off (0)'} | {run['requests']} | {run['ok_200']} "
            f"| {run['refused_503']} | {sum(run['other'].values())} | {run['lost']} | {run['hung']} "
            f"| {ok['p50']} / {ok['p99']} / {ok['max']} | {ans['p99']} / {ans['max']} "
            f"| {hz['p50']} / {hz['p99']} / {hz['max']} | {run['server_cpu_s']} | {run['client_cpu_s']} "
            f"| {sum(met.values())}/3 |"
        )
    lines += [
        "",
        "Targets (issue 19): `/healthz` p99 <= 100 ms; p99 of the answered requests (200 and 503) "
        "<= 2 s; every request answered 200 or 503, none lost or hung. Every 503 carried "
        "`Retry-After` unless `refused_503_without_retry_after` in the JSON says otherwise.",
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--limits", default="0,32", help="POLYNL_MAX_INFLIGHT_REQUESTS per run (0 = off)")
    parser.add_argument("--factor", type=float, default=3.0, help="offered load / measured capacity")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of open-loop load per run")
    parser.add_argument("--capacity-s", type=float, default=5.0)
    parser.add_argument("--capacity-clients", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds before a request counts as hung")
    parser.add_argument("--max-connections", type=int, default=4000)
    parser.add_argument("--health-interval-ms", type=float, default=50.0)
    parser.add_argument("--threads", type=int, default=1, help="POLYNL_INTRA_OP_THREADS")
    parser.add_argument("--raw", action="store_true", help="raw image bodies instead of multipart")
    parser.add_argument("--image", type=Path, default=Path("samples/cifar_cat.png"))
    parser.add_argument("--out", type=Path, default=RESULTS / "overload")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    repository, model = small_repository(args)
    request = request_bytes("/classify", args.image.read_bytes(), args.image.name, "image/png", not args.raw)
    machine = machine_info()
    capacity = measure_capacity(args, repository, request)
    rate = args.factor * capacity
    print(f"capacity {capacity:.1f} req/s; offering {rate:.1f} req/s", flush=True)
    runs = []
    for limit in (int(v) for v in args.limits.split(",")):
        run = overload_run(args, repository, limit, request, rate)
        print(run, flush=True)
        runs.append(run)
    report = {
        "command": "python -m bench.overload " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine,
        "model": model,
        "capacity_rps": round(capacity, 1),
        "offered_rps": round(rate, 1),
        "settings": {
            "factor": args.factor,
            "duration_s": args.duration,
            "capacity_s": args.capacity_s,
            "capacity_clients": args.capacity_clients,
            "timeout_s": args.timeout,
            "health_interval_ms": args.health_interval_ms,
            "threads": args.threads,
            "multipart": not args.raw,
            "image": f"`{args.image}`",
        },
        "runs": runs,
    }
    write_report(args.out, report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

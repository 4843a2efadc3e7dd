"""Soak benchmark: minutes of steady load, the server's memory sampled over time.

Not on the serving path and not in the test run: it answers "does the service leak?".
It starts the service on a free loopback port (or attaches to a running one with ``--url``
and ``--pid``), drives one endpoint with open-loop Poisson arrivals at a steady rate
(``bench.loadtest``), samples the server's resident memory (RSS) every few seconds, and
reports the growth after a warm-up: RSS at the end of the warm-up, at the end, the maximum,
and the least-squares slope in MB per minute over the post-warm-up samples (target: about
zero; allocator noise of a few MB is not a leak, a steady slope is). Writes JSON and
Markdown to ``bench/results/`` (``soak.json``, ``soak.md``).

    python -m bench.soak                                  # 10 minutes at 5 req/s on /classify
    python -m bench.soak --duration 120 --warmup 30       # a 2-minute smoke soak
    python -m bench.soak --url http://127.0.0.1:8000 --pid 1234 --endpoint detect-faces
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from contextlib import AbstractContextManager, nullcontext, suppress
from pathlib import Path
from typing import Any

import psutil

from bench.loadtest.runner import LoadConfig, run_load_async
from bench.loadtest.stats import summarize
from bench.loadtest.targets import ENDPOINTS, load_payloads
from bench.machine import machine_info, machine_markdown
from bench.service import Server, ServerSpec, running

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def service_spec(repository: Path, threads: int) -> ServerSpec:
    """The service with its default batching, queue and deadline: the deployed behaviour."""
    return ServerSpec(
        name="polynl-serve",
        command=["-m", "uvicorn", "service.app:app", "--log-level", "warning"],
        ready_path="/readyz",
        env={
            "POLYNL_MODEL_REPOSITORY": str(repository),
            "POLYNL_INTRA_OP_THREADS": str(threads),
            "POLYNL_LOG_LEVEL": "warning",
            "POLYNL_ACCESS_LOG": "false",
        },
    )


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per minute (0 for < 2 samples)."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    variance = sum((t - mean_t) ** 2 for t, _ in samples)
    if variance == 0:
        return 0.0
    covariance = sum((t - mean_t) * (m - mean_m) for t, m in samples)
    return covariance / variance * 60.0


async def sample_rss(
    pid: int, interval_s: float, stop: asyncio.Event, out: list[tuple[float, float]]
) -> None:
    """(seconds since start, RSS in MB) of ``pid`` and its children every ``interval_s``."""
    root = psutil.Process(pid)
    started = time.perf_counter()
    while not stop.is_set():
        processes = [root, *root.children(recursive=True)]
        rss = sum(p.memory_info().rss for p in processes if p.is_running())
        out.append((time.perf_counter() - started, rss / 2**20))
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


async def soak(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    payloads = load_payloads(args.images, args.max_images)
    config = LoadConfig(
        mode="open", rate=args.rate, requests=None, duration_s=args.duration, timeout_s=30.0, seed=args.seed
    )
    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(server.pid, args.interval, stop, samples))
    progress = None if args.quiet else sys.stderr
    run = await run_load_async(server.url + ENDPOINTS[args.endpoint], payloads, config, progress)
    stop.set()
    await sampler
    after_warmup = [(t, m) for t, m in samples if t >= args.warmup]
    warm = after_warmup[0][1] if after_warmup else samples[-1][1]
    return {
        "endpoint": args.endpoint,
        "rate_rps": args.rate,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "load": summarize(run.records, run.scheduled),
        "rss_mb": {
            "start": round(samples[0][1], 1),
            "after_warmup": round(warm, 1),
            "end": round(samples[-1][1], 1),
            "max": round(max(m for _, m in samples), 1),
            "growth_after_warmup": round(samples[-1][1] - warm, 1),
            "slope_after_warmup_mb_per_min": round(slope_per_minute(after_warmup), 2),
        },
        "samples": [(round(t, 1), round(m, 1)) for t, m in samples],
    }


def markdown(report: dict[str, Any]) -> str:
    rss = report["rss_mb"]
    load = report["load"]
    latency = load["latency_ms"]
    lines = [
        "# Soak: memory at steady load",
        "",
        machine_markdown(report["machine"]),
        f"- Load: open loop, {report['rate_rps']} req/s on `/{report['endpoint']}` for "
        f"{report['duration_s']:.0f} s (warm-up {report['warmup_s']:.0f} s); "
        f"statuses {load['by_status']}",
        f"- Latency of successes: p50 {latency.get('p50', float('nan')):.1f} ms, "
        f"p99 {latency.get('p99', float('nan')):.1f} ms",
        "",
        "| RSS (MB) | start | after warm-up | end | max | growth after warm-up | slope after warm-up |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| server | {rss['start']} | {rss['after_warmup']} | {rss['end']} | {rss['max']} | "
        f"{rss['growth_after_warmup']:+.1f} | {rss['slope_after_warmup_mb_per_min']:+.2f} MB/min |",
        "",
        f"Command: `{report['command']}`",
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="attach to a running server instead of starting one")
    parser.add_argument("--pid", type=int, help="the attached server's process id (for its memory)")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads of the started server")
    parser.add_argument("--endpoint", choices=sorted(ENDPOINTS), default="classify")
    parser.add_argument("--images", type=Path, default=ROOT / "samples")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--rate", type=float, default=5.0, help="requests per second (steady, open loop)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before growth is counted")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between memory samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.url and args.pid is None:
        raise SystemExit("--url needs --pid: the soak measures the server process's memory")
    context: AbstractContextManager[Server] = (
        nullcontext(Server(args.url.rstrip("/"), args.pid))
        if args.url
        else running(service_spec(args.repository, args.threads))
    )
    with context as server:
        report = asyncio.run(soak(server, args))
    report["machine"] = machine_info(sample_background=False)
    report["command"] = "python -m bench.soak " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    rss = report["rss_mb"]
    print(
        f"RSS {rss['start']} -> {rss['after_warmup']} (after warm-up) -> {rss['end']} MB, "
        f"growth after warm-up {rss['growth_after_warmup']:+.1f} MB, "
        f"slope {rss['slope_after_warmup_mb_per_min']:+.2f} MB/min; statuses {report['load']['by_status']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

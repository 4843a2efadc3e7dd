"""``python -m bench.loadtest``: load-test a running polynl-serve (or any compatible) server.

Path: arguments -> ``targets`` (loopback check, URL, images) -> scrape ``/metrics`` ->
``runner`` (closed or open loop) -> scrape ``/metrics`` again -> ``stats`` + histogram
deltas -> JSON report (and, for ``--sweep``, a PNG of latency against load).

Examples::

    python -m bench.loadtest --url http://127.0.0.1:8000 --endpoint classify \\
        --mode closed --concurrency 16 --requests 500 --duration 30
    python -m bench.loadtest --endpoint detect-faces --mode open --rate 50 --duration 20
    python -m bench.loadtest --mode open --sweep 10,20,40,80 --duration 15 --plot sweep.png
    python -m bench.loadtest --protocol oip-grpc --endpoint classifier --oip-input tensor
    python -m bench.loadtest --protocol oip-http --endpoint face_detector --param max_faces=10

With ``--protocol oip-http`` / ``oip-grpc`` the requests go through Triton's own async clients
to the Open Inference Protocol (``bench.loadtest.oip``); ``--endpoint`` is then the model's name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from bench.loadtest.metrics import histogram_deltas
from bench.loadtest.oip import OipTarget, tensor_inputs
from bench.loadtest.runner import LoadConfig, Payload, RunResult, run_load
from bench.loadtest.stats import summarize
from bench.loadtest.targets import (
    ENDPOINTS,
    TargetError,
    check_target,
    endpoint_url,
    is_loopback_host,
    load_payloads,
)
from bench.machine import machine_info

DEFAULT_IMAGES = Path("samples")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadtest",
        description="Load-test /classify or /detect-faces of a running server and report latency, "
        "throughput, errors and the server's batch sizes.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument(
        "--endpoint", default="classify", help=f"one of {sorted(ENDPOINTS)} or a /path (default classify)"
    )
    parser.add_argument("--mode", choices=("closed", "open"), default="closed")
    parser.add_argument("--concurrency", type=int, default=16, help="closed loop: concurrent clients")
    parser.add_argument("--rate", type=float, default=50.0, help="open loop: mean arrivals/s (Poisson)")
    parser.add_argument("--requests", type=int, default=None, help="stop after this many requests")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop sending after this many seconds (default 30 s when --requests is not given)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    parser.add_argument("--warmup", type=int, default=0, help="requests sent (closed loop) before measuring")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of images to upload")
    parser.add_argument("--max-images", type=int, default=None, help="use only the first N images")
    parser.add_argument(
        "--multipart", action="store_true", help="send a multipart 'file' field, not a raw body"
    )
    parser.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="query parameter, repeatable"
    )
    parser.add_argument(
        "--sweep", default=None, help="comma-separated loads: rates (open) or concurrencies (closed)"
    )
    parser.add_argument("--out", type=Path, default=Path("loadtest.json"), help="JSON report path")
    parser.add_argument("--plot", type=Path, default=None, help="sweep PNG (default: --out with .png)")
    parser.add_argument("--metrics-path", default="/metrics", help="Prometheus endpoint of the server")
    parser.add_argument(
        "--batch-metric", default="batch_size", help="histograms whose name contains this are reported"
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("POLYNL_API_KEY") or None,
        help="bearer token for a server that requires one (default: $POLYNL_API_KEY)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="open loop: connection pool size (closed loop: one connection per client)",
    )
    parser.add_argument(
        "--protocol",
        choices=("rest", "oip-http", "oip-grpc"),
        default="rest",
        help="rest: the JSON API (POST /classify ...); oip-http / oip-grpc: the Open Inference "
        "Protocol through tritonclient's async clients (--endpoint names the model)",
    )
    parser.add_argument(
        "--oip-input",
        choices=("bytes", "tensor"),
        default="bytes",
        help="OIP: send encoded image files (BYTES) or preprocessed FP32 tensors",
    )
    parser.add_argument(
        "--grpc-address", default=None, help="OIP gRPC host:port (default: --url's host, port 8001)"
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=Path("model_repository"),
        help="OIP tensors: the model repository whose config.json preprocesses the images",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the open-loop arrival process")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback target (off by default)"
    )
    return parser


def _params(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TargetError(f"--param needs KEY=VALUE, got {pair!r}")
        params[key] = value
    return params


def scrape_metrics(base_url: str, path: str, headers: dict[str, str] | None = None) -> str | None:
    """The server's Prometheus text, or None when it has no such endpoint."""
    try:
        response = httpx.get(base_url + path, timeout=10.0, headers=headers)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def measure(
    base_url: str,
    url: str,
    payloads: list[Payload],
    config: LoadConfig,
    metrics_path: str = "/metrics",
    batch_metric: str = "batch_size",
    quiet: bool = False,
    oip: OipTarget | None = None,
    tensors: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """One measured run: metrics before, the load, metrics after; the summary as a dict."""
    before = scrape_metrics(base_url, metrics_path, config.headers)
    progress = None if quiet else sys.stderr
    result: RunResult = run_load(url, payloads, config, progress, oip, tensors)
    after = scrape_metrics(base_url, metrics_path, config.headers)
    summary = summarize(result.records, result.scheduled)
    summary["client_cpu_percent_of_one_core"] = result.client_cpu_percent
    summary["elapsed_s"] = result.elapsed_s
    if after is None:
        summary["server_batch_sizes"] = "unavailable (no /metrics)"
    else:
        summary["server_batch_sizes"] = histogram_deltas(before, after, batch_metric)
    return summary


def warm_up(
    url: str,
    payloads: list[Payload],
    config: LoadConfig,
    count: int,
    oip: OipTarget | None = None,
    tensors: list[np.ndarray] | None = None,
) -> None:
    if count <= 0:
        return
    warm = LoadConfig(
        mode="closed",
        concurrency=min(config.concurrency, count),
        requests=count,
        duration_s=None,
        timeout_s=config.timeout_s,
        multipart=config.multipart,
        headers=config.headers,
    )
    run_load(url, payloads, warm, None, oip, tensors)


def _config(args: argparse.Namespace, load: float | None = None) -> LoadConfig:
    duration = args.duration if (args.duration is not None or args.requests is not None) else 30.0
    concurrency, rate = args.concurrency, args.rate
    if load is not None:
        if args.mode == "closed":
            concurrency = int(load)
        else:
            rate = load
    return LoadConfig(
        mode=args.mode,
        concurrency=concurrency,
        rate=rate,
        requests=args.requests,
        duration_s=duration,
        timeout_s=args.timeout,
        max_connections=args.max_connections,
        multipart=args.multipart,
        seed=args.seed,
        headers={"Authorization": f"Bearer {args.api_key}"} if args.api_key else {},
    )


def _print_summary(label: str, summary: dict[str, Any]) -> None:
    lat = summary["latency_ms"]
    pct = "  ".join(f"{k} {lat[k]:.1f}" for k in ("p50", "p90", "p95", "p99", "max") if k in lat)
    print(
        f"{label}: {summary['ok']}/{summary['completed']} ok, {summary['throughput_rps']:.1f} req/s, "
        f"latency ms: {pct or 'n/a'}, by status {summary['by_status']}, "
        f"client CPU {summary['client_cpu_percent_of_one_core']:.0f}% of a core"
    )
    hists = summary["server_batch_sizes"]
    for hist in hists if isinstance(hists, list) else []:
        mean = f"{hist['mean']:.2f}" if hist["mean"] is not None else "n/a"
        print(
            f"  server {hist['metric']} {hist['labels']}: {hist['count']} batches, "
            f"mean {mean}, {hist['buckets']}"
        )


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def oip_target(args: argparse.Namespace, base_url: str) -> OipTarget:
    """The OIP target of ``--protocol oip-*``: the model ``--endpoint`` at the HTTP port or
    the gRPC address (loopback-checked like ``--url``)."""
    parts = urlsplit(base_url)
    if args.protocol == "oip-http":
        address = parts.netloc
    else:
        address = args.grpc_address or f"{parts.hostname}:8001"
        host = address.rpartition(":")[0].strip("[]")
        if not args.allow_remote and not is_loopback_host(host):
            raise TargetError(f"refusing to load-test {host!r}: not a loopback address (--allow-remote)")
    parameters = {k: _number(v) for k, v in _params(args.param).items()}
    return OipTarget(args.protocol, address, args.endpoint, args.oip_input, parameters)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    oip: OipTarget | None = None
    tensors: list[np.ndarray] | None = None
    try:
        base_url = check_target(args.url, args.allow_remote)
        payloads = load_payloads(args.images, args.max_images)
        if args.protocol == "rest":
            url = endpoint_url(base_url, args.endpoint, _params(args.param))
        else:
            oip = oip_target(args, base_url)
            url = f"{args.protocol}://{oip.address}/{oip.model}"
            if args.oip_input == "tensor":
                tensors = tensor_inputs(payloads, args.repository, oip.model)
        loads = [float(x) for x in args.sweep.split(",")] if args.sweep else [None]
        config = _config(args, loads[0])
    except (TargetError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    warm_up(url, payloads, config, args.warmup, oip, tensors)
    report: dict[str, Any] = {
        "tool": "bench.loadtest",
        "url": url,
        "endpoint": args.endpoint,
        "protocol": args.protocol if oip is None else f"{args.protocol} ({args.oip_input})",
        "mode": args.mode,
        "images": {"folder": str(args.images), "count": len(payloads)},
        "machine": machine_info(),
        "points": [],
    }
    for load in loads:
        config = _config(args, load)
        summary = measure(
            base_url, url, payloads, config, args.metrics_path, args.batch_metric, args.quiet, oip, tensors
        )
        point = {
            "load": load
            if load is not None
            else (config.concurrency if args.mode == "closed" else config.rate),
            # Never write the API key into a report.
            "config": {k: v for k, v in vars(config).items() if k not in ("progress_interval_s", "headers")},
            "summary": summary,
        }
        report["points"].append(point)
        label = f"concurrency {config.concurrency}" if args.mode == "closed" else f"rate {config.rate:g}/s"
        _print_summary(label, summary)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        from bench.loadtest.plot import plot_sweep

        x_label = "concurrent clients" if args.mode == "closed" else "offered load (req/s, Poisson)"
        plot_path = args.plot or args.out.with_suffix(".png")
        plot_sweep(report["points"], x_label, f"{args.endpoint}, {args.mode} loop", plot_path)
        report["plot"] = str(plot_path)
        print(f"plot: {plot_path}")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {args.out}")
    return 0

"""Benchmark: server CPU time per request through the three ways into the small classifier.

Not on the serving path. Starts one ``python -m service`` on 127.0.0.1 (HTTP and gRPC ports),
then drives the default classifier with the same closed-loop load from ``bench.loadtest``,
one way at a time, and reads the server process's CPU time (user + system, all threads,
from psutil) before and after each run:

- ``oip-grpc tensor``: ``tritonclient.grpc.aio``, the preprocessed FP32 ``images`` tensor;
- ``oip-http tensor``: ``tritonclient.http.aio``, the same tensor as binary tensor data;
- ``rest multipart``: ``POST /classify`` with a multipart ``file`` (the JSON API).

Rounds alternate the ways so that a neighbour's load on a shared machine spreads over all.

    python -m bench.oip --repository model_repository --requests 2000 --concurrency 8
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.loadtest.cli import measure, warm_up
from bench.loadtest.oip import OipTarget, tensor_inputs
from bench.loadtest.runner import LoadConfig
from bench.loadtest.targets import load_payloads
from bench.machine import machine_info, machine_markdown, write_report
from bench.service import free_port

ROOT = Path(__file__).resolve().parents[1]
WAYS = ("oip-grpc tensor", "oip-http tensor", "rest multipart")


def start_server(repository: Path, threads: int) -> tuple[subprocess.Popen[bytes], int, int]:
    port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "POLYNL_MODEL_REPOSITORY": str(repository),
        "POLYNL_PORT": str(port),
        "POLYNL_GRPC_PORT": str(grpc_port),
        "POLYNL_INTRA_OP_THREADS": str(threads),
        "POLYNL_ACCESS_LOG": "false",
        "POLYNL_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process, port, grpc_port
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("server not ready after 180 s")


def server_cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def run_way(way: str, args: argparse.Namespace, port: int, grpc_port: int) -> dict[str, Any]:
    payloads = load_payloads(args.images, args.max_images)
    base = f"http://127.0.0.1:{port}"
    config = LoadConfig(
        mode="closed",
        concurrency=args.concurrency,
        requests=args.requests,
        duration_s=None,
        multipart=way == "rest multipart",
    )
    oip = tensors = None
    url = f"{base}/classify"
    if way.startswith("oip"):
        protocol = "oip-grpc" if way.startswith("oip-grpc") else "oip-http"
        address = f"127.0.0.1:{grpc_port}" if protocol == "oip-grpc" else f"127.0.0.1:{port}"
        oip = OipTarget(protocol, address, "classifier", "tensor")  # type: ignore[arg-type]
        tensors = tensor_inputs(payloads, args.repository, "classifier")
        url = f"{protocol}://{address}/classifier"
    warm_up(url, payloads, config, 50, oip, tensors)
    server = psutil.Process(args.server_pid)
    cpu0 = server_cpu_s(server)
    summary = measure(base, url, payloads, config, quiet=True, oip=oip, tensors=tensors)
    cpu = server_cpu_s(server) - cpu0
    return {
        "way": way,
        "ok": summary["ok"],
        "requests_per_s": summary["throughput_rps"],
        "server_cpu_ms_per_request": 1000.0 * cpu / max(1, summary["completed"]),
        "p50_ms": summary["latency_ms"].get("p50"),
        "p99_ms": summary["latency_ms"].get("p99"),
        "client_cpu_percent_of_one_core": summary["client_cpu_percent_of_one_core"],
        "batches": summary["server_batch_sizes"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.oip", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--images", type=Path, default=ROOT / "samples")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="POLYNL_INTRA_OP_THREADS of the server")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "oip")
    args = parser.parse_args(argv)
    process, port, grpc_port = start_server(args.repository, args.threads)
    args.server_pid = process.pid
    rows: list[dict[str, Any]] = []
    try:
        for round_index in range(args.rounds):
            order = WAYS if round_index % 2 == 0 else tuple(reversed(WAYS))
            for way in order:
                row = run_way(way, args, port, grpc_port)
                row["round"] = round_index
                rows.append(row)
                print(
                    f"round {round_index} {way:16s}: {row['requests_per_s']:7.1f} req/s, "
                    f"server CPU {row['server_cpu_ms_per_request']:.3f} ms/request, ok {row['ok']}",
                    flush=True,
                )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    summary = []
    for way in WAYS:
        mine = [r for r in rows if r["way"] == way]
        summary.append(
            {
                "way": way,
                "requests_per_s": statistics.median(r["requests_per_s"] for r in mine),
                "server_cpu_ms_per_request": statistics.median(r["server_cpu_ms_per_request"] for r in mine),
            }
        )
    rest = next(s for s in summary if s["way"] == "rest multipart")["server_cpu_ms_per_request"]
    lines = [
        "| way in | requests/s | server CPU ms / request | vs POST /classify |",
        "| --- | --- | --- | --- |",
    ]
    for s in summary:
        ratio = s["server_cpu_ms_per_request"] / rest
        lines.append(
            f"| {s['way']} | {s['requests_per_s']:.0f} | {s['server_cpu_ms_per_request']:.3f} | {ratio:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    machine = machine_info()
    report = {
        "tool": "bench.oip",
        "settings": {k: str(v) for k, v in vars(args).items()},
        "machine": machine,
        "rows": rows,
        "summary": summary,
    }
    title = "# Server CPU per request: three ways into the classifier"
    write_report(args.out, report, f"{title}\n\n{machine_markdown(machine)}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

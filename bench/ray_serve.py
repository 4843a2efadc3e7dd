"""What Ray Serve costs and gives: one replica vs two replicas on two Ray nodes vs ``python -m service``.

``python -m bench.ray_serve --repository model_repository`` (the ``ray`` extra; root, or user
namespaces, for ``unshare``) runs, in one go and inside its own network namespace (loopback only,
deploy/ray/local_cluster.py):

1. ``python -m service`` with ``POLYNL_WORKERS=2`` (one ONNX Runtime thread each) on 127.0.0.1;
2. a two-node Ray cluster (one CPU per node), deploy/ray/serve.yaml with a fixed 1 replica, then
   with 2 replicas (one per node), through Ray's HTTP proxy on the head.

For each: a closed-loop load at concurrency 1 (the per-request cost: nothing queues, so the
latency difference to ``python -m service`` is what Ray's proxy hop and actor call add) and at
``--concurrency`` (throughput and p99), on /classify and /detect-faces, with the same load tester
as bench/loadtest. Everything shares the machine's cores: the load client too. Prints a Markdown
table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.loadtest import LoadConfig, Payload, run_load, summarize
from deploy.ray.local_cluster import LocalCluster, in_private_netns, reexec_in_netns

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
ENDPOINTS = {"/classify": "cifar_ship.png", "/detect-faces": "face_astronaut.jpg"}
SERVE_PORT = 8000
SERVICE_PORT = 8100


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _payload(name: str) -> Payload:
    kind = "image/png" if name.endswith(".png") else "image/jpeg"
    return Payload((SAMPLES / name).read_bytes(), kind, name)


def _wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s")


def measure(url: str, concurrency: int, duration_s: float) -> dict[str, Any]:
    """Both endpoints at concurrency 1 and at ``concurrency`` (after a short warm-up)."""
    rows: dict[str, Any] = {}
    for path, image in ENDPOINTS.items():
        payloads = [_payload(image)]
        run_load(
            url + path, payloads, LoadConfig(concurrency=2, requests=20, duration_s=5), progress_stream=None
        )
        for level in (1, concurrency):
            config = LoadConfig(concurrency=level, requests=None, duration_s=duration_s, multipart=True)
            result = run_load(url + path, payloads, config, progress_stream=None)
            summary = summarize(result.records, result.scheduled)
            _progress(f"{url}{path} c={level}: {summary['throughput_rps']:.1f} req/s")
            latency = summary["latency_ms"]
            assert isinstance(latency, dict)
            rows[f"{path} c={level}"] = {
                "rps": round(float(summary["throughput_rps"]), 1),  # type: ignore[arg-type]
                "p50_ms": round(float(latency.get("p50", 0.0)), 1),
                "p99_ms": round(float(latency.get("p99", 0.0)), 1),
                "ok": summary["ok"],
                "errors": summary["errors"],
            }
    return rows


def run_service(repository: Path, concurrency: int, duration_s: float, log_dir: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "POLYNL_MODEL_REPOSITORY": str(repository),
        "POLYNL_HOST": "127.0.0.1",
        "POLYNL_PORT": str(SERVICE_PORT),
        "POLYNL_WORKERS": "2",
        "POLYNL_INTRA_OP_THREADS": "1",
        "POLYNL_DECODE_THREADS": "1",
        "POLYNL_LOG_LEVEL": "warning",
    }
    with open(log_dir / "service.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    try:
        url = f"http://127.0.0.1:{SERVICE_PORT}"
        _wait_ready(url, 180)
        _progress("python -m service: ready")
        return measure(url, concurrency, duration_s)
    finally:
        process.terminate()
        process.wait(60)


def serve_config(repository: Path, replicas: int, out: Path) -> Path:
    """deploy/ray/serve.yaml with a fixed number of replicas and one proxy on 127.0.0.1."""
    import yaml

    config = yaml.safe_load((ROOT / "deploy" / "ray" / "serve.yaml").read_text())
    config["proxy_location"] = "HeadOnly"  # both nodes share 127.0.0.1
    config["http_options"].update(host="127.0.0.1", port=SERVE_PORT)
    app = config["applications"][0]
    app["args"]["model_repository"] = str(repository)
    app["runtime_env"]["env_vars"]["POLYNL_LOG_LEVEL"] = "warning"
    deployment = app["deployments"][0]
    deployment.pop("autoscaling_config")
    deployment["num_replicas"] = replicas
    path = out / f"serve-{replicas}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def deploy(cluster: LocalCluster, config: Path, replicas: int) -> None:
    from ray import serve

    serve_cli = str(Path(sys.executable).with_name("serve"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [serve_cli, "run", str(config), "--non-blocking", "--address", cluster.address],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"serve run: {done.stderr[-2000:]}")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = serve.status().applications.get("polynl")
        deployment = status.deployments.get("PolynlServe") if status is not None else None
        if status is not None and deployment is not None:
            states = deployment.replica_states
            running = sum(n for s, n in states.items() if str(getattr(s, "value", s)) == "RUNNING")
            if str(getattr(status.status, "value", status.status)) == "RUNNING" and running == replicas:
                _wait_ready(f"http://127.0.0.1:{SERVE_PORT}", 60)
                return
        time.sleep(0.5)
    raise TimeoutError(f"{replicas} Serve replicas not running after 180 s")


def run_ray(repository: Path, concurrency: int, duration_s: float, work: Path) -> dict[str, Any]:
    import logging

    cluster = LocalCluster(work / "ray", env={"PYTHONPATH": str(ROOT)})
    import ray  # only now: Ray reads the authentication settings LocalCluster sets when imported

    rows: dict[str, Any] = {}
    try:
        cluster.start_node()
        cluster.start_node()
        ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
        for replicas in (1, 2):
            deploy(cluster, serve_config(repository, replicas, work), replicas)
            _progress(f"Ray Serve, {replicas} replica(s): deployed")
            rows[f"ray-{replicas}"] = measure(f"http://127.0.0.1:{SERVE_PORT}", concurrency, duration_s)
        from ray import serve

        serve.shutdown()
    finally:
        # Disconnect first: a driver whose GCS is gone ends its own process after a minute.
        ray.shutdown()
        cluster.stop(timeout_s=30)
    return rows


def _table(results: dict[str, Any]) -> str:
    names = {
        "service-workers-2": "`python -m service`, POLYNL_WORKERS=2",
        "ray-1": "Ray Serve, 1 replica (1 CPU)",
        "ray-2": "Ray Serve, 2 replicas on 2 nodes (1 CPU each)",
    }
    keys = list(next(iter(results.values())).keys())
    lines = ["| deployment | " + " | ".join(f"{k}: req/s, p50 / p99 ms" for k in keys) + " |"]
    lines.append("| --- |" + " --- |" * len(keys))
    for name, rows in results.items():
        cells = [f"{rows[k]['rps']}, {rows[k]['p50_ms']} / {rows[k]['p99_ms']}" for k in keys]
        lines.append(f"| {names[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    args = parser.parse_args()
    if not in_private_netns():
        return reexec_in_netns([sys.executable, "-m", "bench.ray_serve", *sys.argv[1:]])
    repository = args.repository.resolve()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="polynl-ray-bench-"))  # logs stay there
    _progress(f"logs in {work}")
    results = {"service-workers-2": run_service(repository, args.concurrency, args.duration, work)}
    results.update(run_ray(repository, args.concurrency, args.duration, work))
    report = {
        "results": results,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    print(_table(results))
    print(f"load average before {load_before}, after {report['load_average_after']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

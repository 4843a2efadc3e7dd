"""Benchmark 3: the service against alternatives, raw ONNX Runtime, and itself without batching.

Not on the serving path: it starts real servers on 127.0.0.1 (one at a time, so they never
compete with each other), drives each with the same load from ``bench.loadtest`` and the
same images, and writes one report. Parts (``--parts``):

``alternatives``
    Same ONNX model, same machine, same load (closed loop, ``--concurrency`` clients,
    multipart uploads because LitServe reads forms): (a) this service
    (``python -m service``, once per ``--workers`` value), (b) a plain FastAPI endpoint
    running ONNX Runtime per request (``bench.alternatives.plain_fastapi``), (c) LitServe
    with its batching and its default process layout (``bench.alternatives.litserve_app``).
    Per endpoint of ``--endpoints``: ``/classify`` with the small classifier and
    ``/detect-faces`` with the face detector (one 320x320 size bucket, so that LitServe can
    stack every batch). Throughput and p99 ratios of each of ours against each server, within
    a round; each server's processes and threads are counted while it runs.
``saturation`` (issue 6, the paper-size classifier: Poly-NL ResNet-50, 224x224, random weights)
    Raw ONNX Runtime throughput at its best batch size, in-process, vs the service's
    throughput at saturation through HTTP (target >= 85 %), with the load client's CPU use;
    and batching (``max_batch_size`` 8 and 32) vs ``max_batch_size=1`` at 32 clients.
``overhead`` (the small default classifier)
    Requests/s at saturation, and the added cost per request at one client: the service's
    median latency minus raw ONNX Runtime at batch 1, split into HTTP round trip, decode and
    preprocess (measured in-process on the same images), and the remainder (batching wait,
    multipart parsing, JSON).

Models come from the model repository (``--repository``, default ``model_repository``: the
exported shipped weights) or, when it is missing, from a random-weight checkpoint of the
same architecture exported with ``python -m export``'s own pipeline. The ResNet-50 repository
is built the same way and cached under ``runs/bench-cache`` (git-ignored); so is the
detector's (``--detector-repository``, default: the shipped detector exported with one
320x320 bucket).

    python -m bench.service                                  # everything (about 10 minutes)
    python -m bench.service --parts overhead --duration 5    # smoke run
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.loadtest.cli import measure, warm_up
from bench.loadtest.runner import LoadConfig, Payload
from bench.loadtest.targets import load_payloads
from bench.machine import machine_info, machine_markdown, write_report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CACHE = ROOT / "runs" / "bench-cache"  # git-ignored: exported models and server logs
PARTS = ("alternatives", "saturation", "overhead")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


# --- model repositories ----------------------------------------------------------------------


def random_classifier_repository(kind: str, out: Path) -> Path:
    """A repository holding a random-weight classifier (``cifar20`` or ``resnet50``), exported
    by the project's export pipeline (graph check and parity included)."""
    if (out / "classifier").is_dir():
        return out
    import torch

    from export.pipeline import ExportOptions, export_model
    from models.checkpoint import Checkpoint, save_checkpoint
    from models.resnet import cifar_resnet, resnet50

    torch.manual_seed(0)
    if kind == "resnet50":
        model, size, mean, std, labels = resnet50(1000), 224, IMAGENET_MEAN, IMAGENET_STD, 1000
    else:
        model, size, mean, std, labels = cifar_resnet(20), 32, CIFAR_MEAN, CIFAR_STD, 10
    checkpoint = Checkpoint(
        task="classifier",
        arch=model.config.to_dict(),
        state_dict=model.state_dict(),
        labels=[f"class_{i}" for i in range(labels)],
        preprocess={
            "resize": "shorter_side_center_crop",
            "size": [size, size],
            "mean": list(mean),
            "std": list(std),
            "interpolation": "bilinear",
        },
        training={"note": "random weights, for speed benchmarks only"},
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{kind}-random.pt"
    save_checkpoint(path, checkpoint)
    export_model(
        "classifier", path, ExportOptions(out=out, parity_folders=[ROOT / "samples"]), log=lambda _: None
    )
    return out


def describe_classifier(repository: Path) -> str:
    from polynl_core.repository import load_repository

    config = load_repository(repository, verify=False)["classifier"].config
    arch = config.arch
    size = "x".join(str(v) for v in (config.preprocess.size or ()))
    model = f"{arch.get('stem', '')} ResNet-{arch.get('depth', '?')}"
    return f"{model}, block {config.block}, {size}, from `{repository}`"


def describe_detector(repository: Path) -> str:
    from polynl_core.repository import load_repository

    config = load_repository(repository, verify=False)["face_detector"].config
    buckets = ", ".join(f"{h}x{w}" for h, w in config.size_buckets or [])
    return f"face detector, block {config.block}, buckets {buckets}, from `{repository}`"


def small_repository(args: argparse.Namespace) -> tuple[Path, str]:
    """The repository given (default: the exported shipped weights), else a random-weight one."""
    if not (args.repository / "classifier").is_dir():
        args.repository = random_classifier_repository("cifar20", CACHE / "cifar20")
    return args.repository, describe_classifier(args.repository)


# --- servers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerSpec:
    name: str
    command: list[str]
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)
    listen_from_env: bool = False  # POLYNL_HOST/POLYNL_PORT instead of --host/--port
    ours: bool = False
    root: Path = ROOT  # the code tree it runs from (working directory and PYTHONPATH)


def service_spec(
    repository: Path,
    threads: int,
    max_batch_size: int | None = 8,
    max_wait_ms: float | None = 5.0,
    workers: int = 1,
    *,
    pyramid: str = "",
    env: dict[str, str] | None = None,
    name: str | None = None,
    root: Path = ROOT,
) -> ServerSpec:
    """``python -m service`` on CPU, one worker by default. ``max_batch_size`` / ``max_wait_ms``
    None: each model's own batching (config.json). ``pyramid`` '' = one detector pass per
    image, as the plain endpoint and LitServe run it (the comparison is of serving, not of the
    pyramid's extra passes). ``env`` adds or overrides variables; ``root`` is the code tree."""
    batching = {
        "POLYNL_MAX_BATCH_SIZE": None if max_batch_size is None else str(max_batch_size),
        "POLYNL_MAX_WAIT_MS": None if max_wait_ms is None else str(max_wait_ms),
    }
    plural = "s" if workers > 1 else ""
    return ServerSpec(
        name=name or f"polynl-serve (max_batch_size={max_batch_size}, {workers} worker{plural})",
        command=["-m", "service"],
        ready_path="/readyz",
        env={
            "POLYNL_MODEL_REPOSITORY": str(repository),
            "POLYNL_PROVIDERS": "CPUExecutionProvider",
            "POLYNL_INTRA_OP_THREADS": str(threads),
            "POLYNL_WORKERS": str(workers),
            **{key: value for key, value in batching.items() if value is not None},
            "POLYNL_QUEUE_SIZE": "1024",
            "POLYNL_REQUEST_TIMEOUT_S": "120",
            "POLYNL_LOG_LEVEL": "warning",
            "POLYNL_DETECTOR_PYRAMID": pyramid,
            **(env or {}),
        },
        listen_from_env=True,
        ours=True,
        root=root,
    )


def plain_spec(repository: Path, threads: int) -> ServerSpec:
    return ServerSpec(
        name="plain FastAPI + ORT per request",
        command=["-m", "uvicorn", "bench.alternatives.plain_fastapi:app", "--log-level", "warning"],
        ready_path="/healthz",
        env={"POLYNL_MODEL_REPOSITORY": str(repository), "POLYNL_INTRA_OP_THREADS": str(threads)},
    )


def litserve_spec(
    repository: Path,
    threads: int,
    max_batch_size: int = 8,
    max_wait_ms: float = 5.0,
    endpoint: str = "classify",
) -> ServerSpec:
    return ServerSpec(
        name=f"LitServe (max_batch_size={max_batch_size})",
        command=["-m", "bench.alternatives.litserve_app", "--endpoint", endpoint],
        ready_path="/health",
        env={
            "POLYNL_MODEL_REPOSITORY": str(repository),
            "POLYNL_INTRA_OP_THREADS": str(threads),
            "POLYNL_MAX_BATCH_SIZE": str(max_batch_size),
            "POLYNL_MAX_WAIT_MS": str(max_wait_ms),
        },
    )


@dataclass(frozen=True)
class Server:
    url: str
    pid: int


def process_tree(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def layout(pid: int) -> dict[str, Any]:
    """The server's processes as they run: how many, their threads, which use the CPU."""
    import psutil

    procs = []
    for proc in process_tree(pid):
        try:
            procs.append({"pid": proc.pid, "threads": proc.num_threads(), "cpu_s": sum(proc.cpu_times()[:2])})
        except psutil.Error:
            continue
    return {"processes": len(procs), "threads": sum(p["threads"] for p in procs), "per_process": procs}


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return text[text.rindex(")") + 2 :].split()


def tree_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants (LitServe's workers, uvicorn's), plus
    their reaped children's (cutime + cstime), in seconds, from /proc/<pid>/stat."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])  # field 4: ppid
    family, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in family]
        family.update(children)
        frontier += children
    ticks = 0
    for member in family:
        fields = _stat_fields(member)
        if fields is not None:
            ticks += sum(int(value) for value in fields[11:15])  # fields 14-17: utime stime cutime cstime
    return ticks / CLOCK_TICKS


@contextmanager
def running(spec: ServerSpec, startup_timeout_s: float = 180.0) -> Iterator[Server]:
    """Start the server on a free loopback port, wait until ready, yield its URL, stop it."""
    port = free_port()
    command = [sys.executable, *spec.command]
    env = {**os.environ, **spec.env, "PYTHONPATH": str(spec.root)}
    if spec.listen_from_env:
        # The OIP gRPC server stays on, as deployed, on a free port rather than its default 8001.
        env.update(
            {"POLYNL_HOST": "127.0.0.1", "POLYNL_PORT": str(port), "POLYNL_GRPC_PORT": str(free_port())}
        )
    else:
        command += ["--host", "127.0.0.1", "--port", str(port)]
    CACHE.mkdir(parents=True, exist_ok=True)
    log_path = CACHE / f"server-{port}.log"
    with log_path.open("w") as log:
        # Own session: LitServe forks workers; stopping the group stops exactly what we started.
        proc = subprocess.Popen(
            command, cwd=spec.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{spec.name} exited with {proc.returncode}; see {log_path}")
            try:
                if httpx.get(url + spec.ready_path, timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{spec.name} not ready after {startup_timeout_s} s")
            time.sleep(0.3)
        yield Server(url, proc.pid)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# --- measurements ----------------------------------------------------------------------------


def load_server(
    server: Server,
    payloads: list[Payload],
    args: argparse.Namespace,
    concurrency: int,
    multipart: bool = True,
    duration_s: float | None = None,
    warmup: int | None = None,
    endpoint: str = "classify",
) -> dict[str, Any]:
    """Warm up, then one closed-loop run against ``/<endpoint>``; the load tester's summary
    plus the server's CPU time per successful request (a cost that background load barely
    moves) and its process layout, read half-way through the run."""
    url = server.url
    config = LoadConfig(
        mode="closed",
        concurrency=concurrency,
        requests=None,
        duration_s=duration_s or args.duration,
        timeout_s=120.0,
        multipart=multipart,
    )
    warm_up(f"{url}/{endpoint}", payloads, config, args.warmup if warmup is None else warmup)
    cpu_before = tree_cpu_s(server.pid)
    start = {p["pid"]: p["cpu_s"] for p in layout(server.pid)["per_process"]}
    seen: dict[str, Any] = {}
    timer = threading.Timer((duration_s or args.duration) / 2, lambda: seen.update(layout(server.pid)))
    timer.start()
    summary = measure(url, f"{url}/{endpoint}", payloads, config, quiet=args.quiet)
    timer.join()
    cpu = tree_cpu_s(server.pid) - cpu_before
    # A process is busy when it used over 5 % of a core during the run (LitServe's
    # supervisor and queue manager, uvicorn's supervisor and the resource tracker are not).
    used = {p["pid"]: p["cpu_s"] - start.get(p["pid"], 0.0) for p in layout(server.pid)["per_process"]}
    busy = [cpu_s for cpu_s in used.values() if cpu_s > 0.05 * summary["elapsed_s"]]
    summary["server_layout"] = {**seen, "busy_processes": len(busy), "cpu_s_per_process_during_run": used}
    summary["server_cpu_s"] = cpu
    summary["server_cpu_ms_per_ok_request"] = 1000 * cpu / summary["ok"] if summary["ok"] else None
    return summary


def raw_ort(repository: Path, threads: int, batches: list[int], seconds: float) -> list[dict[str, Any]]:
    """Images/s of the repository's classifier in ONNX Runtime, in-process, per batch size."""
    from bench.alternatives.common import Classifier

    classifier = Classifier(repository, threads)
    h, w = classifier.model.config.preprocess.size or (224, 224)
    rows = []
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, 3, h, w), dtype=np.float32)
        classifier.predict(x)  # warm-up: first-run allocations
        times: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 3:
            started = time.perf_counter()
            classifier.predict(x)
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        rows.append(
            {"batch": batch, "latency_ms": median * 1000, "images_per_s": batch / median, "runs": len(times)}
        )
    return rows


def prepare_cost_ms(repository: Path, payloads: list[Payload], rounds: int = 9) -> float:
    """Mean over the images of each image's median decode + preprocess time (in-process).

    A mean over the images, because the load cycles through all of them equally.
    """
    from bench.alternatives.common import Classifier

    classifier = Classifier(repository, 1)
    per_image = []
    for payload in payloads:
        times: list[float] = []
        for _ in range(rounds):
            started = time.perf_counter()
            classifier.prepare(payload.data)
            times.append(time.perf_counter() - started)
        per_image.append(statistics.median(times))
    return statistics.mean(per_image) * 1000


def http_round_trip_ms(url: str, count: int = 200) -> float:
    """Median latency of ``GET /healthz`` on one keep-alive connection: HTTP alone."""
    times: list[float] = []
    with httpx.Client() as client:
        for _ in range(count):
            started = time.perf_counter()
            client.get(url + "/healthz")
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


# --- parts -----------------------------------------------------------------------------------


def detector_repository(args: argparse.Namespace) -> Path:
    """The shipped detector with one 320x320 bucket (every image the same shape), exported once."""
    out: Path = args.detector_repository
    if not (out / "face_detector").is_dir():
        command = [sys.executable, "-m", "export", "--only", "face_detector", "--out", str(out)]
        command += ["--buckets", "320x320", "--parity-images", str(ROOT / "samples")]
        subprocess.run(command, cwd=ROOT, check=True)
    return out


def alternative_specs(args: argparse.Namespace, repository: Path, endpoint: str) -> list[ServerSpec]:
    ours = [
        service_spec(repository, args.threads, args.max_batch_size, args.max_wait_ms, workers)
        for workers in args.workers
    ]
    return [
        *ours,
        plain_spec(repository, args.threads),
        litserve_spec(repository, args.threads, args.max_batch_size, args.max_wait_ms, endpoint),
    ]


def round_ratios(this_round: list[dict[str, Any]]) -> None:
    """Each run's throughput and p99 against each of our configurations in the same round."""
    for run in this_round:
        s = run["summary"]
        run["vs_ours"] = {}
        for ours in (r for r in this_round if r["ours"]):
            o = ours["summary"]
            rate, p99 = s["steady_throughput_rps"], s["latency_ms"].get("p99")
            run["vs_ours"][ours["server"]] = {
                "ours_over_this_throughput": o["steady_throughput_rps"] / rate if rate else None,
                "this_over_ours_p99": p99 / o["latency_ms"]["p99"]
                if p99 and o["latency_ms"].get("p99")
                else None,
            }


def part_alternatives(
    args: argparse.Namespace, repositories: dict[str, Path], payloads: list[Payload]
) -> dict[str, Any]:
    endpoints: dict[str, Any] = {}
    for endpoint, repository in repositories.items():
        specs = alternative_specs(args, repository, endpoint)
        runs: list[dict[str, Any]] = []
        # Rounds interleave the servers (ours, plain, LitServe, ours, ...): background load
        # that drifts during the run then hits every server alike; ratios are taken within a round.
        for round_ in range(1, args.rounds + 1):
            this_round: list[dict[str, Any]] = []
            for spec in specs:
                print(f"[alternatives] /{endpoint} round {round_}: {spec.name}", flush=True)
                with running(spec) as server:
                    summary = load_server(server, payloads, args, args.concurrency, endpoint=endpoint)
                this_round.append(
                    {"server": spec.name, "ours": spec.ours, "round": round_, "summary": summary}
                )
            round_ratios(this_round)
            runs += this_round
        model = describe_classifier(repository) if endpoint == "classify" else describe_detector(repository)
        endpoints[endpoint] = {"model": model, "runs": runs}
    return {
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "workers": args.workers,
        "endpoints": endpoints,
    }


def part_saturation(args: argparse.Namespace, payloads: list[Payload]) -> dict[str, Any]:
    repository = random_classifier_repository("resnet50", CACHE / "resnet50")
    print("[saturation] raw ONNX Runtime, Poly-NL ResNet-50 224x224", flush=True)
    raw = raw_ort(repository, args.threads, [1, 2, 4, 8, 16], args.raw_seconds)
    best = max(raw, key=lambda r: r["images_per_s"])
    runs: list[dict[str, Any]] = []
    for max_batch in (1, 8, 32):
        spec = service_spec(repository, args.threads, max_batch)
        print(f"[saturation] {spec.name}, {args.saturation_concurrency} clients", flush=True)
        with running(spec) as server:
            summary = load_server(
                server,
                payloads,
                args,
                args.saturation_concurrency,
                multipart=False,
                duration_s=args.saturation_duration,
                warmup=args.saturation_concurrency,  # fill the pipeline before measuring
            )
        runs.append({"server": spec.name, "max_batch_size": max_batch, "summary": summary})
    best_service = max(runs, key=lambda r: r["summary"]["steady_throughput_rps"])
    unbatched = runs[0]["summary"]
    return {
        "model": "Poly-NL ResNet-50, 224x224, random weights",
        "raw_ort": raw,
        "raw_best": best,
        "service_runs": runs,
        "service_over_raw": best_service["summary"]["steady_throughput_rps"] / best["images_per_s"],
        "service_best_max_batch_size": best_service["max_batch_size"],
        "batching_throughput_gain": {
            r["max_batch_size"]: r["summary"]["steady_throughput_rps"] / unbatched["steady_throughput_rps"]
            for r in runs
        },
        "concurrency": args.saturation_concurrency,
    }


def server_timings(url: str, payloads: list[Payload], rounds: int = 5) -> dict[str, float]:
    """One client, one request at a time: medians of the client's latency and of the
    per-step timing the service reports in each answer (decode, queue, inference, total)."""
    steps: dict[str, list[float]] = {
        "client_ms": [],
        "decode_ms": [],
        "queue_ms": [],
        "inference_ms": [],
        "total_ms": [],
    }
    with httpx.Client(timeout=60.0) as client:
        for _ in range(rounds):
            for payload in payloads:
                started = time.perf_counter()
                response = client.post(
                    f"{url}/classify", content=payload.data, headers={"content-type": payload.content_type}
                )
                steps["client_ms"].append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
                for key, value in response.json()["timing"].items():
                    steps[key].append(float(value))
    return {key: statistics.median(values) for key, values in steps.items() if values}


def part_overhead(args: argparse.Namespace, repository: Path, payloads: list[Payload]) -> dict[str, Any]:
    raw = raw_ort(repository, args.threads, [1, 8, 32], args.raw_seconds)
    prepare_ms = prepare_cost_ms(repository, payloads)
    spec = service_spec(repository, args.threads, args.max_batch_size, args.max_wait_ms)
    print(f"[overhead] {spec.name}", flush=True)
    with running(spec) as server:
        http_ms = http_round_trip_ms(server.url)
        steps = server_timings(server.url, payloads)
        single = load_server(server, payloads, args, 1, multipart=False)
        saturated = load_server(server, payloads, args, args.concurrency, multipart=False)
    no_wait = service_spec(repository, args.threads, args.max_batch_size, max_wait_ms=0.0)
    with running(no_wait) as server:
        steps_no_wait = server_timings(server.url, payloads)
    inference = raw[0]["latency_ms"]
    client = steps["client_ms"]
    return {
        "raw_ort": raw,
        "single_client": single,
        "saturated": saturated,
        "server_steps_ms": steps,
        "server_steps_no_wait_ms": steps_no_wait,
        "in_process_decode_and_preprocess_ms": prepare_ms,
        "breakdown_ms": {
            "latency, one client, sequential requests (median)": client,
            "ONNX Runtime alone, batch 1 (in-process)": inference,
            "added by the service": client - inference,
            "  HTTP: client, connection, upload, framework outside the route": client - steps["total_ms"],
            "  HTTP round trip of GET /healthz, for reference": http_ms,
            "  decode + preprocess (service-reported)": steps["decode_ms"],
            f"  batch queue wait (service-reported; max_wait_ms={args.max_wait_ms:g})": steps["queue_ms"],
            "  batch queue wait with max_wait_ms=0": steps_no_wait["queue_ms"],
            "  inference call inside the service minus ORT alone": steps["inference_ms"] - inference,
            "  rest in the route (thread hops, post-processing, JSON)": steps["total_ms"]
            - steps["decode_ms"]
            - steps["queue_ms"]
            - steps["inference_ms"],
            "latency with max_wait_ms=0 (median)": steps_no_wait["client_ms"],
        },
    }


# --- report ----------------------------------------------------------------------------------


def _lat(summary: dict[str, Any], key: str) -> str:
    value = summary["latency_ms"].get(key)
    return f"{value:.1f}" if value is not None else "-"


def _batches(summary: dict[str, Any]) -> str:
    hists = summary.get("server_batch_sizes")
    if not isinstance(hists, list) or not hists:
        return "-"
    return f"{hists[0]['mean']:.2f}" if hists[0]["mean"] is not None else "-"


def markdown(report: dict[str, Any]) -> str:
    lines = ["## Service benchmarks", "", machine_markdown(report["machine"])]
    s = report["settings"]
    lines.append(
        f"Load: closed loop, {s['duration_s']} s per run after {s['warmup']} warm-up requests, "
        f"images from `{s['images']}` (ResNet-50 runs: {s['saturation_duration_s']} s after "
        f"{s['saturation_concurrency']} warm-up requests); servers use {s['threads']} ONNX Runtime "
        "intra-op threads on CPU. req/s is the steady rate: answers completed while requests "
        "were still being sent, per second. The load client runs on the same machine (its CPU "
        "use is shown, % of one core). Server CPU ms/request: CPU time of the server's "
        "processes during the run per successful request.\n"
    )
    if "alternatives" in report:
        lines += alternatives_markdown(report["alternatives"])
    if "saturation" in report:
        sat = report["saturation"]
        best = sat["raw_best"]
        lines += [
            f"### {sat['model']}: raw ONNX Runtime vs the service at saturation",
            "",
            "| raw ORT batch | latency ms | images/s |",
            "|---|---|---|",
            *(f"| {r['batch']} | {r['latency_ms']:.1f} | {r['images_per_s']:.2f} |" for r in sat["raw_ort"]),
            "",
            f"| service ({sat['concurrency']} clients, raw body) | req/s | p50 ms | p99 ms | errors "
            "| mean batch | vs max_batch_size=1 | vs raw best | server CPU ms/request | client CPU % |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for run in sat["service_runs"]:
            sm = run["summary"]
            lines.append(
                f"| max_batch_size={run['max_batch_size']} | {sm['steady_throughput_rps']:.2f} "
                f"| {_lat(sm, 'p50')} "
                f"| {_lat(sm, 'p99')} | {sm['errors']} | {_batches(sm)} "
                f"| x{sat['batching_throughput_gain'][run['max_batch_size']]:.2f} "
                f"| {100 * sm['steady_throughput_rps'] / best['images_per_s']:.0f} % | {_cpu(sm)} "
                f"| {sm['client_cpu_percent_of_one_core']:.0f} |"
            )
        lines += [
            "",
            f"Service at saturation / raw ORT at its best batch ({best['batch']}, {best['images_per_s']:.2f} "
            f"images/s): **{100 * sat['service_over_raw']:.0f} %** (target >= 85 %).",
            "",
        ]
    if "overhead" in report:
        ov = report["overhead"]
        b = ov["breakdown_ms"]
        single, sat_ = ov["single_client"], ov["saturated"]
        lines += [
            f"### Small default classifier ({report['small_model']}): requests/s and added cost per request",
            "",
            f"- Saturation ({report['settings']['concurrency']} clients): "
            f"**{sat_['steady_throughput_rps']:.0f} req/s**, "
            f"p50 {_lat(sat_, 'p50')} ms, p99 {_lat(sat_, 'p99')} ms, mean batch {_batches(sat_)}, "
            f"server CPU {_cpu(sat_)} ms per request; "
            f"raw ORT: "
            + ", ".join(f"batch {r['batch']} {r['images_per_s']:.0f} img/s" for r in ov["raw_ort"]),
            f"- One client: {single['steady_throughput_rps']:.0f} req/s, p50 {_lat(single, 'p50')} ms",
            "",
            "| per request, one client, sequential | ms |",
            "|---|---|",
            *(f"| {k.replace('  ', '&nbsp;&nbsp;')} | {v:.2f} |" for k, v in b.items()),
            "",
        ]
    return "\n".join(lines)


def _layout(summary: dict[str, Any]) -> str:
    seen = summary.get("server_layout") or {}
    if not seen:
        return "-"
    return f"{seen['processes']} ({seen.get('busy_processes', '?')} busy) / {seen['threads']}"


def alternatives_markdown(alt: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for endpoint, data in alt["endpoints"].items():
        lines += [
            f"### Same model, several servers: `/{endpoint}` ({data['model']}, "
            f"{alt['concurrency']} clients, multipart)",
            "",
            "| round | server | req/s | p50 ms | p99 ms | errors | mean batch | server CPU ms/request "
            "| processes (busy) / threads | client CPU % |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for run in data["runs"]:
            sm = run["summary"]
            lines.append(
                f"| {run['round']} | {run['server']} | {sm['steady_throughput_rps']:.1f} "
                f"| {_lat(sm, 'p50')} | {_lat(sm, 'p99')} | {sm['errors']} | {_batches(sm)} | {_cpu(sm)} "
                f"| {_layout(sm)} | {sm['client_cpu_percent_of_one_core']:.0f} |"
            )
        ours = [run["server"] for run in data["runs"] if run["ours"] and run["round"] == 1]
        lines += [
            "",
            "Ratios within each round: ours / this server's throughput (above 1: ours serves more), "
            "this server's p99 / ours (above 1: ours answers faster at the tail).",
            "",
            "| round | server | " + " | ".join(f"{name}: throughput, p99" for name in ours) + " |",
            "|---|---|" + "---|" * len(ours),
        ]
        for run in data["runs"]:
            if run["ours"] and len(ours) == 1:
                continue
            cells = [
                f"{_fmt(run['vs_ours'][name]['ours_over_this_throughput'])}, "
                f"{_fmt(run['vs_ours'][name]['this_over_ours_p99'])}"
                for name in ours
            ]
            lines.append(f"| {run['round']} | {run['server']} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _cpu(summary: dict[str, Any]) -> str:
    value = summary.get("server_cpu_ms_per_ok_request")
    return f"{value:.1f}" if value is not None else "-"


def _fmt(value: float | None) -> str:
    return f"x{value:.2f}" if value is not None else "-"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.service", description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {PARTS}")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument(
        "--detector-repository",
        type=Path,
        default=CACHE / "shipped-detector",
        help="alternatives on /detect-faces: a repository with the face detector (exported "
        "with one 320x320 bucket when missing)",
    )
    parser.add_argument(
        "--endpoints",
        default="classify,detect-faces",
        help="alternatives: endpoints to compare on, from classify,detect-faces",
    )
    parser.add_argument(
        "--workers",
        type=lambda text: [int(v) for v in text.split(",")],
        default=[1, 2],
        help="alternatives: our POLYNL_WORKERS values, one server each (comma-separated)",
    )
    parser.add_argument("--images", type=Path, default=ROOT / "samples")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per run")
    parser.add_argument("--warmup", type=int, default=20, help="requests before each measured run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--saturation-concurrency", type=int, default=32)
    parser.add_argument(
        "--saturation-duration",
        type=float,
        default=90.0,
        help="seconds of load per ResNet-50 run (slow model)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternatives: rounds of the three servers, interleaved"
    )
    parser.add_argument("--max-batch-size", type=int, default=8, help="ours and LitServe's (alternatives)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="ours and LitServe's batch wait")
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="ORT intra-op threads"
    )
    parser.add_argument("--raw-seconds", type=float, default=5.0, help="time per raw ORT batch size")
    parser.add_argument("--out", type=Path, default=RESULTS / "service", help="path stem for .json/.md")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    parts = args.parts.split(",")
    payloads = load_payloads(args.images)
    report: dict[str, Any] = {
        "benchmark": "service",
        "machine": machine_info(),
        "settings": {
            "duration_s": args.duration,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "threads": args.threads,
            "max_batch_size": args.max_batch_size,
            "max_wait_ms": args.max_wait_ms,
            "workers": args.workers,
            "endpoints": args.endpoints.split(","),
            "saturation_duration_s": args.saturation_duration,
            "saturation_concurrency": args.saturation_concurrency,
            "images": str(args.images.relative_to(ROOT) if args.images.is_relative_to(ROOT) else args.images),
        },
    }
    if "alternatives" in parts or "overhead" in parts:
        repository, report["small_model"] = small_repository(args)
    if "alternatives" in parts:
        endpoints = args.endpoints.split(",")
        chosen: dict[str, Path] = {}
        if "classify" in endpoints:
            chosen["classify"] = repository
        if "detect-faces" in endpoints:
            chosen["detect-faces"] = detector_repository(args)
        report["alternatives"] = part_alternatives(args, chosen, payloads)
    if "saturation" in parts:
        report["saturation"] = part_saturation(args, payloads)
    if "overhead" in parts:
        report["overhead"] = part_overhead(args, repository, payloads)
    write_report(args.out, report, markdown(report))
    print(markdown(report))
    print(f"wrote {args.out.with_suffix('.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the lean request path of issue 19, before and after, in one run on one machine.

Not on the serving path. Three servers, started one at a time on 127.0.0.1 (never two at
once), all with one worker, the same model repository and the same images:

(a) the minimal asyncio batcher (``bench/alternatives/asyncio_batcher.py``): the floor;
(b) the service at a baseline git revision (``--baseline-rev``, default the revision the
    issue-19 work started from), unpacked with ``git archive`` under ``runs/lean-baseline/``
    and started as ``python -m service`` with ``PYTHONPATH`` pointing there;
(c) the service of this checkout (uncommitted changes included).

Parts (``--parts``):

``load``
    Each server under closed-loop load, ``--concurrency`` clients / connections, one image
    per request as a multipart ``file`` (the small classifier and ``samples/cifar_*.png``,
    32x32 PNGs; ``--endpoint detect-faces`` for the detector), first from the Python load
    tester (``bench.loadtest``), then from wrk (``bench/wrk``), ``--duration`` seconds each
    after a warm-up. Per run: req/s, p50/p99, errors, **server CPU-seconds per answered
    request** (utime + stime of the server's process tree from ``/proc/<pid>/stat``, reaped
    children included, before and after the load window) and the load client's own CPU.
    Ratios within a round: current / baseline and current / asyncio batcher.
``decode``
    In-process, no server: the classifier's decode-to-tensor (``ModelPipeline.prepare``) of a
    12-megapixel JPEG (``samples/coffee.jpg`` upscaled to 4000x3000, JPEG quality 90, written
    once under ``runs/lean/``) through the baseline's code and the current code, each in its
    own subprocess (``bench/lean_probe.py``), and Pillow's bare decode of the same file.
``timings``
    An idle server, one photo at a time: the medians of the ``timing`` fields (decode_ms,
    queue_ms, inference_ms, total_ms) and of the client's latency over 20 sequential
    ``/detect-faces`` requests of ``samples/face_astronaut.jpg``, baseline and current, with
    the detector pyramid on (``POLYNL_DETECTOR_PYRAMID=0.5,0.25``) and off (``''``); plus
    Pillow's bare decode of that file for reference.

    python -m bench.lean                                   # the whole comparison
    python -m bench.lean --duration 5 --out runs/lean/smoke  # a quick smoke run
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.loadtest.cli import scrape_metrics, warm_up
from bench.loadtest.metrics import histogram_deltas
from bench.loadtest.runner import LoadConfig, Payload, run_load
from bench.loadtest.stats import summarize
from bench.loadtest.targets import IMAGE_TYPES
from bench.machine import machine_info, machine_markdown, write_report
from bench.service import Server, ServerSpec, running, service_spec, tree_cpu_s
from bench.wrk import WrkMissing, run_wrk

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RUNS = ROOT / "runs" / "lean"  # git-ignored: the 12 MP photo, server logs
BASELINES = ROOT / "runs" / "lean-baseline"
DEFAULT_BASELINE = "65d602f"  # main when the issue-19 work began
PARTS = ("load", "decode", "timings")
CLIENTS = ("loadtest", "wrk")
PHOTO = ROOT / "samples" / "face_astronaut.jpg"
PYRAMID_ON = "0.5,0.25"


# --- code trees ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    """A copy of the project's code: the baseline revision or this checkout."""

    name: str  # "baseline" or "current"
    root: Path
    revision: str


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def baseline_tree(rev: str) -> Tree:
    """The revision's files under runs/lean-baseline/<sha> (``git archive``, kept for reuse)."""
    sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    root = BASELINES / sha[:12]
    if not (root / "service" / "__main__.py").is_file():
        root.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return Tree("baseline", root, sha)


def current_tree() -> Tree:
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    return Tree("current", ROOT, git("rev-parse", "HEAD") + dirty)


# --- servers ---------------------------------------------------------------------------------


def lean_service_spec(tree: Tree, repository: Path, threads: int, pyramid: str = "") -> ServerSpec:
    """The service of ``tree``, one worker, each model's own batching."""
    return service_spec(
        repository, threads, None, None, pyramid=pyramid, name=f"service, {tree.name}", root=tree.root
    )


def model_batching(repository: Path, endpoint: str) -> dict[str, float]:
    """The endpoint's model's batching as this checkout's service reads it (config.json, else
    the task's default), so that the asyncio batcher batches as the current service does."""
    from polynl_core.repository import load_repository

    name = "classifier" if endpoint == "classify" else "face_detector"
    batching = load_repository(repository, verify=False)[name].config.effective_batching
    return {"max_batch_size": batching.max_batch_size, "max_wait_ms": batching.max_wait_ms}


def batcher_spec(tree: Tree, repository: Path, threads: int, batching: dict[str, float]) -> ServerSpec:
    return ServerSpec(
        name="asyncio batcher",
        root=tree.root,
        command=["-m", "bench.alternatives.asyncio_batcher"],
        ready_path="/healthz",
        env={
            "POLYNL_MODEL_REPOSITORY": str(repository),
            "POLYNL_INTRA_OP_THREADS": str(threads),
            "POLYNL_MAX_BATCH_SIZE": str(batching["max_batch_size"]),
            "POLYNL_MAX_WAIT_MS": str(batching["max_wait_ms"]),
        },
    )


# --- part: load ------------------------------------------------------------------------------


@contextmanager
def server_cpu(server: Server) -> Iterator[dict[str, float]]:
    """The server tree's CPU seconds spent inside the block, in the yielded dict's ``s``."""
    spent: dict[str, float] = {}
    before = tree_cpu_s(server.pid)
    yield spent
    spent["s"] = tree_cpu_s(server.pid) - before


@contextmanager
def batch_sizes(server: Server) -> Iterator[dict[str, Any]]:
    """The mean of the server's batch-size histogram over the block (``mean``; absent when
    the server has no /metrics, as the asyncio batcher), scraped outside the CPU window."""
    seen: dict[str, Any] = {}
    before = scrape_metrics(server.url, "/metrics")
    yield seen
    after = scrape_metrics(server.url, "/metrics")
    if before is not None and after is not None:
        deltas = histogram_deltas(before, after, "batch_size")
        if deltas:
            seen["mean"] = deltas[0]["mean"]


def payloads_of(images: list[Path]) -> list[Payload]:
    return [Payload(p.read_bytes(), IMAGE_TYPES[p.suffix.lower()], p.name) for p in images]


def load_with_loadtest(
    server: Server, url: str, images: list[Path], args: argparse.Namespace
) -> dict[str, Any]:
    payloads = payloads_of(images)
    config = LoadConfig(
        mode="closed",
        concurrency=args.concurrency,
        requests=None,
        duration_s=args.duration,
        timeout_s=120.0,
        multipart=True,
    )
    warm_up(url, payloads, config, args.warmup)
    with batch_sizes(server) as batches, server_cpu(server) as cpu:
        result = run_load(url, payloads, config, None)
    summary = summarize(result.records, result.scheduled)
    answered = sum(n for status, n in summary["by_status"].items() if status.isdigit())  # type: ignore[attr-defined]
    cpu_s = cpu["s"]
    latency: dict[str, Any] = summary["latency_ms"]  # type: ignore[assignment]
    return {
        "requests_per_s": summary["steady_throughput_rps"],
        "answered": answered,
        "ok": summary["ok"],
        "by_status": summary["by_status"],
        "latency_ms": {key: latency.get(key) for key in ("p50", "p90", "p99", "max")},
        "server_cpu_s": cpu_s,
        "server_cpu_ms_per_request": 1000.0 * cpu_s / answered if answered else None,
        "client_cpu_percent_of_one_core": result.client_cpu_percent,
        "mean_batch_size": batches.get("mean"),
        "summary": summary,
    }


def load_with_wrk(server: Server, url: str, images: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    warm_up(url, payloads_of(images), LoadConfig(concurrency=args.concurrency, multipart=True), args.warmup)
    with batch_sizes(server) as batches, server_cpu(server) as cpu:
        summary = run_wrk(url, images, args.concurrency, args.duration)
    # wrk stops without waiting for the requests in flight (at most one per connection):
    # their CPU may fall on either side of the reading, their answers are not counted.
    cpu_s = cpu["s"]
    answered = sum(summary["by_status"].values())
    return {
        "requests_per_s": summary["requests_per_s"],
        "answered": answered,
        "ok": summary["ok"],
        "by_status": summary["by_status"],
        "latency_ms": {key: summary["latency_ms"][key] for key in ("p50", "p90", "p99", "max")},
        "server_cpu_s": cpu_s,
        "server_cpu_ms_per_request": 1000.0 * cpu_s / answered if answered else None,
        "client_cpu_percent_of_one_core": summary["client_cpu_percent_of_one_core"],
        "mean_batch_size": batches.get("mean"),
        "summary": summary,
    }


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per round and client: current over baseline, current over the asyncio batcher."""
    rows = []
    for round_ in sorted({run["round"] for run in runs}):
        for client in dict.fromkeys(run["client"] for run in runs):
            by_server = {
                r["server"]: r["result"] for r in runs if r["round"] == round_ and r["client"] == client
            }
            current = by_server.get("service, current")
            if current is None:
                continue
            row: dict[str, Any] = {"round": round_, "client": client}
            for other, key in (("service, baseline", "baseline"), ("asyncio batcher", "batcher")):
                theirs = by_server.get(other)
                if theirs is None:
                    continue
                row[f"rps_current_over_{key}"] = _ratio(current["requests_per_s"], theirs["requests_per_s"])
                row[f"cpu_per_request_current_over_{key}"] = _ratio(
                    current["server_cpu_ms_per_request"], theirs["server_cpu_ms_per_request"]
                )
                row[f"p99_current_over_{key}"] = _ratio(
                    current["latency_ms"]["p99"], theirs["latency_ms"]["p99"]
                )
            rows.append(row)
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def part_load(args: argparse.Namespace, trees: dict[str, Tree], images: list[Path]) -> dict[str, Any]:
    batching = model_batching(args.repository, args.endpoint)
    specs = [
        batcher_spec(trees["current"], args.repository, args.threads, batching),
        lean_service_spec(trees["baseline"], args.repository, args.threads),
        lean_service_spec(trees["current"], args.repository, args.threads),
    ]
    clients = [c for c in args.clients.split(",") if c]
    if "wrk" in clients:
        try:
            from bench.wrk import wrk_path

            wrk_path()
        except WrkMissing as exc:
            print(f"[load] skipping wrk: {exc}", flush=True)
            clients.remove("wrk")
    runs: list[dict[str, Any]] = []
    # Rounds interleave the servers: background load that drifts hits each of them alike.
    for round_ in range(1, args.rounds + 1):
        for spec in specs:
            with running(spec) as server:
                url = f"{server.url}/{args.endpoint}"
                for client in clients:
                    print(f"[load] round {round_}: {spec.name}, {client}", flush=True)
                    measure = load_with_wrk if client == "wrk" else load_with_loadtest
                    result = measure(server, url, images, args)
                    runs.append({"round": round_, "server": spec.name, "client": client, "result": result})
    return {
        "endpoint": args.endpoint,
        "batcher_batching": batching,
        "images": [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in images],
        "runs": runs,
        "ratios": ratios(runs),
    }


# --- part: decode ----------------------------------------------------------------------------


def twelve_megapixel_jpeg() -> Path:
    """samples/coffee.jpg upscaled to 4000x3000, JPEG quality 90 (made once, deterministic)."""
    from PIL import Image

    path = RUNS / "photo-12mp-q90.jpg"
    if not path.is_file():
        RUNS.mkdir(parents=True, exist_ok=True)
        with Image.open(ROOT / "samples" / "coffee.jpg") as image:
            big = image.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
        big.save(path, quality=90)
    return path


def probe(tree: Tree, what: str, image: Path, repository: Path, repeats: int) -> dict[str, Any]:
    """bench/lean_probe.py in a fresh interpreter whose ``service`` is the tree's."""
    command = [sys.executable, "-P", str(ROOT / "bench" / "lean_probe.py"), what, "--image", str(image)]
    command += ["--repository", str(repository), "--repeats", str(repeats)]
    env = {**os.environ, "PYTHONPATH": str(tree.root)}
    done = subprocess.run(command, cwd=tree.root, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-2000:]}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def part_decode(args: argparse.Namespace, trees: dict[str, Tree]) -> dict[str, Any]:
    photo = twelve_megapixel_jpeg()
    results = {}
    for name, tree in trees.items():
        print(f"[decode] {name}: classifier prepare of the 12 MP JPEG", flush=True)
        results[name] = probe(tree, "prepare", photo, args.repository, args.decode_repeats)
    results["pillow"] = probe(trees["current"], "pillow", photo, args.repository, args.decode_repeats)
    base, cur = results["baseline"].get("median_ms"), results["current"].get("median_ms")
    return {
        "image": str(photo.relative_to(ROOT)),
        "size": "4000x3000",
        "results": results,
        "speedup_current_over_baseline": _ratio(base, cur),
    }


# --- part: timings ---------------------------------------------------------------------------


def sequential_timings(url: str, data: bytes, count: int, warmup: int = 2) -> dict[str, Any]:
    fields: dict[str, list[float]] = {"client_ms": []}
    files = {"file": (PHOTO.name, data, "image/jpeg")}
    with httpx.Client(timeout=60.0) as client:
        for i in range(warmup + count):
            started = time.perf_counter()
            response = client.post(f"{url}/detect-faces", files=files)
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            response.raise_for_status()
            if i < warmup:
                continue
            fields["client_ms"].append(elapsed_ms)
            for key, value in (response.json().get("timing") or {}).items():
                if isinstance(value, int | float):
                    fields.setdefault(key, []).append(float(value))
    return {key: statistics.median(values) for key, values in fields.items()}


def part_timings(args: argparse.Namespace, trees: dict[str, Tree]) -> dict[str, Any]:
    data = PHOTO.read_bytes()
    rows = []
    for pyramid in (PYRAMID_ON, ""):
        for name in ("baseline", "current"):
            spec = lean_service_spec(trees[name], args.repository, args.threads, pyramid=pyramid)
            label = f"pyramid {pyramid}" if pyramid else "pyramid off"
            print(f"[timings] {spec.name}, {label}", flush=True)
            with running(spec) as server:
                medians = sequential_timings(server.url, data, args.timing_requests)
            rows.append({"tree": name, "pyramid": pyramid, "medians_ms": medians})
    pillow = probe(trees["current"], "pillow", PHOTO, args.repository, 50)
    return {
        "image": str(PHOTO.relative_to(ROOT)),
        "requests": args.timing_requests,
        "rows": rows,
        "pillow_decode_ms": pillow.get("median_ms"),
    }


# --- report ----------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if value is not None else "-"


def _x(value: float | None) -> str:
    return f"x{value:.2f}" if value is not None else "-"


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [f"## Lean request path (issue 19){' — ' + s['label'] if s['label'] else ''}", ""]
    lines.append(machine_markdown(report["machine"]))
    lines.append(
        f"- Baseline: `{report['trees']['baseline']}`; current: `{report['trees']['current']}`; "
        f"one worker, {s['threads']} ONNX Runtime intra-op thread(s), repository `{s['repository']}`.\n"
    )
    if "load" in report:
        load = report["load"]
        batching = load["batcher_batching"]
        lines += [
            f"### Load: `/{load['endpoint']}`, closed loop, {s['concurrency']} clients / connections, "
            f"{s['duration_s']:g} s per run, one image per request (multipart)",
            "",
            f"Images: {', '.join(f'`{p}`' for p in load['images'][:3])}"
            + (f" and {len(load['images']) - 3} more" if len(load["images"]) > 3 else "")
            + ". req/s: the load tester's steady rate / wrk's requests over its duration. "
            "Server CPU: utime + stime of the server's process tree per answered request. "
            "Client CPU: the load client's own, % of one core. The asyncio batcher batches as "
            f"the current service's model settings say: max_batch_size {batching['max_batch_size']}, "
            f"max_wait_ms {batching['max_wait_ms']:g}.",
            "",
            "| round | client | server | req/s | p50 ms | p99 ms | non-200 | server CPU ms/request "
            "| mean batch | client CPU % |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for run in load["runs"]:
            r = run["result"]
            errors = (
                r["answered"]
                - r["ok"]
                + sum(n for status, n in r["by_status"].items() if not str(status).isdigit())
            )
            lines.append(
                f"| {run['round']} | {run['client']} | {run['server']} | {_f(r['requests_per_s'])} "
                f"| {_f(r['latency_ms']['p50'])} | {_f(r['latency_ms']['p99'])} | {errors} "
                f"| {_f(r['server_cpu_ms_per_request'], 2)} | {_f(r['mean_batch_size'], 2)} "
                f"| {_f(r['client_cpu_percent_of_one_core'], 0)} |"
            )
        lines += [
            "",
            "Ratios within a round (targets: req/s current / asyncio batcher >= 1.3; "
            "server CPU per request current / baseline <= 0.5):",
            "",
            "| round | client | req/s current / baseline | CPU per request current / baseline "
            "| p99 current / baseline | req/s current / batcher | CPU per request current / batcher |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in load["ratios"]:
            lines.append(
                f"| {row['round']} | {row['client']} | {_x(row.get('rps_current_over_baseline'))} "
                f"| {_x(row.get('cpu_per_request_current_over_baseline'))} "
                f"| {_x(row.get('p99_current_over_baseline'))} "
                f"| {_x(row.get('rps_current_over_batcher'))} "
                f"| {_x(row.get('cpu_per_request_current_over_batcher'))} |"
            )
        lines.append("")
    if "decode" in report:
        dec = report["decode"]
        res = dec["results"]
        lines += [
            f"### Decode-to-tensor of a 12-megapixel JPEG (`{dec['image']}`, {dec['size']}), in-process",
            "",
            "| code | median ms | min ms | output |",
            "|---|---|---|---|",
        ]
        for name, label in (
            ("baseline", "baseline: classifier prepare"),
            ("current", "current: classifier prepare"),
            ("pillow", "Pillow bare decode (reference)"),
        ):
            r = res[name]
            if "error" in r:
                lines.append(f"| {label} | error: {r['error'][:200]} | | |")
            else:
                lines.append(
                    f"| {label} | {_f(r['median_ms'])} | {_f(r['min_ms'])} "
                    f"| {'x'.join(str(v) for v in r['output_shape'])} |"
                )
        lines += [
            "",
            f"Speed-up, baseline / current: **{_x(dec['speedup_current_over_baseline'])}** (target >= 3).",
            "",
        ]
    if "timings" in report:
        tim = report["timings"]
        lines += [
            f"### Idle server, one photo: `/detect-faces` of `{tim['image']}`, medians of "
            f"{tim['requests']} sequential requests",
            "",
            "| code | pyramid | decode_ms | preprocess_ms | queue_ms | inference_ms | total_ms "
            "| client ms | total - decode - preprocess - inference |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in tim["rows"]:
            m = row["medians_ms"]
            # Before preprocess_ms existed, decode_ms held decoding and preprocessing together.
            preprocess = m.get("preprocess_ms")
            rest = (
                m["total_ms"] - m["decode_ms"] - (preprocess or 0.0) - m["inference_ms"]
                if {"total_ms", "decode_ms", "inference_ms"} <= m.keys()
                else None
            )
            lines.append(
                f"| {row['tree']} | {row['pyramid'] or 'off'} | {_f(m.get('decode_ms'))} "
                f"| {_f(preprocess) if preprocess is not None else 'in decode_ms'} "
                f"| {_f(m.get('queue_ms'))} | {_f(m.get('inference_ms'))} | {_f(m.get('total_ms'))} "
                f"| {_f(m.get('client_ms'))} | {_f(rest)} |"
            )
        lines += [
            "",
            f"Pillow's bare decode of the same file: {_f(tim['pillow_decode_ms'], 2)} ms. "
            "Targets with the pyramid on: queue_ms <= 6, total_ms <= decode + preprocess + inference "
            "+ 6, decode_ms within 2x of Pillow's bare decode.",
            "",
        ]
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.lean", description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {PARTS}")
    parser.add_argument("--baseline-rev", default=DEFAULT_BASELINE, help="git revision of the baseline")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--endpoint", choices=("classify", "detect-faces"), default="classify")
    parser.add_argument(
        "--images",
        default=None,
        help="glob of the load's images (default: samples/cifar_*.png for classify, "
        "samples/face*.jpg for detect-faces)",
    )
    parser.add_argument("--clients", default=",".join(CLIENTS), help=f"comma-separated, from {CLIENTS}")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per run")
    parser.add_argument("--warmup", type=int, default=50, help="requests before each measured run")
    parser.add_argument("--concurrency", type=int, default=16, help="clients (loadtest), connections (wrk)")
    parser.add_argument("--rounds", type=int, default=1, help="load: rounds of the three servers")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per session")
    parser.add_argument("--decode-repeats", type=int, default=9)
    parser.add_argument("--timing-requests", type=int, default=20)
    parser.add_argument("--label", default="", help="a note for the report's title (e.g. 'smoke run')")
    parser.add_argument("--out", type=Path, default=RESULTS / "lean", help="path stem for .json/.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.repository = args.repository.resolve()
    parts = args.parts.split(",")
    trees = {"baseline": baseline_tree(args.baseline_rev), "current": current_tree()}
    pattern = args.images or ("samples/cifar_*.png" if args.endpoint == "classify" else "samples/face*.jpg")
    images = [Path(p).resolve() for p in sorted(glob.glob(str(ROOT / pattern)) or glob.glob(pattern))]
    if "load" in parts and not images:
        print(f"error: no images match {pattern!r}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "benchmark": "lean",
        "machine": machine_info(),
        "trees": {name: tree.revision for name, tree in trees.items()},
        "settings": {
            "label": args.label,
            "parts": parts,
            "endpoint": args.endpoint,
            "duration_s": args.duration,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "threads": args.threads,
            "repository": str(args.repository.relative_to(ROOT))
            if args.repository.is_relative_to(ROOT)
            else str(args.repository),
            "command": "python -m bench.lean " + " ".join(sys.argv[1:] if argv is None else argv),
        },
    }
    if "load" in parts:
        report["load"] = part_load(args, trees, images)
    if "decode" in parts:
        report["decode"] = part_decode(args, trees)
    if "timings" in parts:
        report["timings"] = part_timings(args, trees)
    text = markdown(report)
    write_report(args.out, report, text)
    print(text)
    print(f"wrote {args.out.with_suffix('.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

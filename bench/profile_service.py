"""Where a loaded server's CPU goes: py-spy samples of ``python -m service`` under wrk, by step.

Not on the serving path. For each code tree (the baseline revision and this checkout, as
``bench.lean`` builds them) and each endpoint, one server with one worker and one ONNX
Runtime thread is started on 127.0.0.1, loaded by wrk (16 connections, multipart uploads),
and sampled by ``py-spy record --nonblocking`` (200 Hz, every thread, idle time left out).
Each sample is put in the first step its stack reaches, looking from the innermost frame
out (:data:`STEPS`), so that "ONNX Runtime" means time inside ``InferenceSession.run`` and
"framework" means Starlette/FastAPI code that is not any of our steps.

    python -m bench.profile_service                      # both endpoints, both trees
    python -m bench.profile_service --trees current --endpoints classify --duration 10

Writes ``bench/results/profile.{json,md}``: per tree and endpoint, the share of samples per
step and, with wrk's request count, the CPU milliseconds per request of each step.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.lean import (
    DEFAULT_BASELINE,
    Tree,
    baseline_tree,
    current_tree,
    lean_service_spec,
    running,
)
from bench.machine import machine_info, machine_markdown, write_report
from bench.service import tree_cpu_s
from bench.wrk import run_wrk

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PROFILES = ROOT / "runs" / "profile"  # git-ignored: py-spy's raw profiles
SAMPLES = ROOT / "samples"
ENDPOINT_IMAGES = {
    "classify": [SAMPLES / "cifar_cat.png", SAMPLES / "cifar_dog.png", SAMPLES / "cifar_ship.png"],
    "detect-faces": [SAMPLES / "face_astronaut.jpg"],
}
ENDPOINT_QUERY = {"classify": "top_k=5", "detect-faces": "score_threshold=0.5"}

# (step, substrings of a frame "function (file:line)"): the first step found from the
# innermost frame outwards wins.
STEPS: list[tuple[str, tuple[str, ...]]] = [
    ("ONNX Runtime", ("Session.run (", "onnxruntime_inference_collection.py")),
    ("batch stacking", ("_stack_and_predict (",)),
    ("image decode", ("polynl_core/images.py", "service/images.py", "PIL/")),
    ("preprocess", ("polynl_core/preprocess.py", "polynl_core/pyramid.py", "service/preprocess.py")),
    ("postprocess", ("polynl_core/postprocess.py", "service/postprocess.py", ".answer (")),
    ("multipart parsing", ("multipart/", "formparsers.py", "_read_form (", "read_uploads (")),
    ("batcher", ("service/batching.py",)),
    ("response (pydantic, JSON)", ("pydantic", "json/", "serialize_response", "responses.py")),
    ("metrics, logs, tracing", ("prometheus_client", "logging/", "service/logs.py", "service/tracing.py")),
    ("our middleware", ("service/middleware.py", "service/admission.py")),
    ("HTTP server (uvicorn)", ("uvicorn/", "httptools")),
    ("framework (FastAPI, Starlette)", ("fastapi/", "starlette/")),
    # A pool thread's own frame innermost: handing work over and waiting for the GIL (py-spy
    # counts a thread blocked on the GIL as active).
    ("thread pools (hand-offs, GIL waits)", ("concurrent/futures",)),
    # Innermost frame the loop itself: uvloop's C code (sockets, epoll, callbacks) and asyncio.
    ("event loop (asyncio, uvloop, sockets)", ("asyncio/", "uvloop", "selectors.py", "Runner.run (")),
]
OTHER = "other"


def classify_stack(frames: list[str]) -> str:
    for frame in reversed(frames):
        for step, needles in STEPS:
            if any(needle in frame for needle in needles):
                return step
    return OTHER


def read_raw_profile(path: Path) -> collections.Counter[str]:
    """py-spy's ``--format raw`` (collapsed stacks ``a;b;c count``) -> samples per step."""
    steps: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")[2:]  # after the process and the thread
        steps[classify_stack(frames)] += int(count)
    return steps


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(__import__("sys").executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install '.[bench]' (py-spy is in the bench extra)")
    return found


def profile_one(tree: Tree, endpoint: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = lean_service_spec(tree, args.repository, threads=1)
    spec.env["POLYNL_ACCESS_LOG"] = "true"  # as deployed: one access line per request
    spec.env["POLYNL_LOG_LEVEL"] = "info"
    images = ENDPOINT_IMAGES[endpoint]
    PROFILES.mkdir(parents=True, exist_ok=True)
    with running(spec) as server:
        url = f"{server.url}/{endpoint}?{ENDPOINT_QUERY[endpoint]}"
        run_wrk(url, images, connections=args.connections, duration_s=3)  # warm-up
        raw = PROFILES / f"{tree.name}-{endpoint}.txt"  # kept for a closer look (collapsed stacks)
        sampler = subprocess.Popen(
            [py_spy(), "record", "-p", str(server.pid), "-r", "200", "-f", "raw", "-o", str(raw),
             "-d", str(round(args.duration)), "--nonblocking", "--subprocesses"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)  # py-spy attached before the load starts
        cpu_before = tree_cpu_s(server.pid)
        load = run_wrk(url, images, connections=args.connections, duration_s=args.duration - 1)
        cpu_s = tree_cpu_s(server.pid) - cpu_before
        sampler.wait(timeout=args.duration + 60)
        steps = read_raw_profile(raw)
    requests = int(load["requests"])
    total = sum(steps.values()) or 1
    cpu_ms_per_request = 1000.0 * cpu_s / max(1, requests)
    return {
        "tree": tree.name,
        "revision": tree.revision,
        "endpoint": endpoint,
        "requests": requests,
        "requests_per_s": load["requests_per_s"],
        "by_status": load.get("by_status"),
        "server_cpu_ms_per_request": cpu_ms_per_request,
        "samples": total,
        "steps": {
            step: {"share": n / total, "cpu_ms_per_request": cpu_ms_per_request * n / total}
            for step, n in steps.most_common()
        },
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Where the server's CPU goes (py-spy, `python -m bench.profile_service`)",
        "",
        machine_markdown(report["machine"]),
        f"One worker, one ONNX Runtime thread, access log on, wrk with "
        f"{report['connections']} connections for {report['duration_s']:.0f} s per run. CPU ms per "
        "request = the server's CPU time over the run / requests answered, split by the share of "
        "py-spy samples (idle time excluded) in each step.",
        "",
    ]
    for endpoint in report["endpoints"]:
        runs = [r for r in report["runs"] if r["endpoint"] == endpoint]
        steps = list(dict.fromkeys(step for r in runs for step in r["steps"]))
        lines += [f"## /{endpoint}", ""]
        header = " | ".join(f"{r['tree']} ({r['revision'][:9]})" for r in runs)
        lines += [f"| step | {header} |", "|---" * (len(runs) + 1) + "|"]
        lines.append(
            "| requests/s, server CPU ms/request | "
            + " | ".join(f"{r['requests_per_s']:.0f}, {r['server_cpu_ms_per_request']:.2f}" for r in runs)
            + " |"
        )
        for step in steps:
            cells = []
            for r in runs:
                s = r["steps"].get(step)
                cells.append(f"{s['cpu_ms_per_request']:.3f} ({100 * s['share']:.1f} %)" if s else "-")
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", default="baseline,current", help="baseline, current or both")
    parser.add_argument("--baseline-rev", default=DEFAULT_BASELINE)
    parser.add_argument("--endpoints", default="classify,detect-faces")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of sampled load per run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS / "profile")
    args = parser.parse_args(argv)
    args.repository = args.repository.resolve()
    trees = {"baseline": lambda: baseline_tree(args.baseline_rev), "current": current_tree}
    chosen = [trees[name.strip()]() for name in args.trees.split(",") if name.strip()]
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    machine = machine_info()  # the load before the runs start
    runs = []
    for endpoint in endpoints:
        for tree in chosen:
            print(f"profiling /{endpoint} on {tree.name} ({tree.revision[:12]}) ...", flush=True)
            done = profile_one(tree, endpoint, args)
            runs.append(done)
            print(f"  {done['requests_per_s']:.0f} req/s, {done['server_cpu_ms_per_request']:.2f} ms CPU")
    report = {
        "machine": machine,
        "connections": args.connections,
        "duration_s": args.duration,
        "endpoints": endpoints,
        "runs": runs,
    }
    write_report(args.out, report, markdown(report) + "\n")
    print(f"wrote {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

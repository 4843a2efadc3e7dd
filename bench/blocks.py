"""Benchmark 1: the Poly-NL block (both forms) against the non-local block, time and peak memory
vs input size.

Not on the serving path: it measures the one claim the product is built on, that Poly-NL
is linear in the number of positions N = H*W while the non-local block is quadratic.

For every size (H = W = s, so N = s*s) and block it measures, side by side in one run,
PyTorch eager CPU and ONNX Runtime CPU (the block exported with ``export.onnx_export``,
the same exporter as the shipped models). Each measurement runs in a fresh subprocess so
one measurement's allocations cannot hide in another's high-water mark.

Peak memory method: Linux's per-process resident high-water mark. The worker sets up
(model, input, ONNX Runtime session), resets the high-water mark (``5`` into
``/proc/self/clear_refs``), reads its RSS, runs one forward pass, and reports
``VmHWM - RSS before``: every byte the pass touched, whatever allocated it (PyTorch's
allocator, oneDNN scratch space, ONNX Runtime's arena). The first pass is the measured
one, so one-time allocations (ORT's arena growth) count, as they would in a server.

The non-local block's N x N affinity is checked against a memory budget before it runs:
sizes whose affinity plus softmax (2 * B * N^2 * 4 bytes) exceed ``--memory-budget-gib``
are recorded as "over budget" with the computed bytes, and a size whose first pass exceeds
``--time-cap-s`` stops that block/framework from trying larger sizes ("over time").

Blocks (``--blocks``, default all three): ``polynl`` (form ``projected``, C' = C / reduction),
``polynl-paper-scalar`` (form ``paper-scalar``, full width: three C x C projections, so about
1.5x the projected form's multiply-adds at reduction 2) and ``nonlocal``. Both Poly-NL forms are
our reconstruction, after Babiloni et al. (``models/blocks.py``).

    python -m bench.blocks                       # C=1024 (ResNet-50 res4), sizes 16..256
    python -m bench.blocks --sizes 16,32 --channels 256 --repeats 2   # a quick smoke run
    python -m bench.blocks --blocks polynl,polynl-paper-scalar --sizes 16,64   # the two forms only
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.machine import machine_info, machine_markdown, write_report

# benchmark name -> (models.blocks.make_block kind, Poly-NL form)
BLOCK_KINDS: dict[str, tuple[str, str]] = {
    "polynl": ("polynl", "projected"),
    "polynl-paper-scalar": ("polynl", "paper-scalar"),
    "nonlocal": ("nonlocal", "projected"),
}
BLOCKS = tuple(BLOCK_KINDS)
POLYNL_BLOCKS = ("polynl", "polynl-paper-scalar")
LABELS = {
    "polynl": "Poly-NL projected",
    "polynl-paper-scalar": "Poly-NL paper-scalar",
    "nonlocal": "non-local",
}
FRAMEWORKS = ("torch", "onnxruntime")
RESULTS = Path(__file__).resolve().parent / "results"


# --- the measuring worker (runs in its own process) ------------------------------------------


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _timed_runs(run: Any, repeats: int, time_cap_s: float) -> dict[str, Any]:
    """First pass measures peak memory; further passes (up to ``repeats``) the time."""
    _reset_peak_rss()
    rss_before = _status_kib("VmRSS")
    started = time.perf_counter()
    run()
    first_s = time.perf_counter() - started
    peak_kib = _status_kib("VmHWM") - rss_before
    result: dict[str, Any] = {"peak_mib": peak_kib / 1024.0, "first_ms": first_s * 1000.0}
    if first_s > time_cap_s:
        result.update(status="over time", time_ms=None)
        return result
    times = []
    budget_end = time.perf_counter() + max(time_cap_s, first_s * repeats)
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000.0)
        if time.perf_counter() > budget_end:
            break
    # The best pass is the estimate least disturbed by other processes on a shared machine.
    result.update(status="ok", time_ms=min(times), median_ms=statistics.median(times), runs=len(times))
    return result


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    shape = (args.batch, args.channels, args.size, args.size)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    if args.framework == "torch":
        import torch

        torch.set_num_threads(args.threads)
        module = _build_block(args.block, args.channels, args.reduction)
        tensor = torch.from_numpy(x)

        def run() -> None:
            with torch.inference_mode():
                module(tensor)

    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run() -> None:
            session.run(None, {name: x})

    return _timed_runs(run, args.repeats, args.time_cap_s)


def _build_block(kind: str, channels: int, reduction: int) -> Any:
    import torch

    from models.blocks import make_block

    torch.manual_seed(0)
    block, form = BLOCK_KINDS[kind]
    module = make_block(block, channels, reduction, form).eval()
    # A trained block's residual branch is open (output BN not zero, or b != 0); random weights
    # make the whole block do work.
    with torch.no_grad():
        if form == "paper-scalar":
            module.get_parameter("b").fill_(0.5)
        else:
            bn = module.bn
            assert isinstance(bn, torch.nn.BatchNorm2d)
            bn.weight.normal_()
            bn.bias.normal_()
    return module


# --- the driver -----------------------------------------------------------------------------


def export_block(kind: str, channels: int, reduction: int, folder: Path) -> Path:
    """The block alone as ONNX (dynamic H, W), through the project's exporter."""
    import torch

    from export.onnx_export import ExportSpec, export_onnx

    path = folder / f"{kind}_c{channels}.onnx"
    axes = {2: "height", 3: "width"}
    spec = ExportSpec("x", ("y",), (1, channels, 16, 16), {"x": axes, "y": axes})
    # Wrapped so the block stays a function call inside a graph, as in the shipped models.
    export_onnx(torch.nn.Sequential(_build_block(kind, channels, reduction)), spec, path)
    return path


def affinity_bytes(batch: int, size: int) -> int:
    """Bytes of one float32 N x N affinity, N = size * size."""
    n = size * size
    return batch * n * n * 4


def _measure(args: argparse.Namespace, framework: str, block: str, size: int, onnx: Path) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "bench.blocks", "--worker", "--framework", framework, "--block", block,
        "--size", str(size), "--channels", str(args.channels), "--reduction", str(args.reduction),
        "--batch", str(args.batch), "--threads", str(args.threads), "--repeats", str(args.repeats),
        "--time-cap-s", str(args.time_cap_s), "--onnx", str(onnx),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            timeout=args.time_cap_s * (args.repeats + 2) + 60,
        )
    except subprocess.TimeoutExpired:
        return {"status": "over time", "time_ms": None, "peak_mib": None}
    if done.returncode != 0:
        # Killed by the kernel's OOM killer or a failed allocation: record, don't crash the run.
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        status = "OOM" if done.returncode in (-9, 137) or "alloc" in tail[0].lower() else "error"
        return {"status": status, "time_ms": None, "peak_mib": None, "detail": tail[0][:200]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def selected_blocks(text: str) -> list[str]:
    blocks = [b for b in text.split(",") if b]
    unknown = set(blocks) - set(BLOCKS)
    if unknown or not blocks:
        raise SystemExit(f"--blocks: unknown {sorted(unknown)}; expected names from {list(BLOCKS)}")
    return blocks


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(s) for s in args.sizes.split(",")]
    blocks = selected_blocks(args.blocks)
    budget = int(args.memory_budget_gib * 2**30)
    rows: list[dict[str, Any]] = []
    stopped: set[tuple[str, str]] = set()  # (block, framework) that went over time or memory
    with tempfile.TemporaryDirectory(prefix="bench-blocks-") as tmp:
        onnx = {kind: export_block(kind, args.channels, args.reduction, Path(tmp)) for kind in blocks}
        for size in sizes:
            for block in blocks:
                nxn = 2 * affinity_bytes(args.batch, size) if block == "nonlocal" else 0
                for framework in FRAMEWORKS:
                    row: dict[str, Any] = {
                        "block": block, "framework": framework, "size": size, "positions": size * size,
                        "nxn_bytes": nxn or None,
                    }  # fmt: skip
                    if block == "nonlocal" and nxn > budget:
                        row.update(status="over budget", time_ms=None, peak_mib=None)
                    elif (block, framework) in stopped:
                        row.update(status="skipped (smaller size went over)", time_ms=None, peak_mib=None)
                    else:
                        row.update(_measure(args, framework, block, size, onnx[block]))
                    if row["status"] in ("over time", "OOM"):
                        stopped.add((block, framework))
                    rows.append(row)
                    _log(row)
    return {
        "benchmark": "blocks",
        "settings": {
            "blocks": blocks,
            "channels": args.channels,
            "inner_channels": max(1, args.channels // args.reduction),
            "reduction": args.reduction,
            "batch": args.batch,
            "threads": args.threads,
            "repeats": args.repeats,
            "memory_budget_gib": args.memory_budget_gib,
            "time_cap_s": args.time_cap_s,
            "nonlocal_mode": "embedded_gaussian (softmax)",
            "time": "best of the passes after the first (median also in the JSON)",
            "peak_memory_method": "Linux VmHWM after resetting it via /proc/self/clear_refs, minus RSS "
            "before the first forward pass, one fresh process per measurement",
        },
        "rows": rows,
        "ratios": ratios(rows),
    }


def _log(row: dict[str, Any]) -> None:
    time_ms = f"{row['time_ms']:.2f} ms" if row.get("time_ms") is not None else row["status"]
    peak = f"{row['peak_mib']:.1f} MiB" if row.get("peak_mib") is not None else ""
    print(
        f"{row['block']:>19} {row['framework']:>11} {row['size']:>4}x{row['size']:<4} {time_ms} {peak}",
        flush=True,
    )


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NonLocal / Poly-NL time and memory at each size, framework and Poly-NL form (None when NL
    did not run, or was not selected)."""
    by_key = {(r["block"], r["framework"], r["size"]): r for r in rows}
    out = []
    for (block, framework, size), poly in sorted(by_key.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        if block not in POLYNL_BLOCKS:
            continue
        nl = by_key.get(("nonlocal", framework, size), {})

        def ratio(key: str, nl: dict[str, Any] = nl, poly: dict[str, Any] = poly) -> float | None:
            a, b = nl.get(key), poly.get(key)
            return a / b if a is not None and b else None

        out.append(
            {
                "size": size,
                "framework": framework,
                "polynl": block,
                "time_ratio_nl_over_polynl": ratio("time_ms"),
                "memory_ratio_nl_over_polynl": ratio("peak_mib"),
                "nonlocal_status": nl.get("status"),
            }
        )
    return out


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    blocks = s.get("blocks", ["polynl", "nonlocal"])
    names = [LABELS[b] for b in blocks]
    lines = [
        "## Poly-NL ("
        + ", ".join(LABELS[b].removeprefix("Poly-NL ") for b in blocks if b in POLYNL_BLOCKS)
        + " form) vs non-local block",
        "",
        f"One block, batch {s['batch']}, C = {s['channels']} (projected Poly-NL and non-local C' = "
        f"{s['inner_channels']}; Poly-NL paper-scalar full width), float32, "
        f"{s['threads']} thread(s), time = best of up to {s['repeats']} passes after the first. "
        f"Non-local: {s['nonlocal_mode']}. "
        f"Peak memory: {s['peak_memory_method']}. Memory budget for the N x N tensors "
        f"{s['memory_budget_gib']} GiB, time cap {s['time_cap_s']} s per pass. Both Poly-NL forms are "
        "our reconstruction, after Babiloni et al.",
        "",
        machine_markdown(report["machine"]),
        "| H x W | N | framework | "
        + " | ".join(f"{n} ms" for n in names)
        + " | "
        + " | ".join(f"{n} peak MiB" for n in names)
        + " |",
        "|---|---|---|" + "---|" * (2 * len(blocks)),
    ]
    by_key = {(r["block"], r["framework"], r["size"]): r for r in report["rows"]}

    def fmt(value: float | None, digits: int = 1) -> str:
        return f"{value:.{digits}f}" if value is not None else "-"

    sizes = sorted({r["size"] for r in report["rows"]})
    for size in sizes:
        for framework in FRAMEWORKS:
            rows = [by_key.get((b, framework, size)) for b in blocks]
            if not any(rows):
                continue
            times = [fmt(r["time_ms"], 2) if r and r["time_ms"] is not None else _why(r) for r in rows]
            peaks = [fmt(r["peak_mib"]) if r and r["peak_mib"] is not None else _why(r) for r in rows]
            lines.append(
                f"| {size}x{size} | {size * size} | {framework} | " + " | ".join(times + peaks) + " |"
            )
    if report["ratios"] and "nonlocal" in blocks:
        lines += ["", "| H x W | framework | Poly-NL form | NL/Poly-NL time | NL/Poly-NL memory |"]
        lines.append("|---|---|---|---|---|")
        for ratio in report["ratios"]:
            lines.append(
                f"| {ratio['size']}x{ratio['size']} | {ratio['framework']} | "
                f"{LABELS[ratio.get('polynl', 'polynl')].removeprefix('Poly-NL ')} | "
                f"{fmt(ratio['time_ratio_nl_over_polynl'])} | {fmt(ratio['memory_ratio_nl_over_polynl'])} |"
            )
    return "\n".join(lines) + "\n"


def _why(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if row["status"] == "over budget":
        return f"over budget ({row['nxn_bytes'] / 2**30:.1f} GiB N x N)"
    if row["status"] == "over time" and row.get("first_ms") is not None:
        return f"over time (first pass {row['first_ms'] / 1000:.0f} s)"
    return str(row["status"])


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"polynl": "-", "polynl-paper-scalar": ":", "nonlocal": "--"}
    colors = {"torch": "tab:blue", "onnxruntime": "tab:orange"}
    for block in report["settings"].get("blocks", BLOCKS):
        for framework in FRAMEWORKS:
            rows = [r for r in report["rows"] if r["block"] == block and r["framework"] == framework]
            for ax, key in ((ax_t, "time_ms"), (ax_m, "peak_mib")):
                pts = [(r["positions"], r[key]) for r in rows if r.get(key) is not None]
                name = LABELS[block]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(
                        xs,
                        ys,
                        styles[block],
                        marker="o",
                        color=colors[framework],
                        label=f"{name} ({framework})",
                    )
            over = [r["positions"] for r in rows if r["status"] != "ok"]
            if over and block == "nonlocal" and framework == "torch":
                last = max(r["positions"] for r in report["rows"])
                for ax in (ax_t, ax_m):
                    ax.axvspan(min(over) / 1.15, last * 1.15, color="grey", alpha=0.12)
                    ax.text(
                        min(over),
                        0.97,
                        " non-local over budget",
                        va="top",
                        transform=ax.get_xaxis_transform(),
                    )
    s = report["settings"]
    sizes = sorted({r["size"] for r in report["rows"]})
    for ax, label in ((ax_t, "time per forward pass (ms)"), (ax_m, "peak memory of the pass (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([size * size for size in sizes], labels=[f"{size}²" for size in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("positions N = H x W (log scale)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Poly-NL (our reconstruction) vs non-local block, C={s['channels']}, batch {s['batch']}, "
        f"CPU {s['threads']} threads"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.blocks", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="16,32,48,64,96,128,192,256", help="H=W values")
    parser.add_argument(
        "--channels", type=int, default=1024, help="C (1024 = ResNet-50 res4, the paper's spot)"
    )
    parser.add_argument("--reduction", type=int, default=2)
    parser.add_argument("--blocks", default=",".join(BLOCKS), help=f"comma-separated, from {list(BLOCKS)}")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-budget-gib", type=float, default=4.0)
    parser.add_argument("--time-cap-s", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "blocks", help="path stem for .json/.md/.png")
    # worker mode (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--framework", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--block", choices=BLOCKS, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    machine = machine_info()
    report = run_benchmark(args)
    report["machine"] = machine
    write_report(args.out, report, markdown(report))
    plot(report, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')}, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

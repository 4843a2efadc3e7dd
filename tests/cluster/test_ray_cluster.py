"""Ray Serve on a real two-node Ray cluster, loopback only (marker ``cluster``; ``.ci/run`` runs it).

``ray_scenario.py`` does the work inside network + PID + mount namespaces that it creates and
owns (only ``lo``): a Ray head and a second Ray node as separate ``ray start`` processes with one
CPU each, ``serve run`` of deploy/ray/serve.yaml, load through Ray's HTTP proxy, a SIGKILL of the
second node mid-load, and shutdown. This test runs it, bounded, and checks what it observed
against ``python -m service`` on the same images. About 1.5 minutes on 2 cores.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from ray_scenario import CLASSIFY_IMAGES, DETECT_IMAGES, REQUEST_TIMEOUT_S

# `slow` too: the default run (`not slow and not docker and not browser`) leaves it out.
pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(420)]

SCENARIO = Path(__file__).with_name("ray_scenario.py")
ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
SCENARIO_TIMEOUT_S = 300


def _namespaces_available() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare (util-linux) or ip (iproute2) is missing"
    probe = subprocess.run(
        ["unshare", "--net", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30
    )
    if probe.returncode != 0:
        return f"cannot create namespaces here: {probe.stderr.decode(errors='replace').strip()}"
    return None


def _close(a: Any, b: Any, path: str = "") -> list[str]:
    """Differences between two JSON values; floats within 1e-5 (ONNX Runtime, same model, batch of 1)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in _close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _close(x, y, f"{path}[{i}]")]
    if isinstance(a, float) or isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.fixture(scope="module")
def scenario(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("ray.serve", reason="Ray Serve is the optional extra `ray` (pip install .[ray])")
    missing = _namespaces_available()
    if missing:
        pytest.skip(f"RAY CLUSTER TEST SKIPPED: {missing}")
    work = tmp_path_factory.mktemp("ray-cluster")
    out = work / "result.json"
    command = [sys.executable, str(SCENARIO), "--repository", str(model_repository), "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT_S)
    assert out.is_file(), f"the scenario wrote no result (exit {done.returncode}):\n{done.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(out.read_text())
    result["work_dir"] = str(work)
    result["scenario_rc"] = done.returncode
    print("\n".join(result.get("log", [])))
    return result


def _no_error(result: dict[str, Any]) -> None:
    assert "error" not in result, (
        f"{result['error']}\nnode logs: {json.dumps(result.get('node_logs'))[-3000:]}"
    )


def test_two_nodes_join_on_loopback_only_in_the_tests_own_namespace(scenario: dict[str, Any]) -> None:
    _no_error(scenario)
    assert scenario["interfaces"] == {"lo": ["127.0.0.1", "::1"]}  # nothing else to reach
    assert [n["ip"] for n in scenario["nodes"]] == ["127.0.0.1", "127.0.0.1"]
    assert [n["cpus"] for n in scenario["nodes"]] == [1.0, 1.0]
    for audit in ("sockets_under_load", "sockets_end"):
        assert scenario[audit]["sockets"] > 0
        assert scenario[audit]["outside_loopback"] == [], scenario[audit]


def test_answers_through_rays_proxy_equal_python_m_service(
    scenario: dict[str, Any], start_server: Callable[..., Any]
) -> None:
    _no_error(scenario)
    server = start_server()
    with server.client() as client:
        for route, names in (("/classify", CLASSIFY_IMAGES), ("/detect-faces", DETECT_IMAGES)):
            for name in names:
                response = client.post(route, files={"file": (name, (SAMPLES / name).read_bytes())})
                expected = response.json()
                expected.pop("timing", None)
                got = scenario["answers"][f"{route} {name}"]
                assert (got["status"], response.status_code) == (200, 200)
                assert _close(got["body"], expected) == [], f"{route} {name}"


def test_autoscaling_from_one_replica_to_two_on_both_nodes_and_back(scenario: dict[str, Any]) -> None:
    _no_error(scenario)
    head, second = scenario["head_id"], scenario["second_id"]
    assert len(scenario["replicas_at_start"]) == 1
    assert sorted(r["node"] for r in scenario["replicas_scaled_up"]) == sorted([head, second])
    load = scenario["scale_up_load"]
    assert load and Counter(o["status"] for o in load) == {200: len(load)}
    assert scenario["scale_down_s"] < 90  # back to one RUNNING replica (wait_for raised otherwise)


def test_losing_a_node_mid_load_ends_every_request_cleanly_and_then_all_succeed(
    scenario: dict[str, Any],
) -> None:
    _no_error(scenario)
    assert {r["node"] for r in scenario["replicas_before_kill"]} == {
        scenario["head_id"],
        scenario["second_id"],
    }
    assert scenario["killed_processes"] >= 3  # the `ray start`, its raylet, the replica, ...
    during = scenario["kill_load"]
    assert any(o["started"] < scenario["kill_at"] < o["ended"] for o in during), "no request was in flight"
    statuses = Counter((o["status"], o["error"]) for o in during)
    unclear = {k: n for k, n in statuses.items() if k[0] not in (200, 503, 504)}
    assert not unclear, f"requests ended other than 200/503/504 while the node died: {statuses}"
    assert all(o["ended"] - o["started"] < REQUEST_TIMEOUT_S for o in during), "a request hung"
    after = scenario["after_load"]
    assert len(after) >= 20
    assert Counter(o["status"] for o in after) == {200: len(after)}, Counter(
        (o["status"], o["error"]) for o in after
    )
    assert [r["node"] for r in scenario["replicas_after_kill"]] == [scenario["head_id"]]


def test_shutdown_leaves_no_process_behind(scenario: dict[str, Any]) -> None:
    _no_error(scenario)
    assert scenario["scenario_rc"] == 0
    assert scenario["killed_at_stop"] == [], "processes needed SIGKILL after serve.shutdown + SIGTERM"
    assert scenario["left_in_namespace"] == []
    work = scenario["work_dir"]
    leftovers = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if work in cmdline or str(SCENARIO) in cmdline:
            leftovers.append(f"{process.info['pid']}: {cmdline[:120]}")
    assert leftovers == []

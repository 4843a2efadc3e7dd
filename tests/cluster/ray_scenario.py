"""The Ray Serve cluster scenario, run inside its own network namespace by test_ray_cluster.py.

``python tests/cluster/ray_scenario.py --repository R --out result.json`` re-runs itself inside
new network + PID + mount namespaces (only ``lo``), starts a Ray head and a second node (one CPU
each), deploys deploy/ray/serve.yaml with ``serve run`` (test-sized autoscaling), and then, each
step bounded in time:

1. answers: every sample image through Ray's HTTP proxy to both endpoints;
2. scale-up: load until Serve runs 2 replicas, one on each node;
3. scale-down: no load until it is back to 1;
4. node loss: load again until 2 replicas, SIGKILL every process of the second node mid-load,
   keep loading until the GCS declares the node dead and after;
5. shutdown: ``serve.shutdown()``, SIGTERM to the nodes; which processes are left.

Everything observed goes to the JSON file; the test asserts on it. No assertion here: a failing
step records its error and the scenario still shuts the cluster down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from deploy.ray.local_cluster import (  # noqa: E402
    LocalCluster,
    in_private_netns,
    namespace_interfaces,
    reexec_in_netns,
    socket_audit,
)

SERVE_PORT = 8000
APP = "polynl"
DEPLOYMENT = "PolynlServe"
REQUEST_TIMEOUT_S = 30.0  # a request taking longer than this "hangs"
CLASSIFY_IMAGES = ["cifar_ship.png", "cifar_cat.png", "cat.jpg", "coffee.jpg"]
DETECT_IMAGES = ["face_astronaut.jpg", "faces_group.jpg"]


@dataclass
class Outcome:
    started: float
    ended: float
    status: int  # 0: no HTTP answer (connection error or client timeout)
    error: str  # the body's "error" code, or the transport error's type


def test_config(base: Path, repository: Path, out: Path) -> Path:
    """deploy/ray/serve.yaml with test-sized autoscaling and one proxy, on 127.0.0.1."""
    import yaml  # Ray's dependency: only where the `ray` extra is installed

    config = yaml.safe_load(base.read_text())
    # Both nodes share 127.0.0.1: one proxy (the head's) serves; on a real cluster every node runs
    # one behind the load balancer.
    config["proxy_location"] = "HeadOnly"
    config["http_options"]["host"] = "127.0.0.1"
    config["http_options"]["port"] = SERVE_PORT
    app = config["applications"][0]
    app["args"]["model_repository"] = str(repository)
    app["runtime_env"]["env_vars"]["POLYNL_LOG_LEVEL"] = "warning"
    deployment = app["deployments"][0]
    deployment["autoscaling_config"].update(
        min_replicas=1,
        initial_replicas=1,
        max_replicas=2,
        target_ongoing_requests=2,
        upscale_delay_s=1,
        downscale_delay_s=4,
        look_back_period_s=2,
        metrics_interval_s=0.5,
    )
    deployment.update(health_check_period_s=2, health_check_timeout_s=10, graceful_shutdown_timeout_s=5)
    path = out / "serve-test.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def replicas() -> list[dict[str, Any]]:
    """Serve's live replica actors and the node each runs on (from the GCS actor table)."""
    from ray._private import state

    found = []
    for actor in state.actors().values():
        name = actor.get("ActorClassName", "")
        if DEPLOYMENT in name and "Replica" in name and actor.get("State") == "ALIVE":
            found.append({"actor": actor["ActorID"], "node": actor["Address"]["NodeID"]})
    return found


def running_replicas() -> int:
    from ray import serve

    status = serve.status().applications.get(APP)
    if status is None:
        return 0
    if str(getattr(status.status, "value", status.status)) == "DEPLOY_FAILED":
        raise RuntimeError(f"deploying {APP} failed: {status.message}")
    states = status.deployments[DEPLOYMENT].replica_states
    return int(sum(n for s, n in states.items() if str(getattr(s, "value", s)) == "RUNNING"))


def wait_for(what: str, check: Any, timeout_s: float, log: list[str]) -> float:
    """Poll ``check()`` every 0.5 s until true; seconds it took (raises after ``timeout_s``)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what}: not after {timeout_s:.0f} s")
        time.sleep(0.5)
    took = time.monotonic() - started
    log.append(f"{what}: {took:.1f} s")
    return took


class Load:
    """Bounded concurrent /classify load in a background thread, every outcome recorded."""

    def __init__(self, url: str, image: bytes, concurrency: int) -> None:
        self.url, self.image, self.concurrency = url, image, concurrency
        self.outcomes: list[Outcome] = []
        self._stop = False
        self._thread: Any = None

    async def _worker(self, client: httpx.AsyncClient) -> None:
        while not self._stop:
            started = time.monotonic()
            try:
                response = await client.post(
                    "/classify", files={"file": ("x.png", self.image, "image/png")}, timeout=REQUEST_TIMEOUT_S
                )
                error = ""
                if response.status_code != 200:
                    try:
                        error = str(response.json().get("error", ""))
                    except ValueError:
                        error = response.text[:80]
                self.outcomes.append(Outcome(started, time.monotonic(), response.status_code, error))
            except httpx.HTTPError as exc:
                self.outcomes.append(Outcome(started, time.monotonic(), 0, type(exc).__name__))
                await asyncio.sleep(0.05)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, limits=limits) as client:
            await asyncio.gather(*(self._worker(client) for _ in range(self.concurrency)))

    def start(self) -> Load:
        import threading

        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop = True
        self._thread.join(REQUEST_TIMEOUT_S + 10)
        return self.outcomes


def answers(url: str, samples: Path) -> dict[str, Any]:
    """Each sample through the proxy, timing and request id dropped (compared with python -m service)."""
    found: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        for route, names in (("/classify", CLASSIFY_IMAGES), ("/detect-faces", DETECT_IMAGES)):
            for name in names:
                response = client.post(route, files={"file": (name, (samples / name).read_bytes())})
                body = response.json()
                body.pop("timing", None)
                found[f"{route} {name}"] = {"status": response.status_code, "body": body}
    return found


def scenario(args: argparse.Namespace, result: dict[str, Any]) -> None:
    out = Path(args.out).parent
    log: list[str] = result.setdefault("log", [])
    result["interfaces"] = namespace_interfaces()
    cluster = LocalCluster(out / "ray", env={"PYTHONPATH": str(ROOT)})
    # Only now: Ray reads its authentication settings, which LocalCluster sets, when imported.
    import ray
    from ray import serve

    result["_cluster"] = cluster
    t0 = time.monotonic()
    cluster.start_node()
    head_id = str(cluster.alive_nodes()[0]["id"])
    cluster.start_node()
    nodes = cluster.wait_for_nodes(2, 60)
    result["nodes"] = nodes
    second_id = next(str(n["id"]) for n in nodes if str(n["id"]) != head_id)
    result["head_id"], result["second_id"] = head_id, second_id
    log.append(f"two nodes up: {time.monotonic() - t0:.1f} s")

    config = test_config(ROOT / "deploy" / "ray" / "serve.yaml", Path(args.repository), out)
    deploy = subprocess.run(
        [str(Path(sys.executable).with_name("serve")), "run", str(config), "--non-blocking",
         "--address", cluster.address],
        cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    result["serve_run"] = {"rc": deploy.returncode, "tail": (deploy.stdout + deploy.stderr)[-2000:]}
    if deploy.returncode != 0:
        raise RuntimeError(f"serve run failed: {result['serve_run']['tail']}")
    ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
    url = f"http://127.0.0.1:{SERVE_PORT}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=5).status_code == 200 and running_replicas() >= 1
        except httpx.HTTPError:
            return False

    result["deploy_s"] = wait_for("deployed and /readyz 200", ready, 180, log)
    result["answers"] = answers(url, Path(args.samples))
    result["replicas_at_start"] = replicas()

    image = (Path(args.samples) / "cifar_ship.png").read_bytes()

    def on_both_nodes() -> bool:
        placed = replicas()
        return running_replicas() == 2 and {r["node"] for r in placed} == {head_id, second_id}

    # 2. scale up under load
    load = Load(url, image, concurrency=8).start()
    try:
        result["scale_up_s"] = wait_for("scaled to 2 replicas on both nodes", on_both_nodes, 120, log)
        result["replicas_scaled_up"] = replicas()
    finally:
        result["scale_up_load"] = [asdict(o) for o in load.stop()]
    # 3. scale down without load
    result["scale_down_s"] = wait_for(
        "back to 1 replica", lambda: running_replicas() == 1 and len(replicas()) == 1, 90, log
    )
    result["replicas_scaled_down"] = replicas()

    # 4. node loss mid-load
    load = Load(url, image, concurrency=8).start()
    try:
        wait_for("2 replicas on both nodes again", on_both_nodes, 120, log)
        result["replicas_before_kill"] = replicas()
        time.sleep(2.0)
        result["sockets_under_load"] = socket_audit()
        killed_at = time.monotonic()
        result["killed_processes"] = cluster.nodes[1].kill()
        result["kill_at"] = killed_at

        def second_node_dead() -> bool:
            return second_id not in {str(n["id"]) for n in cluster.alive_nodes()}

        result["node_dead_after_s"] = wait_for(
            "GCS declares the second node dead", second_node_dead, 120, log
        )
        result["node_dead_at"] = time.monotonic()
        time.sleep(5.0)
    finally:
        result["kill_load"] = [asdict(o) for o in load.stop()]
    # After the node is gone: every new request must succeed.
    after = Load(url, image, concurrency=4).start()
    time.sleep(6.0)
    result["after_load"] = [asdict(o) for o in after.stop()]
    result["replicas_after_kill"] = replicas()
    result["sockets_end"] = socket_audit()

    # 5. shutdown
    started = time.monotonic()
    serve.shutdown()
    ray.shutdown()
    result["killed_at_stop"] = cluster.stop(timeout_s=30)
    result["shutdown_s"] = time.monotonic() - started
    me = psutil.Process()
    result["left_in_namespace"] = [
        " ".join(p.cmdline())[:120]
        for p in psutil.process_iter()
        if p.pid not in (me.pid, 1) and p.ppid() != me.pid
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", required=True)
    parser.add_argument("--samples", default=str(ROOT / "samples"))
    parser.add_argument("--out", required=True, help="JSON file for the observations")
    args = parser.parse_args()
    if not in_private_netns():
        return reexec_in_netns([sys.executable, *sys.argv])
    result: dict[str, Any] = {"started": time.time()}
    try:
        scenario(args, result)
    except Exception:
        result["error"] = traceback.format_exc()
        cluster = result.get("_cluster")
        if cluster is not None:
            result["killed_at_stop"] = cluster.stop(timeout_s=15)
    result.pop("_cluster", None)
    for node_log in Path(args.out).parent.glob("ray-*.log"):
        result.setdefault("node_logs", {})[node_log.name] = node_log.read_text(errors="replace")[-1500:]
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

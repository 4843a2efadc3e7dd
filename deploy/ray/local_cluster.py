"""A real multi-node Ray cluster on one machine, on loopback only: for the cluster test and the benchmark.

Where it sits: beside deploy/ray/app.py, used by ``tests/cluster/`` and ``bench/ray_serve.py``,
never by the service. Each node is its own ``ray start --block`` process (a head and workers,
each with its own CPUs), so Serve must place replicas across nodes, and a node can be killed
on its own (SIGKILL of its process tree) as a machine failure would.

Loopback only, provably: Ray picks the machine's outward address as its node address, and
probes 8.8.8.8 to find it, even with ``--node-ip-address=127.0.0.1``. :func:`reexec_in_netns`
runs the caller again inside new network, PID and mount namespaces (``unshare``) where only
``lo`` exists and is up: there is no other address to listen on or to reach, Ray finds
127.0.0.1 by itself, and when the caller (PID 1 of the namespace) exits the kernel ends every
process left in it. :func:`socket_audit` lists every inet socket in the namespace.
The cluster uses Ray's token authentication with a token of its own (:class:`LocalCluster` sets
it up before Ray is imported).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

NETNS_MARK = "POLYNL_IN_NETNS"
GCS_PORT = 6390
# Ray's own default worker ports are 10002-19999 and its agents listen on fixed ports: two nodes
# on one address need their own of each.
PORT_BLOCK = 1000
FIRST_PORT = 24000


def in_private_netns() -> bool:
    """True inside the namespaces :func:`reexec_in_netns` made (only ``lo``, which is up)."""
    names = [name for _, name in socket.if_nameindex()]
    return os.environ.get(NETNS_MARK) == "1" and names == ["lo"]


def reexec_in_netns(argv: Sequence[str]) -> int:
    """Run ``argv`` in new network + PID + mount namespaces with only ``lo`` up; its exit status.

    Needs root (or user namespaces) and ``unshare`` and ``ip`` (util-linux, iproute2).
    """
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        raise RuntimeError("unshare (util-linux) and ip (iproute2) are needed for the loopback-only cluster")
    script = f'{ip} link set lo up && exec "$@"'
    command = [unshare, "--net", "--pid", "--fork", "--mount-proc", "sh", "-c", script, "sh", *argv]
    return subprocess.call(command, env={**os.environ, NETNS_MARK: "1"})


def namespace_interfaces() -> dict[str, list[str]]:
    """Every interface and its addresses, as the namespace sees them."""
    found: dict[str, list[str]] = {}
    for name, addresses in psutil.net_if_addrs().items():
        found[name] = [a.address for a in addresses if a.family in (socket.AF_INET, socket.AF_INET6)]
    return found


def _loopback_or_wildcard(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def socket_audit() -> dict[str, object]:
    """Every inet socket of every process in this namespace: how many, and any not on loopback.

    A wildcard listener (0.0.0.0, ::) counts as loopback here only because the namespace has no
    other interface; the caller checks that with :func:`namespace_interfaces`.
    """
    outside: list[str] = []
    count = 0
    for conn in psutil.net_connections(kind="inet"):
        count += 1
        ends = [conn.laddr] + ([conn.raddr] if conn.raddr else [])
        for end in ends:
            if end and not _loopback_or_wildcard(end.ip):
                outside.append(f"pid {conn.pid}: {conn.laddr} -> {conn.raddr} ({conn.status})")
    return {"sockets": count, "outside_loopback": outside}


@dataclass
class RayNode:
    """One ``ray start --block`` process and what it started."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    seen: set[int] = field(default_factory=set)

    def tree(self) -> list[psutil.Process]:
        """The node's processes (raylet, agents, workers, replicas), remembered across calls
        so that a worker re-parented after its raylet died is still found."""
        found: list[psutil.Process] = []
        try:
            root = psutil.Process(self.process.pid)
            found = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
        self.seen.update(p.pid for p in found)
        alive: list[psutil.Process] = []
        for pid in sorted(self.seen):
            try:
                alive.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                continue
        return alive

    def kill(self) -> int:
        """SIGKILL every process of the node at once, as a machine failure; how many."""
        processes = self.tree()
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(processes, timeout=10)
        self.process.wait(10)
        return len(processes)

    def stop(self, timeout_s: float = 30.0) -> list[int]:
        """SIGTERM the node (``ray start --block`` stops its processes), then SIGKILL what is
        left after ``timeout_s``; the pids that needed SIGKILL."""
        processes = self.tree()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(processes, timeout=timeout_s)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=10)
        if self.process.poll() is None:
            self.process.wait(10)
        return [p.pid for p in alive]


@dataclass
class LocalCluster:
    """A head node and worker nodes on 127.0.0.1, each with its own CPUs and ports."""

    temp_dir: Path
    cpus_per_node: int = 1
    object_store_bytes: int = 80 * 1024 * 1024
    env: dict[str, str] = field(default_factory=dict)
    nodes: list[RayNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Token authentication, as Ray recommends for any cluster, with a token of this cluster
        # only: without it a token left in ~/.ray/auth_token (any `ray.init()` there makes one)
        # would turn it on for the nodes but not for every client. Set in os.environ so that every
        # process started from here (nodes, `serve run`, drivers) has it.
        self.temp_dir.parent.mkdir(parents=True, exist_ok=True)
        token = self.temp_dir.parent / "ray-auth-token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{GCS_PORT}"

    def _ports(self, index: int) -> list[str]:
        base = FIRST_PORT + index * PORT_BLOCK
        return [
            f"--dashboard-agent-listen-port={base + 1}",
            f"--dashboard-agent-grpc-port={base + 2}",
            f"--metrics-export-port={base + 3}",
            f"--runtime-env-agent-port={base + 4}",
            f"--min-worker-port={base + 100}",
            f"--max-worker-port={base + PORT_BLOCK - 1}",
        ]

    def start_node(self, timeout_s: float = 90.0) -> RayNode:
        """Start the head (first call) or one more worker node; wait until the GCS lists it."""
        index = len(self.nodes)
        ray = str(Path(sys.executable).with_name("ray"))
        command = [
            ray,
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.cpus_per_node}",
            "--num-gpus=0",
            f"--object-store-memory={self.object_store_bytes}",
            "--disable-usage-stats",
            *self._ports(index),
        ]
        if index == 0:
            command += [
                "--head",
                f"--port={GCS_PORT}",
                "--include-dashboard=false",
                f"--ray-client-server-port={FIRST_PORT + 5}",
                f"--temp-dir={self.temp_dir}",
            ]
        else:
            command += [f"--address={self.address}"]
        name = "head" if index == 0 else f"node{index}"
        log_path = self.temp_dir.parent / f"ray-{name}.log"
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **self.env}
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        node = RayNode(name, process, log_path)
        self.nodes.append(node)
        self.wait_for_nodes(index + 1, timeout_s)
        return node

    def alive_nodes(self) -> list[dict[str, object]]:
        """The GCS's live nodes (a short-lived ``ray.init`` driver in a subprocess)."""
        code = (
            f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR',"
            " log_to_driver=False);"
            "print('NODES=' + json.dumps([{'id': n['NodeID'], 'ip': n['NodeManagerAddress'],"
            " 'cpus': n['Resources'].get('CPU', 0)} for n in ray.nodes() if n['Alive']]))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("NODES=")]
        if done.returncode != 0 or not lines:
            return []
        import json

        return list(json.loads(lines[-1].removeprefix("NODES=")))

    def wait_for_nodes(self, count: int, timeout_s: float) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout_s
        while True:
            for node in self.nodes:
                if node.process.poll() is not None:
                    raise RuntimeError(f"ray node {node.name} exited:\n{node.log_path.read_text()[-3000:]}")
            alive = self.alive_nodes()
            if len(alive) >= count:
                return alive
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(alive)} of {count} Ray nodes up after {timeout_s:.0f} s")
            time.sleep(1.0)

    def stop(self, timeout_s: float = 30.0) -> list[int]:
        """Stop worker nodes, then the head; the pids that had to be killed."""
        killed: list[int] = []
        for node in reversed(self.nodes):
            killed += node.stop(timeout_s)
        return killed

"""Shared fixtures: a real model repository and real uvicorn servers on 127.0.0.1.

``model_repository`` (session): the repository every service test runs against. It is
built with the real export (``python -m export``) from the shipped weights in
``models/weights/`` when they exist, otherwise from seeded random-init checkpoints, and
cached under ``.pytest_cache`` (keyed by the weights, or by the model code for random
weights, plus ``polynl_core/repository.py``), so only the first run pays the export;
``pytest --cache-clear`` rebuilds it. Set ``POLYNL_TEST_MODEL_REPOSITORY`` to use a
prebuilt repository instead.

``start_server`` (session): a function ``start_server(env={...}) -> ServerHandle`` that
runs ``python -m service`` in a subprocess on a free loopback port with the given
``POLYNL_*`` overrides, waits for ``/readyz`` and stops it (SIGTERM) at the end of the
session unless the test stopped it. Example::

    def test_something(start_server):
        server = start_server({"POLYNL_MAX_BATCH_SIZE": "1"})
        with server.client() as client:
            assert client.get("/healthz").status_code == 200
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "models" / "weights"
SAMPLES = ROOT / "samples"
# Small buckets keep warm-up and detector tests fast on 2 CPU cores.
TEST_BUCKETS = "320x320,480x640"
CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Settings every test server gets unless a test overrides them: few threads (the test
# machine is shared), the providers' default order (CUDA is tried, CPU is what runs here).
SERVER_DEFAULTS = {
    "POLYNL_INTRA_OP_THREADS": "1",
    "POLYNL_DECODE_THREADS": "2",
    "POLYNL_LOG_LEVEL": "info",
}


# --- model repository ----------------------------------------------------------------------
def _random_checkpoints(folder: Path) -> dict[str, Path]:
    """Seeded random-init checkpoints in the shipped models' formats (used until weights ship)."""
    import torch

    from models.checkpoint import Checkpoint, save_checkpoint
    from models.resnet import cifar_resnet
    from models.retinaface.data import PREPROCESS
    from models.retinaface.net import RetinaFace, RetinaFaceConfig

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    classifier = cifar_resnet(20, num_classes=10, block="polynl")
    paths = {"classifier": folder / "classifier.pt", "face_detector": folder / "face_detector.pt"}
    save_checkpoint(
        paths["classifier"],
        Checkpoint(
            task="classifier",
            arch=classifier.config.to_dict(),
            state_dict=classifier.state_dict(),
            labels=CIFAR10_LABELS,
            preprocess={
                "resize": "shorter_side_center_crop",
                "size": [32, 32],
                "mean": [0.4914, 0.4822, 0.4465],
                "std": [0.2470, 0.2435, 0.2616],
            },
        ),
    )
    config = RetinaFaceConfig()
    detector = RetinaFace(config)
    save_checkpoint(
        paths["face_detector"],
        Checkpoint(
            task="face_detector",
            arch=config.to_dict(),
            state_dict=detector.state_dict(),
            labels=["face"],
            preprocess=dict(PREPROCESS),
        ),
    )
    return paths


def _digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def shipped_weights() -> dict[str, Path] | None:
    paths = {"classifier": WEIGHTS / "classifier.pt", "face_detector": WEIGHTS / "face_detector.pt"}
    return paths if all(p.is_file() for p in paths.values()) else None


def run_export_cli(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -m export ...`` as a user would (it re-runs itself after torch's
    intermittent exporter crash: ``export.__main__.run_with_retries``)."""
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def build_model_repository(out: Path, checkpoints: Mapping[str, Path], buckets: str = TEST_BUCKETS) -> Path:
    """Run the real export into ``out``; raise with its output when it fails."""
    command = [
        sys.executable,
        "-m",
        "export",
        "--classifier-checkpoint",
        str(checkpoints["classifier"]),
        "--detector-checkpoint",
        str(checkpoints["face_detector"]),
        "--out",
        str(out),
        "--buckets",
        buckets,
    ]
    done = run_export_cli(["nice", "-n", "10", *command], timeout=900)
    if done.returncode != 0:
        raise RuntimeError(
            f"python -m export failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return out


@pytest.fixture(scope="session")
def model_repository(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prebuilt = os.environ.get("POLYNL_TEST_MODEL_REPOSITORY")
    if prebuilt:
        return Path(prebuilt)
    checkpoints = shipped_weights()
    cache = Path(request.config.cache.mkdir("polynl-model-repository"))
    if checkpoints is not None:
        # Keyed by the weights and the repository contract only: re-exporting on every edit
        # of export/ would cost a minute per test run; CI starts from an empty cache anyway.
        repository = (
            cache / f"shipped-{_digest([*checkpoints.values(), ROOT / 'polynl_core' / 'repository.py'])}"
        )
    else:
        # Random weights are a function of the model code (seeded): key by that code, so a
        # cached repository is found without importing torch.
        code = [
            ROOT / "models" / "resnet.py",
            ROOT / "models" / "blocks.py",
            ROOT / "polynl_core" / "repository.py",
        ]
        code += sorted((ROOT / "models" / "retinaface").glob("*.py"))
        repository = cache / f"random-{_digest(code)}"
    if not (repository / "classifier").is_dir() or not (repository / "face_detector").is_dir():
        if checkpoints is None:
            checkpoints = _random_checkpoints(tmp_path_factory.mktemp("random-checkpoints"))
        import shutil

        staging = cache / f"staging-{os.getpid()}"
        build_model_repository(staging, checkpoints)
        if (repository / "classifier").is_dir() and (repository / "face_detector").is_dir():
            shutil.rmtree(staging)  # another test session finished the same build first
        else:
            shutil.rmtree(repository, ignore_errors=True)  # a stale partial build
            staging.replace(repository)
    return repository


def repository_is_random(repository: Path) -> bool:
    """True when the repository holds random-init weights (answers are not meaningful)."""
    return repository.name.startswith("random-")


# --- servers ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerHandle:
    """A running ``python -m service`` subprocess."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    grpc_port: int = 0  # the Open Inference Protocol's gRPC port (POLYNL_GRPC_PORT)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def client(self, **kwargs: object) -> httpx.Client:
        kwargs.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.url, **kwargs)  # type: ignore[arg-type]

    def async_client(self, **kwargs: object) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", 30.0)
        return httpx.AsyncClient(base_url=self.url, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(
        self, name: str, labels: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None
    ) -> float:
        """One sample's value from /metrics (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics", headers=dict(headers or {}), timeout=10).text
        return parse_metric(text, name, labels)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; the exit status (kill after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)


def parse_metric(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        found = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part)
        found = {k: v.strip('"') for k, v in found.items()}
        if all(found.get(k) == v for k, v in (labels or {}).items()):
            total += float(value)
    return total


def launch_server(
    repository: Path,
    env: Mapping[str, str] | None,
    log_dir: Path,
    wait_ready: bool = True,
    timeout: float = 180.0,
) -> ServerHandle:
    port = free_port()
    grpc_port = free_port()
    full_env = {
        **os.environ,
        **SERVER_DEFAULTS,
        "POLYNL_MODEL_REPOSITORY": str(repository),
        "POLYNL_HOST": "127.0.0.1",
        "POLYNL_PORT": str(port),
        "POLYNL_GRPC_PORT": str(grpc_port),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    log_path = log_dir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    grpc_port = int(full_env["POLYNL_GRPC_PORT"])
    handle = ServerHandle(f"http://127.0.0.1:{port}", port, process, log_path, dict(env or {}), grpc_port)
    if wait_ready:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{handle.log()[-4000:]}")
            try:
                if httpx.get(f"{handle.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                handle.stop()
                raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{handle.log()[-4000:]}")
            time.sleep(0.2)
    return handle


@pytest.fixture(scope="session")
def start_server(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ServerHandle]]:
    """``start_server(env=None, wait_ready=True, repository=None) -> ServerHandle``."""
    started: list[ServerHandle] = []
    log_dir = tmp_path_factory.mktemp("server-logs")

    def start(
        env: Mapping[str, str] | None = None, wait_ready: bool = True, repository: Path | None = None
    ) -> ServerHandle:
        handle = launch_server(repository or model_repository, env, log_dir, wait_ready)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch at one thread for the test (modules opt in with ``pytest.mark.usefixtures``):
    several processes share 2 cores here, and torch's thread pool then slows down ~100x."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

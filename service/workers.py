"""Server processes: one uvicorn server, or several on one port behind a supervisor.

Sits in front of the whole data path: ``python -m service`` runs :class:`DrainingServer`
alone, or, when ``POLYNL_WORKERS`` asks for more than one process, a :class:`Supervisor`
of that many worker processes (:func:`serve_worker`). Each worker is a complete server (its own
event loop, ONNX Runtime sessions and batchers) that binds the port itself with
``SO_REUSEPORT``, so the kernel spreads new connections evenly over the workers' sockets.
Why not one shared listening socket (uvicorn's ``--workers``): whichever worker wakes first
accepts the whole burst of connections, and keep-alive clients then stay on it. Measured
with 32 keep-alive clients on 2 workers: 32/0, 27/5 and 32/0 connections per worker in
three runs, one worker busy and the other idle.

The supervisor itself never listens (a connection hashed to its socket would wait
forever); it checks that the port is free before starting workers, so a second server on
the same port fails instead of silently sharing the traffic. It restarts a worker that
dies, passes SIGINT/SIGTERM on to every worker, and exits 0 once all have drained, or 3
(uvicorn's start-up failure status) when a worker could not start (broken repository,
port taken), without restarting it. The workers' metrics meet in one folder (see
``service.metrics``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from service.metrics import MULTIPROC_DIR_ENV
from service.settings import Settings, get_settings

logger = logging.getLogger("service.workers")

_POLL_S = 0.2
# A worker that keeps dying (it cannot import, runs out of memory at start-up...) would be
# restarted forever: past this many restarts within the window the server gives up.
_MAX_RESTARTS = 5
_RESTART_WINDOW_S = 60.0


class DrainingServer(uvicorn.Server):
    """uvicorn's server, minus re-raising SIGINT/SIGTERM at the end: a drained shutdown is a
    clean exit (status 0), which is what process managers expect after a SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        "service.app:app",
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # service.middleware logs each request with its X-Request-ID instead.
        access_log=False,
        # Requests already accepted get their answer before the process exits.
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` that other workers may bind too (not yet listening)."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def check_port_free(host: str, port: int) -> None:
    """Raise OSError when something already holds the port (a plain bind, no SO_REUSEPORT)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


@contextlib.contextmanager
def shared_metrics_dir() -> Iterator[Path]:
    """The folder where the workers write their metrics: ``PROMETHEUS_MULTIPROC_DIR`` when
    set (emptied first: values of an earlier run would be added to this one's), else a
    temporary folder removed at exit. The workers inherit it through the environment."""
    given = os.environ.get(MULTIPROC_DIR_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="polynl-metrics-") as folder:
        os.environ[MULTIPROC_DIR_ENV] = folder
        try:
            yield Path(folder)
        finally:
            del os.environ[MULTIPROC_DIR_ENV]


def serve_worker(host: str, port: int) -> None:
    """One worker process (the supervisor's spawn target, so it lives in an importable
    module): its own socket on the shared port, then a complete server on it."""
    config = uvicorn_config(get_settings())
    try:
        sock = reuse_port_socket(host, port)
    except OSError as exc:
        logging.getLogger("service.workers").error("cannot start: cannot bind %s:%d: %s", host, port, exc)
        sys.exit(STARTUP_FAILURE)
    DrainingServer(config).run(sockets=[sock])


class Supervisor:
    """Start ``count`` workers running ``target(host, port)``, keep them running, stop them."""

    def __init__(self, target: Callable[[str, int], None], host: str, port: int, count: int) -> None:
        self.target = target
        self.host = host
        self.port = port
        self.count = count
        self.processes: list[BaseProcess] = []
        self.stopping = threading.Event()
        self.failed = False
        self._restarts: deque[float] = deque(maxlen=_MAX_RESTARTS)
        # Spawn, not fork: each worker starts clean (no inherited threads or ORT state) and
        # imports prometheus_client after the metrics folder is in its environment.
        self._context = multiprocessing.get_context("spawn")

    def _start(self) -> BaseProcess:
        process = self._context.Process(target=self.target, args=(self.host, self.port), daemon=False)
        process.start()
        logger.info("started worker process [%s]", process.pid)
        return process

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()

    def run(self) -> int:
        """Until SIGINT/SIGTERM (or a worker fails to start); the exit status."""
        if self.port == 0:
            # Each worker would bind a different free port.
            logger.error("cannot start: several workers need a fixed port (POLYNL_PORT=0 asks for any)")
            return STARTUP_FAILURE
        try:
            check_port_free(self.host, self.port)
        except OSError as exc:
            logger.error("cannot start: %s:%d is not free: %s", self.host, self.port, exc)
            return STARTUP_FAILURE
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with shared_metrics_dir():
                self.processes = [self._start() for _ in range(self.count)]
                logger.info("%d workers on %s:%d (SO_REUSEPORT)", self.count, self.host, self.port)
                while not self.stopping.wait(_POLL_S):
                    self._replace_dead()
                self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return STARTUP_FAILURE if self.failed else 0

    def _replace_dead(self) -> None:
        for index, process in enumerate(self.processes):
            if process.exitcode is None:
                continue
            if process.exitcode == STARTUP_FAILURE:
                # It would fail the same way again: stop the server instead of looping.
                logger.error("worker [%s] could not start; stopping", process.pid)
                self.failed = True
                self.stopping.set()
                return
            now = time.monotonic()
            if len(self._restarts) == _MAX_RESTARTS and now - self._restarts[0] < _RESTART_WINDOW_S:
                logger.error("workers died %d times in %.0f s; stopping", _MAX_RESTARTS, _RESTART_WINDOW_S)
                self.failed = True
                self.stopping.set()
                return
            self._restarts.append(now)
            logger.warning(
                "worker [%s] died (exit status %s); starting another", process.pid, process.exitcode
            )
            self.processes[index] = self._start()

    def _stop_all(self) -> None:
        """SIGTERM to every worker (each drains like a single server), then wait for all."""
        for process in self.processes:
            if process.exitcode is None and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        for process in self.processes:
            process.join()
        logger.info("all workers stopped")


def configure_supervisor_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [supervisor] %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False

"""Ray Serve application: the same FastAPI app as ``python -m service``, one copy per replica.

Where it sits: in front of ``service.app``. Ray's HTTP proxy takes the request and hands it to a
replica of :class:`PolynlServe`; the replica runs ``service.app.create_app()`` through
``serve.ingress``, so the routes, batchers, ONNX Runtime sessions, errors and metrics are the
ones every other deployment runs. Nothing is shared between replicas: each has its own batchers,
queues and sessions (see deploy/README-deploy.md, "Capacity").

Life of a replica: ``__init__`` resolves the model repository (a path, a ``file://`` URI, or an
``http(s)://`` URL of a ``.tar.gz``/``.zip`` archive that the replica downloads and unpacks once),
Serve then runs the app's lifespan (load, check and warm up every model), and only then routes
traffic to it. ``check_health`` is our ``/readyz``: a replica whose models are not ready is
restarted by the Serve controller. On scale-down or redeploy Serve stops routing to the
replica, waits for its requests (``graceful_shutdown_timeout_s``) and runs the lifespan's
shutdown, which drains the batchers.

Settings: every ``POLYNL_*`` variable of ``runtime_env.env_vars`` in the Serve config, as for
``python -m service``; the config's ``args.model_repository`` wins over ``POLYNL_MODEL_REPOSITORY``.
The Open Inference Protocol's gRPC port is off in replicas (Ray's proxies do not forward to it);
its REST form (``/v2/...``) goes through Ray's HTTP proxy like every other route.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from ray import serve
from ray.serve import Application
from service.app import create_app
from service.settings import Settings
from service.state import ServiceState

logger = logging.getLogger("service.ray")

DOWNLOAD_TIMEOUT_S = 300.0


class RepositoryUnavailable(RuntimeError):
    """The model repository named in the Serve config cannot be found or fetched."""


def _unpack(archive: Path, into: Path) -> None:
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(into)
        return
    with tarfile.open(archive) as tarred:
        tarred.extractall(into, filter="data")  # refuses absolute paths, .. and device files


def _single_root(folder: Path) -> Path:
    """An archive of ``model_repository/`` unpacks to one folder: serve that one."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def fetch_repository(url: str, cache: Path) -> Path:
    """Download and unpack an archive once per node (keyed by the URL), then reuse it."""
    name = urllib.parse.urlparse(url).path.rsplit("/", 1)[-1]
    if not name.endswith((".tar.gz", ".tgz", ".tar", ".zip")):
        raise RepositoryUnavailable(
            f"{url}: a repository URL must name a .tar.gz, .tgz, .tar or .zip archive"
        )
    target = cache / hashlib.sha256(url.encode()).hexdigest()[:16]
    if target.is_dir():
        return _single_root(target)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        archive = Path(scratch) / name
        try:
            with (
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
                archive.open("wb") as out,
            ):
                shutil.copyfileobj(response, out)
        except OSError as exc:
            raise RepositoryUnavailable(f"cannot download the model repository {url}: {exc}") from exc
        unpacked = Path(scratch) / "unpacked"
        _unpack(archive, unpacked)
        try:
            unpacked.rename(target)  # atomic: two replicas on one node may race; one wins
        except OSError:
            if not target.is_dir():
                raise
    return _single_root(target)


def resolve_repository(location: str, cache: Path | None = None) -> Path:
    """A path, ``file://`` URI or ``http(s)://`` archive URL -> a local repository folder."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme in ("http", "https"):
        default_cache = Path(tempfile.gettempdir()) / "polynl-repositories"
        return fetch_repository(location, cache or default_cache)
    if parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.path))
    elif parsed.scheme == "":
        path = Path(location)
    else:
        raise RepositoryUnavailable(
            f"{location}: unsupported scheme {parsed.scheme!r} (path, file:// or http(s)://)"
        )
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise RepositoryUnavailable(f"model repository {path} is not a folder on node {os.uname().nodename}")
    return path


@serve.deployment(name="PolynlServe")
@serve.ingress()
class PolynlServe:
    """One replica: the service's FastAPI app with its own batchers and ONNX Runtime sessions."""

    def __init__(self, model_repository: str | None = None) -> None:
        # No gRPC server in a replica: Ray's proxies route HTTP (and gRPC only to deployment
        # methods), so nothing would reach it, and two replicas on one node would both want
        # POLYNL_GRPC_PORT (the second one failed to start).
        overrides: dict[str, Any] = {"grpc": False}
        if model_repository:
            overrides["model_repository"] = resolve_repository(model_repository)
        self.settings = Settings(**overrides)

    def __serve_build_asgi_app__(self) -> FastAPI:
        self.fastapi_app = create_app(self.settings)
        return self.fastapi_app

    def check_health(self) -> None:
        """Serve's health check is our readiness: models loaded, warmed up, accepting."""
        state = getattr(self.fastapi_app.state, "service", None)
        if not isinstance(state, ServiceState) or not state.ready or not state.accepting:
            raise RuntimeError("polynl-serve replica is not ready (models not loaded or shutting down)")
        not_ready = [p.label for p in state.models if not p.ready]
        if not_ready:
            raise RuntimeError(f"models not ready: {', '.join(not_ready)}")


def build_app(args: dict[str, Any]) -> Application:
    """The Serve config's ``import_path`` (``deploy.ray.app:build_app``); ``args`` from the config.

    Runs where the application is deployed (``serve run``'s process, or the Serve controller for
    ``serve deploy``): a relative ``model_repository`` is made absolute there, so a replica on
    any node looks for the same path.
    """
    location = args.get("model_repository")
    if location and "://" not in location:
        location = str(Path(location).expanduser().resolve())
    # serve.deployment turns the class into a Deployment; its stubs do not say so.
    return PolynlServe.bind(model_repository=location)  # type: ignore[attr-defined]

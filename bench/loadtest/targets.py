"""What the load tester may hit and with what: loopback check, endpoint URLs, image payloads.

First step of a load test: CLI arguments -> a checked URL and a list of payloads for
``runner``. Loopback-only by default so that a typo cannot aim a load test at someone
else's server.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

from bench.loadtest.runner import Payload

ENDPOINTS = {"classify": "/classify", "detect-faces": "/detect-faces"}
IMAGE_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".gif": "image/gif",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}


class TargetError(ValueError):
    """The target URL or the image folder cannot be used."""


def is_loopback_host(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


def check_target(url: str, allow_remote: bool) -> str:
    """The base URL without a trailing slash; refuses non-loopback hosts unless allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetError(f"not an http(s) URL: {url!r}")
    if not allow_remote and not is_loopback_host(parts.hostname):
        raise TargetError(
            f"refusing to load-test {parts.hostname!r}: not a loopback address. "
            "Pass --allow-remote if you really mean to load a remote server."
        )
    return url.rstrip("/")


def endpoint_url(base_url: str, endpoint: str, params: dict[str, str] | None = None) -> str:
    """``classify`` / ``detect-faces`` (or any path starting with ``/``) plus query params."""
    path = ENDPOINTS.get(endpoint, endpoint)
    if not path.startswith("/"):
        raise TargetError(f"unknown endpoint {endpoint!r}; expected one of {sorted(ENDPOINTS)} or a /path")
    parts = urlsplit(base_url)
    query = urlencode(params or {})
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + path, query, ""))


def load_payloads(folder: Path, limit: int | None = None) -> list[Payload]:
    """Every image file under ``folder`` (recursively, sorted), read once into memory."""
    if not folder.is_dir():
        raise TargetError(f"image folder not found: {folder} (pass --images DIR)")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_TYPES)
    if limit is not None:
        files = files[:limit]
    if not files:
        raise TargetError(f"no images ({', '.join(sorted(IMAGE_TYPES))}) under {folder}")
    return [Payload(p.read_bytes(), IMAGE_TYPES[p.suffix.lower()], p.name) for p in files]

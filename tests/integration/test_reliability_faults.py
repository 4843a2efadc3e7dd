"""A broken model repository stops start-up with a clear message; it never serves garbage.

Each case copies the real repository, breaks one thing, and starts ``python -m service``
on it. The process must exit non-zero before it listens, with a log line
``cannot start: <what is wrong>`` that names the problem (and the file), and without ever
logging ``ready``. The cases of a group (default run, slow run) start at once, so a group
costs about one start-up, not one per case.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import ServerHandle, launch_server

START_TIMEOUT_S = 120.0


def _config_path(repository: Path, model: str) -> Path:
    return repository / model / "1" / "config.json"


def _onnx_path(repository: Path, model: str) -> Path:
    return repository / model / "1" / "model.onnx"


def _set_sha256(repository: Path, model: str, sha256: str) -> None:
    path = _config_path(repository, model)
    config = json.loads(path.read_text())
    config["onnx_sha256"] = sha256
    path.write_text(json.dumps(config, indent=2))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def missing_repository(repository: Path) -> Path:
    return repository.parent / "no-such-repository"


def missing_onnx(repository: Path) -> Path:
    _onnx_path(repository, "classifier").unlink()
    return repository


def checksum_mismatch(repository: Path) -> Path:
    _set_sha256(repository, "classifier", "0" * 64)
    return repository


def corrupt_onnx(repository: Path) -> Path:
    # Bit rot in the middle of the weights: same size, different bytes.
    path = _onnx_path(repository, "face_detector")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    return repository


def corrupt_onnx_with_matching_checksum(repository: Path) -> Path:
    # Someone "fixed" the checksum by hand: ONNX Runtime itself must refuse the file.
    path = _onnx_path(repository, "face_detector")
    path.write_bytes(b"\x08\x07garbage that is no protobuf" * 100)
    _set_sha256(repository, "face_detector", _sha256(path))
    return repository


def invalid_config_json(repository: Path) -> Path:
    _config_path(repository, "classifier").write_text('{"name": "classifier", "version": ')
    return repository


def swapped_model(repository: Path) -> Path:
    # The classifier's graph in the detector's place, checksum updated: it would load and warm
    # up (both take NCHW images) and then answer every request with garbage or a 500.
    target = _onnx_path(repository, "face_detector")
    shutil.copyfile(_onnx_path(repository, "classifier"), target)
    _set_sha256(repository, "face_detector", _sha256(target))
    return repository


# case -> (how to break a copy of the repository, what the message must name)
CASES: dict[str, tuple[Callable[[Path], Path], list[str]]] = {
    "missing_repository": (missing_repository, ["model repository not found", "no-such-repository"]),
    "missing_onnx": (missing_onnx, ["missing ONNX file", "classifier/1/model.onnx"]),
    "checksum_mismatch": (checksum_mismatch, ["checksum mismatch", "classifier/1/model.onnx"]),
    "corrupt_onnx": (corrupt_onnx, ["checksum mismatch", "face_detector/1/model.onnx"]),
    "corrupt_onnx_with_matching_checksum": (
        corrupt_onnx_with_matching_checksum,
        ["ONNX Runtime cannot load", "face_detector/1/model.onnx"],
    ),
    "invalid_config_json": (invalid_config_json, ["invalid", "classifier/1/config.json"]),
    "swapped_model": (swapped_model, ["face_detector", "config.json promises", "boxes"]),
}


# Started in the default run; the others (same code paths, other files) in the slow run.
DEFAULT_CASES = ["missing_repository", "missing_onnx", "corrupt_onnx", "swapped_model"]


@pytest.fixture(scope="module")
def broken_servers(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], ServerHandle]:
    """``server(case)``: the exited server of ``case``. The first call of a group (default or
    slow cases) starts the whole group at once and waits until each process has exited."""
    handles: dict[str, ServerHandle] = {}

    def start_group(names: list[str]) -> None:
        for name in names:
            folder = tmp_path_factory.mktemp(name)
            copy = folder / "repository"
            shutil.copytree(model_repository, copy)
            handles[name] = launch_server(CASES[name][0](copy), None, folder, wait_ready=False)
        for name in names:
            try:
                handles[name].process.wait(START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                handles[name].stop()

    def server(case: str) -> ServerHandle:
        if case not in handles:
            group = DEFAULT_CASES if case in DEFAULT_CASES else [c for c in CASES if c not in DEFAULT_CASES]
            start_group(group)
        return handles[case]

    return server


@pytest.mark.parametrize(
    "case", [c if c in DEFAULT_CASES else pytest.param(c, marks=pytest.mark.slow) for c in CASES]
)
def test_broken_repository_stops_start_up_with_a_message_naming_the_problem(
    broken_servers: Callable[[str], ServerHandle], case: str
) -> None:
    handle = broken_servers(case)
    log = handle.log()
    assert handle.process.returncode not in (None, 0), f"exit status {handle.process.returncode}:\n{log}"
    (line,) = [line for line in log.splitlines() if "cannot start: " in line]
    for fragment in CASES[case][1]:
        assert fragment in line, line
    assert " ready: " not in log
    assert "Application startup failed" in log
    # It never listened: nothing can be served from a broken repository.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{handle.url}/healthz", timeout=2)

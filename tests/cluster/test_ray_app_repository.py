"""deploy/ray/app.py finds the model repository the Serve config names: a path, file://, or an archive URL.

Fast (no Ray cluster); needs the ``ray`` extra only because the module defines the deployment.
The archive is served by a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is the optional extra `ray`")

from deploy.ray.app import RepositoryUnavailable, resolve_repository


def _repository(root: Path) -> Path:
    model = root / "model_repository" / "classifier" / "1"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    return root / "model_repository"


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()


def test_a_folder_and_a_file_uri_resolve_to_the_same_absolute_folder(tmp_path: Path) -> None:
    repository = _repository(tmp_path)
    assert resolve_repository(str(repository)) == repository.resolve()
    assert resolve_repository(repository.resolve().as_uri()) == repository.resolve()


def test_a_missing_folder_or_an_unknown_scheme_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RepositoryUnavailable, match="is not a folder"):
        resolve_repository(str(tmp_path / "nowhere"))
    with pytest.raises(RepositoryUnavailable, match="unsupported scheme"):
        resolve_repository("ftp://127.0.0.1/repo.tar.gz")


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_an_archive_url_is_downloaded_once_and_unpacked(
    kind: str, tmp_path: Path, http_root: tuple[str, Path]
) -> None:
    url_root, served = http_root
    repository = _repository(tmp_path / "src")
    archive = served / f"repo.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zipped:
            for path in repository.rglob("*"):
                zipped.write(path, path.relative_to(repository.parent))
    else:
        with tarfile.open(archive, "w:gz") as tarred:
            tarred.add(repository, arcname="model_repository")
    cache = tmp_path / "cache"
    found = resolve_repository(f"{url_root}/repo.{kind}", cache=cache)
    assert (found / "classifier" / "1" / "config.json").read_text() == "{}"
    archive.unlink()  # a second replica on the node reuses the unpacked copy
    assert resolve_repository(f"{url_root}/repo.{kind}", cache=cache) == found


def test_a_url_that_names_no_archive_or_cannot_be_fetched_is_a_clear_error(
    tmp_path: Path, http_root: tuple[str, Path]
) -> None:
    url_root, _ = http_root
    with pytest.raises(RepositoryUnavailable, match="must name"):
        resolve_repository(f"{url_root}/model_repository/", cache=tmp_path)
    with pytest.raises(RepositoryUnavailable, match="cannot download"):
        resolve_repository(f"{url_root}/missing.tar.gz", cache=tmp_path)

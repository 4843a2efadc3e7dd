"""The demo page's routes (service/routes/demo.py), in-process and without models.

The app is the real ``service.app.create_app`` (so the router is really included); its
lifespan is not started, because the page and the samples need no model. The page in a real
browser against a real server is tests/integration/test_demo_browser.py.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.routes.demo import SAMPLES_DIR, STATIC_DIR, sample_files
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


class Client:
    """Requests straight into the ASGI app; no lifespan, so no model is loaded (none is needed)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def get(self, path: str) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://demo.test") as client:
                response = await client.get(path)
                await response.aread()
                return response

        return asyncio.run(send())


@pytest.fixture(scope="module")
def client() -> Client:
    # With an API key set: the page and the samples must load without one.
    return Client(create_app(Settings(api_key="secret-key")))


def test_demo_returns_the_page_without_an_api_key(client: Client) -> None:
    response = client.get("/demo")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert 'id="api-key"' in response.text and 'src="demo/static/demo.js"' in response.text
    # The page may load only its own files and talk only to this origin.
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy


def test_root_redirects_to_the_demo(client: Client) -> None:
    response = client.get("/")
    assert response.status_code in (302, 303, 307)
    assert response.headers["location"] in ("demo", "/demo")


def test_docs_description_links_the_demo(client: Client) -> None:
    assert "](/demo)" in client.get("/openapi.json").json()["info"]["description"]


@pytest.mark.parametrize(("name", "media_type"), [("demo.js", "text/javascript"), ("demo.css", "text/css")])
def test_page_assets_are_served_with_their_type(client: Client, name: str, media_type: str) -> None:
    response = client.get(f"/demo/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert response.content == (STATIC_DIR / name).read_bytes()


def test_page_fetches_nothing_from_another_origin() -> None:
    for name in ("demo.html", "demo.js", "demo.css"):
        text = (STATIC_DIR / name).read_text()
        assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?(https?:)?//""", text), name
        assert "@import" not in text and 'fetch("http' not in text, name


def test_sample_listing_holds_only_the_image_files_of_samples(client: Client) -> None:
    response = client.get("/demo/samples")
    assert response.status_code == 200
    listed = {s["name"]: s for s in response.json()["samples"]}
    on_disk = {p.name for p in SAMPLES_DIR.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
    assert set(listed) == on_disk and "face_astronaut.jpg" in listed
    assert "README.md" not in listed
    sample = listed["face_astronaut.jpg"]
    image = client.get(sample["url"].replace("demo/", "/demo/", 1))
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content == (SAMPLES_DIR / "face_astronaut.jpg").read_bytes()
    assert sample["size_bytes"] == len(image.content)


@pytest.mark.parametrize(
    "path",
    [
        "/demo/samples/..%2Fpyproject.toml",
        "/demo/samples/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/demo/samples/..%5Cpyproject.toml",
        "/demo/samples/README.md",
        "/demo/samples/%2Fetc%2Fpasswd",
        "/demo/samples/nothing.jpg",
        "/demo/static/..%2Fapp.py",
        "/demo/static/demo.html%00.js",
    ],
)
def test_samples_and_assets_cannot_reach_other_files(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404, (path, response.text[:200])
    assert response.json()["error"] == "not_found"
    assert "[project]" not in response.text and "root:" not in response.text


def test_symlinks_out_of_the_samples_folder_are_not_samples(tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "real.png").write_bytes((SAMPLES_DIR / "cifar_cat.png").read_bytes())
    (tmp_path / "secret.jpg").write_bytes(b"not yours")
    (samples / "escape.jpg").symlink_to(tmp_path / "secret.jpg")
    (samples / "nested").mkdir()
    (samples / "nested" / "deep.jpg").write_bytes(b"x")
    (samples / "notes.txt").write_text("not an image")
    assert list(sample_files(samples)) == ["real.png"]
    assert sample_files(tmp_path / "absent") == {}

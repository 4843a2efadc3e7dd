"""GET /demo: a page to try the models in a browser, and the sample images it offers.

Sits beside the data path, not in it: the page (``service/static/demo.html`` + ``demo.js`` +
``demo.css``, plain files, no build step, nothing fetched from outside) calls the public API
(``POST /detect-faces``, ``POST /classify``) from the browser with the user's API key, exactly
as any other client does. These routes themselves need no key, so the page always loads and
can say when the API wants one.

Sample images come from the repository's ``samples/`` folder, read-only: only the image files
found directly in that folder are listed, and a name is served only when it is one of them,
so no request can reach any other file (no ``..``, no sub-folders, no symlinks out).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import BaseModel, Field

from service.errors import NotFound
from service.schemas import ErrorResponse

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
# <repo>/samples in a checkout, /app/samples in the container (when the image copies it).
SAMPLES_DIR = Path(__file__).resolve().parents[2] / "samples"
SAMPLE_SUFFIXES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
}
# The page's own files and their types: a fixed set, so the asset route is not a file server.
ASSETS = {"demo.js": "text/javascript", "demo.css": "text/css"}

# The page loads only its own script and style and calls only this origin; images are
# shown from blob: URLs made of the user's own files.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["demo"])


class Sample(BaseModel):
    name: str
    url: str = Field(description="Relative to the page: demo/samples/<name>.")
    size_bytes: int


class SampleList(BaseModel):
    samples: list[Sample]


def sample_files(folder: Path = SAMPLES_DIR) -> dict[str, Path]:
    """Image files directly in ``folder`` (name -> path); empty when the folder is absent."""
    if not folder.is_dir():
        return {}
    root = folder.resolve()
    found = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in SAMPLE_SUFFIXES or not path.is_file():
            continue
        # A symlink pointing out of the folder is not a sample.
        if path.resolve().parent != root:
            continue
        found[path.name] = path
    return found


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    # Relative, so the redirect also works behind a proxy that serves the app under a prefix.
    return RedirectResponse(url="demo", status_code=307)


@router.get("/demo", summary="The demo page (HTML)", response_class=FileResponse)
async def demo_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "demo.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get(
    "/demo/static/{name}",
    summary="The demo page's script and style",
    response_class=FileResponse,
    responses={404: {"model": ErrorResponse}},
)
async def demo_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no demo asset named {name[:64]!r}")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=PAGE_HEADERS)


@router.get("/demo/samples", response_model=SampleList, summary="Sample images the demo offers")
async def list_samples() -> SampleList:
    return SampleList(
        samples=[
            Sample(name=name, url=f"demo/samples/{quote(name)}", size_bytes=path.stat().st_size)
            for name, path in sample_files().items()
        ]
    )


@router.get(
    "/demo/samples/{name}",
    summary="One sample image",
    response_class=FileResponse,
    responses={404: {"model": ErrorResponse}},
)
async def sample_image(name: str) -> FileResponse:
    path = sample_files().get(name)
    if path is None:
        raise NotFound(f"no sample image named {name[:64]!r}")
    return FileResponse(
        path,
        media_type=SAMPLE_SUFFIXES[path.suffix.lower()],
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=3600"},
    )

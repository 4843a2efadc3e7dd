"""Hostile and odd images against a real server: every one is a clear 4xx or a correct 200.

The whole corpus goes to both endpoints (``/classify`` and ``/detect-faces``) of one
``python -m service`` on a loopback port. A 200 must report the image's size after EXIF
orientation (converted modes, first frames); an error must be the one JSON shape with the
request id and no stack trace or file path. Decompression bombs and slivers must not make
the server's memory jump: they are refused from the header, or resampled without building
a giant intermediate image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import image_cases
import psutil
import pytest
from conftest import ServerHandle

ENDPOINTS = ["/classify", "/detect-faces"]
LEAKS = ("Traceback", 'File "', "/work", ".py", "site-packages")


@pytest.fixture(scope="module")
def server(start_server) -> ServerHandle:  # type: ignore[no-untyped-def]
    return start_server()


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> Iterator[httpx.Client]:
    with server.client(timeout=60.0) as client:
        yield client


def rss_mb(server: ServerHandle) -> float:
    return float(psutil.Process(server.process.pid).memory_info().rss) / 2**20


# name -> (bytes, status, error code for 4xx or (width, height) for 200)
Expected = tuple[Callable[[], bytes], int, "str | tuple[int, int]"]
CORPUS: dict[str, Expected] = {
    "zero_bytes": (lambda: b"", 400, "empty_body"),
    "random_bytes": (image_cases.random_bytes, 415, "unsupported_image"),
    "truncated_jpeg": (image_cases.truncated_jpeg, 422, "corrupt_image"),
    "truncated_png": (image_cases.truncated_png, 422, "corrupt_image"),
    "png_bomb": (image_cases.png_bomb, 413, "image_too_large"),
    "jpeg_bomb": (image_cases.jpeg_bomb, 413, "image_too_large"),
    "gif_bomb": (image_cases.gif_bomb, 413, "image_too_large"),
    "animated_gif": (image_cases.animated_gif, 200, (30, 20)),
    "multipage_tiff": (image_cases.multipage_tiff, 200, (30, 20)),  # first page, not the 60x40 one
    "webp": (image_cases.webp, 200, (64, 48)),
    "cmyk_jpeg": (image_cases.cmyk_jpeg, 200, (64, 48)),
    "png_16bit_grey": (image_cases.png_16bit_grey, 200, (30, 40)),
    "png_16bit_rgb": (image_cases.png_16bit_rgb, 200, (8, 4)),
    "png_16bit_rgba": (lambda: image_cases.png_16bit_rgb(alpha=True), 200, (8, 4)),
    "palette_png": (image_cases.palette_png, 200, (64, 48)),
    "palette_png_transparent": (lambda: image_cases.palette_png(transparent=True), 200, (64, 48)),
    "rgba_png": (image_cases.rgba_png, 200, (20, 10)),
    "la_png": (image_cases.la_png, 200, (20, 10)),
    "exif_rotated_jpeg": (lambda: image_cases.exif_rotated_jpeg(40, 20), 200, (20, 40)),
    "one_pixel_png": (image_cases.one_pixel_png, 200, (1, 1)),
    "tall_1x20000_png": (lambda: image_cases.thin_png(1, 20000), 200, (1, 20000)),
    "wide_20000x1_png": (lambda: image_cases.thin_png(20000, 1), 200, (20000, 1)),
}
BOMBS = ["png_bomb", "jpeg_bomb", "gif_bomb"]


def check_answer(response: httpx.Response, status: int, expected: str | tuple[int, int]) -> None:
    """The status, the request id header, and either the error shape or the reported size."""
    assert response.status_code == status, response.text
    request_id = response.headers["x-request-id"]
    if status == 200:
        (result,) = response.json()["results"]
        assert (result["width"], result["height"]) == expected
        return
    body = response.json()
    assert body == {"error": expected, "message": body["message"], "request_id": request_id}
    for leak in LEAKS:
        assert leak not in response.text, f"{leak!r} leaked into {response.text!r}"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("name", list(CORPUS))
def test_hostile_image_is_a_clear_4xx_or_a_correct_200(
    client: httpx.Client, endpoint: str, name: str
) -> None:
    make, status, expected = CORPUS[name]
    response = client.post(endpoint, files={"file": (f"{name}.bin", make(), "application/octet-stream")})
    check_answer(response, status, expected)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    "name", ["random_bytes", "truncated_png", "png_bomb", "cmyk_jpeg", "exif_rotated_jpeg"]
)
def test_hostile_image_as_a_raw_body_gets_the_same_answer(
    client: httpx.Client, endpoint: str, name: str
) -> None:
    make, status, expected = CORPUS[name]
    response = client.post(endpoint, content=make(), headers={"content-type": "image/png"})
    check_answer(response, status, expected)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_lying_content_type_is_ignored_for_image_types_and_the_bytes_decide(
    client: httpx.Client, endpoint: str
) -> None:
    jpeg = image_cases.jpeg(64, 48)
    # A JPEG declared as PNG (raw body) or as text (multipart part): sniffed, served.
    raw = client.post(endpoint, content=jpeg, headers={"content-type": "image/png"})
    check_answer(raw, 200, (64, 48))
    part = client.post(endpoint, files={"file": ("cat.txt", jpeg, "text/plain")})
    check_answer(part, 200, (64, 48))
    # A raw body declared as text is refused whatever it holds: the content type is the contract.
    text = client.post(endpoint, content=jpeg, headers={"content-type": "text/plain"})
    check_answer(text, 415, "unsupported_image")


def test_decompression_bombs_are_refused_before_any_pixel_is_decoded(
    client: httpx.Client, server: ServerHandle
) -> None:
    before = rss_mb(server)
    for _ in range(3):
        for name in BOMBS:
            for endpoint in ENDPOINTS:
                response = client.post(endpoint, files={"file": (name, CORPUS[name][0]())})
                check_answer(response, 413, "image_too_large")
                # Refused from the header: no time to decode 3.6 gigapixels even on a busy machine.
                assert response.elapsed.total_seconds() < 5.0
    # 3.6 gigapixels of RGB would be 10 GB; the process must not grow by more than noise.
    assert rss_mb(server) - before < 40.0


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_one_pixel_wide_sliver_is_served_without_a_giant_intermediate_image(
    client: httpx.Client, server: ServerHandle, endpoint: str
) -> None:
    # 4 kB of PNG, one million pixels tall: upscaling it to the classifier's 32 pixels of
    # width before the centre crop would build a 32 x 32,000,000 image (3 GB).
    sliver = image_cases.thin_png(1, 1_000_000)
    assert len(sliver) < 10_000
    before = rss_mb(server)
    response = client.post(endpoint, files={"file": ("sliver.png", sliver)})
    check_answer(response, 200, (1, 1_000_000))
    assert rss_mb(server) - before < 200.0


def test_every_error_across_the_corpus_is_json_without_traces_or_paths(client: httpx.Client) -> None:
    """One pass over every failing case on both endpoints and both body kinds."""
    failing = {name: case for name, case in CORPUS.items() if case[1] != 200}
    seen = 0
    for endpoint in ENDPOINTS:
        for name, (make, status, code) in failing.items():
            data = make()
            for response in (
                client.post(endpoint, files={"file": (f"/etc/{name}.py", data)}),
                client.post(endpoint, content=data, headers={"content-type": "image/jpeg"}),
            ):
                assert response.status_code == status
                assert response.headers["content-type"] == "application/json"
                check_answer(response, status, code)
                seen += 1
    assert seen == 4 * len(failing)
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_each_image_of_a_request_gets_its_own_answer_or_its_own_error(
    client: httpx.Client, endpoint: str
) -> None:
    """A bad image among good ones costs only its own entry; every failing case of the corpus."""
    # (An empty part is a broken request, not an unreadable image: see the test below.)
    failing = {name: case for name, case in CORPUS.items() if case[1] != 200 and name != "zero_bytes"}
    good = image_cases.jpeg(64, 48)
    files = [("files", ("good-first.jpg", good))]
    files += [("files", (f"{name}.bin", make())) for name, (make, _, _) in failing.items()]
    files += [("files", ("good-last.jpg", good))]
    response = client.post(endpoint, files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(len(files)))
    for result in (results[0], results[-1]):
        assert (result["width"], result["height"]) == (64, 48) and "error" not in result
    for result, (name, (_, status, code)) in zip(results[1:-1], failing.items(), strict=True):
        message = result.pop("message")
        assert result == {
            "index": result["index"],
            "filename": f"{name}.bin",
            "error": code,
            "status": status,
        }
        for leak in LEAKS:
            assert leak not in message


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_request_none_of_whose_images_can_be_read_fails_with_the_first_error(
    client: httpx.Client, endpoint: str
) -> None:
    files = [
        ("files", ("a.bin", image_cases.truncated_png())),
        ("files", ("b.bin", image_cases.random_bytes())),
    ]
    check_answer(client.post(endpoint, files=files), 422, "corrupt_image")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_an_empty_part_among_images_fails_the_request_as_the_schema_says(
    client: httpx.Client, endpoint: str
) -> None:
    files = [("files", ("good.jpg", image_cases.jpeg(64, 48))), ("files", ("empty.jpg", b""))]
    check_answer(client.post(endpoint, files=files), 400, "empty_body")

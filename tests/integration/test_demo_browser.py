"""The demo page in a real headless Chromium against a real server (marked browser + slow).

Debian's Chromium (``/usr/bin/chromium``, installed by ``tests/browser/install_chromium.sh``)
driven by Playwright, which never downloads a browser of its own here. One uvicorn server
for the module, started WITH an API key, so every test also proves the key travels as
``Authorization: Bearer``. The page's answers are compared with the API's own JSON (the
response the page received, and an independent httpx call with the same query).

Writes the README's screenshot to ``docs/demo.png`` when the shipped weights are served
(with random-init weights the picture would mislead; it then goes to the test's tmp folder).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT, SAMPLES, ServerHandle, repository_is_random

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is absent: run tests/browser/install_chromium.sh (Debian chromium + chromium-driver)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[browser]'"
)

API_KEY = "demo-test-key-7f3a"
STATIC_DIR_OF_SERVICE = ROOT / "service" / "static"
FACE = SAMPLES / "face_astronaut.jpg"
GROUP = SAMPLES / "faces_group.jpg"
SCREENSHOT = ROOT / "docs" / "demo.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # One renderer, few threads: the machine is shared with training.
    "--renderer-process-limit=1",
    "--disable-extensions",
]
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def server(start_server) -> ServerHandle:  # type: ignore[no-untyped-def]
    # The export's default size buckets (the test repository's are smaller), so that the page
    # and its screenshot show what a user of the shipped repository sees.
    from export.pipeline import DEFAULT_BUCKETS

    buckets = ",".join(f"{h}x{w}" for h, w in DEFAULT_BUCKETS)
    return start_server({"POLYNL_API_KEY": API_KEY, "POLYNL_DETECTION_BUCKETS": buckets})


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh user-data-dir
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            chromium_sandbox=False,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            timeout=TIMEOUT_MS,
        )
        context.set_default_timeout(TIMEOUT_MS)
        # Nothing but the loopback server: a request elsewhere would be a bug of the page.
        context.route(
            lambda url: not url.startswith("http://127.0.0.1:"), lambda route: route.abort("blockedbyclient")
        )
        try:
            yield context
        finally:
            context.close()


class PageProblems:
    """Uncaught script errors and CSP violations seen by a page (there must be none)."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # Chrome logs every non-2xx fetch as "Failed to load resource": those are the API's
        # deliberate errors, checked by the tests themselves.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(f"console: {message.text}")


@pytest.fixture
def page(browser_context: Any, server: ServerHandle) -> Iterator[Any]:
    page = browser_context.new_page()
    problems = PageProblems(page)
    page.goto(f"{server.url}/demo")
    # sessionStorage keeps the key per tab; a new page starts with an empty field.
    page.wait_for_selector("#sample-list button[data-sample]")
    yield page
    page.close()
    assert problems.errors == []


def enter_key(page: Any, key: str) -> None:
    page.fill("#api-key", key)


def runs(page: Any, kind: str) -> int:
    return int(page.get_attribute("#results", f"data-{kind}-runs") or 0)


def wait_runs(page: Any, kind: str, count: int) -> None:
    page.wait_for_function(
        "([kind, count]) => Number(document.getElementById('results').dataset[kind + 'Runs']) >= count",
        arg=[kind, count],
    )


def upload(page: Any, files: list[Path] | list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Choose files in the page; the (status, json) of the detect and classify answers it got."""
    detect_before, classify_before = runs(page, "detect"), runs(page, "classify")
    with (
        page.expect_response(lambda r: "/detect-faces?" in r.url) as detect,
        page.expect_response(lambda r: "/classify?" in r.url) as classify,
    ):
        page.set_input_files("#file-input", files)
    wait_runs(page, "detect", detect_before + 1)
    wait_runs(page, "classify", classify_before + 1)
    return (
        {"status": detect.value.status, "body": detect.value.json()},
        {"status": classify.value.status, "body": classify.value.json()},
    )


def drawn_boxes(page: Any, index: int = 0) -> list[list[float]]:
    card = page.locator("#results article.result").nth(index)
    count = int(card.get_attribute("data-face-count"))
    boxes = json.loads(card.get_attribute("data-boxes"))
    assert len(boxes) == count
    return boxes


def stroke_pixel(page: Any, index: int, x: float, y: float) -> list[int]:
    """RGBA of the canvas at (x, y) in the canvas's own (original-image) pixels."""
    return page.evaluate(
        """([index, x, y]) => {
            const canvas = document.querySelectorAll('#results canvas')[index];
            return Array.from(canvas.getContext('2d').getImageData(x, y, 1, 1).data);
        }""",
        [index, round(x), round(y)],
    )


def api_detect(server: ServerHandle, path: Path, **params: float) -> dict[str, Any]:
    with server.client(headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        response = client.post("/detect-faces", params=params, files={"file": (path.name, path.read_bytes())})
    assert response.status_code == 200, response.text
    return response.json()


# --- detection -------------------------------------------------------------------------------
def test_face_image_is_drawn_with_as_many_boxes_as_the_api_found(page: Any, server: ServerHandle) -> None:
    enter_key(page, API_KEY)
    detect, _ = upload(page, [FACE])
    assert detect["status"] == 200
    (result,) = detect["body"]["results"]
    independent = api_detect(server, FACE, score_threshold=0.5, nms_iou=0.4)["results"][0]
    assert len(result["faces"]) == len(independent["faces"])

    boxes = drawn_boxes(page)
    assert len(boxes) == len(result["faces"])
    # Drawn in the original image's pixels: the canvas is the full image, the boxes are the API's.
    size = page.evaluate(
        "() => { const c = document.querySelector('#results canvas'); return [c.width, c.height]; }"
    )
    assert size == [result["width"], result["height"]] == [512, 512]
    shown = page.evaluate("() => document.querySelector('#results canvas').getBoundingClientRect().width")
    assert shown < 500  # displayed smaller than the image: CSS scales, the drawing does not change
    for drawn, face in zip(boxes, result["faces"], strict=True):
        assert drawn == pytest.approx(face["box"], abs=0.06)
    if boxes:
        # The stroke really is on the canvas at a box's left edge (green), in original pixels.
        edges = [stroke_pixel(page, 0, x1, (y1 + y2) / 2) for x1, y1, _, y2 in boxes]
        assert any(g > 150 and r < 100 and b < 150 for r, g, b, _ in edges), edges
    meta = page.text_content("#detect-meta")
    model = detect["body"]["model"]
    assert f"{model['name']} v{model['version']}" in meta and "ms round trip" in meta
    assert page.is_hidden("#error")


def test_sliders_requery_the_api_once_after_a_drag_and_redraw(page: Any, server: ServerHandle) -> None:
    enter_key(page, API_KEY)
    upload(page, [GROUP])
    before = runs(page, "detect")
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if "/detect-faces?" in r.url else None)
    with page.expect_response(lambda r: "/detect-faces?" in r.url) as answer:
        # A drag: many input events in quick succession; the debounce sends one request.
        page.evaluate(
            """() => {
                const move = (id, value) => {
                    const slider = document.getElementById(id);
                    slider.value = value;
                    slider.dispatchEvent(new Event('input', {bubbles: true}));
                };
                for (const v of ['0.45', '0.4', '0.35', '0.3', '0.25', '0.2']) move('score-threshold', v);
                move('nms-iou', '0.5');
            }"""
        )
    wait_runs(page, "detect", before + 1)
    page.wait_for_timeout(800)  # longer than the debounce: nothing else may follow
    assert len(sent) == 1, sent
    url = httpx.URL(answer.value.url)
    assert url.params["score_threshold"] == "0.2" and url.params["nms_iou"] == "0.5"
    body = answer.value.json()
    independent = api_detect(server, GROUP, score_threshold=0.2, nms_iou=0.5)
    assert len(body["results"][0]["faces"]) == len(independent["results"][0]["faces"])
    assert len(drawn_boxes(page)) == len(body["results"][0]["faces"])
    assert page.text_content("#score-threshold-value") == "0.20"
    assert page.text_content("#nms-iou-value") == "0.50"
    assert runs(page, "detect") == before + 1


# --- classification --------------------------------------------------------------------------
def test_classification_is_shown_as_bars_with_the_api_probabilities(page: Any) -> None:
    enter_key(page, API_KEY)
    page.fill("#top-k", "3")
    _, classify = upload(page, [SAMPLES / "cifar_cat.png", SAMPLES / "cat.jpg"])
    assert classify["status"] == 200
    page.wait_for_load_state("networkidle")  # let any re-query (top-k field) finish and render
    results = classify["body"]["results"]
    assert len(results) == 2  # two images, one request (`files`)
    for index, result in enumerate(results):
        rows = page.locator("#results article.result").nth(index).locator(".bar-row")
        assert rows.count() == 3 == len(result["top_k"])
        for row, entry in zip(rows.all(), result["top_k"], strict=True):
            assert row.get_attribute("data-label") == entry["label"]
            assert float(row.get_attribute("data-probability")) == pytest.approx(entry["probability"])
            assert f"{entry['probability'] * 100:.1f}%" in row.text_content()
            # One evaluate for both widths: the page may re-render the results (the top-k field's
            # own debounced re-query), and two separate lookups could measure two renders.
            width, full = row.evaluate(
                "r => [r.querySelector('.fill').getBoundingClientRect().width,"
                " r.querySelector('.bar').getBoundingClientRect().width]"
            )
            assert full > 0
            assert width == pytest.approx(full * entry["probability"], abs=1.5)
    model = classify["body"]["model"]
    assert f"{model['name']} v{model['version']}" in page.text_content("#classify-meta")


def test_a_sample_can_be_chosen_from_the_page(page: Any) -> None:
    enter_key(page, API_KEY)
    with page.expect_response(lambda r: "/detect-faces?" in r.url) as answer:
        page.click("button[data-sample='face_astronaut.jpg']")
    wait_runs(page, "detect", 1)
    assert page.text_content("#results article.result h2") == "face_astronaut.jpg"
    assert len(drawn_boxes(page)) == len(answer.value.json()["results"][0]["faces"])


def test_an_image_dropped_on_the_page_is_sent(page: Any) -> None:
    enter_key(page, API_KEY)
    with page.expect_response(lambda r: "/detect-faces?" in r.url) as answer:
        # What a drag from the desktop delivers: a drop event whose DataTransfer holds the file.
        page.evaluate(
            """async () => {
                const blob = await (await fetch('demo/samples/face_astronaut.jpg')).blob();
                const data = new DataTransfer();
                data.items.add(new File([blob], 'dropped.jpg', {type: 'image/jpeg'}));
                const zone = document.getElementById('drop-zone');
                const init = {dataTransfer: data, bubbles: true, cancelable: true};
                zone.dispatchEvent(new DragEvent('dragover', init));
                zone.dispatchEvent(new DragEvent('drop', init));
            }"""
        )
    wait_runs(page, "detect", 1)
    assert answer.value.json()["results"][0]["filename"] == "dropped.jpg"
    assert page.text_content("#results article.result h2") == "dropped.jpg"
    assert len(drawn_boxes(page)) == len(answer.value.json()["results"][0]["faces"])


# --- errors and the API key ------------------------------------------------------------------
def test_a_non_image_shows_the_api_error_message(page: Any) -> None:
    enter_key(page, API_KEY)
    text_file = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"this is not an image\n" * 10}
    detect, classify = upload(page, [text_file])
    assert detect["status"] == classify["status"] == 415
    page.wait_for_selector("#error:not([hidden])")
    shown = page.text_content("#error")
    assert detect["body"]["message"] in shown and classify["body"]["message"] in shown
    assert page.get_attribute("#error", "data-code") == detect["body"]["error"] == "unsupported_image"
    assert page.locator("#results article.result").get_attribute("data-face-count") == "0"


def test_a_bad_image_among_good_ones_shows_its_own_error_and_the_others_their_answers(page: Any) -> None:
    enter_key(page, API_KEY)
    text_file = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"this is not an image\n" * 10}
    photo = {
        "name": "a.jpg",
        "mimeType": "image/jpeg",
        "buffer": (SAMPLES / "face_astronaut.jpg").read_bytes(),
    }
    detect, classify = upload(page, [photo, text_file])
    assert detect["status"] == classify["status"] == 200
    good, bad = page.locator("#results article.result").all()
    assert bad.get_attribute("data-image-error") == "unsupported_image"
    assert detect["body"]["results"][1]["message"] in bad.text_content()
    assert good.get_attribute("data-image-error") is None
    assert int(good.get_attribute("data-face-count")) == len(detect["body"]["results"][0]["faces"]) >= 1
    assert good.locator(".bar-row").count() == len(classify["body"]["results"][0]["top_k"])
    assert page.locator("#error").is_hidden()


def test_missing_or_wrong_key_is_explained_and_the_right_key_works(page: Any) -> None:
    assert page.input_value("#api-key") == ""
    detect, classify = upload(page, [FACE])
    assert detect["status"] == classify["status"] == 401
    page.wait_for_selector("#error:not([hidden])")
    assert "requires an API key" in page.text_content("#error")
    assert detect["body"]["message"] in page.text_content("#error")
    assert page.get_attribute("#error", "data-status") == "401"

    enter_key(page, "not-the-key")
    detect, _ = upload(page, [FACE])
    assert detect["status"] == 401
    assert "was not accepted" in page.text_content("#error")

    enter_key(page, API_KEY)
    detect, classify = upload(page, [FACE])
    assert detect["status"] == classify["status"] == 200
    page.wait_for_selector("#error", state="hidden")
    assert len(drawn_boxes(page)) == len(detect["body"]["results"][0]["faces"])


# --- the README's picture --------------------------------------------------------------------
def test_screenshot_of_faces_and_labels(page: Any, model_repository: Path, tmp_path: Path) -> None:
    enter_key(page, API_KEY)
    detect, classify = upload(page, [GROUP, FACE])
    assert detect["status"] == classify["status"] == 200
    assert [
        int(c)
        for c in page.locator("#results article.result").evaluate_all(
            "cards => cards.map(c => c.dataset.faceCount)"
        )
    ] == [len(r["faces"]) for r in detect["body"]["results"]]
    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if not repository_is_random(model_repository):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


# --- the page on another origin, calling the API through CORS ---------------------------------
@pytest.fixture
def other_origin_page(
    start_server, browser_context: Any, tmp_path: Path
) -> Iterator[tuple[Any, ServerHandle]]:  # type: ignore[no-untyped-def]
    """A copy of the demo page served by a plain static server on another loopback port (another
    origin), its <meta name="polynl-api-base"> naming the API, which allows that origin."""
    import functools
    import http.server
    import threading

    static = STATIC_DIR_OF_SERVICE
    site = tmp_path / "site"
    (site / "demo" / "static").mkdir(parents=True)
    for name in ("demo.js", "demo.css"):
        shutil.copyfile(static / name, site / "demo" / "static" / name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    origin = f"http://127.0.0.1:{httpd.server_address[1]}"
    api: ServerHandle = start_server({"POLYNL_API_KEY": API_KEY, "POLYNL_CORS_ORIGINS": origin})
    html = (static / "demo.html").read_text()
    marker = '<meta name="polynl-api-base" content="">'
    assert marker in html
    (site / "index.html").write_text(
        html.replace(marker, f'<meta name="polynl-api-base" content="{api.url}/">')
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    page = browser_context.new_page()
    problems = PageProblems(page)
    try:
        page.goto(f"{origin}/index.html")
        page.wait_for_selector("#sample-list button[data-sample]")  # listed by the API, cross-origin
        yield page, api
    finally:
        page.close()
        httpd.shutdown()
    assert problems.errors == []


def test_the_page_on_another_origin_calls_the_api_through_cors(
    other_origin_page: tuple[Any, ServerHandle],
) -> None:
    page, api = other_origin_page
    assert not page.url.startswith(str(api.url))
    enter_key(page, API_KEY)  # an Authorization header: the browser sends a CORS preflight first
    detect, classify = upload(page, [FACE])
    assert detect["status"] == classify["status"] == 200
    assert len(drawn_boxes(page)) == len(detect["body"]["results"][0]["faces"]) >= 1
    # The page could read the answers (boxes drawn) only because the API allowed its origin;
    # the preflight itself is checked without a browser in tests/integration/test_observability.py.
    assert "POST /detect-faces -> 200" in api.log()

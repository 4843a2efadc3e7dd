"""HTTP checks of the deploy smoke test, against the container on a loopback port.

Called by ``tests/deploy/smoke.sh``; standard library only, so it runs with whatever Python
the host has (no venv needed). Sits at the very end of the data path: it sends real image
bytes to the running image and judges the JSON that comes back.

    python3 tests/deploy/smoke_client.py wait-ready PORT TIMEOUT_S
    python3 tests/deploy/smoke_client.py check PORT SAMPLES_DIR
    python3 tests/deploy/smoke_client.py in-flight PORT IMAGE OUT_JSON
    python3 tests/deploy/smoke_client.py balanced LB_PORT SAMPLES_DIR REPLICA_PORT...

Exit status 0 when the check passed; messages go to stdout, one line per finding.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # the smoke test talks to loopback only
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# A trained CIFAR-10 ResNet-20 gets most of these ten val photos right; fewer than this
# means the wrong weights, the wrong preprocessing or a broken export reached the image.
MIN_CIFAR_CORRECT = 6
FACE_SCORE = 0.5


class CheckFailed(AssertionError):
    pass


def url(port: int, path: str) -> str:
    return f"http://{HOST}:{port}{path}"


def get_json(port: int, path: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url(port, path), timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def post_images(port: int, path: str, files: list[Path], timeout: float = 60.0) -> tuple[int, Any]:
    """multipart/form-data with one ``files`` part per image (the service's batch form)."""
    boundary = uuid.uuid4().hex
    body = b""
    for file in files:
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{file.name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + file.read_bytes()
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url(port, path),
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def wait_ready(port: int, timeout_s: float) -> float:
    """Seconds until /readyz answered 200."""
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < timeout_s:
        try:
            status, body = get_json(port, "/readyz", timeout=2.0)
            if status == 200:
                return time.monotonic() - started
            last = f"{status} {body}"
        except (OSError, ValueError) as error:
            last = str(error)
        time.sleep(0.5)
    raise CheckFailed(f"/readyz not 200 after {timeout_s:.0f} s (last: {last})")


def check_models(port: int) -> None:
    status, body = get_json(port, "/v1/models")
    if status != 200:
        raise CheckFailed(f"/v1/models answered {status}")
    for model in body["models"]:
        print(
            f"  model {model['name']} v{model['version']} block={model['block']} "
            f"providers={model['providers']} checksum_verified={model['checksum_verified']}"
        )
    names = {model["name"] for model in body["models"]}
    if names != {"classifier", "face_detector"}:
        raise CheckFailed(f"expected classifier and face_detector, the image serves {sorted(names)}")


def check_faces(port: int, samples: Path) -> None:
    image = samples / "face_astronaut.jpg"
    status, body = post_images(port, "/detect-faces", [image])
    if status != 200:
        raise CheckFailed(f"/detect-faces answered {status}: {body}")
    result = body["results"][0]
    faces = [face for face in result["faces"] if face["score"] >= FACE_SCORE]
    print(
        f"  /detect-faces {image.name} ({result['width']}x{result['height']}): {len(faces)} face(s), "
        f"best {faces[0]['score']:.3f} at {[round(v) for v in faces[0]['box']]}"
        if faces
        else f"  /detect-faces {image.name}: no face above {FACE_SCORE}"
    )
    if not faces:
        raise CheckFailed(f"no face with score >= {FACE_SCORE} in {image.name} (a portrait of one person)")
    x1, y1, x2, y2 = faces[0]["box"]
    width, height = result["width"], result["height"]
    if not (-1 <= x1 < x2 <= width + 1 and -1 <= y1 < y2 <= height + 1):
        raise CheckFailed(f"best face box {faces[0]['box']} is not inside the {width}x{height} image")
    # The astronaut portrait: one face, in the upper half of the photo.
    if (y1 + y2) / 2 > height * 0.6:
        raise CheckFailed(f"best face box {faces[0]['box']} is not in the upper part of the portrait")


def check_classes(port: int, samples: Path) -> None:
    images = [samples / f"cifar_{name}.png" for name in CIFAR_CLASSES]
    status, body = post_images(port, "/classify", images)
    if status != 200:
        raise CheckFailed(f"/classify answered {status}: {body}")
    correct = 0
    for image, result in zip(images, body["results"], strict=True):
        top = result["top_k"][0]
        expected = image.stem.removeprefix("cifar_")
        correct += top["label"] == expected
        total = sum(entry["probability"] for entry in result["top_k"])
        if total > 1.0001:
            raise CheckFailed(f"{image.name}: top-k probabilities sum to {total}")
    print(
        f"  /classify 10 CIFAR-10 photos in one request: {correct}/10 top-1 correct, "
        f"batch timing {body['timing']}"
    )
    if correct < MIN_CIFAR_CORRECT:
        raise CheckFailed(f"only {correct}/10 CIFAR-10 photos right (want >= {MIN_CIFAR_CORRECT})")


def in_flight(port: int, image: Path, out: Path) -> None:
    """One request whose answer is written to OUT (the shell sends SIGTERM meanwhile)."""
    started = time.monotonic()
    try:
        status, body = post_images(port, "/classify", [image], timeout=60.0)
        record = {
            "status": status,
            "seconds": time.monotonic() - started,
            "label": body["results"][0]["top_k"][0]["label"] if status == 200 else str(body),
        }
    except OSError as error:
        record = {"status": None, "seconds": time.monotonic() - started, "error": str(error)}
    out.write_text(json.dumps(record))


def images_served(port: int, model: str) -> float:
    """The replica's ``polynl_images_total{model=...}`` counter from /metrics."""
    with urllib.request.urlopen(url(port, "/metrics"), timeout=5.0) as response:
        text = response.read().decode()
    prefix = f'polynl_images_total{{model="{model}"}} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def check_balanced(lb_port: int, samples: Path, replica_ports: list[int]) -> None:
    """Requests through nginx reach every replica and come back right."""
    image = samples / "cifar_ship.png"
    before = [images_served(port, "classifier") for port in replica_ports]
    requests = 3 * len(replica_ports)
    for _ in range(requests):
        status, body = post_images(lb_port, "/classify", [image])
        if status != 200:
            raise CheckFailed(f"/classify through nginx answered {status}: {body}")
    served = [images_served(port, "classifier") - b for port, b in zip(replica_ports, before, strict=True)]
    print(f"  {requests} requests through nginx: images per replica {[int(n) for n in served]}")
    if sum(served) != requests or min(served) == 0:
        raise CheckFailed(f"nginx did not spread {requests} requests over every replica: {served}")


def main(argv: list[str]) -> int:
    command, port = argv[0], int(argv[1])
    try:
        if command == "wait-ready":
            print(f"{wait_ready(port, float(argv[2])):.1f}")
        elif command == "check":
            samples = Path(argv[2])
            check_models(port)
            check_faces(port, samples)
            check_classes(port, samples)
        elif command == "balanced":
            check_balanced(port, Path(argv[2]), [int(p) for p in argv[3:]])
        elif command == "in-flight":
            in_flight(port, Path(argv[2]), Path(argv[3]))
        else:
            raise SystemExit(f"unknown command {command}")
    except CheckFailed as failure:
        print(f"  FAILED: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

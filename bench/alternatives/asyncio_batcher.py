"""Alternative (d): the minimal asyncio batcher, the floor that issue 19's target is set against.

One asyncio loop, one queue, batches of up to ``max_batch_size`` same-shape inputs collected
for at most ``max_wait_ms`` after the first arrives, ONNX Runtime in one thread. Decoding
and preprocessing run on the event loop (no thread hop), with the service's own functions
(``bench.alternatives.common``), so only the serving machinery differs from the service.

Stack: uvicorn (the service's server, with the same defaults: uvloop and httptools where
installed) and a raw ASGI callable; multipart bodies go through python-multipart's
streaming parser, the parser Starlette uses under the service's ``request.form()``. No
framework: no routing table, validation, middleware or spooled upload files, which is
what "minimal" means here.

    POLYNL_MODEL_REPOSITORY=model_repository python -m bench.alternatives.asyncio_batcher --port 8003

Answers ``POST /classify`` and ``POST /detect-faces`` (whichever models the repository holds)
to a multipart ``file`` field or a raw image body, and ``GET /healthz``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import uvicorn
from python_multipart.multipart import MultipartParser, parse_options_header

from bench.alternatives.common import Classifier, Detector, repository_path
from polynl_core.images import ImageError
from polynl_core.repository import load_repository


class Batcher:
    """One queue, one inference thread; the batch goes as soon as it is full or its wait is over."""

    def __init__(self, predict: Callable[[np.ndarray], Any], max_batch_size: int, max_wait_s: float) -> None:
        self.predict, self.max_batch_size, self.max_wait_s = predict, max_batch_size, max_wait_s
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[Any]]] = asyncio.Queue()
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="inference")

    async def submit(self, x: np.ndarray) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((x, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), deadline - loop.time()))
                except TimeoutError:
                    break
            for shape in dict.fromkeys(x.shape for x, _ in batch):  # detector: one batch per bucket
                group = [(x, future) for x, future in batch if x.shape == shape]
                stacked = np.stack([x for x, _ in group])
                try:
                    out = await loop.run_in_executor(self.thread, self.predict, stacked)
                except Exception as exc:
                    out = exc
                for i, (_, future) in enumerate(group):
                    if future.done():  # its client went away
                        continue
                    if isinstance(out, Exception):
                        future.set_exception(out)
                    else:
                        future.set_result(
                            {k: v[i] for k, v in out.items()} if isinstance(out, dict) else out[i]
                        )


def image_bytes(body: bytes, content_type: bytes) -> bytes:
    """The first part of a multipart body (the load clients send one ``file``), or the raw body."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        return body
    parts: list[bytes] = []
    chunks: list[bytes] = []

    def part_end() -> None:
        parts.append(b"".join(chunks))
        chunks.clear()

    callbacks: Any = {
        "on_part_data": lambda data, start, end: chunks.append(data[start:end]),
        "on_part_end": part_end,
    }
    parser = MultipartParser(options[b"boundary"], callbacks)
    parser.write(body)
    parser.finalize()
    if not parts:
        raise ImageError("no file in the multipart body")
    return parts[0]


class App:
    """The ASGI callable: routes, one batcher per model, JSON answers."""

    def __init__(self, max_batch_size: int, max_wait_s: float) -> None:
        models = load_repository(repository_path(), verify=False)
        self.classifier = Classifier() if "classifier" in models else None
        self.detector = Detector() if "face_detector" in models else None
        self.batchers = {
            path: Batcher(model.predict, max_batch_size, max_wait_s)
            for path, model in (("/classify", self.classifier), ("/detect-faces", self.detector))
            if model is not None
        }

    async def answer(self, path: str, data: bytes, query: dict[str, list[str]]) -> dict[str, Any]:
        if path == "/classify" and self.classifier is not None:
            logits = await self.batchers[path].submit(self.classifier.prepare(data))
            return self.classifier.answer(logits, int(query.get("top_k", ["5"])[0]))
        assert self.detector is not None
        x, placement = self.detector.prepare(data)
        return self.detector.answer(await self.batchers[path].submit(x), placement)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        result: dict[str, Any]
        if scope["type"] == "lifespan":  # startup: start the batchers; shutdown: stop them
            await receive()
            workers = [asyncio.create_task(batcher.run()) for batcher in self.batchers.values()]
            await send({"type": "lifespan.startup.complete"})
            await receive()
            for worker in workers:
                worker.cancel()
            return await send({"type": "lifespan.shutdown.complete"})
        status, result = 404, {"detail": "not found"}
        if scope["path"] == "/healthz":
            status, result = 200, {"status": "ok"}
        elif scope["method"] == "POST" and scope["path"] in self.batchers:
            chunks, more = [], True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            try:
                data = image_bytes(b"".join(chunks), dict(scope["headers"]).get(b"content-type", b""))
                query = parse_qs(scope["query_string"].decode())
                status, result = 200, {"results": [await self.answer(scope["path"], data, query)]}
            except ImageError as exc:  # not an image, corrupt, too large: the client's fault
                status, result = 400, {"detail": str(exc)}
        payload = json.dumps(result).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.alternatives.asyncio_batcher")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument(
        "--max-batch-size", type=int, default=int(os.environ.get("POLYNL_MAX_BATCH_SIZE", "8"))
    )
    parser.add_argument("--max-wait-ms", type=float, default=float(os.environ.get("POLYNL_MAX_WAIT_MS", "5")))
    args = parser.parse_args(argv)
    app = App(args.max_batch_size, args.max_wait_ms / 1000.0)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

"""Alternative (c): the same classifier (or face detector) behind LitServe with its dynamic batching.

LitServe runs the model in a worker process fed by a queue; with ``max_batch_size`` > 1 it
collects up to that many requests (waiting at most ``batch_timeout`` seconds) and calls
``decode_request`` per request, then ``batch`` -> ``predict`` -> ``unbatch`` ->
``encode_response``. Same model, session options and image functions as the service
(``bench.alternatives.common``); the batch settings default to the service's
(``POLYNL_MAX_BATCH_SIZE`` = 8, ``POLYNL_MAX_WAIT_MS`` = 5).

    POLYNL_MODEL_REPOSITORY=model_repository python -m bench.alternatives.litserve_app --port 8002
    ... python -m bench.alternatives.litserve_app --endpoint detect-faces   # the detector instead

LitServe reads form uploads (or JSON), not raw bodies: send a multipart ``file`` field
(``python -m bench.loadtest --multipart``).
"""

# No ``from __future__ import annotations`` here: LitServe reads decode_request's annotation
# at run time and compares it with the Request class; a postponed (string) annotation breaks that.

import argparse
import os
from typing import Any

import litserve as ls
import numpy as np
from fastapi import Request

from bench.alternatives.common import Classifier, Detector, Placement


class ClassifierAPI(ls.LitAPI):
    """LitServe's five steps around the shared classifier (module level: LitServe pickles it)."""

    def setup(self, device: str) -> None:
        self.classifier = Classifier()

    # LitServe routes by this annotation: ``Request`` makes it parse the form and pass the
    # parsed form (not the Request) here; any other annotation would mean a JSON body.
    def decode_request(self, request: Request) -> np.ndarray:
        form: Any = request
        return self.classifier.prepare(form["file"].file.read())

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if x.ndim == 3:  # max_batch_size=1: LitServe does not call batch()
            return self.classifier.predict(x[None])[0]
        return self.classifier.predict(x)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, logits: np.ndarray) -> dict[str, Any]:
        return {"results": [self.classifier.answer(logits)]}


class DetectorAPI(ls.LitAPI):
    """The face detector in the same five steps; the placement of each image in its
    letterbox travels beside its tensor through batch -> predict -> unbatch."""

    def setup(self, device: str) -> None:
        self.detector = Detector()

    def decode_request(self, request: Request) -> tuple[np.ndarray, Placement]:
        form: Any = request
        return self.detector.prepare(form["file"].file.read())

    def batch(self, inputs: list[tuple[np.ndarray, Placement]]) -> tuple[np.ndarray, list[Placement]]:
        return np.stack([x for x, _ in inputs]), [placement for _, placement in inputs]

    def predict(self, x: Any) -> Any:
        if isinstance(x[0], np.ndarray) and x[0].ndim == 3:  # max_batch_size=1: no batch()
            outputs = self.detector.predict(x[0][None])
            return {name: value[0] for name, value in outputs.items()}, x[1]
        batch, placements = x
        return self.detector.predict(batch), placements

    def unbatch(self, output: Any) -> list[tuple[dict[str, np.ndarray], Placement]]:
        outputs, placements = output
        return [
            ({name: value[i] for name, value in outputs.items()}, placement)
            for i, placement in enumerate(placements)
        ]

    def encode_response(self, output: tuple[dict[str, np.ndarray], Placement]) -> dict[str, Any]:
        return {"results": [self.detector.answer(*output)]}


def build_server(
    max_batch_size: int, batch_timeout_s: float, timeout_s: float = 30.0, endpoint: str = "classify"
) -> ls.LitServer:
    api_class = DetectorAPI if endpoint == "detect-faces" else ClassifierAPI
    api = api_class(max_batch_size=max_batch_size, batch_timeout=batch_timeout_s, api_path=f"/{endpoint}")
    return ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=timeout_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.alternatives.litserve_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument(
        "--max-batch-size", type=int, default=int(os.environ.get("POLYNL_MAX_BATCH_SIZE", "8"))
    )
    parser.add_argument("--max-wait-ms", type=float, default=float(os.environ.get("POLYNL_MAX_WAIT_MS", "5")))
    parser.add_argument("--endpoint", choices=("classify", "detect-faces"), default="classify")
    args = parser.parse_args(argv)
    server = build_server(args.max_batch_size, args.max_wait_ms / 1000.0, endpoint=args.endpoint)
    server.run(
        host=args.host, port=args.port, num_api_servers=1, generate_client_file=False, log_level="warning"
    )


if __name__ == "__main__":
    main()

"""Open Inference Protocol targets of the load tester: Triton's own async clients.

``--protocol oip-http`` sends through ``tritonclient.http.aio`` (binary tensor data),
``--protocol oip-grpc`` through ``tritonclient.grpc.aio``; ``--oip-input bytes`` sends each
image's encoded file as a BYTES ``image_files`` tensor (the service decodes and answers),
``--oip-input tensor`` the preprocessed ``images`` FP32 ``[1,3,H,W]`` tensor, prepared once up
front with the model's own preprocessing (``polynl_core``, from its ``config.json`` in
``--repository``) so that the client spends no CPU on it during the run. Each request's
status is the HTTP status the same outcome has on REST (a gRPC RESOURCE_EXHAUSTED is a 503),
so reports of the three ways in read alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bench.loadtest.runner import Payload

OipProtocol = Literal["oip-http", "oip-grpc"]
OipInput = Literal["bytes", "tensor"]

_GRPC_STATUS = {
    "StatusCode.INVALID_ARGUMENT": "400",
    "StatusCode.UNAUTHENTICATED": "401",
    "StatusCode.NOT_FOUND": "404",
    "StatusCode.RESOURCE_EXHAUSTED": "503",
    "StatusCode.UNAVAILABLE": "503",
    "StatusCode.DEADLINE_EXCEEDED": "504",
    "StatusCode.INTERNAL": "500",
}


@dataclass(frozen=True)
class OipTarget:
    """Where and how to send: protocol, address (host:port), model and the way in."""

    protocol: OipProtocol
    address: str
    model: str
    way_in: OipInput = "bytes"
    parameters: dict[str, Any] | None = None

    def module(self) -> Any:
        if self.protocol == "oip-http":
            import tritonclient.http.aio as client
        else:
            import tritonclient.grpc.aio as client
        return client

    def client(self, headers: dict[str, str]) -> OipClient:
        return OipClient(self, self.module().InferenceServerClient(self.address), headers)


def tensor_inputs(payloads: Sequence[Payload], repository: Path, model: str) -> list[np.ndarray]:
    """Each image preprocessed as the service would, for the tensor way in (newest version)."""
    from polynl_core.buckets import choose_bucket
    from polynl_core.images import decode_image
    from polynl_core.preprocess import classifier_input, letterbox
    from polynl_core.repository import load_model
    from polynl_core.tasks import Task

    config = load_model(repository / model, verify=False).config
    arrays = []
    for payload in payloads:
        image = decode_image(payload.data, 40_000_000).image
        if config.task is Task.CLASSIFICATION:
            arrays.append(classifier_input(image, config.preprocess)[None])
        else:
            buckets = [(b[0], b[1]) for b in config.size_buckets or []]
            bucket = choose_bucket(image.width, image.height, buckets)
            arrays.append(letterbox(image, bucket, config.preprocess).tensor[None])
    return arrays


class OipClient:
    """One Triton client (a connection, or a gRPC channel) and the inputs it sends."""

    def __init__(self, target: OipTarget, client: Any, headers: dict[str, str]) -> None:
        self.target = target
        self._client = client
        self._module = target.module()
        # gRPC metadata keys are lower case; the HTTP client takes the header as given.
        grpc = target.protocol == "oip-grpc"
        self._headers = {k.lower(): v for k, v in headers.items()} if grpc else dict(headers)

    def _inputs(self, payload: Payload, tensor: np.ndarray | None) -> list[Any]:
        module = self._module
        if tensor is not None:
            item = module.InferInput("images", list(tensor.shape), "FP32")
            data = tensor
        else:
            item = module.InferInput("image_files", [1], "BYTES")
            data = np.array([payload.data], dtype=np.object_)
        if self.target.protocol == "oip-http":
            item.set_data_from_numpy(data, binary_data=True)
        else:
            item.set_data_from_numpy(data)
        return [item]

    async def send(self, payload: Payload, tensor: np.ndarray | None) -> str:
        from tritonclient.utils import InferenceServerException

        try:
            await self._client.infer(
                self.target.model,
                self._inputs(payload, tensor),
                parameters=self.target.parameters or None,
                headers=dict(self._headers),  # tritonclient.http adds its own headers to it
            )
        except InferenceServerException as exc:
            status = str(exc.status() or "error")
            return _GRPC_STATUS.get(status, status if status.isdigit() else f"oip_{status}")
        return "200"

    async def close(self) -> None:
        await self._client.close()

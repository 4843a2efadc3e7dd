"""Service errors in the protocol's own shape: one table for REST statuses and gRPC codes.

REST answers ``{"error": "<message>"}`` (the protocol's error body) with the service's status,
except 422 (a bad parameter or a corrupt image), which the protocol calls a bad request
(400, as Triton answers). gRPC maps the same statuses to codes; an overloaded model answers
RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo`` detail (and a ``retry-after`` trailer).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2

from polynl_core.images import ImageError
from service.errors import IMAGE_ERROR_STATUS, ServiceError

GRPC_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


@dataclass(frozen=True)
class ProtocolError:
    status: int  # HTTP status of the REST answer (and the metrics' status label for gRPC)
    code: str  # the service's stable error code
    message: str
    retry_after_s: int | None = None
    headers: dict[str, str] | None = None

    @property
    def rest_status(self) -> int:
        return 400 if self.status == 422 else self.status

    @property
    def grpc_code(self) -> grpc.StatusCode:
        if self.code == "overloaded":
            return grpc.StatusCode.RESOURCE_EXHAUSTED
        return GRPC_CODES.get(self.status, grpc.StatusCode.UNKNOWN)


def protocol_error(exc: Exception) -> ProtocolError | None:
    """The protocol's view of a deliberate error; None for a bug (answered as a generic 500)."""
    if isinstance(exc, ServiceError):
        retry = exc.headers.get("Retry-After")
        return ProtocolError(
            exc.status_code, exc.code, exc.message, int(retry) if retry else None, exc.headers or None
        )
    if isinstance(exc, ImageError):
        return ProtocolError(IMAGE_ERROR_STATUS.get(exc.code, 422), exc.code, exc.message)
    return None


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    key, length = _varint(number << 3 | 2), _varint(len(payload))
    return key + length + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def status_details(code: grpc.StatusCode, message: str, retry_after_s: int) -> bytes:
    """A serialised ``google.rpc.Status`` holding a ``google.rpc.RetryInfo`` (gRPC's rich error
    model, trailer ``grpc-status-details-bin``), written with protobuf's own Any and Duration:
    the service needs no googleapis package for two small messages."""
    retry_info = _field(1, duration_pb2.Duration(seconds=retry_after_s).SerializeToString())
    detail = any_pb2.Any(type_url="type.googleapis.com/google.rpc.RetryInfo", value=retry_info)
    numeric = code.value[0]
    return (
        _varint(1 << 3 | 0)
        + _varint(numeric)
        + _field(2, message.encode())
        + _field(3, detail.SerializeToString())
    )

"""The protocol's tensors: datatypes, shapes, and the BYTES wire form, for REST and gRPC alike.

A :class:`Tensor` is what both front ends hand to :mod:`service.oip.models` and get back:
a name, an OIP datatype, a shape and a numpy array (``object`` arrays of ``bytes`` for BYTES).
BYTES elements travel as a 4-byte little-endian length followed by the bytes, one after the
other (binary data extension and gRPC ``raw_*_contents``), as in Triton.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import BadRequest

NUMPY_OF: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
DATATYPE_OF: dict[Any, str] = {np.dtype(v): k for k, v in NUMPY_OF.items()}


class InvalidTensor(BadRequest):
    """A tensor whose datatype, shape or data do not agree (400 / INVALID_ARGUMENT)."""

    code = "invalid_tensor"


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, array: np.ndarray) -> Tensor:
        datatype = DATATYPE_OF.get(array.dtype)
        if datatype is None:
            raise TypeError(f"no protocol datatype for numpy {array.dtype}")
        return cls(name, datatype, list(array.shape), array)

    def to_bytes(self) -> bytes:
        """The tensor's raw wire form (row-major, little-endian; BYTES length-prefixed)."""
        if self.datatype == "BYTES":
            return serialize_bytes(self.array)
        return np.ascontiguousarray(
            self.array, dtype=np.dtype(NUMPY_OF[self.datatype]).newbyteorder("<")
        ).tobytes()


def element_count(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidTensor(f"shape {shape} has a negative dimension")
        count *= dim
    return count


def numpy_type(name: str, datatype: str) -> Any:
    try:
        return NUMPY_OF[datatype]
    except KeyError:
        raise InvalidTensor(f"input {name!r}: unknown datatype {datatype!r}") from None


def serialize_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(name: str, data: bytes | memoryview, count: int) -> np.ndarray:
    view = memoryview(data)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidTensor(f"input {name!r}: BYTES data ends inside an element's length")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidTensor(f"input {name!r}: a BYTES element runs past the end of the data")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidTensor(f"input {name!r}: {len(items)} BYTES elements for a shape of {count} elements")
    array = np.empty(count, dtype=np.object_)
    array[:] = items
    return array


def from_raw(name: str, datatype: str, shape: list[int], data: bytes | memoryview) -> Tensor:
    """A tensor from its raw wire form (binary data extension, gRPC raw contents)."""
    dtype = numpy_type(name, datatype)
    count = element_count(shape)
    if datatype == "BYTES":
        return Tensor(name, datatype, shape, deserialize_bytes(name, data, count).reshape(shape))
    expected = count * np.dtype(dtype).itemsize
    if len(data) != expected:
        raise InvalidTensor(
            f"input {name!r}: {len(data)} bytes of data for {datatype} shape {shape} ({expected} expected)"
        )
    array = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    return Tensor(name, datatype, shape, array)


_MAX_DEPTH = 8  # a tensor's JSON data is flat or nested at most this deep (4-D images + room)


def _flatten(name: str, data: Any) -> list[Any]:
    """Row-major elements of flat or nested JSON lists (iterative: no recursion to exhaust)."""
    flat: list[Any] = []
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list):
            if depth >= _MAX_DEPTH:
                raise InvalidTensor(f"input {name!r}: data nested deeper than {_MAX_DEPTH} lists")
            stack.extend((x, depth + 1) for x in reversed(item))
        else:
            flat.append(item)
    return flat


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float)  # bool is an int: BOOL tensors and 0/1 both work


def from_list(name: str, datatype: str, shape: list[int], data: Any) -> Tensor:
    """A tensor from the JSON form: ``data`` flat (row-major) or nested; BYTES as strings."""
    dtype = numpy_type(name, datatype)
    count = element_count(shape)
    flat = _flatten(name, data)
    if len(flat) != count:
        raise InvalidTensor(f"input {name!r}: {len(flat)} elements for shape {shape} ({count} expected)")
    if datatype == "BYTES":
        if not all(isinstance(x, str) for x in flat):
            raise InvalidTensor(f"input {name!r}: BYTES data in JSON must be strings")
        array = np.empty(count, dtype=np.object_)
        array[:] = [x.encode() for x in flat]
        return Tensor(name, datatype, shape, array.reshape(shape))
    if not all(_is_number(x) for x in flat):
        raise InvalidTensor(f"input {name!r}: {datatype} data in JSON must be numbers")
    try:
        array = np.asarray(flat, dtype=dtype).reshape(shape)
    except (TypeError, ValueError) as exc:
        raise InvalidTensor(f"input {name!r}: data is not {datatype}: {exc}") from None
    return Tensor(name, datatype, shape, array)


def to_list(tensor: Tensor) -> list[Any]:
    """The JSON form of a tensor's data: flat, row-major; BYTES as strings."""
    flat = tensor.array.reshape(-1)
    if tensor.datatype == "BYTES":
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in flat]
    return list(flat.tolist())

"""The protocol's JSON tensors against hostile request bodies: clear 400s, no allocation bombs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.errors import BadRequest
from service.oip.rest import parse_infer_request
from service.oip.tensors import InvalidTensor, from_list


def test_nested_and_flat_json_data_give_the_same_row_major_tensor() -> None:
    nested = from_list("x", "FP32", [2, 2], [[1, 2], [3, 4]])
    flat = from_list("x", "FP32", [2, 2], [1, 2, 3, 4])
    np.testing.assert_array_equal(nested.array, flat.array)
    assert nested.array.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_data_nested_too_deep_is_refused_without_recursion() -> None:
    deep: list[object] = [1.0]
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(InvalidTensor, match="nested deeper"):
        from_list("x", "FP32", [1], deep)


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("BYTES", [10**9], "must be strings"),  # bytes(10**9) would allocate a gigabyte
        ("FP32", ["NaN"], "must be numbers"),
        ("INT64", [None], "must be numbers"),
        ("FP32", [{"a": 1}], "must be numbers"),
    ],
)
def test_elements_of_the_wrong_json_type_are_refused(datatype: str, data: list[object], message: str) -> None:
    with pytest.raises(InvalidTensor, match=message):
        from_list("x", datatype, [1], data)


def test_a_body_nesting_json_too_deeply_is_a_bad_request() -> None:
    body = b'{"inputs":[{"name":"images","datatype":"FP32","shape":[1],"data":' + b"[" * 100_000
    body += b"]" * 100_000 + b"}]}"
    with pytest.raises(BadRequest, match=r"too deeply|not JSON"):
        parse_infer_request(body, None)


def test_a_huge_declared_shape_is_refused_before_any_allocation() -> None:
    header = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [10**12, 3, 32, 32], "data": [1.0]}]}
    with pytest.raises(BadRequest, match="expected"):
        parse_infer_request(json.dumps(header).encode(), None)

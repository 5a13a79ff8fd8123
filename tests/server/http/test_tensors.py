"""REST inference bodies: JSON and binary tensors in, JSON and binary outputs out."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server.errors import InvalidInput
from warpserve.server.http import decoding, tensors
from warpserve.server.http.jsonproto import to_json


def body(document: dict, binary: bytes = b"") -> tuple[bytes, int | None]:
    head = json.dumps(document).encode()
    return head + binary, (len(head) if binary else None)


def decode(document: dict, binary: bytes = b"") -> tuple:
    data, size = body(document, binary)
    return decoding.decode_infer(data, size, "m", "", None)


def test_json_data_nested_or_flat_is_row_major() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for data in (x.tolist(), x.reshape(-1).tolist()):
        request, _ = decode(
            {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 3], "data": data}]}
        )
        np.testing.assert_array_equal(request.inputs["X"], x)
        assert request.inputs["X"].dtype == np.float32


def test_binary_inputs_are_views_of_the_body_in_order() -> None:
    a = np.arange(4, dtype=np.int32)
    b = np.array([1.5, 2.5], dtype=np.float64)
    document = {
        "id": "q",
        "inputs": [
            {
                "name": "A",
                "datatype": "INT32",
                "shape": [4],
                "parameters": {"binary_data_size": 16},
            },
            {"name": "B", "datatype": "FP64", "shape": [2], "parameters": {"binary_data_size": 16}},
        ],
        "outputs": [{"name": "Y", "parameters": {"binary_data": True}}, {"name": "Z"}],
        "parameters": {"binary_data_output": False, "priority": 1},
    }
    request, fmt = decode(document, a.tobytes() + b.tobytes())
    np.testing.assert_array_equal(request.inputs["A"], a)
    np.testing.assert_array_equal(request.inputs["B"], b)
    assert request.id == "q" and request.outputs == ["Y", "Z"]
    assert request.parameters == {"priority": 1}  # binary_data_output is the transport's
    assert fmt.is_binary("Y") and not fmt.is_binary("Z")


def test_bytes_in_json_and_in_binary() -> None:
    request, _ = decode(
        {"inputs": [{"name": "T", "datatype": "BYTES", "shape": [2], "data": ["a", "\u00e9"]}]}
    )
    assert request.inputs["T"].tolist() == [b"a", "\u00e9".encode()]
    raw = struct.pack("<I", 3) + b"\xff\x00\x01"  # not text: only binary carries it
    document = {
        "inputs": [
            {"name": "T", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 7}}
        ]
    }
    request, _ = decode(document, raw)
    assert request.inputs["T"].tolist() == [b"\xff\x00\x01"]


@pytest.mark.parametrize(
    ("document", "binary", "says"),
    [
        (
            {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2], "data": [1.0]}]},
            b"",
            "needs 2",
        ),
        (
            {"inputs": [{"name": "X", "datatype": "INT32", "shape": [1], "data": [1.5]}]},
            b"",
            "INT32 does not take",
        ),
        (
            {
                "inputs": [
                    {"name": "X", "datatype": "FP32", "shape": [2], "data": [[1.0], [2.0, 3.0]]}
                ]
            },
            b"",
            "regular array",
        ),
        ({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1]}]}, b"", "no 'data'"),
        (
            {"inputs": [{"name": "X", "datatype": "FP32", "shape": "1", "data": [1]}]},
            b"",
            "'shape'",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "X",
                        "datatype": "FP32",
                        "shape": [1],
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            b"1234",
            "claims 8",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "X",
                        "datatype": "FP32",
                        "shape": [1],
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"12345678",
            "add up to 4",
        ),
        (
            {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}], "id": 5},
            b"",
            "'id'",
        ),
        (
            {
                "inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}],
                "parameters": {"p": [1]},
            },
            b"",
            "parameter 'p'",
        ),
        (
            {"inputs": [{"name": "X", "datatype": "BYTES", "shape": [1], "data": [1]}]},
            b"",
            "must be strings",
        ),
    ],
    ids=[
        "count",
        "float-for-int",
        "ragged",
        "no-data",
        "shape-type",
        "short-binary",
        "extra-binary",
        "id-type",
        "param-type",
        "bytes-not-text",
    ],
)
def test_bad_requests_name_the_problem(document: dict, binary: bytes, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        decode(document, binary)


@pytest.mark.parametrize("value", ["-1", "x", "100000"])
def test_header_length_must_lie_within_the_body(value: str) -> None:
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length"):
        tensors.header_length(value, 10)
    assert tensors.header_length("10", 10) == 10  # control
    assert tensors.header_length(None, 10) is None


def test_encode_json_and_binary_outputs() -> None:
    request, _ = decode(
        {"id": "r", "inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}]}
    )
    y = np.array([[1.0, 2.0]], dtype=np.float32)
    t = np.array([b"ok"], dtype=np.object_)
    fmt = tensors.OutputFormat(binary_default=False, binary={"Y": True})
    parts, size = tensors.encode_infer("m", "3", request, {"Y": y, "T": t}, fmt)
    assert size == len(parts[0])
    head = json.loads(bytes(parts[0]))
    assert head["id"] == "r" and head["model_version"] == "3"
    y_out, t_out = head["outputs"]
    assert y_out == {
        "name": "Y",
        "datatype": "FP32",
        "shape": [1, 2],
        "parameters": {"binary_data_size": 8},
    }
    assert t_out == {"name": "T", "datatype": "BYTES", "shape": [1], "data": ["ok"]}
    assert bytes(parts[1]) == y.tobytes()
    parts, size = tensors.encode_infer("m", "3", request, {"T": t}, fmt)
    assert size is None and len(parts) == 1  # all JSON: no header length


def test_proto_json_writes_numbers_and_zeros() -> None:
    stats = pb.ModelStatistics(name="m", version="1", inference_count=2**40)
    stats.inference_stats.success.count = 0
    document = to_json(stats)
    assert document["inference_count"] == 2**40  # a number, not protobuf's string
    assert document["execution_count"] == 0  # zero values are written
    assert document["inference_stats"]["success"] == {"count": 0, "ns": 0}
    assert "queue" not in document["inference_stats"]  # unset sub-messages stay out


def test_response_parameters_travel_in_the_answer() -> None:
    """A fallback's answer names itself in the response parameters, as over gRPC."""
    request, _ = decode({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}]})
    request.response_parameters = {"fallback": True, "fallback_from": "m"}
    fmt = tensors.OutputFormat(binary_default=False, binary={})
    parts, _ = tensors.encode_infer("f", "1", request, {}, fmt)
    assert json.loads(bytes(parts[0]))["parameters"] == {"fallback": True, "fallback_from": "m"}

"""Wire <-> numpy: raw, typed contents, BYTES, and every malformed form."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server import codec, dtypes
from warpserve.server.errors import InvalidInput


def raw_request(arrays: dict[str, np.ndarray], datatype: str = "FP32") -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m")
    for name, a in arrays.items():
        req.inputs.add(name=name, datatype=datatype, shape=a.shape)
        req.raw_input_contents.append(a.tobytes())
    return req


def test_raw_input_is_viewed_not_copied_and_round_trips() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    inputs = codec.decode_inputs(raw_request({"x": x}))
    assert inputs["x"].base is not None and not inputs["x"].flags.writeable
    np.testing.assert_array_equal(inputs["x"], x)


def test_nan_and_inf_pass_through() -> None:
    x = np.array([[np.nan, np.inf, -np.inf, 1.0]], dtype=np.float32)
    out = codec.decode_inputs(raw_request({"x": x}))["x"]
    assert np.isnan(out[0, 0]) and out[0, 1] == np.inf and out[0, 2] == -np.inf


@pytest.mark.parametrize(
    ("datatype", "field", "values", "dtype"),
    [
        ("FP32", "fp32_contents", [1.5, -2.0], np.float32),
        ("INT64", "int64_contents", [1, -2], np.int64),
        ("INT8", "int_contents", [1, -2], np.int8),
        ("UINT16", "uint_contents", [1, 2], np.uint16),
        ("BOOL", "bool_contents", [True, False], np.bool_),
        ("FP64", "fp64_contents", [1.5, 2.5], np.float64),
    ],
)
def test_typed_contents(datatype: str, field: str, values: list, dtype: type) -> None:
    req = pb.ModelInferRequest()
    t = req.inputs.add(name="x", datatype=datatype, shape=[1, 2])
    getattr(t.contents, field).extend(values)
    out = codec.decode_inputs(req)["x"]
    assert out.dtype == dtype and out.tolist() == [values]


def test_fp16_has_no_typed_contents() -> None:
    req = pb.ModelInferRequest()
    req.inputs.add(name="x", datatype="FP16", shape=[1])
    with pytest.raises(InvalidInput, match="raw_input_contents"):
        codec.decode_inputs(req)


def test_bytes_round_trip() -> None:
    data = np.array([b"cat", b"", b"dog"], dtype=np.object_)
    raw = codec.serialize_bytes(data)
    assert raw[:4] == struct.pack("<I", 3)
    back = codec.deserialize_bytes("s", raw, 3)
    assert back.tolist() == [b"cat", b"", b"dog"]


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (struct.pack("<I", 10) + b"abc", "claims 10 bytes"),
        (b"\x01\x00", "ends after 0 of 1"),
        (struct.pack("<I", 1) + b"ab", "left after 1"),
    ],
)
def test_malformed_bytes(raw: bytes, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        codec.deserialize_bytes("s", raw, 1)


def test_raw_size_must_match_shape() -> None:
    req = pb.ModelInferRequest()
    req.inputs.add(name="x", datatype="FP32", shape=[2, 2])
    req.raw_input_contents.append(b"\x00" * 12)
    with pytest.raises(InvalidInput, match=r"'x': raw data has 12 bytes.*needs 16"):
        codec.decode_inputs(req)


def test_contents_and_raw_both_set() -> None:
    req = raw_request({"x": np.zeros((1, 2), np.float32)})
    req.inputs[0].contents.fp32_contents.extend([0, 0])
    with pytest.raises(InvalidInput, match="use one form"):
        codec.decode_inputs(req)


def test_duplicate_unknown_dtype_and_raw_count() -> None:
    x = np.zeros((1, 2), np.float32)
    req = raw_request({"x": x})
    req.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    req.raw_input_contents.append(x.tobytes())
    with pytest.raises(InvalidInput, match="more than once"):
        codec.decode_inputs(req)
    with pytest.raises(InvalidInput, match="unknown datatype 'FLOAT'"):
        codec.decode_inputs(raw_request({"x": x}, datatype="FLOAT"))
    req = raw_request({"x": x})
    req.raw_input_contents.append(b"")
    with pytest.raises(InvalidInput, match="one raw entry per input"):
        codec.decode_inputs(req)


def test_negative_dimension() -> None:
    req = pb.ModelInferRequest()
    req.inputs.add(name="x", datatype="FP32", shape=[-1, 2])
    req.raw_input_contents.append(b"")
    with pytest.raises(InvalidInput, match=">= 0"):
        codec.decode_inputs(req)


def test_encode_response_raw_and_bytes() -> None:
    y = np.arange(4, dtype=np.int64).reshape(2, 2)
    s = np.array([[b"a"], [b"bc"]], dtype=np.object_)
    resp = pb.ModelInferResponse.FromString(
        codec.encode_response("m", "3", "id-1", [("y", y), ("s", s)])
    )
    assert [o.datatype for o in resp.outputs] == ["INT64", "BYTES"]
    assert list(resp.outputs[0].shape) == [2, 2]
    assert np.frombuffer(resp.raw_output_contents[0], np.int64).tolist() == [0, 1, 2, 3]
    assert codec.deserialize_bytes("s", resp.raw_output_contents[1], 2).tolist() == [b"a", b"bc"]
    assert resp.id == "id-1" and resp.model_version == "3"


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not C-contiguous
        np.arange(300_000, dtype=np.float16).reshape(1000, 300),  # a multi-byte length
        np.array([True, False]),
        np.zeros((0, 3), np.int8),
        np.array(7, np.int32),  # 0-d
        np.array([[1.5, -2.0]], dtype=dtypes.BY_WIRE["BF16"].numpy),
    ],
    ids=["transposed", "large", "bool", "empty", "scalar", "bf16"],
)
def test_encoded_outputs_equal_protobufs_own_serialization(array: np.ndarray) -> None:
    want = pb.ModelInferResponse(model_name="m", model_version="1", id="r")
    want.outputs.add(name="y", datatype=dtypes.from_numpy(array.dtype).wire, shape=array.shape)
    want.raw_output_contents.append(array.tobytes())
    got = codec.encode_response("m", "1", "r", [("y", array)])
    assert got == want.SerializeToString()
    stream = pb.ModelStreamInferResponse.FromString(
        codec.encode_stream_response("m", "1", "r", [("y", array)])
    )
    assert stream.infer_response == want and not stream.error_message


def test_parameters_are_decoded() -> None:
    req = raw_request({"x": np.zeros((1, 2), np.float32)})
    req.parameters["priority"].int64_param = 2
    req.parameters["tag"].string_param = "a"
    decoded = codec.decode_request(codec.receive_infer(req.SerializeToString()))
    assert decoded.parameters == {"priority": 2, "tag": "a"}


@pytest.mark.parametrize("rows", [1, 4096])  # under and over VIEW_RAW_FROM_BYTES
def test_received_raw_tensors_view_the_wire_bytes(rows: int) -> None:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    ids = np.arange(rows, dtype=np.int64).reshape(rows, 1)
    req = raw_request({"x": x})
    req.inputs.add(name="ids", datatype="INT64", shape=ids.shape)
    req.raw_input_contents.append(ids.tobytes())
    req.id = "r-1"
    req.parameters["priority"].int64_param = 2
    req.outputs.add(name="y")
    data = req.SerializeToString()
    received = codec.receive_infer(data)
    large = len(data) >= codec.VIEW_RAW_FROM_BYTES
    assert (received.raw is not None) == large
    decoded = codec.decode_request(received)
    np.testing.assert_array_equal(decoded.inputs["x"], x)
    np.testing.assert_array_equal(decoded.inputs["ids"], ids)
    assert (decoded.id, decoded.outputs, decoded.parameters) == ("r-1", ["y"], {"priority": 2})
    if large:  # views of the received bytes themselves: no copy at all
        for array in decoded.inputs.values():
            assert not array.flags.writeable
            assert np.shares_memory(array, np.frombuffer(data, np.uint8))


def test_received_fields_in_any_order_and_unknown_fields_are_kept() -> None:
    # A sender may interleave fields and add ones this server does not know; only the
    # raw tensors leave the message, in their order, and the rest parses as before.
    big = np.arange(8192, dtype=np.float32).reshape(2, 4096)
    small = np.array([[7]], dtype=np.int32)
    head = pb.ModelInferRequest(model_name="m", id="a")
    head.inputs.add(name="big", datatype="FP32", shape=big.shape)
    head.inputs.add(name="small", datatype="INT32", shape=small.shape)

    def field(number: int, payload: bytes) -> bytes:
        return _varint((number << 3) | 2) + _varint(len(payload)) + payload

    unknown = _varint((99 << 3) | 0) + _varint(300) + _varint((98 << 3) | 5) + b"\0" * 4
    data = (
        field(7, big.tobytes())
        + head.SerializeToString()
        + unknown
        + field(7, small.tobytes())
        + field(3, b"b")  # a later id wins, as protobuf specifies
    )
    received = codec.receive_infer(data)
    assert received.raw is not None and len(received.raw) == 2
    decoded = codec.decode_request(received)
    np.testing.assert_array_equal(decoded.inputs["big"], big)
    np.testing.assert_array_equal(decoded.inputs["small"], small)
    assert decoded.id == "b" and decoded.model_name == "m"


def test_a_request_of_many_small_fields_is_left_to_protobuf() -> None:
    # Scanning field by field in Python is bounded: a large message made of tiny fields
    # goes to protobuf's C parser whole, and still decodes.
    x = np.ones((1, 4), np.float32)
    req = raw_request({"x": x})
    for i in range(codec.MAX_SCANNED_FIELDS + 10):
        req.parameters[f"parameter-{i}"].int64_param = i
    data = req.SerializeToString()
    assert len(data) >= codec.VIEW_RAW_FROM_BYTES
    received = codec.receive_infer(data)
    assert received.raw is None and not received.error
    decoded = codec.decode_request(received)
    np.testing.assert_array_equal(decoded.inputs["x"], x)
    assert decoded.parameters["parameter-1033"] == 1033


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@pytest.mark.parametrize(
    "data",
    [
        b"\x3a\xff\xff\x01" + b"\0" * 20000,  # a raw entry longer than the message
        b"\x0a\x02m" + b"\x3a" + b"\xff" * 20000,  # a length varint that never ends
        b"\x0a\x03abc" * 6000 + b"\x0b",  # a group start: left to protobuf, which fails
        b"\x0a\x05ab",  # short and truncated
    ],
)
def test_malformed_request_bytes_are_invalid_input(data: bytes) -> None:
    received = codec.receive_infer(data)
    assert received.error and received.raw is None
    with pytest.raises(InvalidInput, match="not a valid ModelInferRequest"):
        codec.decode_request(received)

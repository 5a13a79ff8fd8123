"""Wire <-> numpy: raw, typed contents, BYTES, and every malformed form."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server import codec, replies
from warpserve.server.errors import InvalidInput, PermissionDenied
from warpserve.server.shm import SharedMemoryRegions


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


# --- shared memory ------------------------------------------------------------------------


@pytest.fixture
def shm_object(tmp_path: Path) -> tuple[SharedMemoryRegions, Path]:
    """A 4 KiB object (a plain file standing in for /dev/shm) registered as 'in' (its
    first 2 KiB) and 'out' (the rest)."""
    (tmp_path / "obj").write_bytes(bytes(4096))
    regions = SharedMemoryRegions(allowed=True, root=tmp_path)
    regions.register("in", "/obj", 0, 2048)
    regions.register("out", "/obj", 2048, 2048)
    return regions, tmp_path / "obj"


def place(params: Any, region: str, byte_size: int, offset: int | None = None) -> None:
    """What tritonclient's ``set_shared_memory`` writes."""
    params["shared_memory_region"].string_param = region
    params["shared_memory_byte_size"].int64_param = byte_size
    if offset is not None:
        params["shared_memory_offset"].int64_param = offset


def test_inputs_in_shared_memory_mix_with_raw_ones(
    shm_object: tuple[SharedMemoryRegions, Path],
) -> None:
    regions, path = shm_object
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([[7, 8]], dtype=np.int64)
    c = np.array([1.5], dtype=np.float32)
    data = bytearray(path.read_bytes())
    data[64:88] = a.tobytes()
    path.write_bytes(bytes(data))
    req = pb.ModelInferRequest(model_name="m")
    place(req.inputs.add(name="a", datatype="FP32", shape=[2, 3]).parameters, "in", 24, 64)
    req.inputs.add(name="b", datatype="INT64", shape=[1, 2])
    req.inputs.add(name="c", datatype="FP32", shape=[1])
    req.raw_input_contents.extend([b.tobytes(), c.tobytes()])  # for b and c, in order
    inputs = codec.decode_inputs(req, shm=regions)
    np.testing.assert_array_equal(inputs["a"], a)
    assert not inputs["a"].flags.writeable
    np.testing.assert_array_equal(inputs["b"], b)
    np.testing.assert_array_equal(inputs["c"], c)
    assert codec.decode_request(codec.ReceivedInfer(req), regions).shared_inputs
    req.raw_input_contents.append(c.tobytes())
    with pytest.raises(InvalidInput, match="2 inputs outside shared memory but 3 raw"):
        codec.decode_inputs(req, shm=regions)


def test_bytes_input_in_shared_memory(shm_object: tuple[SharedMemoryRegions, Path]) -> None:
    regions, path = shm_object
    text = codec.serialize_bytes(np.array([b"cat", b""], dtype=np.object_))
    path.write_bytes(text + path.read_bytes()[len(text) :])
    req = pb.ModelInferRequest()
    place(req.inputs.add(name="t", datatype="BYTES", shape=[2]).parameters, "in", len(text))
    assert codec.decode_inputs(req, shm=regions)["t"].tolist() == [b"cat", b""]


def _byte_size_as_text(params: Any) -> None:
    place(params, "in", 8)
    params["shared_memory_byte_size"].CopyFrom(pb.InferParameter(string_param="8"))


def _also_contents(tensor: Any) -> None:
    place(tensor.parameters, "in", 8)
    tensor.contents.fp32_contents.extend([1, 2])


def _shm_input(configure: Any) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest()
    tensor = req.inputs.add(name="x", datatype="FP32", shape=[2])
    configure(tensor)
    return req


@pytest.mark.parametrize(
    "configure, error, message",
    [
        (lambda t: place(t.parameters, "in", 4), InvalidInput, "has 4 bytes, but shape"),
        (lambda t: place(t.parameters, "in", 8, 2044), InvalidInput, "lie outside"),
        (lambda t: place(t.parameters, "gone", 8), InvalidInput, "'gone', which is not"),
        (
            lambda t: t.parameters["shared_memory_region"].CopyFrom(
                pb.InferParameter(string_param="in")
            ),
            InvalidInput,
            "no 'shared_memory_byte_size'",
        ),
        (
            lambda t: t.parameters["shared_memory_byte_size"].CopyFrom(
                pb.InferParameter(int64_param=8)
            ),
            InvalidInput,
            "but no 'shared_memory_region'",
        ),
        (lambda t: _byte_size_as_text(t.parameters), InvalidInput, "must be an integer"),
        (lambda t: place(t.parameters, "in", 8, 0), None, ""),  # an explicit zero offset
        (lambda t: _also_contents(t), InvalidInput, "also sets typed contents"),
    ],
)
def test_bad_shared_memory_inputs(
    shm_object: tuple[SharedMemoryRegions, Path],
    configure: Any,
    error: type[Exception] | None,
    message: str,
) -> None:
    regions, _ = shm_object
    req = _shm_input(configure)
    if error is None:
        assert codec.decode_inputs(req, shm=regions)["x"].tolist() == [0.0, 0.0]
        return
    with pytest.raises(error, match=message):
        codec.decode_inputs(req, shm=regions)


def test_shared_memory_needs_the_server_flag() -> None:
    req = _shm_input(lambda t: place(t.parameters, "in", 8))
    with pytest.raises(PermissionDenied, match="--allow-client-shm"):
        codec.decode_inputs(req)
    off = SharedMemoryRegions(allowed=False)
    with pytest.raises(PermissionDenied, match="--allow-client-shm"):
        codec.decode_inputs(req, shm=off)


def test_outputs_go_to_shared_memory_with_an_empty_raw_entry(
    shm_object: tuple[SharedMemoryRegions, Path],
) -> None:
    regions, path = shm_object
    req = pb.ModelInferRequest(model_name="m", id="7")
    req.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    place(req.outputs.add(name="big").parameters, "out", 1024, 16)
    req.outputs.add(name="small")
    decoded = codec.decode_request(codec.ReceivedInfer(req), regions)
    assert decoded.outputs == ["big", "small"] and list(decoded.output_targets) == ["big"]
    assert not decoded.shared_inputs
    big = np.arange(256, dtype=np.float32).reshape(16, 16)  # 1 KiB, sent from its memory
    small = np.array([3], dtype=np.int32)
    reply = pb.ModelInferResponse.FromString(
        replies.encode_response(
            "m", "1", "7", [("big", big), ("small", small)], decoded.output_targets
        )
    )
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [
        ("big", "FP32", [16, 16]),
        ("small", "INT32", [1]),
    ]
    assert reply.raw_output_contents == [b"", small.tobytes()]
    written = np.frombuffer(path.read_bytes()[2048 + 16 : 2048 + 16 + 1024], np.float32)
    np.testing.assert_array_equal(written, big.reshape(-1))
    # A range too small for the output fails the request, naming the size it needs.
    place(req.outputs[0].parameters, "out", 100, 16)
    decoded = codec.decode_request(codec.ReceivedInfer(req), regions)
    with pytest.raises(InvalidInput, match=r"'big' needs 1024 bytes .* holds 100"):
        replies.encode_stream_response("m", "1", "7", [("big", big)], decoded.output_targets)

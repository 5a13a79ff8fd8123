"""numpy outputs -> reply bytes: raw and BYTES outputs, protobuf's own serialization of
every kind of array, and the tables that serialize a reply's repeated fields once."""

from __future__ import annotations

import numpy as np
import pytest

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server import codec, dtypes, replies


def test_encode_response_raw_and_bytes() -> None:
    y = np.arange(4, dtype=np.int64).reshape(2, 2)
    s = np.array([[b"a"], [b"bc"]], dtype=np.object_)
    resp = pb.ModelInferResponse.FromString(
        replies.encode_response("m", "3", "id-1", [("y", y), ("s", s)])
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
    got = replies.encode_response("m", "1", "r", [("y", array)])
    assert got == want.SerializeToString()
    stream = pb.ModelStreamInferResponse.FromString(
        replies.encode_stream_response("m", "1", "r", [("y", array)])
    )
    assert stream.infer_response == want and not stream.error_message


@pytest.mark.parametrize("request_id", ["", "r-7"])
def test_answers_from_the_reply_tables_are_protobufs_own_bytes(request_id: str) -> None:
    outputs: list[tuple[str, np.ndarray]] = [
        ("y", np.arange(6, dtype=np.float32).reshape(2, 3)),
        ("ids", np.array([[1], [2]], dtype=np.int64)),
        ("big", np.zeros((64, 64), np.float32)),
    ]
    want = pb.ModelInferResponse(model_name="m", model_version="2", id=request_id)
    for name, array in outputs:
        want.outputs.add(name=name, datatype=dtypes.from_numpy(array.dtype).wire, shape=array.shape)
        want.raw_output_contents.append(array.tobytes())
    replies._heads.clear()
    replies._descriptions.clear()
    for _ in range(2):  # made, then from the tables
        assert replies.encode_response("m", "2", request_id, outputs) == want.SerializeToString()
        stream = pb.ModelStreamInferResponse.FromString(
            replies.encode_stream_response("m", "2", request_id, outputs)
        )
        assert stream.infer_response == want
    assert ("m", "2") in replies._heads and len(replies._descriptions) == 1
    strings: list[tuple[str, np.ndarray]] = [("s", np.array([b"a", b"bc"], dtype=np.object_))]
    resp = pb.ModelInferResponse.FromString(replies.encode_response("m", "2", "", strings))
    assert codec.deserialize_bytes("s", resp.raw_output_contents[0], 2).tolist() == [b"a", b"bc"]
    assert len(replies._descriptions) == 1  # BYTES outputs are not planned

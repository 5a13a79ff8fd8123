"""Plans for repeated wire heads: the same requests and answers as the codec's full path."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from google.protobuf import text_format

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import model_config_pb2 as mc
from warpserve.server import codec, wireplans
from warpserve.server.dataplane import _checked_rows
from warpserve.server.errors import InvalidInput
from warpserve.server.validation import InputValidator


@pytest.fixture(autouse=True)
def fresh_tables() -> Iterator[None]:
    wireplans._plans.clear()
    yield
    wireplans._plans.clear()


def request(x: np.ndarray, **fields: object) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m", **fields)  # type: ignore[arg-type]
    req.inputs.add(name="x", datatype="FP32", shape=x.shape)
    req.raw_input_contents.append(x.tobytes())
    return req


def twice(req: pb.ModelInferRequest) -> tuple[codec.ReceivedInfer, codec.ReceivedInfer]:
    """Receive and decode ``req`` once (which may make a plan), then receive it again."""
    data = req.SerializeToString()
    first = wireplans.receive(data)
    wireplans.decode_request(first)
    return first, wireplans.receive(data)


def test_a_repeated_head_decodes_through_its_plan_as_the_full_path_does() -> None:
    x = np.arange(60, dtype=np.float32).reshape(2, 30)
    req = request(x, model_version="3")
    req.outputs.add(name="y")
    req.parameters["priority"].int64_param = 2
    first, again = twice(req)
    assert first.plan is None and again.plan is not None
    planned = wireplans.decode_request(again)
    full = codec.decode_request(codec.receive_infer(req.SerializeToString()))
    assert planned.plan is again.plan and full.plan is None
    for name in ("model_name", "model_version", "id", "outputs", "parameters", "classes"):
        assert getattr(planned, name) == getattr(full, name), name
    np.testing.assert_array_equal(planned.inputs["x"], x)
    assert not planned.inputs["x"].flags.writeable, "a view of the request's bytes"
    other = np.ones((2, 30), np.float32)  # same head, other numbers
    decoded = wireplans.decode_request(
        wireplans.receive(request(other, model_version="3").SerializeToString())
    )
    np.testing.assert_array_equal(decoded.inputs["x"], other)


def test_bytes_inputs_are_parsed_per_request() -> None:
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="s", datatype="BYTES", shape=[2])
    req.raw_input_contents.append(b"\x01\x00\x00\x00a\x02\x00\x00\x00bc")
    _, again = twice(req)
    assert again.plan is not None
    assert wireplans.decode_request(again).inputs["s"].tolist() == [b"a", b"bc"]


def test_a_tensor_of_the_wrong_size_gets_the_codecs_error() -> None:
    x = np.zeros((1, 4), np.float32)
    twice(request(x))
    bad = request(x)
    bad.raw_input_contents[0] = b"\0" * 12
    received = wireplans.receive(bad.SerializeToString())
    assert received.plan is not None, "same head"
    with pytest.raises(InvalidInput, match="raw data has 12 bytes"):
        wireplans.decode_request(received)


def test_a_different_raw_count_gets_the_codecs_error() -> None:
    x = np.zeros((1, 4), np.float32)
    twice(request(x))
    extra = request(x)
    extra.raw_input_contents.append(b"\0" * 4)
    with pytest.raises(InvalidInput, match="raw_input_contents entries"):
        wireplans.decode_request(wireplans.receive(extra.SerializeToString()))


def test_requests_that_may_not_be_planned_never_are() -> None:
    x = np.zeros((1, 4), np.float32)
    with_id = request(x, id="r-1")
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    raw = pb.ModelInferRequest(raw_input_contents=[x.tobytes()]).SerializeToString()
    raw_first = raw + request(x).SerializeToString()  # fields in any order are valid
    for req in (with_id, typed):
        assert twice(req)[1].plan is None
    assert wireplans._raw_tail(raw_first) is None, "raw is not last"
    assert twice(request(x))[1].plan is not None, "positive control"


def test_the_plan_table_is_bounded() -> None:
    for width in range(wireplans.MAX_PLANS + 5):
        twice(request(np.zeros((1, width + 1), np.float32)))
    assert 0 < len(wireplans._plans) <= wireplans.MAX_PLANS


def validator(dims: int) -> InputValidator:
    config = (
        f'name: "m" max_batch_size: 4 input [{{ name: "x" data_type: TYPE_FP32 dims: [ {dims} ] }}]'
        ' output [{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }]'
    )
    return InputValidator(text_format.Parse(config, mc.ModelConfig()))


def test_a_plan_is_validated_once_per_validator() -> None:
    x = np.zeros((2, 4), np.float32)
    _, again = twice(request(x))
    decoded = wireplans.decode_request(again)
    accepts, rejects = validator(4), validator(5)
    assert _checked_rows(accepts, decoded) == 2
    assert decoded.plan.checked_by is accepts
    assert _checked_rows(accepts, decoded) == 2
    with pytest.raises(InvalidInput, match="does not match"):
        _checked_rows(rejects, decoded)  # a new version checks again
    assert decoded.plan.checked_by is accepts

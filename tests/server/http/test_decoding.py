"""REST requests decoded straight into InferRequest: the same request, or the same
refusal, as building the protobuf request and decoding it with the codec; and plans for
repeated JSON heads."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format

from warpserve.protos import model_config_pb2 as mc
from warpserve.server import codec
from warpserve.server.dataplane import _checked_rows
from warpserve.server.http import decoding
from warpserve.server.validation import InputValidator


@pytest.fixture(autouse=True)
def fresh_plans() -> Iterator[None]:
    decoding._plans.clear()
    yield
    decoding._plans.clear()


def body(document: Any, binary: bytes = b"") -> tuple[bytes, int | None]:
    head = json.dumps(document).encode()
    return head + binary, (len(head) if binary else None)


def x(name: str, datatype: str, shape: list[int], **extra: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, **extra}


def binary(name: str, datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return x(name, datatype, shape, parameters={"binary_data_size": size})


F = np.arange(6, dtype=np.float32)
BYTES_1 = struct.pack("<I", 2) + b"hi"
# (document, binary part); the direct path and the protobuf path must agree on each.
CORPUS: dict[str, tuple[Any, bytes]] = {
    "json fp32": ({"inputs": [x("X", "FP32", [2, 3], data=F.tolist())]}, b""),
    "json nested": ({"inputs": [x("X", "FP32", [2, 3], data=F.reshape(2, 3).tolist())]}, b""),
    "json int, bool, bytes": (
        {
            "inputs": [
                x("I", "INT64", [2], data=[1, -2]),
                x("B", "BOOL", [2], data=[True, False]),
                x("T", "BYTES", [2], data=["a", "\u00e9"]),
            ]
        },
        b"",
    ),
    "binary, several": (
        {
            "id": "r7",
            "inputs": [binary("A", "FP32", [2, 3], 24), binary("C", "UINT8", [3], 3)],
            "outputs": [{"name": "Y", "parameters": {"binary_data": True}}, {"name": "Z"}],
            "parameters": {
                "priority": 2,
                "f": 0.5,
                "s": "t",
                "b": True,
                "binary_data_output": True,
            },
        },
        F.tobytes() + b"\x01\x02\x03",
    ),
    "binary bytes": ({"inputs": [binary("T", "BYTES", [1], len(BYTES_1))]}, BYTES_1),
    "empty tensor": ({"inputs": [x("X", "FP32", [0, 3], data=[])]}, b""),
    "duplicate input": (
        {"inputs": [x("X", "FP32", [1], data=[1]), x("X", "FP32", [1], data=[2])]},
        b"",
    ),
    "unknown datatype": ({"inputs": [x("X", "FP99", [1], data=[1])]}, b""),
    "negative dimension": ({"inputs": [x("X", "FP32", [-1, 2], data=[1, 2])]}, b""),
    "binary size off": ({"inputs": [binary("X", "FP32", [2], 4)]}, b"abcd"),
    "bytes malformed": ({"inputs": [binary("T", "BYTES", [2], 6)]}, BYTES_1),
    "int64 out of range": (
        {"inputs": [x("X", "FP32", [1], data=[1])], "parameters": {"p": 1 << 63}},
        b"",
    ),
    "dimension out of range": ({"inputs": [x("X", "FP32", [1 << 64], data=[1])]}, b""),
    "lone surrogate": ({"inputs": [x("\ud800", "FP32", [1], data=[1])]}, b""),
    "surrogate in id": ({"id": "\udfff", "inputs": [x("X", "FP32", [1], data=[1])]}, b""),
}


def by_protobuf(data: bytes, size: int | None) -> codec.InferRequest:
    """The request as REST decoded it before: the protobuf message, then the codec."""
    end = len(data) if size is None else size
    view = memoryview(data)
    checked = decoding._check(json.loads(data[:end]), "m", "1", view[end:])
    raw = [t.data for t in checked.inputs if t.data is not None]
    return codec.decode_request(codec.ReceivedInfer(decoding._message(checked), raw), None)


def outcome(decode: Any) -> Any:
    try:
        request = decode()
    except (ValueError, KeyError, TypeError, codec.WarpserveError) as exc:
        return type(exc), str(exc)
    return (
        request.model_name,
        request.model_version,
        request.id,
        {name: (a.dtype, a.shape, a.tolist()) for name, a in request.inputs.items()},
        request.outputs,
        request.parameters,
        request.output_targets,
        request.classes,
        request.shared_inputs,
    )


@pytest.mark.parametrize("case", list(CORPUS))
def test_the_direct_path_decodes_as_the_protobuf_path(case: str) -> None:
    document, tail = CORPUS[case]
    data, size = body(document, tail)
    direct = outcome(lambda: decoding.decode_infer(data, size, "m", "1", None)[0])
    assert direct == outcome(lambda: by_protobuf(data, size))
    assert isinstance(direct, tuple) and len(direct) in (2, 9)


def test_the_corpus_holds_answers_and_refusals() -> None:
    """Positive control: the comparison above covers both kinds of outcome."""
    kinds = set()
    for document, tail in CORPUS.values():
        data, size = body(document, tail)
        kinds.add(
            len(outcome(lambda d=data, s=size: decoding.decode_infer(d, s, "m", "1", None)[0]))
        )
    assert kinds == {2, 9}


def fraud(rows: np.ndarray, **document: Any) -> tuple[bytes, int | None]:
    request = {
        "inputs": [binary("TRANSACTION", "FP32", list(rows.shape), rows.nbytes)],
        "outputs": [{"name": "P", "parameters": {"binary_data": True}}],
        **document,
    }
    return body(request, rows.tobytes())


def test_a_repeated_binary_head_decodes_through_its_plan() -> None:
    rng = np.random.default_rng(0)
    first, second = (rng.standard_normal((2, 16)).astype(np.float32) for _ in range(2))
    a, fmt_a = decoding.decode_infer(*fraud(first), "fraud", "", None)
    b, fmt_b = decoding.decode_infer(*fraud(second), "fraud", "", None)
    assert isinstance(b.plan, decoding.JsonPlan) and b.plan is a.plan
    np.testing.assert_array_equal(a.inputs["TRANSACTION"], first)
    np.testing.assert_array_equal(b.inputs["TRANSACTION"], second)  # its own data
    assert (b.model_name, b.model_version, b.id, b.outputs) == ("fraud", "", "", ["P"])
    assert fmt_b is fmt_a and fmt_b.is_binary("P")
    # Another model or version under the same JSON is another plan.
    c, _ = decoding.decode_infer(*fraud(second), "other", "3", None)
    assert (c.model_name, c.model_version) == ("other", "3") and c.plan is not a.plan


def test_a_planned_head_with_a_binary_part_of_another_size_is_refused_as_before() -> None:
    rows = np.ones((1, 16), np.float32)
    data, size = fraud(rows)
    decoding.decode_infer(data, size, "fraud", "", None)
    assert size is not None
    for short in (data[:-4], data + b"\0\0\0\0"):
        with pytest.raises(codec.InvalidInput) as planned:
            decoding.decode_infer(short, size, "fraud", "", None)
        decoding._plans.clear()
        with pytest.raises(codec.InvalidInput) as unplanned:
            decoding.decode_infer(short, size, "fraud", "", None)
        assert str(planned.value) == str(unplanned.value)
        decoding.decode_infer(data, size, "fraud", "", None)


@pytest.mark.parametrize(
    "document",
    [
        {"id": "every-request-its-own"},
        {"inputs": [x("X", "FP32", [1], data=[1.0]), binary("B", "FP32", [1], 4)]},
        {"inputs": [binary("T", "BYTES", [1], len(BYTES_1))]},
    ],
    ids=["id", "json-data-beside-binary", "bytes"],
)
def test_requests_that_change_from_call_to_call_get_no_plan(document: dict[str, Any]) -> None:
    if "inputs" in document:
        tail = BYTES_1 if document["inputs"][0]["datatype"] == "BYTES" else b"\0\0\0\0"
        data, size = body(document, tail)
    else:
        data, size = fraud(np.ones((1, 16), np.float32), **document)
    for _ in range(2):
        request, _ = decoding.decode_infer(data, size, "m", "", None)
        assert request.plan is None
    assert not decoding._plans
    decoding.decode_infer(*fraud(np.ones((1, 16), np.float32)), "m", "", None)
    assert len(decoding._plans) == 1  # control: a plain binary request does get one


def test_a_plan_remembers_the_validator_that_accepted_it() -> None:
    config = text_format.Parse(
        'name: "fraud" max_batch_size: 8 '
        'input [{ name: "TRANSACTION" data_type: TYPE_FP32 dims: [16] }] '
        'output [{ name: "P" data_type: TYPE_FP32 dims: [1] }]',
        mc.ModelConfig(),
    )
    validator = InputValidator(config)
    rows = np.ones((3, 16), np.float32)
    first, _ = decoding.decode_infer(*fraud(rows), "fraud", "", None)
    assert _checked_rows(validator, first) == 3
    second, _ = decoding.decode_infer(*fraud(rows), "fraud", "", None)
    assert second.plan.checked_by is validator and _checked_rows(validator, second) == 3

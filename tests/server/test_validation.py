"""Requests checked against the model config: names, dtypes, shapes, batch limits."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.errors import InvalidInput
from warpserve.server.validation import InputValidator

CONFIG = """
name: "m" max_batch_size: 4
input [{ name: "a" data_type: TYPE_FP32 dims: [ 3 ] },
       { name: "b" data_type: TYPE_INT64 dims: [ -1 ] },
       { name: "c" data_type: TYPE_FP32 dims: [ 1 ] optional: true }]
output [{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }]
"""


def validator(text: str = CONFIG) -> InputValidator:
    return InputValidator(text_format.Parse(text, mc.ModelConfig()))


def ok(rows: int = 2, width: int = 5) -> dict[str, np.ndarray]:
    return {"a": np.zeros((rows, 3), np.float32), "b": np.zeros((rows, width), np.int64)}


def test_valid_request_counts_rows_and_optional_input_may_be_absent() -> None:
    assert validator().check(ok(rows=3)) == 3


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ({"a": np.zeros((1, 3), np.float32)}, r"expects input\(s\) \['b'\]"),
        ({**ok(), "z": np.zeros((2, 1), np.float32)}, r"has no input\(s\) \['z'\]"),
        ({**ok(), "a": np.zeros((2, 3), np.float64)}, "datatype FP64 does not match.*FP32"),
        ({**ok(), "a": np.zeros((2, 4), np.float32)}, r"shape \[2, 4\] does not match.*\[-1, 3\]"),
        ({**ok(), "a": np.zeros((2, 3, 1), np.float32)}, "does not match"),
        ({**ok(), "a": np.zeros((3,), np.float32)}, r"shape \[3\] does not match"),
        ({**ok(), "b": np.zeros((2,), np.int64)}, r"shape \[2\] does not match.*\[-1, -1\]"),
        (ok(rows=5), "exceeds max_batch_size 4"),
        (ok(rows=0), "empty"),
        ({**ok(), "b": np.zeros((3, 5), np.int64)}, "disagree on the batch size"),
    ],
)
def test_bad_inputs_are_named_with_a_fix(inputs: dict[str, np.ndarray], match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        validator().check(inputs)


def test_unknown_requested_output() -> None:
    with pytest.raises(InvalidInput, match=r"^unexpected inference output 'z' for model 'm'"):
        validator().check_outputs(["z"])


def test_non_batching_model_takes_exact_dims() -> None:
    v = validator("""name: "m" input [{ name: "a" data_type: TYPE_FP32 dims: [ 2, 2 ] }]
                     output [{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }]""")
    assert v.check({"a": np.zeros((2, 2), np.float32)}) == 1
    with pytest.raises(InvalidInput, match="does not match"):
        v.check({"a": np.zeros((1, 2, 2), np.float32)})


def test_a_misnamed_input_names_what_was_sent_and_what_the_model_takes() -> None:
    inputs: dict[str, np.ndarray] = {
        "A": np.zeros((2, 3), np.float32),
        "b": np.zeros((2, 5), np.int64),
    }
    with pytest.raises(InvalidInput) as info:
        validator().check(inputs)
    message = str(info.value)
    assert "'A'" in message  # what the request sent
    assert "lacks ['a']" in message  # what the model expected in its place
    assert "did you mean 'a'" in message


def test_a_request_without_inputs_says_so() -> None:
    with pytest.raises(
        InvalidInput, match=r"\['a', 'b'\] which the request lacks; the request sent none"
    ):
        validator().check({})

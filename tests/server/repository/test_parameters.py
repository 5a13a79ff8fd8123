"""Typed config parameters: defaults, parsing, and errors that name key and value."""

from __future__ import annotations

import pytest

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.errors import ModelLoadError
from warpserve.server.repository import parameters as params


def _config(**values: str) -> mc.ModelConfig:
    config = mc.ModelConfig(name="m")
    for key, value in values.items():
        config.parameters[key].string_value = value
    return config


def test_defaults_apply_when_unset() -> None:
    config = _config()
    assert params.EXECUTION.read(config) == "auto"
    assert params.GOLDEN_ATOL.read(config) == 1e-4
    assert not params.GOLDEN_ATOL.is_set(config)
    assert params.optional_integer("threads").read(config) is None


def test_values_parse_to_their_types() -> None:
    config = _config(
        execution="inline", golden_rtol=" 0.5 ", graphs="true", n="3", sizes="1,8,32", off="No"
    )
    assert params.EXECUTION.read(config) == "inline"
    assert params.GOLDEN_RTOL.read(config) == 0.5
    assert params.flag("graphs", False).read(config) is True
    assert params.flag("off", True).read(config) is False
    assert params.integer("n", 1).read(config) == 3
    assert params.integer_list("sizes").read(config) == (1, 8, 32)


@pytest.mark.parametrize(
    ("parameter", "value", "expected"),
    [
        (params.EXECUTION, "fast", "one of auto, inline, thread"),
        (params.GOLDEN_ATOL, "tight", "a non-negative number"),
        (params.GOLDEN_ATOL, "-1", "a non-negative number"),
        (params.integer("n", 1, minimum=1), "0", "an integer >= 1"),
        (params.flag("graphs", False), "maybe", "true or false"),
        (params.integer_list("sizes"), "1,x", "comma-separated positive integers"),
    ],
)
def test_bad_values_fail_with_key_value_and_expectation(
    parameter: params.Parameter[object], value: str, expected: str
) -> None:
    with pytest.raises(ModelLoadError) as caught:
        parameter.read(_config(**{parameter.key: value}))
    message = str(caught.value)
    assert f"{parameter.key}={value!r}" in message and expected in message and "'m'" in message

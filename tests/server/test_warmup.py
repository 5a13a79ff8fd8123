"""Warm-up: the config's model_warmup samples with Triton's semantics, golden data, and
otherwise a run on valid zeros that never fails a load nobody asked to warm up."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.backends import spec as formats
from warpserve.server.backends.spec import BackendSpec
from warpserve.server.codec import InferRequest
from warpserve.server.dataplane import DataPlane
from warpserve.server.errors import ModelLoadError
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.lifecycle.version import VersionState
from warpserve.server.lifecycle.warmup import configured_samples
from warpserve.server.repository.repository import ModelRepository
from warpserve.server.validation import InputValidator


def _wire_strings(*values: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


# --- a string input cast to an integer (ONNX Runtime) ---------------------------------------


def parse_int_model() -> bytes:
    """TEXT (decimal strings) -> NUMBER = Cast(TEXT, int64) + 1: any other string fails."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["TEXT"], ["N"], to=TensorProto.INT64),
            helper.make_node("Add", ["N", "ONE"], ["NUMBER"]),
        ],
        "parse_int",
        [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["b", 1])],
        [helper.make_tensor_value_info("NUMBER", TensorProto.INT64, ["b", 1])],
        [helper.make_tensor("ONE", TensorProto.INT64, [], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


PARSE_CONFIG = """
name: "parse" platform: "onnxruntime_onnx" max_batch_size: 4
input [{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }]
output [{ name: "NUMBER" data_type: TYPE_INT64 dims: [ 1 ] }]
instance_group [{ count: 1 kind: KIND_CPU }]
"""


def _parse_repo(root: Path, warmup: str = "") -> Path:
    (root / "parse" / "1").mkdir(parents=True)
    (root / "parse" / "1" / "model.onnx").write_bytes(parse_int_model())
    (root / "parse" / "config.pbtxt").write_text(PARSE_CONFIG + warmup)
    return root


def _load_and_ask(repo: Path, *texts: bytes) -> tuple[VersionState, str, np.ndarray | None]:
    async def main() -> tuple[VersionState, str, np.ndarray | None]:
        registry = ModelRegistry(ModelRepository(repo))
        with contextlib.suppress(ModelLoadError):  # a FAILED version is reported below
            await registry.load("parse")
        try:
            mv = registry.describe("parse", "1")
            if not mv.ready:
                return mv.state, mv.reason, None
            x = np.array([[t] for t in texts], dtype=np.object_)
            _, outputs = await DataPlane(registry).infer(InferRequest("parse", "", "", {"TEXT": x}))
            return mv.state, mv.reason, outputs["NUMBER"]
        finally:
            await registry.close()

    return asyncio.run(main())


def test_a_string_parsed_as_a_number_loads_without_warm_up_data_and_answers(
    tmp_path: Path,
) -> None:
    state, reason, number = _load_and_ask(_parse_repo(tmp_path), b"41", b"-8")
    assert state is VersionState.READY, reason
    assert number is not None and number.tolist() == [[42], [-7]]


def test_a_warm_up_the_config_asks_for_must_run_and_may_fail_the_load(tmp_path: Path) -> None:
    # Triton's model_warmup with zero_data: empty strings, which Cast cannot parse.
    warmup = """model_warmup [{ name: "empty" batch_size: 2
        inputs { key: "TEXT" value: { data_type: TYPE_STRING dims: [ 1 ] zero_data: true } } }]"""
    state, reason, _ = _load_and_ask(_parse_repo(tmp_path, warmup))
    assert state is VersionState.FAILED
    assert "model_warmup sample 'empty'" in reason and "warm-up run failed" in reason


def test_a_warm_up_from_a_data_file_loads(tmp_path: Path) -> None:
    warmup = """model_warmup [{ name: "digits" batch_size: 3 count: 2
        inputs { key: "TEXT" value: { data_type: TYPE_STRING dims: [ 1 ]
                 input_data_file: "seven" } } }]"""
    repo = _parse_repo(tmp_path, warmup)
    (repo / "parse" / "warmup").mkdir()
    (repo / "parse" / "warmup" / "seven").write_bytes(_wire_strings(b"7"))
    state, reason, number = _load_and_ask(repo, b"1")
    assert state is VersionState.READY, reason
    assert number is not None and number.tolist() == [[2]]


# --- what a configured warm-up runs (a recording backend) ---------------------------------

RUNS: list[dict[str, np.ndarray]] = []


class _Recording:
    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        RUNS.append({name: np.array(array) for name, array in inputs.items()})
        rows = len(next(iter(inputs.values())))
        return {"Y": np.zeros((rows, 1), np.float32)}

    def close(self) -> None:
        pass


RECORDING = BackendSpec(
    platform="recording_test",
    backend="recording_test",
    default_filename="model.rec",
    loader=lambda config, path, index, count: _Recording(),
)


@pytest.fixture
def recording() -> Iterator[list[dict[str, np.ndarray]]]:
    formats.register(RECORDING)
    RUNS.clear()
    yield RUNS
    formats._SPECS.pop(RECORDING.platform)


RECORDED_CONFIG = """
name: "rec" platform: "recording_test" max_batch_size: 4
input [{ name: "X" data_type: TYPE_FP32 dims: [ 3 ] },
       { name: "T" data_type: TYPE_STRING dims: [ 1 ] }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }]
instance_group [{ count: 1 kind: KIND_CPU }]
parameters { key: "execution" value: { string_value: "thread" } }
model_warmup [
  { name: "zeros" batch_size: 2 count: 3
    inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } }
    inputs { key: "T" value: { data_type: TYPE_STRING dims: [ 1 ] input_data_file: "t" } } },
  { name: "skipped" batch_size: 0
    inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } }
    inputs { key: "T" value: { data_type: TYPE_STRING dims: [ 1 ] zero_data: true } } },
  { name: "random" batch_size: 1
    inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3 ] random_data: true } }
    inputs { key: "T" value: { data_type: TYPE_STRING dims: [ 1 ] random_data: true } } }
]
"""


def test_configured_samples_run_as_triton_runs_them(
    tmp_path: Path, recording: list[dict[str, np.ndarray]]
) -> None:
    folder = tmp_path / "rec"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.rec").write_bytes(b"")
    (folder / "warmup").mkdir()
    (folder / "warmup" / "t").write_bytes(_wire_strings(b"hello"))
    (folder / "config.pbtxt").write_text(RECORDED_CONFIG)

    async def main() -> VersionState:
        registry = ModelRegistry(ModelRepository(tmp_path))
        await registry.load("rec")
        state = registry.describe("rec", "1").state
        await registry.close()
        return state

    assert asyncio.run(main()) is VersionState.READY
    # "zeros" three times with 2 rows, "skipped" never (batch_size 0), "random" once
    # (count 0 means once); nothing else, as the config named its warm-up.
    assert [len(run["X"]) for run in recording] == [2, 2, 2, 1]
    for run in recording[:3]:
        assert not run["X"].any() and run["T"].tolist() == [[b"hello"], [b"hello"]]
    assert run_is_random(recording[3]["X"]) and recording[3]["T"].tolist() == [[b""]]


def run_is_random(x: np.ndarray) -> bool:
    return bool(x.dtype == np.float32 and x.any() and ((x >= 0) & (x < 1)).all())


# --- configs Triton refuses -------------------------------------------------------------

BASE = """name: "m" max_batch_size: {batch}
input [{{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }}]
output [{{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }}]
model_warmup [{{ name: "s" batch_size: {size} inputs {{ key: "{name}" value: {{ {value} }} }} }}]
"""


@pytest.mark.parametrize(
    ("name", "value", "batch", "size", "match"),
    [
        ("Z", "data_type: TYPE_FP32 dims: [ 2 ] zero_data: true", 4, 1, "names input 'Z'"),
        ("X", "data_type: TYPE_FP32 dims: [ -1 ] zero_data: true", 4, 1, "variable-size"),
        ("X", "data_type: TYPE_FP32 dims: [ 2 ]", 4, 1, "input_data_type set"),
        ("X", "data_type: TYPE_FP32 dims: [ 2 ] zero_data: true", 0, 2, "batch_size must be 1"),
        ("X", 'data_type: TYPE_FP32 dims: [ 2 ] input_data_file: "../x"', 4, 1, "outside"),
        ("X", 'data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "short"', 4, 1, "16 bytes"),
        ("X", "data_type: TYPE_INT32 dims: [ 2 ] zero_data: true", 4, 1, "INT32"),
    ],
)
def test_bad_warm_up_settings_fail_the_load_naming_the_sample(
    tmp_path: Path, name: str, value: str, batch: int, size: int, match: str
) -> None:
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "short").write_bytes(bytes(8))
    (tmp_path / "x").write_bytes(bytes(8))
    text = BASE.format(batch=batch, size=size, name=name, value=value)
    config = text_format.Parse(text, mc.ModelConfig())
    with pytest.raises(ModelLoadError, match=match) as raised:
        configured_samples(config, tmp_path, InputValidator(config))
    assert "sample 's'" in str(raised.value)

"""The committed stubs match the .proto sources, and coexist with tritonclient's."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location(
        "protos_generate", ROOT / "protos" / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_are_current() -> None:
    pytest.importorskip("grpc_tools")
    stale = _generator().stale_files()
    assert stale == [], f"stale stubs {stale}: run python protos/generate.py"


def test_stubs_import_beside_tritonclient() -> None:
    pytest.importorskip("tritonclient.grpc")
    import tritonclient.grpc.service_pb2 as triton_pb

    from warpserve.protos import grpc_service_pb2 as pb

    ours = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"\x00" * 4])
    theirs = triton_pb.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.model_name == "m" and theirs.raw_input_contents == [b"\x00" * 4]
    assert "warpserve.protos.grpc_service_pb2" in sys.modules


@pytest.mark.parametrize(
    ("message", "field", "number"),
    [
        ("ModelInferRequest", "raw_input_contents", 7),
        ("ModelInferResponse", "raw_output_contents", 6),
        ("ModelStatistics", "batch_stats", 7),
        ("InferStatistics", "compute_output", 6),
        ("RepositoryIndexResponse.ModelIndex", "reason", 4),
        ("ModelStreamInferResponse", "infer_response", 2),
    ],
)
def test_field_numbers_match_the_published_protocol(message: str, field: str, number: int) -> None:
    tc = pytest.importorskip("tritonclient.grpc.service_pb2")
    from warpserve.protos import grpc_service_pb2 as pb

    ours, theirs = pb, tc
    for part in message.split("."):
        ours, theirs = getattr(ours, part), getattr(theirs, part)
    assert ours.DESCRIPTOR.fields_by_name[field].number == number
    assert theirs.DESCRIPTOR.fields_by_name[field].number == number

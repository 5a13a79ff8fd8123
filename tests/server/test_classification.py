"""The classification extension's pieces: the class count parameter, the top-k strings,
labels files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from tests.models import affine_reference, write_affine
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import model_config_pb2 as mc
from warpserve.server.classification import (
    check_classifiable,
    classify,
    read_labels,
    requested_count,
)
from warpserve.server.codec import InferRequest
from warpserve.server.dataplane import DataPlane
from warpserve.server.errors import InvalidInput, ModelLoadError
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.repository.repository import ModelRepository
from warpserve.server.validation import InputValidator


def _params(**values: int | str) -> dict[str, pb.InferParameter]:
    params = {}
    for key, value in values.items():
        param = pb.InferParameter()
        if isinstance(value, str):
            param.string_param = value
        else:
            param.int64_param = value
        params[key] = param
    return params


def test_class_count_parameter() -> None:
    assert requested_count("y", {}) == 0
    assert requested_count("y", _params(classification=3)) == 3
    cases: list[tuple[int | str, str]] = [(0, "got 0"), (-2, "got -2"), ("3", "int64_param")]
    for bad, match in cases:
        with pytest.raises(InvalidInput, match=match):
            requested_count("y", _params(classification=bad))


def test_top_classes_per_row_best_first_with_labels() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32)
    got = classify(scores, 2, batched=True, labels=["a", "b", "c"])
    assert got.shape == (2, 2) and got.dtype == np.object_
    # Ties keep the lower index first; values as std::to_string writes them ("%f").
    assert got.tolist() == [
        [b"0.700000:1:b", b"0.200000:2:c"],
        [b"0.500000:0:a", b"0.250000:1:b"],
    ]


def test_without_labels_or_past_the_labels_only_value_and_index() -> None:
    scores = np.array([[1, 9, 4]], np.int32)
    assert classify(scores, 3, batched=True).tolist() == [[b"9:1", b"4:2", b"1:0"]]
    assert classify(scores, 3, batched=True, labels=["x"]).tolist() == [[b"9:1", b"4:2", b"1:0:x"]]


def test_count_past_the_classes_and_tensors_of_several_dimensions() -> None:
    scores = np.arange(12, dtype=np.float64).reshape(2, 2, 3)
    got = classify(scores, 100, batched=True)  # each row's 6 scores, clamped to 6
    assert got.shape == (2, 6)
    assert got[1, 0] == b"11.000000:5"
    unbatched = classify(scores, 2, batched=False)  # the whole tensor's 12 scores
    assert unbatched.tolist() == [b"11.000000:11", b"10.000000:10"]


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float16, np.float64])
def test_every_score_type_orders(dtype: type) -> None:
    got = classify(np.array([[3, 7, 5]], dtype), 1, batched=True)
    assert got[0, 0].split(b":")[1] == b"1"


def test_outputs_without_scores_are_refused_before_running() -> None:
    config = text_format.Parse(
        """name: "m" max_batch_size: 2
        input [{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }]
        output [{ name: "s" data_type: TYPE_FP32 dims: [ 3 ] },
                { name: "t" data_type: TYPE_STRING dims: [ 1 ] },
                { name: "b" data_type: TYPE_BOOL dims: [ 3 ] }]""",
        mc.ModelConfig(),
    )
    outputs = InputValidator(config).outputs
    check_classifiable({"s": 1}, outputs)
    for name, wire in [("t", "BYTES"), ("b", "BOOL")]:
        with pytest.raises(InvalidInput, match=f"unsupported type '{wire}'"):
            check_classifiable({name: 1}, outputs)
    with pytest.raises(InvalidInput, match="unsupported type"):
        classify(np.array([[True, False]]), 1, batched=True)


def _config(label_filename: str) -> mc.ModelConfig:
    config = mc.ModelConfig(name="m")
    config.output.add(name="y", label_filename=label_filename)
    config.output.add(name="z")
    return config


def test_labels_are_read_per_output_one_per_line(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "names.txt").write_text("cat\r\ndog\n\nbird\n")
    assert read_labels(tmp_path, _config("sub/names.txt")) == {"y": ["cat", "dog", "", "bird"]}


@pytest.mark.parametrize("name", ["../outside.txt", "/etc/hostname", "link.txt"])
def test_a_labels_file_outside_the_model_folder_fails_the_load(tmp_path: Path, name: str) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "outside.txt").write_text("secret\n")
    (model / "link.txt").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(ModelLoadError, match="outside the model folder"):
        read_labels(model, _config(name))


def test_a_missing_labels_file_fails_the_load(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot be read"):
        read_labels(tmp_path, _config("labels.txt"))


def test_classes_through_the_queue_and_shadow_compares_the_raw_scores(tmp_path: Path) -> None:
    """Worker-thread execution (the queued path) answers classes too; a shadow version
    still compares the model's own values, not the class strings."""
    on_threads = 'parameters { key: "execution" value: { string_value: "thread" } }'
    write_affine(tmp_path, "affine", (1,), extra=on_threads)
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 8

    async def main() -> tuple[np.ndarray, float]:
        registry = ModelRegistry(ModelRepository(tmp_path))
        try:
            await registry.load("affine")
            write_affine(tmp_path, "affine", (2,), config=False)
            await registry.load("affine", [2], activate=False)
            registry.set_shadow("affine", 2, 100)
            served = registry.models["affine"]
            plane = DataPlane(registry)
            request = InferRequest("affine", "", "r", {"INPUT0": x}, ["OUTPUT0"])
            request.classes = {"OUTPUT0": 1}
            mv, outputs = await plane.infer(request)
            assert mv.version == 1
            await asyncio.gather(*plane._shadow_tasks)
            return outputs["OUTPUT0"], served.versions[2].stats.shadow_max_abs_diff
        finally:
            await registry.close()

    top, diff = asyncio.run(main())
    scores = affine_reference(x, scale=1.0)
    assert top.shape == (2, 1)
    assert [int(e.split(b":")[1]) for e in top[:, 0]] == np.argmax(scores, axis=1).tolist()
    assert diff > 0.1  # version 2 doubles the weights: the raw outputs were compared

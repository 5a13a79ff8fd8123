"""The classification extension through tritonclient: ``InferRequestedOutput(name,
class_count=k)`` answers the top k classes as Triton's ``"value:index[:label]"`` strings."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.e2e.conftest import (
    channel_options,
    echo_model,
    failure,
    fp32_input,
    raw_request,
    rows,
)
from tests.e2e.harness import ServerProcess, start_server
from tests.models import affine_model, affine_reference
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

CLASSES = 5
# Fewer labels than classes: a class without a label answers "value:index", as in Triton.
LABELS = ["ant", "bee", "cat", "dog"]
FORMAT = re.compile(r"^-?\d+\.\d{6}:\d+(:\w+)?$")  # std::to_string's "%f", then the index

CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
input [{{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {in_dims} ] }}]
output [{{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {out_dims} ] {labels} }}]
instance_group [{{ count: 1 kind: KIND_CPU }}]
"""


def _model(repo: Path, name: str, *, batched: bool, labels: str = "") -> None:
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(affine_model(outputs=CLASSES, scale=1.0))
    (folder / "config.pbtxt").write_text(
        CONFIG.format(
            name=name,
            max_batch=8 if batched else 0,
            in_dims="4" if batched else "-1, 4",
            out_dims=str(CLASSES) if batched else f"-1, {CLASSES}",
            labels=f'label_filename: "{labels}"' if labels else "",
        )
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("classes")
    _model(repo, "labelled", batched=True, labels="labels.txt")
    (repo / "labelled" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    _model(repo, "plain", batched=True)
    _model(repo, "unbatched", batched=False, labels="meta/names.txt")
    (repo / "unbatched" / "meta").mkdir()
    (repo / "unbatched" / "meta" / "names.txt").write_text("\n".join(LABELS))
    text = repo / "text" / "1"
    text.mkdir(parents=True)
    (text / "model.onnx").write_bytes(echo_model())
    process = start_server(repo, log_dir=tmp_path_factory.mktemp("logs"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(server.url)
    yield triton
    triton.close()


def _expected(scores: np.ndarray, k: int, labels: list[str]) -> list[tuple[int, str]]:
    """(index, label) of the k best classes of one row of scores, best first."""
    best = np.argsort(-scores, kind="stable")[:k]
    return [(int(i), labels[i] if i < len(labels) else "") for i in best]


def _parse(element: bytes) -> tuple[float, int, str]:
    text = element.decode()
    assert FORMAT.match(text), text
    value, index, *label = text.split(":")
    return float(value), int(index), label[0] if label else ""


def _classes(
    client: grpcclient.InferenceServerClient, model: str, x: np.ndarray, k: int
) -> np.ndarray:
    out = grpcclient.InferRequestedOutput("OUTPUT0", class_count=k)
    result = client.infer(model, [fp32_input(x)], outputs=[out])
    tensor = result.get_output("OUTPUT0")
    assert tensor.datatype == "BYTES"
    got = result.as_numpy("OUTPUT0")
    assert got is not None and list(got.shape) == list(tensor.shape)
    return got


@pytest.mark.parametrize(("model", "labels"), [("labelled", LABELS), ("plain", [])])
def test_top_classes_of_each_row_with_and_without_labels(
    client: grpcclient.InferenceServerClient, model: str, labels: list[str]
) -> None:
    x = rows(3, seed=11)
    scores = affine_reference(x, outputs=CLASSES, scale=1.0)
    got = _classes(client, model, x, 3)
    assert got.shape == (3, 3)
    for row in range(3):
        parsed = [_parse(element) for element in got[row]]
        assert [(index, label) for _, index, label in parsed] == _expected(scores[row], 3, labels)
        values = [value for value, _, _ in parsed]
        np.testing.assert_allclose(values, np.sort(scores[row])[::-1][:3], atol=2e-6)
    # Positive control: the same request without a class count gets the raw scores.
    raw = client.infer(model, [fp32_input(x)]).as_numpy("OUTPUT0")
    assert raw is not None and raw.dtype == np.float32 and raw.shape == (3, CLASSES)


def test_a_count_beyond_the_classes_returns_every_class(
    client: grpcclient.InferenceServerClient,
) -> None:
    x = rows(2, seed=12)
    got = _classes(client, "labelled", x, 50)  # Triton clamps: min(count, classes)
    assert got.shape == (2, CLASSES)
    scores = affine_reference(x, outputs=CLASSES, scale=1.0)
    assert [_parse(e)[1] for e in got[1]] == list(np.argsort(-scores[1], kind="stable"))


def test_a_model_without_batching_ranks_its_whole_output(
    client: grpcclient.InferenceServerClient,
) -> None:
    x = rows(2, seed=13)
    flat = affine_reference(x, outputs=CLASSES, scale=1.0).reshape(-1)  # 10 scores
    got = _classes(client, "unbatched", x, 4)
    assert got.shape == (4,)
    assert [(i, label) for _, i, label in map(_parse, got)] == _expected(flat, 4, LABELS)


def test_bad_class_counts_are_invalid_arguments(
    server: ServerProcess, client: grpcclient.InferenceServerClient
) -> None:
    x = rows(1, seed=14)
    negative = grpcclient.InferRequestedOutput("OUTPUT0", class_count=-1)
    code, message = failure(lambda: client.infer("labelled", [fp32_input(x)], outputs=[negative]))
    assert code == "INVALID_ARGUMENT" and "'classification'" in message and "-1" in message

    text_in = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    text_in.set_data_from_numpy(np.array([[b"hi"]], dtype=np.object_))
    top = grpcclient.InferRequestedOutput("TEXT_OUT", class_count=1)
    code, message = failure(lambda: client.infer("text", [text_in], outputs=[top]))
    assert code == "INVALID_ARGUMENT" and "unsupported type 'BYTES'" in message, message

    # tritonclient leaves class_count=0 out of the request; sent by hand, 0 is refused,
    # and so is a count that is not an int64 or an output also placed in shared memory.
    with grpc.insecure_channel(server.url, options=channel_options()) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        shm: dict[str, int | str] = {"shared_memory_region": "r", "shared_memory_byte_size": 64}
        settings: list[tuple[str, dict[str, int | str]]] = [
            ("zero", {"classification": 0}),
            ("text", {"classification": "2"}),
            ("both", {"classification": 1, **shm}),
        ]
        for what, setting in settings:
            request = raw_request("labelled", x)
            output = request.outputs.add(name="OUTPUT0")
            for key, value in setting.items():
                if isinstance(value, str):
                    output.parameters[key].string_param = value
                else:
                    output.parameters[key].int64_param = value
            code, message = failure(partial(stub.ModelInfer, request, timeout=10))
            assert code == "INVALID_ARGUMENT" and "classification" in message, (what, message)
    assert client.is_server_ready()


def test_demo_image_classifier_names_its_class(demo_server: ServerProcess) -> None:
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with grpcclient.InferenceServerClient(demo_server.url) as triton:
        probs = triton.infer("image_classifier", [fp32_input(x, "IMAGE")]).as_numpy("PROBS")
        top = grpcclient.InferRequestedOutput("PROBS", class_count=1)
        result = triton.infer("image_classifier", [fp32_input(x, "IMAGE")], outputs=[top])
    got = result.as_numpy("PROBS")
    assert probs is not None and got is not None and got.shape == (4, 1)
    names = [_parse(element)[2] for element in got[:, 0]]
    assert names == [("cat", "dog")[int(i)] for i in np.argmax(probs, axis=1)]

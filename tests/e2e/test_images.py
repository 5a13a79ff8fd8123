"""Raw images through tritonclient: a model declaring an image stage in its config takes
encoded JPEG/PNG as BYTES and uint8 pixels of any size, and answers its class as
Triton's "score:index:label"; bad images are INVALID_ARGUMENT and the server keeps serving."""

from __future__ import annotations

import io
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper
from PIL import Image

from tests.e2e.conftest import failure
from tests.e2e.harness import ServerProcess, start_server
from warpserve.server.repository import versionfolder

pytestmark = pytest.mark.e2e

LABELS = ["red", "green", "blue"]
SIZE = 8

CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [{{ name: "IMAGE" data_type: {data_type} dims: [ {dims} ] }}]
output [{{ name: "SCORES" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" }}]
dynamic_batching {{ }}
instance_group [{{ count: 1 kind: KIND_CPU }}]
parameters {{ key: "image_input" value {{ string_value: "IMAGE" }} }}
parameters {{ key: "image_size" value {{ string_value: "{size},{size}" }} }}
parameters {{ key: "image_mean" value {{ string_value: "0.5,0.5,0.5" }} }}
parameters {{ key: "image_std" value {{ string_value: "0.5,0.5,0.5" }} }}
"""


def _channel_means() -> bytes:
    """SCORES = each channel's mean over the image: the dominant colour wins."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["IMAGE"], ["SCORES"], axes=[2, 3], keepdims=0)],
        "colours",
        [helper.make_tensor_value_info("IMAGE", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("SCORES", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def _model(repo: Path, name: str, data_type: str, dims: str, golden: bool) -> None:
    folder = repo / name
    model = _channel_means()
    gold = None
    if golden:  # golden data in the model's tensor: the stage passes it through
        x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
        gold = versionfolder.Golden({"IMAGE": x}, {"SCORES": x.mean(axis=(2, 3))})
    versionfolder.write_version(folder, 1, model, "model.onnx", golden=gold)
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (folder / "config.pbtxt").write_text(
        CONFIG.format(name=name, data_type=data_type, dims=dims, size=SIZE)
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("images")
    # Without golden data the encoded model warms up on empty strings (a black image).
    _model(repo, "encoded", "TYPE_STRING", "1", golden=False)
    _model(repo, "pixels", "TYPE_UINT8", "-1, -1, 3", golden=True)
    process = start_server(repo, log_dir=tmp_path_factory.mktemp("logs"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.url) as triton:
        yield triton


def _photo(colour: int, height: int, width: int, fmt: str = "JPEG") -> bytes:
    pixels = np.full((height, width, 3), 40, dtype=np.uint8)
    pixels[..., colour] = 220
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _bytes_input(items: list[bytes]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("IMAGE", [len(items), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[item] for item in items], dtype=np.object_))
    return tensor


def _top(
    client: grpcclient.InferenceServerClient,
    model: str,
    tensor: grpcclient.InferInput,
    output: str = "SCORES",
) -> list[str]:
    top = grpcclient.InferRequestedOutput(output, class_count=1)
    result = client.infer(model, [tensor], outputs=[top]).as_numpy(output)
    assert result is not None
    return [element.decode() for element in result[:, 0]]


def test_a_jpeg_answers_its_label(client: grpcclient.InferenceServerClient) -> None:
    answers = _top(client, "encoded", _bytes_input([_photo(0, 48, 64)]))
    score, index, label = answers[0].split(":")
    # 220 on the 0..255 scale, normalised by (x / 255 - 0.5) / 0.5, less JPEG's rounding
    assert (index, label) == ("0", "red") and abs(float(score) - (220 / 255 - 0.5) / 0.5) < 0.05


def test_rows_of_different_sizes_and_formats(client: grpcclient.InferenceServerClient) -> None:
    photos = [_photo(2, 30, 30), _photo(1, 300, 200, "PNG"), _photo(0, 5, 9, "PNG")]
    assert [a.split(":")[2] for a in _top(client, "encoded", _bytes_input(photos))] == [
        "blue",
        "green",
        "red",
    ]


def test_uint8_pixels_of_any_size(client: grpcclient.InferenceServerClient) -> None:
    for height, width, colour in ((8, 8, 1), (37, 5, 2), (480, 640, 0)):
        pixels = np.full((2, height, width, 3), 10, dtype=np.uint8)
        pixels[..., colour] = 250
        tensor = grpcclient.InferInput("IMAGE", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
        assert [a.split(":")[2] for a in _top(client, "pixels", tensor)] == [LABELS[colour]] * 2


def test_bad_images_are_invalid_arguments(client: grpcclient.InferenceServerClient) -> None:
    truncated = _photo(0, 64, 64)[:200]
    for item, says in (
        (b"GIF? no, plain text", "not an image"),
        (truncated, "cannot be decoded"),
        (b"", "empty"),
    ):
        tensor = _bytes_input([item])
        code, message = failure(partial(_top, client, "encoded", tensor))
        assert code == "INVALID_ARGUMENT" and "'IMAGE'" in message and says in message, message
    floats = grpcclient.InferInput("IMAGE", [1, 8, 8, 3], "FP32")
    floats.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.float32))
    code, message = failure(lambda: _top(client, "pixels", floats))
    assert code == "INVALID_ARGUMENT" and "'IMAGE'" in message and "UINT8" in message
    flat = grpcclient.InferInput("IMAGE", [1, 64, 3], "UINT8")
    flat.set_data_from_numpy(np.zeros((1, 64, 3), np.uint8))
    code, message = failure(lambda: _top(client, "pixels", flat))
    assert code == "INVALID_ARGUMENT" and "'IMAGE'" in message and "shape" in message
    assert _top(client, "encoded", _bytes_input([_photo(1, 16, 16)]))[0].endswith(":green")


def test_metadata_shows_the_clients_tensor(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("encoded", as_json=True)
    assert meta["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": ["-1", "1"]}]


def _stripes(horizontal: bool, period: int = 8) -> bytes:
    yy, xx = np.mgrid[0:96, 0:128]
    grey = (128 + 100 * np.sin(2 * np.pi * (yy if horizontal else xx) / period)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([grey, grey, grey], axis=-1)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_demo_classifier_names_the_stripes_of_a_jpeg(demo_server: ServerProcess) -> None:
    # The demo's cats have horizontal stripes, its dogs vertical ones (server/demo/data.py).
    photos = [_stripes(True), _stripes(False), _stripes(True, 10)]
    with grpcclient.InferenceServerClient(demo_server.url) as triton:
        answers = _top(triton, "image_classifier_jpeg", _bytes_input(photos), "PROBS")
    assert [a.split(":")[2] for a in answers] == ["cat", "dog", "cat"]
    assert all(a.split(":")[1] == ("0" if a.endswith("cat") else "1") for a in answers)

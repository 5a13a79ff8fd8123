"""TensorRT backend: the engine-reading and shape logic, with a stand-in for an engine.

Running an engine needs a GPU and the tensorrt package; that test skips without them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.backends import tensorrt as trt_backend
from warpserve.server.errors import InvalidInput
from warpserve.server.repository import config as cfg


@dataclass
class _Enum:
    name: str


class FakeEngine:
    """What TensorRT 10's ICudaEngine answers about its named I/O tensors."""

    def __init__(self) -> None:
        self.tensors = {
            "images": (
                "INPUT",
                "HALF",
                (-1, 3, 224, 224),
                ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224)),
            ),
            "lengths": ("INPUT", "INT32", (-1, 1), ((1, 1), (8, 1), (16, 1))),
            "logits": ("OUTPUT", "FLOAT", (-1, 1000), None),
        }
        self.num_io_tensors = len(self.tensors)

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> _Enum:
        return _Enum(self.tensors[name][0])

    def get_tensor_dtype(self, name: str) -> _Enum:
        return _Enum(self.tensors[name][1])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
        assert profile == 0
        bounds = self.tensors[name][3]
        assert bounds is not None, "TensorRT has profiles for inputs only"
        return bounds


def test_bindings_read_names_types_and_profile_bounds() -> None:
    found = {b.name: b for b in trt_backend.bindings(FakeEngine())}
    assert found["images"].is_input and found["images"].wire == "FP16"
    assert found["images"].min_shape == (1, 3, 224, 224)
    assert found["images"].max_shape == (32, 3, 224, 224)
    assert not found["logits"].is_input and found["logits"].wire == "FP32"
    assert trt_backend.max_batch_size(list(found.values())) == 16  # the tightest input


def test_the_signature_completes_a_config() -> None:
    signature = trt_backend.signature_of(trt_backend.bindings(FakeEngine()))
    config = mc.ModelConfig(name="resnet", platform="tensorrt_plan")
    cfg.complete_from_signature(config, signature, "model.plan")
    assert [t.name for t in config.input] == ["images", "lengths"]
    assert list(config.input[0].dims) == [3, 224, 224] and config.max_batch_size == 16
    assert config.input[0].data_type == mc.TYPE_FP16
    assert list(config.output[0].dims) == [1000]


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((4, 3, 224, 224), ""),
        ((64, 3, 224, 224), r"dim 0 is 64; the engine's optimisation profile allows 1\.\.32"),
        ((4, 3, 112, 112), "dim 2 is 112; the engine was built for 224"),
        ((4, 3, 224), "has 3 dimensions, the engine 4"),
    ],
)
def test_shapes_outside_the_profile_are_refused_by_name(
    shape: tuple[int, ...], message: str
) -> None:
    images = {b.name: b for b in trt_backend.bindings(FakeEngine())}["images"]
    if not message:
        trt_backend.check_shape(images, shape)  # inside the profile: accepted
        return
    with pytest.raises(InvalidInput, match=message):
        trt_backend.check_shape(images, shape)


def test_the_instance_group_picks_the_profile() -> None:
    config = mc.ModelConfig(name="m")
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=1)
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=2, profile=["1"])
    assert [trt_backend._profile(config, i) for i in range(3)] == [0, 1, 1]


def _has_gpu_and_tensorrt() -> bool:
    if importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.gpu
@pytest.mark.skipif(
    not _has_gpu_and_tensorrt(),
    reason="needs a CUDA device and the tensorrt package; neither is on this machine",
)
def test_an_engine_runs_with_dynamic_batches(tmp_path: Path) -> None:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    x = network.add_input("INPUT0", trt.float32, (-1, 4))
    network.mark_output(network.add_elementwise(x, x, trt.ElementWiseOperation.SUM).get_output(0))
    network.get_output(0).name = "OUTPUT0"
    profile = builder.create_optimization_profile()
    profile.set_shape("INPUT0", (1, 4), (4, 4), (8, 4))
    build = builder.create_builder_config()
    build.add_optimization_profile(profile)
    version = tmp_path / "double" / "1"
    version.mkdir(parents=True)
    (version / "model.plan").write_bytes(bytes(builder.build_serialized_network(network, build)))
    config = cfg.complete(mc.ModelConfig(name="double", platform="tensorrt_plan"), version)
    instance = trt_backend.load_instance(config, version, 0, 1)
    for rows in (1, 8):
        data = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
        np.testing.assert_array_equal(instance.execute({"INPUT0": data})["OUTPUT0"], data * 2)
    with pytest.raises(InvalidInput, match=r"profile allows 1\.\.8"):
        instance.execute({"INPUT0": np.zeros((9, 4), np.float32)})
    instance.close()

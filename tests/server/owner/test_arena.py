"""The arena's allocator and memory, and where models are placed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.models import write_affine
from tests.server.owner.harness import ON_OWNER, placed_registry
from warpserve.protos import model_config_pb2 as mc
from warpserve.server.errors import ModelLoadError, ModelNotFound
from warpserve.server.owner.arena import ALIGN, Allocator, Arena
from warpserve.server.owner.placement import (
    LOCAL,
    OWNER,
    PlacedRepository,
    owner_placed,
    placement,
)
from warpserve.server.repository.repository import ModelRepository


def test_allocator_reuses_and_merges_freed_blocks() -> None:
    heap = Allocator(1024, 4 * ALIGN)
    blocks = [heap.alloc(ALIGN) for _ in range(4)]
    assert blocks == [1024 + i * ALIGN for i in range(4)]
    a, b, c, d = (1024 + i * ALIGN for i in range(4))
    assert heap.alloc(1) is None  # full: the caller sends the tensor inline
    heap.free(b)
    heap.free(c)  # merges with b's range
    assert heap.alloc(2 * ALIGN) == b
    heap.free(a)
    heap.free(d)
    heap.free(b)  # a, b+c and d merge back into one range
    assert heap.blocks == 0
    assert heap.alloc(4 * ALIGN) == 1024


def test_allocator_rounds_sizes_to_the_alignment() -> None:
    heap = Allocator(0, 10 * ALIGN)
    first = heap.alloc(1)
    second = heap.alloc(ALIGN + 1)
    assert (first, second) == (0, ALIGN)
    assert heap.used_bytes == 3 * ALIGN
    with pytest.raises(KeyError):
        heap.free(ALIGN // 2)  # not a block


def test_arena_is_shared_through_its_descriptor() -> None:
    arena = Arena.create(4096, "test")
    peer = Arena.attach(os.dup(arena.fd))
    try:
        arena.memory[arena.half : arena.half + 3] = b"abc"
        assert bytes(peer.memory[peer.half : peer.half + 3]) == b"abc"
        assert arena.requests().size == peer.answers().size == 4096
    finally:
        peer.close()
        arena.close()


def _config(text: str) -> mc.ModelConfig:
    from google.protobuf import text_format

    return text_format.Parse(text, mc.ModelConfig())


def test_placement_follows_the_parameter_then_the_device() -> None:
    onnx = 'name: "m" platform: "onnxruntime_onnx" '
    param = 'parameters { key: "warpserve.placement" value { string_value: "%s" } }'
    assert placement(_config(onnx + param % "owner")) == OWNER
    assert placement(_config(onnx + param % "local")) == LOCAL
    assert placement(_config(onnx)) == LOCAL  # no GPU on this machine
    gpu = onnx + "instance_group [{ kind: KIND_GPU }]"
    assert placement(_config(gpu)) == LOCAL  # asks for a GPU, none is here
    assert placement(_config(gpu + param % "owner")) == OWNER
    with pytest.raises(ModelLoadError, match=r"warpserve\.placement=.gpu. is not valid"):
        placement(_config(onnx + param % "gpu"))


def test_gpu_models_go_to_the_owner_when_a_gpu_is_present(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dataclasses

    from warpserve.server.backends import spec as formats

    onnx = formats.find(_config('platform: "onnxruntime_onnx"'))
    assert onnx is not None
    with_gpu = dataclasses.replace(onnx, gpu_available=lambda: True)
    monkeypatch.setitem(formats._SPECS, onnx.platform, with_gpu)
    text = 'name: "m" platform: "onnxruntime_onnx" '
    assert placement(_config(text + "instance_group [{ kind: KIND_GPU }]")) == OWNER
    assert placement(_config(text)) == OWNER  # KIND_AUTO: the GPU where there is one
    assert placement(_config(text + "instance_group [{ kind: KIND_CPU }]")) == LOCAL


def write_both_sides(repo: Path) -> None:
    """A model placed on the owner ("gpu_like") and one each frontend loads ("cpu")."""
    write_affine(repo, "gpu_like", extra=ON_OWNER)
    write_affine(repo, "cpu")


def test_each_side_sees_its_own_models(tmp_path: Path) -> None:
    write_both_sides(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.pbtxt").write_text("max_batch_sise: 3")
    repository = ModelRepository(tmp_path)
    assert PlacedRepository(repository, OWNER).model_names() == ["gpu_like"]
    assert PlacedRepository(repository, LOCAL).model_names() == ["broken", "cpu"]
    assert owner_placed(repository) == {"gpu_like"}


def test_a_side_never_loads_the_others_models(tmp_path: Path) -> None:
    import asyncio

    write_both_sides(tmp_path)

    async def main() -> None:
        frontend = placed_registry(tmp_path, LOCAL)
        owner = placed_registry(tmp_path, OWNER)
        try:
            with pytest.raises(ModelNotFound, match="served by the model owner"):
                await frontend.load("gpu_like")
            with pytest.raises(ModelNotFound, match="served by each frontend"):
                await owner.load("cpu")
            await frontend.load("cpu")  # positive control: its own side loads
            await owner.load("gpu_like")
            assert list(frontend.models) == ["cpu"] and list(owner.models) == ["gpu_like"]
        finally:
            await frontend.close()
            await owner.close()

    asyncio.run(main())

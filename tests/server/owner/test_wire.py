"""Frames between a frontend and the owner: tensors inline, in shared memory and
pickled, whole or in pieces."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from warpserve.server.owner import wire
from warpserve.server.owner.arena import Arena


def receiver(arena: Arena, copy: bool) -> tuple[wire.Channel, list[tuple[Any, ...]]]:
    got: list[tuple[Any, ...]] = []
    channel = wire.Channel(
        arena, lambda m, t, b: got.append((m, t, b)), lambda e: None, copy_blocks=copy
    )
    return channel, got


TENSORS: dict[str, np.ndarray] = {
    "f": np.arange(12, dtype=np.float32).reshape(3, 4),
    "strided": np.arange(20, dtype=np.int64).reshape(4, 5)[:, ::2],
    "flag": np.array([True, False]),
    "scalar": np.float64(2.5) * np.ones(()),
    "empty": np.zeros((0, 3), np.int8),
    "text": np.array([b"a", b"bc"], dtype=np.object_),
}


@pytest.mark.parametrize("inline_below", [0, 1 << 20], ids=["shared-memory", "inline"])
@pytest.mark.parametrize("pieces", [1, 7], ids=["whole", "in-pieces"])
def test_tensors_arrive_as_sent(inline_below: int, pieces: int) -> None:
    arena = Arena.create(1 << 16, "test-wire")
    heap = arena.requests()
    try:
        first, blocks = wire.encode(("infer", 1), TENSORS, arena, heap, inline_below)
        second, _ = wire.encode(("cancel", 1))
        channel, got = receiver(arena, copy=False)
        data = first + second
        step = max(1, len(data) // pieces)
        for i in range(0, len(data), step):
            channel.data_received(data[i : i + step])
        (message, tensors, used), (cancel, none, _) = got
        assert message == ("infer", 1) and cancel == ("cancel", 1) and none == {}
        assert used == blocks
        # Fixed-size tensors go through shared memory from the threshold on; BYTES never.
        assert len(blocks) == (5 if inline_below == 0 else 0)
        for name, sent in TENSORS.items():
            assert tensors[name].dtype == sent.dtype and tensors[name].shape == sent.shape
            np.testing.assert_array_equal(tensors[name], sent)
        assert not tensors["f"].flags.writeable  # nothing may write the sender's memory
    finally:
        arena.close()


def test_copied_blocks_outlive_their_reuse() -> None:
    arena = Arena.create(1 << 16, "test-wire")
    heap = arena.answers()
    try:
        x = np.ones((4, 4), np.float32)
        frame, blocks = wire.encode(("ok", 1), {"y": x}, arena, heap, 0)
        channel, got = receiver(arena, copy=True)
        channel.data_received(frame)
        heap.free(blocks[0][0])
        wire.encode(("ok", 2), {"y": x * 7}, arena, heap, 0)  # reuses the block
        np.testing.assert_array_equal(got[0][1]["y"], x)
    finally:
        arena.close()


def test_bfloat16_keeps_its_type() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
    dtype = np.dtype(ml_dtypes.bfloat16)
    x = np.array([1.5, -2.0], dtype=dtype)
    arena = Arena.create(4096, "test-wire")
    try:
        channel, got = receiver(arena, copy=False)
        channel.data_received(wire.encode(("ok", 1), {"x": x})[0])
        assert got[0][1]["x"].dtype == dtype
    finally:
        arena.close()

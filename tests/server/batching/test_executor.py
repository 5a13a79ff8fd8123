"""Executor: gathering a batch into a reused buffer, scattering rows back."""

from __future__ import annotations

import asyncio

import numpy as np

from warpserve.server.batching.executor import Executor
from warpserve.server.batching.request import Outputs, QueuedRequest, signature_of


def _ok(outcome: Outputs | BaseException) -> Outputs:
    assert not isinstance(outcome, BaseException), outcome
    return outcome


class Echo:
    """Returns its input; remembers the arrays it was given."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.seen.append(inputs["x"])
        return {"y": inputs["x"].copy()}

    def close(self) -> None:
        pass


def _requests(values: list[list[float]]) -> list[QueuedRequest]:
    loop = asyncio.new_event_loop()
    out = []
    for v in values:
        x = np.array([v], dtype=np.float32)
        out.append(QueuedRequest({"x": x}, 1, signature_of({"x": x}, True), loop.create_future()))
    loop.close()
    return out


def test_batches_reuse_one_buffer_and_each_request_gets_its_rows() -> None:
    model = Echo()
    executor = Executor(model, batched=True)
    first = executor.run(_requests([[1, 2], [3, 4], [5, 6]]))
    second = executor.run(_requests([[7, 8], [9, 10]]))
    assert [_ok(o)["y"].tolist() for o in first.outcomes] == [[[1, 2]], [[3, 4]], [[5, 6]]]
    assert [_ok(o)["y"].tolist() for o in second.outcomes] == [[[7, 8]], [[9, 10]]]
    assert np.shares_memory(model.seen[0], model.seen[1]), "the second batch reused the buffer"
    # A larger batch or another row shape gets a buffer that fits.
    third = executor.run(_requests([[1, 1]] * 4))
    assert [_ok(o)["y"].tolist() for o in third.outcomes] == [[[1, 1]]] * 4
    executor.close()


class View(Echo):
    """Answers with a view of its input, as a backend may."""

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.seen.append(inputs["x"])
        return {"y": inputs["x"][:, ::-1]}


def test_outputs_that_view_the_buffer_survive_the_next_batch() -> None:
    executor = Executor(View(), batched=True)
    first = executor.run(_requests([[1, 2], [3, 4]]))
    executor.run(_requests([[0, 0], [0, 0]]))  # overwrites the gather buffer
    assert [_ok(o)["y"].tolist() for o in first.outcomes] == [[[2, 1]], [[4, 3]]]
    executor.close()


def test_string_tensors_are_gathered_without_a_buffer() -> None:
    model = Echo()
    executor = Executor(model, batched=True)
    loop = asyncio.new_event_loop()
    batch = []
    for text in (b"a", b"bc"):
        x = np.array([text], dtype=np.object_)
        batch.append(QueuedRequest({"x": x}, 1, signature_of({"x": x}, True), loop.create_future()))
    loop.close()
    result = executor.run(batch)
    assert [_ok(o)["y"].tolist() for o in result.outcomes] == [[b"a"], [b"bc"]]
    executor.close()

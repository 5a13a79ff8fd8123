"""ModelStreamInfer in-process: every request answered, errors in-band, the stream ends.

The servicer runs each streamed request as its own task and ends the stream once the
client's side is closed and every task has answered. These tests drive it directly, with
a per-test timeout: a stream that never ends would leave the event loop spinning (as it
did on Python 3.12+, where gathering finished tasks does not yield to the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from tests.models import affine_reference, write_affine
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server.codec import ReceivedInfer, receive_infer
from warpserve.server.dataplane import DataPlane
from warpserve.server.grpc import stream as stream_service
from warpserve.server.grpc.inference import InferenceServicer
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.repository.repository import ModelRepository

MODEL = "affine"


def _request(rid: str, x: np.ndarray | None) -> ReceivedInfer:
    """The request as gRPC hands it to the servicer."""
    request = pb.ModelInferRequest(model_name=MODEL, id=rid)
    if x is not None:  # None: no inputs at all, which the model rejects
        request.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
        request.raw_input_contents.append(x.tobytes())
    return receive_infer(request.SerializeToString())


async def _requests(items: list[ReceivedInfer]) -> AsyncIterator[ReceivedInfer]:
    for item in items:
        yield item
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def _servicer(tmp_path: Path) -> AsyncIterator[InferenceServicer]:
    write_affine(tmp_path, MODEL)  # version 1: scale 1
    registry = ModelRegistry(ModelRepository(tmp_path))
    await registry.load(MODEL)
    try:
        yield InferenceServicer(DataPlane(registry), registry)
    finally:
        await registry.close()


async def _stream(
    tmp_path: Path, requests: list[ReceivedInfer]
) -> dict[str, pb.ModelStreamInferResponse]:
    async with _servicer(tmp_path) as servicer:
        sent = [a async for a in servicer.ModelStreamInfer(_requests(requests), None)]
    answers = [pb.ModelStreamInferResponse.FromString(a) for a in sent]
    return {a.infer_response.id: a for a in answers}


@pytest.mark.timeout(60)
def test_stream_answers_every_request_and_ends(tmp_path: Path) -> None:
    xs = {f"r{i}": np.full((1 + i % 3, 4), i, dtype=np.float32) for i in range(40)}
    requests = [_request(rid, x) for rid, x in xs.items()]
    requests.insert(7, _request("bad", None))
    answers = asyncio.run(_stream(tmp_path, requests))
    assert set(answers) == {*xs, "bad"}
    assert "INPUT0" in answers["bad"].error_message  # in-band; the stream went on
    for rid, x in xs.items():
        reply = answers[rid]
        assert not reply.error_message
        got = np.frombuffer(reply.infer_response.raw_output_contents[0], np.float32)
        want = affine_reference(x, scale=1.0)
        np.testing.assert_allclose(got.reshape(len(x), 2), want, rtol=1e-5)


@pytest.mark.timeout(60)
def test_short_stream_ends_once_its_last_answer_is_out(tmp_path: Path) -> None:
    # The last request finishes while the end of the client's side is already on its
    # way: the case that stalled the server on Python 3.12+.
    x = np.ones((2, 4), dtype=np.float32)
    answers = asyncio.run(_stream(tmp_path, [_request("bad", None), _request("good", x)]))
    assert set(answers) == {"bad", "good"}
    assert "INPUT0" in answers["bad"].error_message and not answers["good"].error_message


@pytest.mark.timeout(60)
def test_stream_that_closes_at_once_ends(tmp_path: Path) -> None:
    assert asyncio.run(_stream(tmp_path, [])) == {}


@pytest.mark.timeout(60)
def test_a_client_that_does_not_read_is_not_read_ahead_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Requests are read at most STREAM_IN_FLIGHT ahead of the answers taken, so a client
    # that only sends meets gRPC's flow control instead of growing the server's memory.
    monkeypatch.setattr(stream_service, "STREAM_IN_FLIGHT", 4)
    sent = 0

    async def endless() -> AsyncIterator[ReceivedInfer]:
        nonlocal sent
        x = np.ones((1, 4), dtype=np.float32)
        while sent < 1000:
            sent += 1
            yield _request(f"r{sent}", x)

    async def main() -> None:
        async with _servicer(tmp_path) as servicer:
            stream = servicer.ModelStreamInfer(endless(), None)
            first = await anext(stream)
            assert not pb.ModelStreamInferResponse.FromString(first).error_message
            for _ in range(50):
                await asyncio.sleep(0.001)  # the server gets every chance to read on
            assert sent <= 4 + 1  # four read ahead, one taken
            taken = 1 + len([answer async for answer in stream])
            assert taken == sent == 1000  # and once the client reads, everything is answered

    asyncio.run(main())

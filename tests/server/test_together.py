"""ModelInfer calls that arrive together on the native frontend are served at once.

The frontend hands the loop every call that arrived since its last wakeup; for a tiny
model run inline, ``InferenceServicer.infer_together`` decodes them, runs them as one
batch and answers before any task starts. Anything else (another model's queue, an
error, a draining server) still gets ModelInfer's own answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.models import affine_reference, write_affine
from tests.server.native_standin import DONE, StandIn, answers, attach, call
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server.busypoll import BusyPoller
from warpserve.server.dataplane import DataPlane
from warpserve.server.grpc.inference import InferenceServicer, add_inference_service
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.lifecycle.version import ModelVersion
from warpserve.server.native import transport
from warpserve.server.repository.repository import ModelRepository

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not transport.available(), reason=transport.MISSING),
]

INFER = "/inference.GRPCInferenceService/ModelInfer"
OK = grpc.StatusCode.OK.value[0]


def _payload(model: str, x: np.ndarray, name: str = "INPUT0") -> bytes:
    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name=name, datatype="FP32", shape=list(x.shape))
    message.raw_input_contents.append(x.tobytes())
    return message.SerializeToString()


def _output(answer: tuple[int, str, bytes | None]) -> np.ndarray:
    code, details, payload = answer
    assert code == OK, details
    reply = pb.ModelInferResponse.FromString(payload or b"")
    shape = tuple(reply.outputs[0].shape)
    return np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(shape)


Scenario = Callable[[transport.NativeServer, StandIn, ModelRegistry], Awaitable[None]]


def _serve(repo: Path, models: list[str], scenario: Scenario) -> None:
    async def main() -> None:
        registry = ModelRegistry(ModelRepository(repo))
        for name in models:
            await registry.load(name)
        try:
            for name in models:
                batcher = registry.resolve(name).batcher
                assert batcher is not None
                if not batcher.executors[0].inline:
                    pytest.skip("the machine is too loaded for the model to run inline")
            server = transport.NativeServer(1 << 22, 1 << 22, reuse_port=False)
            dataplane = DataPlane(registry, BusyPoller(0))
            add_inference_service(InferenceServicer(dataplane, registry), server)
            await scenario(server, attach(server), registry)
        finally:
            await registry.close()

    asyncio.run(main())


def _version(registry: ModelRegistry, name: str) -> ModelVersion:
    return registry.resolve(name)


def test_calls_that_arrived_together_are_answered_at_once_in_one_run(tmp_path: Path) -> None:
    write_affine(tmp_path, "affine")
    xs = [np.full((1, 4), i, np.float32) for i in range(5)] + [np.ones((3, 4), np.float32)]

    async def scenario(server, stand_in, registry) -> None:
        mv = _version(registry, "affine")
        before = mv.stats.execution_count
        stand_in.pending = [call(i, INFER, _payload("affine", x)) for i, x in enumerate(xs)]
        server._on_events()
        # answered within the wakeup itself: no task ran
        assert sorted(stand_in.answered) == list(range(len(xs)))
        assert server.open_calls() == 0
        assert mv.stats.execution_count - before == 1
        assert mv.stats.batches[8].compute_infer.count == 1  # 5 rows of one, 3 of another
        assert mv.stats.inference_count == 8
        for i, x in enumerate(xs):
            np.testing.assert_allclose(
                _output(stand_in.answered[i]), affine_reference(x, scale=1.0), rtol=1e-5
            )

    _serve(tmp_path, ["affine"], scenario)


def test_runs_split_at_the_batch_limit_and_by_model(tmp_path: Path) -> None:
    write_affine(tmp_path, "affine", max_batch=4)
    write_affine(tmp_path, "other", max_batch=4)
    xs = [np.full((1, 4), i, np.float32) for i in range(6)]

    async def scenario(server, stand_in, registry) -> None:
        affine, other = _version(registry, "affine"), _version(registry, "other")
        stand_in.pending = [call(i, INFER, _payload("affine", x)) for i, x in enumerate(xs)]
        stand_in.pending.append(call(99, INFER, _payload("other", xs[0])))
        server._on_events()
        assert sorted(affine.stats.batches) == [2, 4]  # 6 rows, at most 4 per run
        assert sorted(other.stats.batches) == [1]
        for i, x in enumerate(xs):
            np.testing.assert_allclose(
                _output(stand_in.answered[i]), affine_reference(x, scale=1.0), rtol=1e-5
            )
        np.testing.assert_allclose(
            _output(stand_in.answered[99]), affine_reference(xs[0], scale=1.0), rtol=1e-5
        )

    _serve(tmp_path, ["affine", "other"], scenario)


def test_a_bad_call_among_them_gets_modelinfers_own_error(tmp_path: Path) -> None:
    write_affine(tmp_path, "affine")
    x = np.ones((1, 4), np.float32)

    async def scenario(server, stand_in, registry) -> None:
        stand_in.pending = [
            call(1, INFER, _payload("affine", x)),
            call(2, INFER, _payload("affine", x, name="WRONG")),
            call(3, INFER, _payload("nobody", x)),
            call(4, INFER, b"\xff\xff not a request"),
            call(5, INFER, _payload("affine", x)),
        ]
        server._on_events()
        assert {1, 5} <= set(stand_in.answered)  # the good ones at once
        good1, bad, unknown, garbage, good5 = await answers(stand_in, [1, 2, 3, 4, 5])
        np.testing.assert_allclose(_output(good1), affine_reference(x, scale=1.0), rtol=1e-5)
        np.testing.assert_allclose(_output(good5), affine_reference(x, scale=1.0), rtol=1e-5)
        assert bad[0] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "WRONG" in bad[1] and "INPUT0" in bad[1]
        assert unknown[0] == grpc.StatusCode.NOT_FOUND.value[0]
        assert unknown[1].startswith("Request for unknown model")
        assert garbage[0] == grpc.StatusCode.INVALID_ARGUMENT.value[0]

    _serve(tmp_path, ["affine"], scenario)


def test_a_draining_server_refuses_them_through_modelinfer(tmp_path: Path) -> None:
    write_affine(tmp_path, "affine")
    x = np.ones((1, 4), np.float32)

    async def scenario(server, stand_in, registry) -> None:
        servicer_calls = server._together[INFER][0].__self__.dataplane.calls
        servicer_calls.start_draining()
        stand_in.pending = [call(i, INFER, _payload("affine", x)) for i in range(3)]
        server._on_events()
        for code, details, _ in await answers(stand_in, [0, 1, 2]):
            assert code == grpc.StatusCode.UNAVAILABLE.value[0], details

    _serve(tmp_path, ["affine"], scenario)


def test_a_saturated_loop_queues_them_for_one_batch(tmp_path: Path) -> None:
    write_affine(tmp_path, "affine")
    xs = [np.full((1, 4), i, np.float32) for i in range(4)]

    async def scenario(server, stand_in, registry) -> None:
        mv = _version(registry, "affine")
        assert mv.batcher is not None
        mv.batcher._inline._load.holding = True  # as a saturated loop decides
        before = mv.stats.execution_count
        stand_in.pending = [call(i, INFER, _payload("affine", x)) for i, x in enumerate(xs)]
        server._on_events()
        assert not stand_in.answered  # routed to the queue, answered by tasks
        got = await answers(stand_in, list(range(len(xs))))
        assert mv.stats.execution_count - before == 1
        for x, answer in zip(xs, got, strict=True):
            np.testing.assert_allclose(_output(answer), affine_reference(x, scale=1.0), rtol=1e-5)

    _serve(tmp_path, ["affine"], scenario)


def test_a_batch_that_fails_is_served_one_by_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_affine(tmp_path, "affine")
    xs = [np.full((1, 4), i, np.float32) for i in range(3)]

    async def scenario(server, stand_in, registry) -> None:
        mv = _version(registry, "affine")
        assert mv.batcher is not None
        instance = mv.batcher.executors[0].instance
        execute = instance.execute

        def only_alone(inputs):  # fails any batch of more than one row
            if len(inputs["INPUT0"]) > 1:
                raise RuntimeError("batches fail")
            return execute(inputs)

        instance.execute = only_alone  # type: ignore[method-assign]
        stand_in.pending = [call(i, INFER, _payload("affine", x)) for i, x in enumerate(xs)]
        with caplog.at_level(logging.WARNING):
            server._on_events()
        # the batch's failure is the model's, not the handler's
        assert "together handler" not in caplog.text
        assert "batches fail" in caplog.text
        got = await answers(stand_in, list(range(len(xs))))
        for x, answer in zip(xs, got, strict=True):
            np.testing.assert_allclose(_output(answer), affine_reference(x, scale=1.0), rtol=1e-5)
        assert mv.stats.inference_count == len(xs)  # the failed batch was not counted

    _serve(tmp_path, ["affine"], scenario)


def test_answers_count_as_in_flight_until_sent(tmp_path: Path) -> None:
    """The busy poller polls only while one call is in flight: a call answered at once
    is in flight until gRPC has sent its answer (its DONE event)."""
    write_affine(tmp_path, "affine")
    x = np.ones((1, 4), np.float32)

    async def scenario(server, stand_in, registry) -> None:
        poller = server._together[INFER][0].__self__.dataplane.poller
        stand_in.pending = [call(i, INFER, _payload("affine", x)) for i in range(3)]
        server._on_events()
        assert len(stand_in.answered) == 3 and poller.calls == 3
        stand_in.pending = [(DONE, 0), (DONE, 1)]
        server._on_events()
        assert poller.calls == 1
        stand_in.pending = [(DONE, 2), (DONE, 77)]  # 77: a call nobody knows
        server._on_events()
        assert poller.calls == 0

    _serve(tmp_path, ["affine"], scenario)

"""Graceful shutdown in-process (start_server on a free loopback port).

A call is held in each stage it can be in when SIGTERM arrives (decoding, queued in the
batcher, running on a worker thread, running inline on the event loop, encoding, and as
a request of an open stream), then the shutdown starts as the signal handler starts it.
While it is held: health and readiness say NOT_SERVING, new calls and streams get
UNAVAILABLE, the model is still loaded. Released, it gets its real answer; only then are
the models unloaded and the shutdown ends with status 0. Past --exit-timeout-secs, what is
still running is cut off with UNAVAILABLE (never CANCELLED) and counted in the log.

Stages are held at the servicer's named hook points ("decoding", "encoding") or by a
model whose runs wait for a gate, never with sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.models import write_affine
from tests.server.progress import until
from tests.server.test_admin import answer_version, code_of, request, serving
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc
from warpserve.server.batching.batcher import DynamicBatcher
from warpserve.server.grpc import server as grpc_server
from warpserve.server.grpc.server import RunningServer
from warpserve.server.inflight import CALL, InFlight
from warpserve.server.lifecycle.version import ModelVersion, VersionState

MODEL = "affine"


def execution(mode: str) -> str:
    return f'parameters {{ key: "execution" value: {{ string_value: "{mode}" }} }}'


def x_for(i: int) -> np.ndarray:
    return np.full((1, 4), 0.25 * (i + 1), dtype=np.float32)


def version(running: RunningServer) -> ModelVersion:
    return running.registry.models[MODEL].versions[1]


def batcher(running: RunningServer) -> DynamicBatcher:
    loaded = version(running).batcher
    assert loaded is not None, "the version is not loaded"
    return loaded


class GatedModel:
    """A model instance whose runs wait for ``gate``; ``entered`` is set when one starts."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.threads: list[str] = []

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        assert self.gate.wait(30), "gate never opened"
        return dict(self.inner.execute(inputs))

    def close(self) -> None:
        self.inner.close()


class SignalDuringRun:
    """A model instance whose first run starts the shutdown, as a SIGTERM delivered while
    the model runs on the event loop is handled."""

    def __init__(self, inner: Any, running: RunningServer) -> None:
        self.inner, self.running = inner, running
        self.threads: list[str] = []

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        if len(self.threads) == 1:
            self.running.begin_shutdown()
        return dict(self.inner.execute(inputs))

    def close(self) -> None:
        self.inner.close()


def gate_model(running: RunningServer) -> GatedModel:
    batcher = version(running).batcher
    assert batcher is not None
    executor = batcher.executors[0]
    gated = GatedModel(executor.instance)
    executor.instance = gated
    return gated


class Held:
    """How a stage is held: ``reached`` returns once the calls are there; ``release``
    lets them go on."""

    def __init__(self, reached: Callable[[], Awaitable[object]], release: Callable[[], None]):
        self.reached, self.release = reached, release


def hold_at_point(running: RunningServer, point: str) -> Held:
    reached, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        reached.set()
        await release.wait()

    first = [True]

    def hook(name: str) -> Awaitable[None] | None:
        if name != point or not first[0]:
            return None
        first[0] = False
        return hold()

    running.registry.hook = hook
    return Held(reached.wait, release.set)


def hold_on_worker(running: RunningServer) -> Held:
    gated = gate_model(running)

    async def reached() -> None:
        await until(gated.entered.is_set)
        assert gated.threads[0] != threading.main_thread().name  # really on a worker

    return Held(reached, gated.gate.set)


def hold_queued(running: RunningServer) -> Held:
    """The first call runs (held on the worker), the second waits in the queue."""
    gated = gate_model(running)
    batcher = version(running).batcher
    assert batcher is not None

    async def reached() -> None:
        await until(lambda: gated.entered.is_set() and batcher.queued == 1)

    return Held(reached, gated.gate.set)


def hold_inline(running: RunningServer) -> Held:
    """The shutdown starts while the model runs on the event loop; the call is then held
    at "encoding" so the state it finds afterwards can be checked."""
    batcher = version(running).batcher
    assert batcher is not None and batcher.executors[0].inline
    executor = batcher.executors[0]
    model = SignalDuringRun(executor.instance, running)
    executor.instance = model
    held = hold_at_point(running, "encoding")

    async def reached() -> None:
        await held.reached()
        assert running.shutting_down, "the model did not run"
        assert model.threads == [threading.main_thread().name]  # on the loop's thread

    return Held(reached, held.release)


STAGES: dict[str, tuple[str, Callable[[RunningServer], Held], int]] = {
    # stage: (execution mode, how to hold it, calls sent)
    "decoding": ("thread", lambda r: hold_at_point(r, "decoding"), 1),
    "queued": ("thread", hold_queued, 2),
    "running on a worker thread": ("thread", hold_on_worker, 1),
    "running inline on the event loop": ("inline", hold_inline, 1),
    "encoding": ("thread", lambda r: hold_at_point(r, "encoding"), 1),
}


async def check_draining(running: RunningServer, channel: Any) -> None:
    """What a client sees while the shutdown waits for held calls."""
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING, service
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    assert not (await stub.ServerReady(pb.ServerReadyRequest())).ready
    assert not (await stub.ModelReady(pb.ModelReadyRequest(name=MODEL))).ready
    code, message = await code_of(stub.ModelInfer(request(x_for(9))))
    assert code is grpc.StatusCode.UNAVAILABLE and "shutting down" in message, message
    stream = stub.ModelStreamInfer()
    code, message = await code_of(stream.read())
    assert code is grpc.StatusCode.UNAVAILABLE and "shutting down" in message, message
    assert version(running).state is VersionState.READY  # not unloaded under the call
    assert running.shutting_down and not running.begin_shutdown().done()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stage", list(STAGES))
def test_a_call_held_in_each_stage_gets_its_answer_before_models_unload(
    tmp_path: Path, stage: str
) -> None:
    mode, hold, count = STAGES[stage]
    write_affine(tmp_path, MODEL, (1,), extra=execution(mode))

    async def main() -> None:
        async with serving(tmp_path) as (running, channel):
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            held = hold(running)
            calls = []
            for i in range(count):
                calls.append(asyncio.ensure_future(stub.ModelInfer(request(x_for(i)))))
                if count > 1:  # the first must be running before the next one queues
                    await until(lambda: bool(batcher(running).in_flight))
            await held.reached()
            running.begin_shutdown()  # what SIGTERM does
            await check_draining(running, channel)
            held.release()
            for i, call in enumerate(calls):
                assert answer_version(await call, x_for(i)) == 1  # the real answer
            assert await running.shutdown() == 0
            assert version(running).state is VersionState.UNLOADED

    asyncio.run(main())


async def _stream_requests(queue: asyncio.Queue[pb.ModelInferRequest | None]) -> AsyncIterator[Any]:
    while (item := await queue.get()) is not None:
        yield item


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stage", list(STAGES))
def test_requests_of_an_open_stream_are_answered_then_the_stream_ends_unavailable(
    tmp_path: Path, stage: str
) -> None:
    mode, hold, count = STAGES[stage]
    write_affine(tmp_path, MODEL, (1,), extra=execution(mode))

    async def main() -> None:
        async with serving(tmp_path) as (running, channel):
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            held = hold(running)
            sending: asyncio.Queue[pb.ModelInferRequest | None] = asyncio.Queue()
            stream = stub.ModelStreamInfer(_stream_requests(sending))
            for i in range(count):
                sending.put_nowait(request(x_for(i), rid=f"before-{i}"))
                if count > 1:  # the first must be running before the next one queues
                    await until(lambda: bool(batcher(running).in_flight))
            await held.reached()
            running.begin_shutdown()  # what SIGTERM does
            await check_draining(running, channel)
            sending.put_nowait(request(x_for(5), rid="after"))  # read after the signal
            late = await stream.read()
            assert late.infer_response.id == "after" and "shutting down" in late.error_message
            held.release()
            answers = {}
            for _ in range(count):
                reply = await stream.read()
                assert not reply.error_message, reply.error_message
                answers[reply.infer_response.id] = reply.infer_response
            for i in range(count):
                assert answer_version(answers[f"before-{i}"], x_for(i)) == 1
            # The client never closed its side: the stream ends with UNAVAILABLE (reopen
            # elsewhere), not CANCELLED.
            code, message = await code_of(stream.read())
            assert code is grpc.StatusCode.UNAVAILABLE and "shutting down" in message
            assert await running.shutdown() == 0
            assert version(running).state is VersionState.UNLOADED

    asyncio.run(main())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("half_close", ["before_the_answer", "after_the_answer"])
def test_a_stream_closed_by_its_client_ends_ok_after_its_answers(
    tmp_path: Path, half_close: str
) -> None:
    """After the answer too: the server may take the client's half-close after the
    stream's last answer (on a loaded machine it did); within the grace the stream still
    ends OK, not UNAVAILABLE."""
    write_affine(tmp_path, MODEL, (1,), extra=execution("thread"))

    async def main() -> None:
        async with serving(tmp_path) as (running, channel):
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            held = hold_on_worker(running)
            stream = stub.ModelStreamInfer()
            await stream.write(request(x_for(0), rid="only"))
            if half_close == "before_the_answer":
                await stream.done_writing()
            await held.reached()
            running.begin_shutdown()
            held.release()
            reply = await stream.read()
            assert answer_version(reply.infer_response, x_for(0)) == 1
            if half_close == "after_the_answer":
                await stream.done_writing()  # the server is waiting for it
            assert await stream.read() is grpc.aio.EOF
            assert await stream.code() is grpc.StatusCode.OK
            assert await running.shutdown() == 0

    asyncio.run(main())


@pytest.mark.timeout(120)
def test_past_the_exit_timeout_held_requests_are_cut_off_with_unavailable_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_affine(tmp_path, MODEL, (1,), extra=execution("thread"))

    async def main() -> None:
        async with serving(tmp_path, exit_timeout_secs=0.3) as (running, channel):
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            held = hold_on_worker(running)
            call = asyncio.ensure_future(stub.ModelInfer(request(x_for(0))))
            await held.reached()
            stream = stub.ModelStreamInfer()
            await stream.write(request(x_for(1), rid="queued"))
            await until(lambda: batcher(running).queued == 1)
            with caplog.at_level(logging.INFO, logger="warpserve"):
                assert await running.shutdown() == 1  # the model never finished
            code, message = await code_of(call)
            assert code is grpc.StatusCode.UNAVAILABLE and "--exit-timeout-secs" in message
            reply = await stream.read()
            assert reply.infer_response.id == "queued"
            assert "--exit-timeout-secs" in reply.error_message
            code, _ = await code_of(stream.read())
            assert code is grpc.StatusCode.UNAVAILABLE
            assert "cut off 2 requests (1 call, 1 stream request), 1 open stream" in caplog.text
            assert version(running).state is VersionState.READY  # a stuck model stays
            held.release()
            await running.registry.close()

    asyncio.run(main())


def test_the_quiet_wait_counts_from_the_last_answer_as_from_the_last_refusal() -> None:
    # A caller answered at the very end of a drain calls again at once: the server keeps
    # refusing for QUIET_S after that answer too, or gRPC's stop would cut the new call
    # off with CANCELLED.
    async def main() -> None:
        calls = InFlight()
        ticket = calls.admit(CALL)
        calls.start_draining()
        loop = asyncio.get_running_loop()
        with pytest.raises(Exception, match="shutting down"):
            calls.admit(CALL)
        await asyncio.sleep(grpc_server.QUIET_S)  # the refusal is already quiet enough
        calls.release(ticket)  # the last admitted call is answered now
        await calls.wait_idle()
        start = loop.time()
        await grpc_server._quiet(calls, deadline=start + 10)
        assert loop.time() - start >= grpc_server.QUIET_S * 0.9
        # The exit timeout still bounds the wait.
        calls.last_end = time.monotonic()
        start = loop.time()
        await grpc_server._quiet(calls, deadline=start + 0.01)
        assert loop.time() - start < grpc_server.QUIET_S / 2

    asyncio.run(main())

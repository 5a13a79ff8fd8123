"""ModelStreamInfer: one bidirectional stream's requests served concurrently, answered
as they finish (as in Triton), errors in-band. ``InferenceServicer`` takes it from here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import grpc

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server import codec, replies, wireplans
from warpserve.server.batching.request import Outputs
from warpserve.server.dataplane import Answered, DataPlane
from warpserve.server.errors import Unavailable
from warpserve.server.grpc.status import status_of
from warpserve.server.inflight import SHUTTING_DOWN, STREAM, STREAM_REQUEST, Ticket
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.lifecycle.version import at_point
from warpserve.server.shm import SharedMemoryRegions

# Requests of one ModelStreamInfer call read ahead of the answers its client has taken.
STREAM_IN_FLIGHT = 256
# In a shutdown, how long a stream whose requests are all answered waits for a half-close
# its client may already have sent before the stream is ended UNAVAILABLE.
HALF_CLOSE_GRACE_S = 0.5


class _Servicer(Protocol):
    """What the stream uses of the inference service."""

    dataplane: DataPlane
    registry: ModelRegistry
    shm: SharedMemoryRegions

    def _encoded(
        self,
        mv: Answered,
        decoded: codec.InferRequest,
        outputs: Outputs,
        encode: Callable[..., bytes] = ...,
    ) -> bytes: ...

    async def _stream_reply(self, request: codec.ReceivedInfer, ticket: Ticket) -> bytes: ...


class StreamInference:
    async def _stream_reply(self: _Servicer, request: codec.ReceivedInfer, ticket: Ticket) -> bytes:
        """One streamed request's serialized ModelStreamInferResponse; errors in-band."""
        poller = self.dataplane.poller
        if poller is not None:  # a stream's requests count until each is answered
            poller.call_started()
        try:
            with ticket:
                hook = self.registry.hook
                if hook is not None:
                    await at_point(hook, "decoding")
                decoded = wireplans.decode_request(request, self.shm)
                mv, outputs = await self.dataplane.infer(decoded, None)
                if hook is not None:
                    await at_point(hook, "encoding")
                return self._encoded(mv, decoded, outputs, replies.encode_stream_response)
        except Exception as exc:
            return _stream_error(request, exc)
        finally:
            if poller is not None:
                poller.call_ended()

    async def ModelStreamInfer(
        self: _Servicer,
        request_iterator: AsyncIterator[codec.ReceivedInfer],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        # Requests run concurrently; responses come back as they finish (as in Triton),
        # each carrying its request id. Errors travel in error_message, not as status.
        # At most STREAM_IN_FLIGHT requests are read ahead of the answers the client has
        # taken: a client that sends without reading is held back by gRPC's flow control
        # instead of filling the server's memory.
        calls = self.dataplane.calls
        try:
            stream_ticket = calls.admit(STREAM)
        except Unavailable as exc:
            await context.abort(*status_of(exc))
            return
        # (answer, whether it answers an admitted request); an answer of None only wakes
        # the loop below; None itself: the reading ended.
        responses: asyncio.Queue[tuple[bytes | None, bool] | None] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        unanswered = 0  # admitted requests whose answer has not been handed to gRPC
        read_all = False

        async def one(request: codec.ReceivedInfer, ticket: Ticket) -> None:
            await responses.put((await self._stream_reply(request, ticket), True))

        def start(request: codec.ReceivedInfer) -> None:
            nonlocal unanswered
            try:
                ticket = calls.admit(STREAM_REQUEST)
            except Unavailable as exc:  # read after the shutdown started
                responses.put_nowait((_stream_error(request, exc), False))
                return
            task = asyncio.get_running_loop().create_task(one(request, ticket))
            ticket.task = task
            unanswered += 1
            pending.add(task)
            task.add_done_callback(pending.discard)

        async def reader() -> None:
            nonlocal read_all
            try:
                async for request in request_iterator:
                    await slots.acquire()  # released once its answer is handed to gRPC
                    start(request)
                read_all = True
                # Only this coroutine adds tasks, so one gather covers them all. (Looping
                # until ``pending`` empties would spin forever on Python 3.12+, where
                # gathering finished tasks returns without yielding to the loop, so the
                # discard callbacks never run: the whole server would stall.)
                await asyncio.gather(*pending)
            finally:
                responses.put_nowait(None)

        # A shutdown wakes the loop below, which ends the stream once every request it
        # admitted is answered; the client learns to reopen it elsewhere.
        unregister = calls.on_drain(lambda: responses.put_nowait((None, False)))
        read_task = asyncio.get_running_loop().create_task(reader())
        try:
            with stream_ticket:
                while (item := await responses.get()) is not None:
                    answer, admitted = item
                    if answer is not None:
                        yield answer
                        slots.release()
                    unanswered -= admitted
                    if calls.draining and not unanswered and not read_all:
                        # A half-close already on its way still ends the stream OK
                        # (the reader may not have taken it yet); only a stream that
                        # its client keeps open is cut, to be reopened elsewhere.
                        await asyncio.wait({read_task}, timeout=HALF_CLOSE_GRACE_S)
                        if not read_all:
                            await context.abort(*status_of(Unavailable(SHUTTING_DOWN)))
                await read_task  # raises whatever ended the reading early
        finally:
            unregister()
            read_task.cancel()
            for task in list(pending):
                task.cancel()


def _stream_error(request: codec.ReceivedInfer, exc: Exception) -> bytes:
    """A failed stream request's answer: the error in-band, the stream goes on."""
    _, message = status_of(exc)
    failed = pb.ModelInferResponse(
        model_name=request.message.model_name,
        model_version=request.message.model_version,
        id=request.message.id,
    )
    reply = pb.ModelStreamInferResponse(error_message=message, infer_response=failed)
    return reply.SerializeToString()

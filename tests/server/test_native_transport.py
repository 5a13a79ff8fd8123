"""The native gRPC frontend (server/native) under a small service, in-process.

Each test starts a NativeServer with handlers of every kind (unary, server streaming,
bidi streaming), calls it with grpcio's client and checks what grpc.aio's server would
do: answers, status codes and details, deadlines, client cancellation reaching the
handler, metadata, flow control of streamed answers, unknown methods and a shutdown that
lets calls in progress finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from warpserve.server.native import transport
from warpserve.server.native.transport import NativeServer
from warpserve.server.ports import pick_free_port as free_port

pytestmark = pytest.mark.skipif(not transport.available(), reason=transport.MISSING)

SERVICE = "test.Native"
LIMIT = 1 << 20


class Probe:
    """What the handlers saw."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.done = asyncio.Event()
        self.hang_started = asyncio.Event()
        self.release = asyncio.Event()
        self.remaining: list[float | None] = []
        self.written = 0


def _handlers(probe: Probe) -> dict[str, grpc.RpcMethodHandler]:
    async def echo(request: bytes, context: Any) -> bytes:
        probe.remaining.append(context.time_remaining())
        return request

    async def hang(request: bytes, context: Any) -> bytes:
        context.add_done_callback(lambda _: probe.done.set())
        probe.hang_started.set()
        try:
            await probe.release.wait()
        except asyncio.CancelledError:
            probe.cancelled.set()
            raise
        return b"released"

    async def refuse(request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no: " + request.decode())
        return b""

    async def crash(request: bytes, context: Any) -> bytes:
        raise RuntimeError("boom")

    async def metadata(request: bytes, context: Any) -> bytes:
        pairs = dict(context.invocation_metadata())
        return repr((pairs.get("x-text"), pairs.get("x-data-bin"))).encode()

    async def count(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            probe.written += 1
            yield str(i).encode()

    async def chat(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for message in requests:
            yield message.upper()

    async def write_style(request: bytes, context: Any) -> None:
        for part in request.split(b","):
            await context.write(part)

    return {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Hang": grpc.unary_unary_rpc_method_handler(hang),
        "Refuse": grpc.unary_unary_rpc_method_handler(refuse),
        "Crash": grpc.unary_unary_rpc_method_handler(crash),
        "Metadata": grpc.unary_unary_rpc_method_handler(metadata),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "WriteStyle": grpc.unary_stream_rpc_method_handler(write_style),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
    }


def _server(probe: Probe, *, reuse_port: bool = False) -> NativeServer:
    """A server with the test handlers, not yet listening."""
    server = NativeServer(max_receive=LIMIT, max_send=LIMIT, reuse_port=reuse_port)
    server.add_registered_method_handlers(SERVICE, _handlers(probe))
    return server


async def _started(probe: Probe) -> tuple[NativeServer, int]:
    """A server with the test handlers on a free loopback port; returns it and the port."""
    server = _server(probe)
    server.listen("127.0.0.1", 0)
    return server, await server.start()


@contextlib.asynccontextmanager
async def _serving(probe: Probe) -> AsyncIterator[tuple[NativeServer, grpc.aio.Channel]]:
    server, port = await _started(probe)
    assert port > 0
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield server, channel
    finally:
        await channel.close()
        await server.stop(0.5)


def _unary(channel: grpc.aio.Channel, name: str) -> Any:
    return channel.unary_unary(f"/{SERVICE}/{name}")


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_unary_answers_and_many_concurrent_calls_each_get_their_own() -> None:
    async def main() -> None:
        probe = Probe()
        async with _serving(probe) as (_, channel):
            echo = _unary(channel, "Echo")
            assert await echo(b"hello") == b"hello"
            payloads = [bytes([i % 256]) * (i * 37) for i in range(200)]
            answers = await asyncio.gather(*(echo(p) for p in payloads))
            assert answers == payloads
            big = b"x" * (LIMIT - 1024)
            assert await echo(big) == big

    run(main())


def test_status_codes_as_grpc_aio_gives_them() -> None:
    async def main() -> None:
        probe = Probe()
        async with _serving(probe) as (_, channel):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _unary(channel, "Refuse")(b"bad input")
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.details() == "no: bad input"
            with pytest.raises(grpc.aio.AioRpcError) as crashed:
                await _unary(channel, "Crash")(b"")
            assert crashed.value.code() == grpc.StatusCode.UNKNOWN
            assert "boom" in (crashed.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await _unary(channel, "NoSuchMethod")(b"")
            assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
            with pytest.raises(grpc.aio.AioRpcError) as large:
                await _unary(channel, "Echo")(b"x" * (LIMIT + 1))
            assert large.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert await _unary(channel, "Echo")(b"still serving") == b"still serving"

    run(main())


def test_deadline_reaches_the_handler_and_expiry_cancels_it() -> None:
    async def main() -> None:
        probe = Probe()
        async with _serving(probe) as (_, channel):
            await _unary(channel, "Echo")(b"", timeout=5.0)
            await _unary(channel, "Echo")(b"")
            with_deadline, without = probe.remaining
            # gRPC sends the timeout rounded up to a coarser unit (10 ms or 100 ms steps
            # past a second), so the handler may see slightly more than the client gave.
            assert with_deadline is not None and 4.0 < with_deadline <= 5.2
            assert without is None
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await _unary(channel, "Hang")(b"", timeout=0.3)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.wait_for(probe.cancelled.wait(), 5)
            await asyncio.wait_for(probe.done.wait(), 5)

    run(main())


def test_client_cancellation_cancels_the_handler_and_runs_done_callbacks() -> None:
    async def main() -> None:
        probe = Probe()
        async with _serving(probe) as (server, channel):
            call = _unary(channel, "Hang")(b"")
            await asyncio.wait_for(probe.hang_started.wait(), 5)
            call.cancel()
            await asyncio.wait_for(probe.cancelled.wait(), 5)
            await asyncio.wait_for(probe.done.wait(), 5)
            for _ in range(100):  # the call's end reaches the loop after the callback
                if server.open_calls() == 0:
                    break
                await asyncio.sleep(0.01)
            assert server.open_calls() == 0

    run(main())


def test_metadata_text_and_binary() -> None:
    async def main() -> None:
        probe = Probe()
        async with _serving(probe) as (_, channel):
            answer = await _unary(channel, "Metadata")(
                b"", metadata=(("x-text", "hi there"), ("x-data-bin", b"\x00\xff"))
            )
            assert answer == repr(("hi there", b"\x00\xff")).encode()

    run(main())


def test_streams_both_ways() -> None:
    async def main() -> None:
        probe = Probe()
        async with _serving(probe) as (_, channel):
            count = channel.unary_stream(f"/{SERVICE}/Count")
            got = [m async for m in count(b"1000")]
            assert got == [str(i).encode() for i in range(1000)]
            write_style = channel.unary_stream(f"/{SERVICE}/WriteStyle")
            assert [m async for m in write_style(b"a,b,c")] == [b"a", b"b", b"c"]
            chat = channel.stream_stream(f"/{SERVICE}/Chat")
            call = chat()
            for word in (b"one", b"two", b"three"):
                await call.write(word)
                assert await call.read() == word.upper()
            await call.done_writing()
            assert await call.read() == grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK

    run(main())


def test_streamed_answers_wait_for_a_client_that_does_not_read() -> None:
    """Flow control: a handler writing to a client that reads nothing is held back
    once gRPC's window and the frontend's queue are full, instead of queueing all."""

    async def main() -> None:
        probe = Probe()
        async with _serving(probe) as (_, channel):
            count = channel.unary_stream(f"/{SERVICE}/Count")
            call = count(str(1_000_000).encode())
            await asyncio.sleep(1.0)
            held_at = probe.written
            assert 0 < held_at < 1_000_000
            first = [await call.read() for _ in range(10)]
            assert first == [str(i).encode() for i in range(10)]
            call.cancel()

    run(main())


def test_stop_lets_calls_in_progress_finish_within_the_grace() -> None:
    async def main() -> None:
        probe = Probe()
        server, port = await _started(probe)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = _unary(channel, "Hang")(b"")
            await asyncio.wait_for(probe.hang_started.wait(), 5)
            stopping = asyncio.create_task(server.stop(5.0))
            await asyncio.sleep(0.3)
            assert not stopping.done()  # waits for the call in progress
            probe.release.set()
            assert await call == b"released"
            await asyncio.wait_for(stopping, 5)

    run(main())


def test_stop_cuts_off_what_outlives_the_grace() -> None:
    async def main() -> None:
        probe = Probe()
        server, port = await _started(probe)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = _unary(channel, "Hang")(b"")
            await asyncio.wait_for(probe.hang_started.wait(), 5)
            await asyncio.wait_for(server.stop(0.2), 10)
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await call
            assert cut.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)

    run(main())


def test_a_taken_port_fails_the_start() -> None:
    async def main() -> None:
        first, port = await _started(Probe())
        second = _server(Probe())
        with pytest.raises(OSError):  # held from listen on, before anything loads
            second.listen("127.0.0.1", port)
        # A worker of several binds beside its siblings only as it starts: the port of
        # a lone server (no SO_REUSEPORT) stays refused there too.
        worker = _server(Probe(), reuse_port=True)
        worker.listen("127.0.0.1", port)
        try:
            assert await worker.start() == 0
        finally:
            await first.stop(0)
            await worker.stop(0)

    run(main())


def test_a_held_port_is_the_one_the_server_takes() -> None:
    async def main() -> None:
        port = free_port()
        server = _server(Probe())
        server.listen("127.0.0.1", port)
        assert await server.start() == port
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                assert await _unary(channel, "Echo")(b"held") == b"held"
            # Once started, the port is taken for others.
            with socket.socket() as late, pytest.raises(OSError):
                late.bind(("127.0.0.1", port))
        finally:
            await server.stop(0)

    run(main())

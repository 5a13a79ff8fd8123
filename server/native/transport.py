"""The gRPC port on gRPC's C++ server, with the services in Python.

``NativeServer`` stands where ``grpc.aio.Server`` stands: the generated
``add_*_to_server`` functions register their method handlers with it, and the handlers
run unchanged on the asyncio loop with a servicer context that offers what they use
(``abort``, ``time_remaining``, ``invocation_metadata``, ``add_done_callback``, ``write``).
What differs is below them: HTTP/2, TLS, flow control and message framing run on the C++
server's own threads (``frontend.cpp``), and the loop wakes once for every group of
events that arrived meanwhile instead of once per request, without grpcio's per-call
machinery. On a busy port that is where a Python gRPC server spent most of its time.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, NamedTuple

import grpc

from warpserve.server.native.context import Abort, Context, Requests
from warpserve.server.tls import TlsSettings

log = logging.getLogger("warpserve")

try:
    from warpserve.server.native import _frontend
except ImportError as exc:  # built only where gRPC's C++ library was found
    _frontend = None  # type: ignore[assignment]
    MISSING = (
        f"the native gRPC frontend is not built ({exc}); install gRPC's C++ library "
        "(Debian/Ubuntu: apt-get install libgrpc++-dev pkg-config g++) and reinstall warpserve"
    )
else:
    MISSING = ""

OK = grpc.StatusCode.OK.value[0]
CANCELLED = grpc.StatusCode.CANCELLED.value[0]
UNKNOWN = grpc.StatusCode.UNKNOWN.value[0]
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED.value[0]
# A stopping server waits until no call has arrived for this long (within its grace).
QUIET_S = 0.1


def available() -> bool:
    return _frontend is not None


def grpc_version() -> str:
    return "" if _frontend is None else str(_frontend.GRPC_VERSION)


# What a together handler answers for each call it was handed: the serialized answer;
# an error status; the rest of the call's work, to run as its task (it gets the call's
# context and returns the serialized answer); or None: the method's handler serves it.
TogetherAnswer = (
    bytes | tuple[grpc.StatusCode, str] | Callable[[Context], Awaitable[bytes | None]] | None
)
TogetherHandler = Callable[[list[bytes]], list[TogetherAnswer]]


class _Details(NamedTuple):
    """What a generic handler is asked about (grpc.HandlerCallDetails' fields)."""

    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...]


class NativeServer:
    """A gRPC server on the C++ frontend, registered with and run like grpc.aio's."""

    def __init__(self, max_receive: int, max_send: int, reuse_port: bool) -> None:
        if _frontend is None:
            raise RuntimeError(MISSING)
        self._max_receive = max_receive
        self._max_send = max_send
        self._reuse_port = reuse_port
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._together: dict[str, tuple[TogetherHandler, Callable[[], None] | None]] = {}
        # Calls a together handler answered, until gRPC has sent the answer: the
        # handler's ``sent`` callback then.
        self._answered: dict[int, Callable[[], None]] = {}
        self._generic: list[Any] = []
        self._target: str | None = None
        self._tls: TlsSettings | None = None
        self._hold: socket.socket | None = None
        self._calls: dict[int, Context] = {}
        self.frontend: Any = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._flush_due = False
        self._last_arrival = 0.0

    # --- registration, as generated code does it on grpc.aio.Server ---
    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            self._handlers[f"/{service}/{name}"] = handler

    def add_together_handler(
        self, method: str, handler: TogetherHandler, sent: Callable[[], None] | None = None
    ) -> None:
        """Hand ``method``'s unary calls that arrive together to ``handler`` at once,
        before any task starts: a handler that can answer them synchronously (a tiny
        model run inline, as one batch) spares each call a task and a servicer context.
        ``sent`` is called once gRPC has sent each answer the handler gave."""
        self._together[method] = (handler, sent)

    def listen(self, address: str, port: int, tls: TlsSettings | None = None) -> None:
        """Where start() will take calls (one address, as every server here has).

        The C++ server binds only as it starts, once the models are loaded; a given port
        is held from now on (bound, not listening, so no connection waits on it) by a
        socket that lets the server's own bind through (SO_REUSEPORT: same user only),
        so a port taken meanwhile fails here, before any model loads. Raises OSError."""
        if port and not self._reuse_port:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            hold = socket.socket(family, socket.SOCK_STREAM)
            try:
                hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                hold.bind((address.strip("[]"), port))
            except OSError:
                hold.close()
                raise
            self._hold = hold
        host = f"[{address.strip('[]')}]" if ":" in address else address
        self._target, self._tls = f"{host}:{port}", tls

    async def start(self) -> int:
        """Bind and start taking calls; returns the port (0: the bind failed)."""
        assert self._target is not None, "listen() first"
        streaming = [m for m, h in self._handlers.items() if h.request_streaming]
        self.frontend = _frontend.Frontend(streaming)
        tls = self._tls
        self.port = self.frontend.start(
            self._target,
            self._max_receive,
            self._max_send,
            self._reuse_port or self._hold is not None,
            private_key=None if tls is None else tls.private_key,
            cert_chain=None if tls is None else tls.cert_chain,
            root_certs=None if tls is None or tls.root_certs is None else tls.root_certs,
            mutual=tls is not None and tls.mutual,
        )
        if self._hold is not None:
            self._hold.close()
            self._hold = None
        if self.port:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self.frontend.fileno(), self._on_events)
        return self.port

    async def stop(self, grace: float | None) -> None:
        """Stop taking calls; those in progress get until ``grace`` to be answered."""
        if self.frontend is None or self._loop is None:
            return
        if self._stopped is None:
            self._stopped = self._loop.create_future()
            await self._quiet(grace or 0.0)
            try:
                await asyncio.to_thread(self.frontend.shutdown, grace or 0.0)
            finally:
                self._on_events()  # the last calls' ends
                self._loop.remove_reader(self.frontend.fileno())
                self._stopped.set_result(None)
        await self._stopped

    async def _quiet(self, grace: float) -> None:
        """Wait (within ``grace``) until no call has arrived for QUIET_S. gRPC's shutdown
        kills calls that reached the server but not yet a handler with CANCELLED, which
        clients do not retry; calls that reach the services are answered (a draining
        server refuses them with UNAVAILABLE), and callers told so stop arriving."""
        end = time.monotonic() + grace
        while (left := QUIET_S - (time.monotonic() - self._last_arrival)) > 0:
            if time.monotonic() + left > end:
                return
            await asyncio.sleep(left)

    # --- events ---
    def _on_events(self) -> None:
        calls = self._calls
        events = self.frontend.drain()
        together: dict[str, list[tuple[Any, ...]]] = {}
        for event in events:
            kind, call_id = event[0], event[1]
            if kind == 0:  # CALL
                method = event[2]
                if method in self._together:
                    together.setdefault(method, []).append(event)
                    continue
                self._begin(call_id, method, event[3], event[4], event[5])
                continue
            context = calls.get(call_id)
            if context is None:
                if kind == 4 and self._answered:  # DONE
                    sent = self._answered.pop(call_id, None)
                    if sent is not None:
                        sent()
                continue
            if kind == 1 or kind == 2:  # MESSAGE, HALF_CLOSE
                waiter = context.messages
                if waiter is not None and not waiter.done():
                    waiter.set_result(event[2] if kind == 1 else None)
            elif kind == 3:  # CANCELLED
                context.cancelled_by_client = True
                if context.task is not None and not context.task.done():
                    context.task.cancel()
            elif kind == 4:  # DONE
                del calls[call_id]
                context._ended()
            elif kind == 5:  # WRITABLE
                context._wake_writer()
        for method, group in together.items():
            self._begin_together(method, group)

    def _begin_together(self, method: str, group: list[tuple[Any, ...]]) -> None:
        """Hand calls of one method that arrived together to its together handler,
        answer what it answered, and start the others as tasks."""
        self._last_arrival = time.monotonic()
        handler, sent = self._together[method]
        try:
            answers = handler([event[3] for event in group])
        except Exception:
            log.exception("gRPC together handler for %s failed", method)
            answers = [None] * len(group)
        for event, answer in zip(group, answers, strict=True):
            call_id = event[1]
            if isinstance(answer, bytes | tuple):
                if sent is not None:
                    self._answered[call_id] = sent
                if isinstance(answer, bytes):
                    self._finish(call_id, OK, "", answer)
                else:
                    self._finish(call_id, answer[0].value[0], answer[1])
            else:
                self._begin(call_id, method, event[3], event[4], event[5], answer)

    def _handler(self, method: str, metadata: tuple[Any, ...]) -> grpc.RpcMethodHandler | None:
        handler = self._handlers.get(method)
        if handler is None:
            for generic in self._generic:
                handler = generic.service(_Details(method, metadata))
                if handler is not None:
                    self._handlers[method] = handler
                    break
        return handler

    def _begin(
        self,
        call_id: int,
        method: str,
        payload: bytes | None,
        timeout: float | None,
        metadata: tuple[tuple[str, str | bytes], ...],
        rest: Callable[[Context], Awaitable[bytes | None]] | None = None,
    ) -> None:
        """Start a call's task: its handler, or ``rest`` (what a together handler left
        of its work) where given."""
        self._last_arrival = time.monotonic()
        handler = self._handler(method, metadata)
        if handler is None:
            self._finish(call_id, UNIMPLEMENTED, "Method not found!")
            return
        context = Context(self.frontend, call_id, timeout, metadata, handler.response_serializer)
        self._calls[call_id] = context
        assert self._loop is not None
        answer = self._answer(handler, context, payload) if rest is None else rest(context)
        context.task = self._loop.create_task(self._run(context, answer))

    def _finish(
        self, call_id: int, code: int, details: str = "", payload: bytes | None = None
    ) -> None:
        """Queue a call's answer; the frontend sends what this loop iteration queued
        once it is over (one wakeup of its sending thread per group of answers)."""
        self.frontend.finish(call_id, code, details, payload)
        if not self._flush_due:
            self._flush_due = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        self.frontend.flush()

    async def _run(self, context: Context, answer: Awaitable[bytes | None]) -> None:
        try:
            reply = await answer
        except Abort as abort:
            self._finish(context.id, abort.code.value[0], abort.details)
        except asyncio.CancelledError:
            self._finish(context.id, CANCELLED, "cancelled")
        except Exception as exc:
            log.exception("gRPC handler for call %d failed", context.id)
            self._finish(context.id, UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}")
        else:
            code = OK if context.code is None else context.code.value[0]
            if code != OK:
                self._finish(context.id, code, context.details)
            else:
                self._finish(context.id, OK, "", reply)

    async def _answer(
        self, handler: grpc.RpcMethodHandler, context: Context, payload: bytes | None
    ) -> bytes | None:
        """The handler's answer, serialized (None: its messages were written)."""
        parse = handler.request_deserializer
        if handler.request_streaming:
            requests: Any = Requests(context, parse)
        else:
            assert payload is not None
            requests = parse(payload) if parse is not None else payload
        if handler.unary_unary is not None:
            return _serialized(handler, await handler.unary_unary(requests, context))
        if handler.stream_unary is not None:
            return _serialized(handler, await handler.stream_unary(requests, context))
        behaviour = handler.unary_stream or handler.stream_stream
        assert behaviour is not None
        result = behaviour(requests, context)
        if inspect.isasyncgen(result):
            await _write_all(result, context)
        else:
            await result
        return None

    def open_calls(self) -> int:
        return len(self._calls)


def _serialized(handler: grpc.RpcMethodHandler, response: Any) -> bytes | None:
    if response is None:
        return None
    serialize = handler.response_serializer
    return serialize(response) if serialize is not None else response


async def _write_all(messages: AsyncIterator[Any], context: Context) -> None:
    async for message in messages:
        await context.write(message)

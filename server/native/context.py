"""What a handler on the native frontend gets: its servicer context (the part of
``grpc.aio.ServicerContext`` the services use) and, for a stream of requests, the async
iterator that reads them one at a time as the handler asks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

log = logging.getLogger("warpserve")

try:  # streamed answers queued in the frontend from this many on make write() wait
    from warpserve.server.native._frontend import HIGH_WRITES
except ImportError:  # not built: no context is ever made
    HIGH_WRITES = 0


class Abort(grpc.aio.AbortError):
    """What ``context.abort`` raises: the call ends with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details


class Context:
    """The servicer context a handler gets for one call."""

    __slots__ = (
        "_callbacks",
        "_deadline",
        "_frontend",
        "_metadata",
        "_serialize",
        "_writable",
        "cancelled_by_client",
        "code",
        "details",
        "id",
        "messages",
        "task",
    )

    def __init__(
        self,
        frontend: Any,
        call_id: int,
        timeout: float | None,
        metadata: tuple[tuple[str, str | bytes], ...],
        serialize: Callable[[Any], bytes] | None,
    ) -> None:
        self._frontend = frontend  # the native frontend (_frontend.Frontend)
        self.id = call_id
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._metadata = metadata
        self._serialize = serialize
        self._callbacks: list[Callable[[Context], None]] = []
        self._writable: asyncio.Future[None] | None = None
        self.messages: asyncio.Future[bytes | None] | None = None  # the read in progress
        self.task: asyncio.Task[None] | None = None
        self.cancelled_by_client = False
        self.code: grpc.StatusCode | None = None
        self.details = ""

    # --- what grpc.aio.ServicerContext offers and the handlers use ---
    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: object = ()
    ) -> None:
        raise Abort(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def add_done_callback(self, callback: Callable[[Context], None]) -> None:
        self._callbacks.append(callback)

    def cancelled(self) -> bool:
        return self.cancelled_by_client

    def peer(self) -> str:
        return ""

    async def write(self, message: Any) -> None:
        """Send one message of a streamed answer; waits while many are queued."""
        data = self._serialize(message) if self._serialize is not None else message
        if self._frontend.write(self.id, data) >= HIGH_WRITES:
            self._writable = asyncio.get_running_loop().create_future()
            await self._writable

    async def read(self) -> bytes | None:
        """The next message of a streamed request (raw), None once the client is done."""
        self.messages = asyncio.get_running_loop().create_future()
        self._frontend.read(self.id)
        return await self.messages

    # --- events from the frontend ---
    def _wake_writer(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def _ended(self) -> None:
        self._wake_writer()
        if self.messages is not None and not self.messages.done():
            self.messages.set_result(None)
        for callback in self._callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("done callback of a gRPC call failed")


class Requests:
    """The async iterator a stream-request handler reads its messages from."""

    __slots__ = ("_context", "_deserialize")

    def __init__(self, context: Context, deserialize: Callable[[bytes], Any] | None) -> None:
        self._context = context
        self._deserialize = deserialize

    def __aiter__(self) -> Requests:
        return self

    async def __anext__(self) -> Any:
        data = await self._context.read()
        if data is None:
            raise StopAsyncIteration
        return self._deserialize(data) if self._deserialize is not None else data

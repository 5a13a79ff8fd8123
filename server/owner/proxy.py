"""A frontend's side of its connection to the model owner.

``OwnerProxy`` is what a frontend's data plane calls for a model placed on the owner
(see ``placement``): it sends the decoded request, with its large tensors in this
connection's shared memory, and waits for the answer. The owner's errors come back
as the same error classes, so the client sees the status the owner chose.

While the owner is unreachable (not started yet, died, being restarted) its models
answer UNAVAILABLE, and the proxy reconnects in the background; requests in flight
when the connection drops answer UNAVAILABLE too (the owner may or may not have run
them, as with any server that goes away).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from warpserve.server import errors
from warpserve.server.batching.request import Outputs
from warpserve.server.codec import InferRequest
from warpserve.server.errors import Unavailable, WarpserveError
from warpserve.server.owner import handshake, wire
from warpserve.server.owner.arena import Allocator, Arena

log = logging.getLogger(__name__)

# Each half of a connection's arena. Pages are touched only as tensors use them; a
# tensor that finds no room travels inline instead.
DEFAULT_ARENA_BYTES = 64 * 1024 * 1024
RECONNECT_FIRST_S = 0.02
RECONNECT_MAX_S = 0.5


@dataclass(frozen=True)
class RemoteVersion:
    """The owner's version that answered (what the transports report)."""

    name: str
    version: int


@dataclass
class _Pending:
    future: asyncio.Future[tuple[RemoteVersion, Outputs]]
    blocks: wire.Blocks  # request tensors in our half, reused once answered
    request: InferRequest  # takes the answer's parameters


class OwnerProxy:
    def __init__(
        self,
        socket_path: Path,
        owned: Iterable[str] = (),
        *,
        arena_bytes: int = DEFAULT_ARENA_BYTES,
        inline_below: int = wire.INLINE_BELOW,
    ) -> None:
        self.socket_path = socket_path
        # Known before the owner answers (from placement), so its models answer
        # UNAVAILABLE, not NOT_FOUND, while it is down; the owner's list replaces it.
        self.owned: frozenset[str] = frozenset(owned)
        self.arena_bytes = arena_bytes
        self.inline_below = inline_below
        self.owner_pid = 0
        self._ids = itertools.count(1)
        self._channel: wire.Channel | None = None
        self._arena: Arena | None = None
        self._requests: Allocator | None = None
        self._pending: dict[int, _Pending] = {}
        self._frees: list[int] = []
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = False
        self.connected = asyncio.Event()

    # -- the data plane's view ---------------------------------------------------------

    def owns(self, model_name: str) -> bool:
        return model_name in self.owned

    async def infer(
        self, request: InferRequest, deadline_s: float | None
    ) -> tuple[RemoteVersion, Outputs]:
        channel, arena = self._channel, self._arena
        if channel is None or arena is None:
            raise Unavailable(
                f"model '{request.model_name}' is served by the model owner process, which "
                "is not running (it is being started or restarted); retry the request"
            )
        rid = next(self._ids)
        # Outputs for client shared memory are written here, from the answer: the owner
        # sees plain tensors.
        message = (
            "infer",
            rid,
            request.model_name,
            request.model_version,
            request.id,
            request.outputs,
            request.parameters,
            request.classes,
            deadline_s,
        )
        frame, blocks = wire.encode(
            message, request.inputs, arena, self._requests, self.inline_below
        )
        future: asyncio.Future[tuple[RemoteVersion, Outputs]]
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = _Pending(future, blocks, request)
        channel.send(frame)
        try:
            return await future
        except asyncio.CancelledError:
            # The client went away: the request leaves the owner's queue. Its blocks
            # stay taken until the owner's "done" says nothing reads them any more.
            if rid in self._pending:
                channel.send(wire.encode(("cancel", rid))[0])
            raise

    # -- connection --------------------------------------------------------------------

    async def start(self) -> None:
        """Connect now if the owner is there, else keep trying in the background."""
        if not await self._connect():
            self._reconnect_later()

    async def wait_connected(self, timeout_s: float) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout_s)

    async def _connect(self) -> bool:
        loop = asyncio.get_running_loop()
        arena = Arena.create(self.arena_bytes, f"warpserve-frontend-{os.getpid()}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await asyncio.to_thread(sock.connect, str(self.socket_path))
            welcome = await asyncio.to_thread(handshake.hello, sock, arena, self.inline_below)
            channel = wire.Channel(arena, self._on_message, self._on_lost, copy_blocks=True)
            await loop.connect_accepted_socket(lambda: channel, sock)
        except (OSError, ConnectionError, EOFError, ValueError) as exc:
            log.debug("model owner at %s not reachable: %s", self.socket_path, exc)
            sock.close()
            arena.close()
            return False
        if self._closed:
            channel.close()
            arena.close()
            return False
        self._channel, self._arena, self._requests = channel, arena, arena.requests()
        self.owned = frozenset(welcome.get("models", ()))
        self.owner_pid = int(welcome.get("pid", 0))
        self.connected.set()
        log.info(
            "connected to the model owner (pid %d, models: %s)",
            self.owner_pid,
            ", ".join(sorted(self.owned)) or "none",
        )
        return True

    def _reconnect_later(self) -> None:
        if self._closed or (self._reconnecting and not self._reconnecting.done()):
            return
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = RECONNECT_FIRST_S
        while not self._closed:
            await asyncio.sleep(delay)
            if await self._connect():
                return
            delay = min(delay * 2, RECONNECT_MAX_S)

    def _on_lost(self, exc: Exception | None) -> None:
        self.connected.clear()
        pending, self._pending = self._pending, {}
        arena, self._arena, self._channel, self._requests = self._arena, None, None, None
        self._frees = []
        for entry in pending.values():
            if not entry.future.done():
                entry.future.set_exception(
                    Unavailable(
                        "the model owner process went away while serving this request; "
                        "retry it (the owner is being restarted)"
                    )
                )
        if arena is not None:
            arena.close()
        if not self._closed:
            log.warning("lost the model owner (pid %d); reconnecting", self.owner_pid)
            self._reconnect_later()

    async def close(self) -> None:
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            await asyncio.gather(self._reconnecting, return_exceptions=True)
        if self._channel is not None:
            self._channel.close()
            # connection_lost runs on a later loop pass; it releases the arena.
            while self._channel is not None:
                await asyncio.sleep(0)

    # -- answers -----------------------------------------------------------------------

    def _on_message(
        self, message: wire.Message, tensors: wire.Tensors, blocks: wire.Blocks
    ) -> None:
        if blocks:  # answer tensors were copied out: the owner may reuse their memory
            self._release([offset for offset, _ in blocks])
        kind, rid = message[0], message[1]
        entry = self._pending.pop(rid, None)
        if entry is None:
            return
        if self._requests is not None:
            for offset, _ in entry.blocks:
                self._requests.free(offset)
        if entry.future.done():  # cancelled by its caller
            return
        if kind == "ok":
            _, _, name, version, parameters = message
            if parameters:
                entry.request.response_parameters = parameters
            entry.future.set_result((RemoteVersion(name, version), tensors))
        elif kind == "error":
            entry.future.set_exception(_error(*message[2:]))
        else:  # "done": the owner dropped it, as we asked
            entry.future.cancel()

    def _release(self, offsets: list[int]) -> None:
        """Free the owner's blocks in one message per loop pass, not one per answer."""
        if not self._frees:
            asyncio.get_running_loop().call_soon(self._flush_frees)
        self._frees.extend(offsets)

    def _flush_frees(self) -> None:
        frees, self._frees = self._frees, []
        if frees and self._channel is not None:
            self._channel.send(wire.encode(("free", frees))[0])


_ERRORS: dict[str, type[WarpserveError]] = {
    name: cls
    for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, WarpserveError)
}


def _error(class_name: str, code: str, message: str) -> WarpserveError:
    """The owner's error as raised here: the same class where it is one of ours, with
    the owner's status in any case."""
    error = _ERRORS.get(class_name, WarpserveError)(message)
    status = getattr(grpc.StatusCode, code, grpc.StatusCode.INTERNAL)
    if error.code is not status:
        error.code = status
    return error

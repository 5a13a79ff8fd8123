"""The model owner's side of the frontend connections.

Every frontend process connects once to the owner's unix socket. A request for an
owner-placed model arrives decoded (its tensors as views of the frontend's shared
memory), is served by the owner's own data plane (routing, validation, the version's
batcher: requests of all frontends meet in one queue, so they batch together and a
request with several rows counts all of them), and its answer goes back with its
tensors in the owner's half of the arena. Errors go back as the error's class and
gRPC status, so the frontend answers the client with the status the owner chose.

A frontend cancels a request whose client went away; the request leaves the queue
(or, already running, its answer is dropped). The owner always answers a request
exactly once, cancelled or not: only then may the frontend reuse its tensors' memory.
A cancelled request still running reads that memory through read-only views, so a
reuse can never change what another request computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from warpserve.server import fallback as fallbacks
from warpserve.server.batching.request import Outputs
from warpserve.server.codec import InferRequest
from warpserve.server.dataplane import Answered, DataPlane
from warpserve.server.errors import WarpserveError
from warpserve.server.owner import handshake, wire
from warpserve.server.owner.arena import Allocator, Arena

log = logging.getLogger(__name__)


class FrontendConnection:
    """One frontend process: its arena, its requests in flight."""

    def __init__(self, service: OwnerService, arena: Arena, pid: int, inline_below: int) -> None:
        self.service = service
        self.arena = arena
        self.pid = pid
        self.inline_below = inline_below
        self.answers: Allocator = arena.answers()
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._releasing: asyncio.Task[None] | None = None
        self.channel = wire.Channel(arena, self._on_message, self._on_lost, copy_blocks=False)

    # -- requests ------------------------------------------------------------------------

    def _on_message(
        self, message: wire.Message, tensors: wire.Tensors, blocks: wire.Blocks
    ) -> None:
        kind = message[0]
        if kind == "infer":
            _, rid, model, version, request_id, outputs, parameters, classes, deadline_s = message
            request = InferRequest(
                model,
                version,
                request_id,
                tensors,
                outputs,
                parameters,
                classes=classes,
                # Its tensors view memory the frontend reuses once answered (a shadow copies).
                shared_inputs=bool(blocks),
            )
            self._infer(rid, request, deadline_s)
        elif kind == "cancel":
            task = self.tasks.get(message[1])
            if task is not None:
                task.cancel()
        elif kind == "free":
            for offset in message[1]:
                self.answers.free(offset)
        else:
            log.error("frontend %d sent an unknown message %r; closing it", self.pid, kind)
            self.channel.close()

    def _infer(self, rid: int, request: InferRequest, deadline_s: float | None) -> None:
        dataplane = self.service.dataplane
        work: Coroutine[Any, Any, tuple[Answered, Outputs]]
        try:
            mv, outputs = dataplane.infer_now(request)
        except fallbacks.FALLBACK_ERRORS as exc:  # its model's fallback may answer
            work = dataplane.recover(request, exc, deadline_s)
        except Exception as exc:
            self._fail(rid, exc)
            return
        else:
            if outputs is not None:
                self._answer(rid, ("ok", rid, mv.name, mv.version, None), outputs)
                return
            work = dataplane.infer_queued(mv, request, deadline_s)
        task = asyncio.get_running_loop().create_task(self._queued(rid, request, work))
        self.tasks[rid] = task
        task.add_done_callback(lambda done: self._finished(rid, done))

    async def _queued(
        self, rid: int, request: InferRequest, work: Awaitable[tuple[Answered, Outputs]]
    ) -> None:
        try:
            answered, outputs = await work
        except Exception as exc:
            self._fail(rid, exc)
            return
        # Parameters the answer carries (a fallback answered) travel with it.
        message = ("ok", rid, answered.name, answered.version, request.response_parameters)
        self._answer(rid, message, outputs)

    def _finished(self, rid: int, task: asyncio.Task[None]) -> None:
        self.tasks.pop(rid, None)
        if task.cancelled():  # (possibly before it started) the frontend asked for it
            self._answer(rid, ("done", rid))

    def _fail(self, rid: int, exc: BaseException) -> None:
        if isinstance(exc, WarpserveError):
            self._answer(rid, ("error", rid, type(exc).__name__, exc.code.name, str(exc)))
            return
        log.exception("model owner: request failed", exc_info=exc)
        message = f"internal error in the model owner: {type(exc).__name__}: {exc}"
        self._answer(rid, ("error", rid, "", "INTERNAL", message))

    def _answer(self, rid: int, message: wire.Message, tensors: wire.Tensors | None = None) -> None:
        try:
            frame, _ = wire.encode(message, tensors, self.arena, self.answers, self.inline_below)
        except Exception as exc:  # an output that cannot travel
            failure = f"the model owner could not send the answer: {type(exc).__name__}: {exc}"
            frame, _ = wire.encode(("error", rid, "", "INTERNAL", failure))
        self.channel.send(frame)  # blocks of a lost connection go with its arena

    # -- end -----------------------------------------------------------------------------

    def _on_lost(self, exc: Exception | None) -> None:
        # The frontend is gone: its queued requests leave the queues, and once none
        # reads its memory any more the arena goes.
        for task in list(self.tasks.values()):
            task.cancel()
        self._releasing = asyncio.get_running_loop().create_task(self._release())
        log.info("frontend %d disconnected from the model owner", self.pid)

    async def _release(self) -> None:
        await self.wait_idle()
        self.arena.close()
        self.closed.set_result(None)

    async def wait_idle(self) -> None:
        while self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            # Finished tasks leave self.tasks in done callbacks the loop runs later, and
            # since Python 3.12 gathering finished tasks does not yield to the loop: give
            # it a turn, or this spins forever.
            await asyncio.sleep(0)

    async def close(self) -> None:
        self.channel.close()
        await self.closed


class OwnerService:
    """Accepts frontend connections on ``socket_path`` and serves their requests with
    ``dataplane``. ``owned`` lists the models it owns, told to each frontend."""

    def __init__(
        self, dataplane: DataPlane, socket_path: Path, owned: Callable[[], list[str]]
    ) -> None:
        self.dataplane = dataplane
        self.socket_path = socket_path
        self._owned = owned
        self.connections: set[FrontendConnection] = set()
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._opening: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a previous owner's, which is gone
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        os.chmod(self.socket_path, 0o600)  # frontends run as the owner's user
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._accepting = asyncio.get_running_loop().create_task(self._accept())
        log.info("model owner listening on %s", self.socket_path)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            sock, _ = await loop.sock_accept(self._listener)
            opening = loop.create_task(self._open(sock))
            self._opening.add(opening)
            opening.add_done_callback(self._opening.discard)

    async def _open(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            arena, greeting = await asyncio.to_thread(handshake.welcome, sock, self._owned())
        except EOFError:
            sock.close()
            return
        except (OSError, ValueError, ConnectionError) as exc:
            log.error("model owner: a frontend's handshake failed: %s", exc)
            sock.close()
            return
        inline_below = int(greeting.get("inline_below", wire.INLINE_BELOW))
        connection = FrontendConnection(self, arena, int(greeting.get("pid", 0)), inline_below)
        await loop.connect_accepted_socket(lambda: connection.channel, sock)
        self.connections.add(connection)
        connection.closed.add_done_callback(lambda _: self.connections.discard(connection))
        log.info("frontend %d connected to the model owner", connection.pid)

    async def stop_accepting(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    async def wait_idle(self) -> None:
        """Until every request received is answered."""
        await asyncio.gather(*(c.wait_idle() for c in list(self.connections)))

    async def close(self) -> None:
        await self.stop_accepting()
        await asyncio.gather(*(c.close() for c in list(self.connections)))

"""The internal calls between a supervisor and its workers: JSON over gRPC on unix sockets.

One generic method per service carries ``{"op": ..., "args": {...}}`` and answers
``{"ok": result}`` or ``{"error": class name, "message": ...}``; a WarpserveError raised
in one process is raised again, same class and message, in the caller, so the public
servicers map it to the status code they would have used for a local failure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from warpserve.server import errors

log = logging.getLogger(__name__)

WORKER_SERVICE = "warpserve.control.v1.Worker"
SUPERVISOR_SERVICE = "warpserve.control.v1.Supervisor"
METHOD = "Call"

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]


def _error_classes() -> dict[str, type[errors.WarpserveError]]:
    found: dict[str, type[errors.WarpserveError]] = {}
    pending: list[type[errors.WarpserveError]] = [errors.WarpserveError]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


ERRORS = _error_classes()


def encode_error(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, errors.WarpserveError):
        return {"error": type(exc).__name__, "message": str(exc)}
    log.exception("internal call failed", exc_info=exc)
    return {"error": "WarpserveError", "message": f"internal error: {type(exc).__name__}: {exc}"}


def raise_error(reply: dict[str, str]) -> None:
    cls = ERRORS.get(reply["error"], errors.WarpserveError)
    raise cls(reply["message"])


def add_service(server: grpc.aio.Server, service: str, handler: Handler) -> None:
    async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        message = json.loads(request)
        try:
            reply: dict[str, Any] = {"ok": await handler(message["op"], message["args"])}
        except Exception as exc:  # every failure goes back to the caller, typed
            reply = encode_error(exc)
        return json.dumps(reply).encode()

    method = grpc.unary_unary_rpc_method_handler(call)  # bytes in, bytes out
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {METHOD: method}),)
    )


def unix_target(path: str) -> str:
    return f"unix:{path}"


class ControlClient:
    """Calls one process's internal service; a transport failure raises grpc.aio.AioRpcError."""

    def __init__(self, socket_path: str, service: str) -> None:
        self.socket_path = socket_path
        self._channel = grpc.aio.insecure_channel(unix_target(socket_path))
        self._call = self._channel.unary_unary(f"/{service}/{METHOD}")

    async def call(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        request = json.dumps({"op": op, "args": args}).encode()
        reply = json.loads(await self._call(request, timeout=timeout))
        if "error" in reply:
            raise_error(reply)
        return reply["ok"]

    async def close(self) -> None:
        await self._channel.close()

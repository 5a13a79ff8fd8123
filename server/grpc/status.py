"""The one place that turns exceptions into gRPC status codes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from warpserve.server.errors import WarpserveError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, WarpserveError):
        return exc.code, str(exc)
    log.exception("unexpected error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def maps_errors(method: F) -> F:
    """Abort the call with the mapped status when the wrapped handler raises."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except (WarpserveError, ValueError, KeyError, TypeError) as exc:
            code, message = status_of(exc)
        await context.abort(code, message)

    return wrapper  # type: ignore[return-value]

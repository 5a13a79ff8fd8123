"""The one place that turns exceptions into HTTP status codes, as Triton's HTTP endpoint
does: not found 404, unavailable 503, unsupported 501, internal 500, everything else it
knows (invalid argument, already exists, cancelled) 400. Codes Triton does not have
follow the usual gRPC-to-HTTP mapping (deadline 504, credentials 401/403, a server-wide
limit 429); a body over ``--http-max-input-size`` is 413.
"""

from __future__ import annotations

import grpc

from warpserve.server.errors import ResourceExhausted
from warpserve.server.grpc.status import status_of

_HTTP = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
}
BAD_REQUEST = 400
TOO_LARGE = 413

MAX_INPUT_FLAG = "--http-max-input-size"


class BodyTooLarge(ResourceExhausted):
    """A request body over the HTTP endpoint's limit."""

    def __init__(self, size: int | None, limit: int) -> None:
        told = f"{size} bytes" if size is not None else "more bytes than that"
        super().__init__(
            f"the request body is {told}, over this server's HTTP limit of {limit} bytes; "
            f"restart the server with {MAX_INPUT_FLAG} set above it, send fewer rows per "
            "request, or use the gRPC endpoint or shared memory for large tensors"
        )


def http_status(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and message answering ``exc``."""
    code, message = status_of(exc)
    if isinstance(exc, BodyTooLarge):
        return TOO_LARGE, message
    return _HTTP.get(code, BAD_REQUEST), message

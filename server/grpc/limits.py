"""The gRPC message size limit (``--grpc-max-message-bytes``), refused with a fix-it hint.

gRPC refuses a message over ``grpc.max_receive_message_length`` before the application
sees it, with a bare "Received message larger than max (N vs. M)" that names no flag. So
the transport's limit is set above the configured one (``receive_ceiling``), and a
request between the two reaches the deserializers here, which refuse it with
RESOURCE_EXHAUSTED naming the flag. Past the ceiling gRPC's own refusal stands.

The cost, measured with a 200 MiB request against an 8 MiB limit: gRPC's own check
refuses it without buffering (the server's peak memory did not move), while a request
let through to be refused here is buffered whole, about three times its size at the
peak. Hence a ceiling at twice the limit (at least 64 MiB above it), not at 2 GiB.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server import codec, wireplans
from warpserve.server.errors import ResourceExhausted
from warpserve.server.grpc.status import status_of

FLAG = "--grpc-max-message-bytes"
INT32_MAX = 2**31 - 1  # protobuf's and gRPC's largest message
MIN_HEADROOM = 64 * 1024 * 1024


def receive_ceiling(limit: int) -> int:
    """gRPC's own receive limit: requests up to here get the fix-it refusal."""
    return min(INT32_MAX, limit + max(limit, MIN_HEADROOM))


def too_large(size: int, limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"the request is {size} bytes, over this server's gRPC message limit of {limit} "
        f"bytes; restart the server with {FLAG} set above {size} (at most {INT32_MAX}), or "
        "send fewer rows per request"
    )


def answer_too_large(size: int, limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"the answer is {size} bytes, over this server's gRPC message limit of {limit} "
        f"bytes; restart the server with {FLAG} set above {size} (at most {INT32_MAX}), "
        "send fewer rows per request, or have the outputs written to shared memory"
    )


def infer_receiver(limit: int) -> Callable[[bytes], codec.ReceivedInfer]:
    """ModelInfer's and ModelStreamInfer's deserializer: refuses without parsing."""

    def receive(data: bytes) -> codec.ReceivedInfer:
        if len(data) > limit:
            return codec.ReceivedInfer(pb.ModelInferRequest(), error=too_large(len(data), limit))
        return wireplans.receive(data)

    return receive


class _Oversized:
    """Stands for a request too large to parse; the handler refuses it."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


def bounded_unary(handler: grpc.RpcMethodHandler, limit: int) -> grpc.RpcMethodHandler:
    """A unary-unary handler that refuses requests over ``limit`` with the fix-it hint.

    A deserializer that raises makes gRPC answer with no detail, so the oversized
    request travels to the behaviour as a marker and is refused there.
    """
    parse = handler.request_deserializer
    behaviour = handler.unary_unary
    assert behaviour is not None, "bounded_unary takes unary-unary handlers"

    def deserialize(data: bytes) -> Any:
        if len(data) > limit:
            return _Oversized(len(data))
        return parse(data) if parse is not None else data

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Oversized):
            await context.abort(*status_of(too_large(request.size, limit)))
        return await behaviour(request, context)

    return grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=deserialize, response_serializer=handler.response_serializer
    )


class _Registrar:
    """Stands in for a server to collect what generated ``add_*_to_server`` registers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same handlers arrive through add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.services[service] = handlers


def add_bounded(
    add_to_server: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server, limit: int
) -> None:
    """Register a generated service with its unary-unary methods bounded by ``limit``."""
    registrar = _Registrar()
    add_to_server(servicer, registrar)
    for service, handlers in registrar.services.items():
        bounded = {
            name: bounded_unary(h, limit) if h.unary_unary else h for name, h in handlers.items()
        }
        generic = grpc.method_handlers_generic_handler(service, bounded)
        server.add_generic_rpc_handlers((generic,))
        server.add_registered_method_handlers(service, bounded)

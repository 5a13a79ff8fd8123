"""warpserve's error types and the one place that maps them to gRPC status codes.

Every failure a client can cause or observe is one of these; servicers never pick a
status code themselves (see ``warpserve.server.grpc.status``).
"""

from __future__ import annotations

import grpc

# Triton's wording, which clients match on to tell "no such model" from other failures:
# messages about a model or version that cannot serve begin with it, and one about a
# requested output the model lacks begins with ``unknown_output``'s text.
UNKNOWN_MODEL = "Request for unknown model"


def unknown_output(output: str, model: str) -> str:
    return f"unexpected inference output '{output}' for model '{model}'"


class WarpserveError(Exception):
    """Base class: a message written as a fix-it hint, and the status it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInput(WarpserveError):
    """The request is malformed: tensor names, shapes, dtypes, sizes, parameters."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(WarpserveError):
    """No such model, or no such version of it."""

    code = grpc.StatusCode.NOT_FOUND


class Unavailable(WarpserveError):
    """Loading, unloading, not ready, draining: retry later or elsewhere."""

    code = grpc.StatusCode.UNAVAILABLE


class QueueFull(Unavailable):
    """The version's queue is at max_queue_size (retryable, Triton's choice)."""


class LoadShed(Unavailable):
    """A low-priority request refused while the version's queue is over its level's
    shed_queue_size: retryable, so a spike degrades low-priority traffic first."""


class DeadlineExceeded(WarpserveError):
    """The client's deadline or the queue policy's timeout passed while queued."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class BackendError(WarpserveError):
    """The model raised while running this request."""

    code = grpc.StatusCode.INTERNAL


class ModelLoadError(WarpserveError):
    """A model version could not be loaded, warmed up or verified."""

    code = grpc.StatusCode.INTERNAL


class GoldenMismatch(ModelLoadError):
    """A version's outputs differ from the golden outputs stored with it. Nothing
    raised: the version folder (model or golden data) must change before it can load."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(WarpserveError):
    """An admin call without credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(WarpserveError):
    """An admin call whose credentials are wrong, or a feature the server was started
    without (client shared memory)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(WarpserveError):
    """The call is valid but the model is not in a state that allows it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(WarpserveError):
    """A named object other than a model (a shared memory region) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(WarpserveError):
    """A name is already taken (a shared memory region registered twice)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(WarpserveError):
    """A server-wide limit is reached (registered shared memory regions)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unimplemented(WarpserveError):
    """A protocol feature this server does not provide."""

    code = grpc.StatusCode.UNIMPLEMENTED

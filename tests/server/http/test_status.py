"""HTTP status codes as Triton's HTTP endpoint answers each error."""

from __future__ import annotations

import pytest

from warpserve.server.errors import (
    AlreadyExists,
    BackendError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidInput,
    ModelNotFound,
    PermissionDenied,
    QueueFull,
    Unavailable,
    Unimplemented,
    WarpserveError,
)
from warpserve.server.http.status import BodyTooLarge, http_status


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidInput, 400),
        (AlreadyExists, 400),
        (FailedPrecondition, 400),
        (ModelNotFound, 404),
        (Unavailable, 503),
        (QueueFull, 503),
        (Unimplemented, 501),
        (BackendError, 500),
        (DeadlineExceeded, 504),
        (PermissionDenied, 403),
    ],
)
def test_each_error_has_its_status(error: type[WarpserveError], status: int) -> None:
    assert http_status(error("why")) == (status, "why")


def test_an_oversized_body_is_413_naming_the_flag() -> None:
    status, message = http_status(BodyTooLarge(5000, 1000))
    assert status == 413
    assert "5000" in message and "1000" in message and "--http-max-input-size" in message


def test_an_unexpected_exception_is_500() -> None:
    status, message = http_status(RuntimeError("boom"))
    assert status == 500 and "boom" in message

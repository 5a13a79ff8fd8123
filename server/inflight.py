"""Inference calls in flight, for a shutdown that answers every call it received.

A call is admitted when its handler starts (before its request is decoded) and counts
until its handler returns; a stream request counts from when it is read until its
answer is computed, and the stream itself until it ends. Once draining starts, nothing
new is admitted (the caller answers UNAVAILABLE) while everything admitted runs to its
real answer. At the exit timeout, what is still running is cut off: its task is
cancelled and the call answers UNAVAILABLE with a message saying why, before gRPC's own
stop could end it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from types import TracebackType
from typing import Any

from warpserve.server.errors import Unavailable

CALL, STREAM, STREAM_REQUEST = "call", "stream", "stream request"

SHUTTING_DOWN = "the server is shutting down; send the request to another instance or retry"
CUT_OFF = (
    "the server shut down before this request finished (--exit-timeout-secs passed); "
    "retry it on another instance"
)


class Ticket:
    """One admitted call; a context manager around the work that answers it."""

    __slots__ = ("_tracker", "cut", "kind", "task")

    def __init__(self, tracker: InFlight, kind: str, task: asyncio.Task[Any] | None) -> None:
        self._tracker = tracker
        self.kind = kind
        self.task = task  # cancelled at the exit timeout
        self.cut = False

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._tracker.release(self)
        if self.cut and exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            if self.task is not None:
                self.task.uncancel()  # our own cancellation, answered below
            raise Unavailable(CUT_OFF) from None


class InFlight:
    def __init__(self) -> None:
        self.draining = False
        # time.monotonic() of the last call refused or answered while draining: a caller
        # just answered may call again at once, and is to be refused, not cut off.
        self.last_end = 0.0
        self._tickets: set[Ticket] = set()
        self._idle = asyncio.Event()  # set when the last admitted call leaves, once draining
        self._on_drain: set[Callable[[], None]] = set()

    def admit(self, kind: str, task: asyncio.Task[Any] | None = None) -> Ticket:
        """Count a call from now on; raises Unavailable once draining started."""
        if self.draining:
            self.last_end = time.monotonic()
            raise Unavailable(SHUTTING_DOWN)
        ticket = Ticket(self, kind, task if task is not None else asyncio.current_task())
        self._tickets.add(ticket)
        return ticket

    def release(self, ticket: Ticket) -> None:
        tickets = self._tickets
        tickets.discard(ticket)
        if self.draining:
            self.last_end = time.monotonic()
            if not tickets:
                self._idle.set()

    def counts(self) -> Counter[str]:
        return Counter(ticket.kind for ticket in self._tickets)

    def on_drain(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when draining starts (an open stream ends once it has
        answered what it read); returns the function that unregisters it."""
        self._on_drain.add(callback)
        return lambda: self._on_drain.discard(callback)

    def start_draining(self) -> None:
        if self.draining:
            return
        self.draining = True
        for callback in list(self._on_drain):
            callback()

    async def wait_idle(self) -> None:
        """Once draining, until nothing admitted is left. (The event is only touched
        while draining: admitting stays a set insertion on the request path.)"""
        assert self.draining, "only a draining server becomes idle for good"
        if self._tickets:
            await self._idle.wait()

    def cut_off(self) -> Counter[str]:
        """Cancel every admitted call still running; each answers UNAVAILABLE. Returns
        how many of each kind were cut off."""
        cut: Counter[str] = Counter()
        for ticket in list(self._tickets):
            cut[ticket.kind] += 1
            if ticket.kind == STREAM:
                continue  # a stream ends by itself once its requests have answered
            ticket.cut = True
            if ticket.task is not None:
                ticket.task.cancel()
        return cut

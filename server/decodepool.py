"""Threads that prepare requests' images off the event loop, answering it in bunches.

A decoded JPEG costs about a millisecond of CPU; what it costs to hand it to a thread
and back is paid per request as well. asyncio's route (``ThreadPoolExecutor.submit`` and
``wrap_future``) makes a concurrent Future, chains it to an asyncio one, and wakes the
loop once per request through its self-pipe (``call_soon_threadsafe``). Here a job is a
tuple on a queue, and a thread that finishes while the loop has not yet taken earlier
results adds its own to them instead of waking the loop again: under load the loop is
woken once for a bunch of finished images, and takes them all in one pass.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import threading
from collections.abc import Callable
from functools import cache
from typing import Any, Generic, TypeVar

from warpserve.server.cpus import usable_cores

T = TypeVar("T")
Done = Callable[[], None]


class Inbox(Generic[T]):
    """Outcomes handed from worker threads to one event loop, one wake-up per bunch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: collections.deque[tuple[asyncio.Future[T], Any, Done | None]] = (
            collections.deque()
        )
        # Set by the thread that schedules a delivery, cleared by the delivery before it
        # drains: an item added after the drain's last look finds it clear and schedules
        # the next. deque appends and pops are atomic; a rare second delivery finds the
        # deque empty and costs nothing.
        self._signalled = False

    def post(self, future: asyncio.Future[T], outcome: Any, done: Done | None) -> None:
        """From any thread: settle ``future`` with ``outcome`` (a value, or an exception
        to raise) on the loop, then call ``done`` there, even if nobody waits any more."""
        self._items.append((future, outcome, done))
        if self._signalled:
            return
        self._signalled = True
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        self._signalled = False
        items = self._items
        while items:
            future, outcome, done = items.popleft()
            if not future.done():  # a caller that stopped waiting cancelled it
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            if done is not None:
                done()


class DecodePool:
    """A fixed set of daemon threads running jobs from one queue, started on first use."""

    def __init__(self, threads: int, name: str = "image-decode") -> None:
        self.threads = threads
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Inbox[Any], Any, Done | None]]
        self._jobs = queue.SimpleQueue()
        self._started = False
        self._lock = threading.Lock()

    def submit(
        self, work: Callable[[], T], inbox: Inbox[T], done: Done | None = None
    ) -> asyncio.Future[T]:
        """Run ``work`` on a pool thread (call on ``inbox``'s loop); its outcome settles
        the returned future, and ``done`` runs on the loop when the thread has finished."""
        if not self._started:
            self._start()
        future: asyncio.Future[T] = inbox.loop.create_future()
        self._jobs.put((work, inbox, future, done))
        return future

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            for index in range(self.threads):
                name = f"{self._name}_{index}"
                threading.Thread(target=self._run, name=name, daemon=True).start()
            self._started = True

    def _run(self) -> None:
        jobs = self._jobs
        while True:
            work, inbox, future, done = jobs.get()
            try:
                outcome = work()
            except Exception as exc:  # the caller's error, raised where it awaits
                outcome = exc
            inbox.post(future, outcome, done)
            del work, inbox, future, done, outcome  # hold no request's images while idle


@cache
def decoders() -> DecodePool:
    """The threads that prepare large requests' images: one per usable core. asyncio's
    default pool has cores + 4; on 2 cores its six decoders cost 1.7 ms of CPU per
    320x240 JPEG where one thread alone takes 1.3 ms (caches and context switches)."""
    return DecodePool(usable_cores())

"""The queue's deadlines: one timer for the earliest, not one per request.

Most clients set a deadline (tritonclient and the load generators send one with every
call), and nearly every request leaves the queue long before it: a timer per request
was armed and cancelled for nothing, twice per request on the event loop. Here the
deadlines wait in a heap and one timer is armed for the earliest; a request that left
the queue is dropped from the heap when its turn comes, or when such leftovers
outnumber the queued requests (the heap holds requests, and with them their inputs).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable

from warpserve.server.batching.request import QUEUED, QueuedRequest

# Leftovers beyond this many (and beyond the requests still queued) are swept out.
_SWEEP_AT = 64


class Deadlines:
    def __init__(self, expire: Callable[[QueuedRequest], None]) -> None:
        self._expire = expire  # called for a queued request whose deadline passed
        self._heap: list[tuple[int, int, QueuedRequest]] = []
        self._order = itertools.count()  # ties keep arrival order, requests never compare
        self._timer: asyncio.TimerHandle | None = None
        self._timer_ns = 0  # when the timer fires (monotonic ns)

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, request: QueuedRequest, queued: int) -> None:
        """Watch ``request``'s deadline; ``queued``: requests in the queue now."""
        heap = self._heap
        if len(heap) > 2 * queued + _SWEEP_AT:
            heap[:] = [entry for entry in heap if _waiting(entry)]
            heapq.heapify(heap)
        heapq.heappush(heap, (request.deadline_ns, next(self._order), request))
        if self._timer is None or request.deadline_ns < self._timer_ns:
            self._arm(request.deadline_ns)

    def _arm(self, at_ns: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, (at_ns - time.monotonic_ns()) / 1e9)
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)
        self._timer_ns = at_ns

    def _fire(self) -> None:
        self._timer = None
        heap, now = self._heap, time.monotonic_ns()
        while heap and (heap[0][0] <= now or not _waiting(heap[0])):
            entry = heapq.heappop(heap)
            if _waiting(entry):
                self._expire(entry[2])
        if heap:
            self._arm(heap[0][0])


def _waiting(entry: tuple[int, int, QueuedRequest]) -> bool:
    """Still queued with this deadline (a DELAY timeout drops the deadline, not the
    request)."""
    request = entry[2]
    return request.state == QUEUED and request.deadline_ns == entry[0]

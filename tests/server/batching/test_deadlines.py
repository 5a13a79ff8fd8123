"""Deadlines: one timer for the earliest queued deadline; requests that left are dropped."""

from __future__ import annotations

import asyncio
import time

from tests.server.batching.test_batcher import request, run, until
from warpserve.server.batching.deadlines import Deadlines
from warpserve.server.batching.request import DONE, RUNNING, QueuedRequest

MS = 1_000_000


def test_queued_requests_expire_in_deadline_order_and_those_that_left_do_not() -> None:
    async def body() -> None:
        expired: list[QueuedRequest] = []
        deadlines = Deadlines(expired.append)
        now = time.monotonic_ns()
        late, left, early = (request(deadline_ns=now + ms * MS) for ms in (30, 20, 10))
        for queued, r in enumerate((late, left, early)):
            deadlines.add(r, queued)
        left.state = RUNNING  # taken into a batch before its deadline
        await until(lambda: len(expired) == 2)
        assert expired == [early, late], "the earliest deadline, added last, went first"
        await asyncio.sleep(0.02)
        assert left not in expired and len(deadlines) == 0

    run(body)


def test_a_request_that_lost_its_deadline_stays() -> None:
    """Triton's DELAY timeout: the batcher drops the request's deadline, not the request."""

    async def body() -> None:
        expired: list[QueuedRequest] = []
        deadlines = Deadlines(expired.append)
        kept = request(deadline_ns=time.monotonic_ns() + 5 * MS)
        deadlines.add(kept, 0)
        kept.deadline_ns = 0
        control = request(deadline_ns=time.monotonic_ns() + 10 * MS)
        deadlines.add(control, 1)
        await until(lambda: expired == [control])  # positive control: the timer ran
        assert kept not in expired

    run(body)


def test_requests_that_left_the_queue_are_swept_out() -> None:
    async def body() -> None:
        deadlines = Deadlines(lambda r: None)
        far = time.monotonic_ns() + 60_000 * MS
        for _ in range(10_000):
            r = request(deadline_ns=far)
            deadlines.add(r, 1)
            r.state = DONE  # answered long before its deadline
        assert len(deadlines) < 100, "the heap holds their inputs: it must not grow"

    run(body)

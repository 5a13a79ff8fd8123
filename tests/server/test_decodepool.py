"""The decoder threads: outcomes reach the awaiting caller, the loop is woken once per
bunch of finished jobs, and a thread outlives the jobs that fail on it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from warpserve.server import decodepool
from warpserve.server.decodepool import DecodePool, Inbox


def counting_wakeups(loop: asyncio.AbstractEventLoop) -> list[int]:
    """Counts the loop's ``call_soon_threadsafe`` calls (its self-pipe wake-ups)."""
    calls = [0]
    original = loop.call_soon_threadsafe

    def counted(callback: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Handle:
        calls[0] += 1
        return original(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign,assignment]
    return calls


def post_from_a_thread(inbox: Inbox[int], posts: list[tuple[asyncio.Future[int], Any]]) -> None:
    def post_all() -> None:
        for future, outcome in posts:
            inbox.post(future, outcome, None)

    thread = threading.Thread(target=post_all)
    thread.start()
    thread.join()


def test_outcomes_finished_before_the_loop_looks_wake_it_once() -> None:
    loop = asyncio.new_event_loop()
    try:
        wakeups = counting_wakeups(loop)
        inbox: Inbox[int] = Inbox(loop)
        futures = [loop.create_future() for _ in range(3)]
        post_from_a_thread(
            inbox, [(futures[0], 1), (futures[1], ValueError("bad")), (futures[2], 3)]
        )
        assert wakeups[0] == 1  # three outcomes, one wake-up
        loop.run_until_complete(asyncio.sleep(0))
        assert futures[0].result() == 1 and futures[2].result() == 3
        with pytest.raises(ValueError, match="bad"):
            futures[1].result()
        # Positive control: once delivered, the next outcome wakes the loop again.
        later = loop.create_future()
        post_from_a_thread(inbox, [(later, 4)])
        assert wakeups[0] == 2
        loop.run_until_complete(asyncio.sleep(0))
        assert later.result() == 4
    finally:
        loop.close()


def test_a_cancelled_caller_is_skipped_and_done_still_runs_on_the_loop() -> None:
    loop = asyncio.new_event_loop()
    try:
        inbox: Inbox[int] = Inbox(loop)
        future = loop.create_future()
        future.cancel()
        ran_on: list[threading.Thread] = []
        thread = threading.Thread(
            target=inbox.post, args=(future, 5, lambda: ran_on.append(threading.current_thread()))
        )
        thread.start()
        thread.join()
        assert ran_on == []  # not on the posting thread
        loop.run_until_complete(asyncio.sleep(0))
        assert ran_on == [threading.main_thread()] and future.cancelled()
    finally:
        loop.close()


def test_a_closed_loop_is_not_an_error_for_the_thread() -> None:
    loop = asyncio.new_event_loop()
    inbox: Inbox[int] = Inbox(loop)
    future = loop.create_future()
    loop.close()
    inbox.post(future, 1, None)  # nobody waits any more: dropped quietly


def test_jobs_run_on_the_pool_threads_and_a_failure_leaves_them_serving() -> None:
    pool = DecodePool(2, name="test-decode")

    async def main() -> None:
        inbox: Inbox[str] = Inbox(asyncio.get_running_loop())

        def fail() -> str:
            raise ValueError("not an image")

        with pytest.raises(ValueError, match="not an image"):
            await pool.submit(fail, inbox)
        names = await asyncio.gather(
            *(pool.submit(lambda: threading.current_thread().name, inbox) for _ in range(8))
        )
        assert set(names) <= {"test-decode_0", "test-decode_1"} and names

    asyncio.run(main())
    running = [t.name for t in threading.enumerate() if t.name.startswith("test-decode_")]
    assert sorted(running) == ["test-decode_0", "test-decode_1"]  # started once, as asked


def test_the_decoders_are_one_per_usable_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decodepool, "usable_cores", lambda: 3)
    decodepool.decoders.cache_clear()
    try:
        assert decodepool.decoders().threads == 3
    finally:
        decodepool.decoders.cache_clear()

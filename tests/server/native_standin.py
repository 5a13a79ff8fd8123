"""A stand-in for the C++ frontend under ``NativeServer``: the test (or bench) hands it
events as the frontend's ``drain`` would, and it collects the answers ``NativeServer``
queues, so the transport's Python runs without a network or gRPC's threads."""

from __future__ import annotations

import asyncio
from typing import Any

from warpserve.server.native.transport import NativeServer

CALL, DONE = 0, 4


class StandIn:
    def __init__(self) -> None:
        self.pending: list[tuple[Any, ...]] = []
        self.answered: dict[int, tuple[int, str, bytes | None]] = {}

    def drain(self) -> list[tuple[Any, ...]]:
        events, self.pending = self.pending, []
        return events

    def finish(self, call_id: int, code: int, details: str, payload: bytes | None) -> None:
        self.answered[call_id] = (code, details, payload)

    def flush(self) -> None:
        pass


def attach(server: NativeServer) -> StandIn:
    """Put a stand-in under ``server`` (instead of starting it) on the running loop."""
    stand_in = StandIn()
    server.frontend = stand_in
    server._loop = asyncio.get_running_loop()
    return stand_in


def call(call_id: int, method: str, payload: bytes, timeout: float | None = 10.0) -> tuple:
    """A CALL event as the frontend's drain hands it over."""
    return (CALL, call_id, method, payload, timeout, ())


async def answers(stand_in: StandIn, ids: list[int]) -> list[tuple[int, str, bytes | None]]:
    """The answers to ``ids``, once the loop has produced them all."""
    for _ in range(10_000):
        if all(i in stand_in.answered for i in ids):
            return [stand_in.answered.pop(i) for i in ids]
        await asyncio.sleep(0)
    raise AssertionError(f"no answer for {[i for i in ids if i not in stand_in.answered]}")

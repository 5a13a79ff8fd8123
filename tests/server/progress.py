"""Waiting in the event loop for progress that other tasks or processes make, and a model
whose executions wait until a test lets them go (races are held open, never slept on)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import numpy as np


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for progress made by other tasks or processes (not for a race: those are held
    open at named points or by a GatedModel)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out waiting for a condition"
        await asyncio.sleep(0.002)


class GatedModel:
    """Wraps a model instance so that executions wait for ``gate``: holds a batch running
    while others queue."""

    def __init__(self, inner: Any, gate: threading.Event) -> None:
        self.inner, self.gate = inner, gate

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.gate.wait(20), "gate never opened"
        return dict(self.inner.execute(inputs))

    def close(self) -> None:
        self.inner.close()

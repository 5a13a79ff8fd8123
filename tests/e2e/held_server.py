"""``warpserve serve`` whose inference calls stop at the "encoding" hook point for good.

A call that never finishes by itself, for the tests of the exit timeout and of a second
signal against the real process. Each held call writes "held at encoding" to the log.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Any

from warpserve.server import cli
from warpserve.server.lifecycle.registry import ModelRegistry

HELD = "held at encoding"


async def _hold_forever() -> None:
    print(HELD, file=sys.stderr, flush=True)
    await asyncio.Event().wait()


def _hook(point: str) -> Awaitable[None] | None:
    return _hold_forever() if point == "encoding" else None


def main() -> int:
    original = ModelRegistry.__init__

    def with_hook(self: ModelRegistry, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.hook = _hook

    ModelRegistry.__init__ = with_hook  # type: ignore[method-assign]
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())

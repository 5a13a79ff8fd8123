"""How many requests arrived together behind the one being served.

The native gRPC frontend hands the event loop every call that arrived since its last
wakeup at once, and starts one task per call in arrival order. A tiny model that would
run the first of them inline at once, alone, and then each of the others alone, instead
queues them all when others are known to be right behind: the batch forms on the next
loop pass with every one of them, for one model run instead of one per request. Nobody
waits for company that is not already there, so a lone request still runs at once.
"""

from __future__ import annotations

from contextvars import ContextVar

# Set by the transport in the context each call's task starts with.
BEHIND: ContextVar[int] = ContextVar("warpserve_arrivals_behind", default=0)

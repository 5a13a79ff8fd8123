"""How busy the event-loop thread is: the instance an inline executor runs on.

A worker-thread instance that is busy collects the requests arriving meanwhile into
its next batch. An inline executor runs on the loop thread and finishes before the next
request can even be read, so that never happens: every request would run alone, and a
tiny model at high load spends its time on per-run overhead instead of on batches.

What stands in for "the instance is busy" is the loop's own utilisation: the share of
wall time its thread spent on the CPU between two request arrivals. Below the
threshold the loop sleeps between requests (a lone client waiting for each answer),
and a request runs at once. Above it the loop has no idle time, RPCs already wait
inside gRPC for their turn, and holding a request for a short window costs no
throughput while letting the requests behind it join one batch.

Holding makes the loop idle while it waits, so utilisation says nothing once holding
has started; what ends it is windows that nobody joined. A busy loop does not prove
concurrency (one client on a fast network keeps the loop busy too, and every window
would cost it latency), so after each such ending holding may start again only after
twice as many arrivals as the last time, up to MAX_COOLDOWN; a window that batched
two or more requests resets that.
"""

from __future__ import annotations

import time
from collections.abc import Callable

SATURATED = 0.75  # loop utilisation above which batches are worth waiting for
SMOOTHING = 0.1  # weight of the newest sample in the moving average
LONELY_WINDOWS = 2  # consecutive windows with a single request that end holding
MIN_COOLDOWN = 16  # arrivals after an ending before holding may start again
MAX_COOLDOWN = 4096


class LoopLoad:
    def __init__(
        self,
        threshold: float = SATURATED,
        smoothing: float = SMOOTHING,
        *,
        wall_ns: Callable[[], int] = time.perf_counter_ns,
        cpu_ns: Callable[[], int] = time.thread_time_ns,  # the calling (loop) thread's
    ) -> None:
        self.threshold = threshold
        self.smoothing = smoothing
        self.utilisation = 0.0
        self.holding = False
        self._lonely = 0
        self._cooldown = 0  # arrivals left before holding may start
        self._next_cooldown = MIN_COOLDOWN
        self._wall_ns = 0
        self._cpu_ns = 0
        self._wall = wall_ns
        self._cpu = cpu_ns

    def arrival(self) -> bool:
        """Record a request arriving; True when it should be held for a batch."""
        if self.holding:
            return True
        wall, cpu = self._wall(), self._cpu()
        if self._wall_ns and wall > self._wall_ns:
            sample = min(1.0, (cpu - self._cpu_ns) / (wall - self._wall_ns))
            self.utilisation += self.smoothing * (sample - self.utilisation)
        self._wall_ns, self._cpu_ns = wall, cpu
        if self._cooldown:
            self._cooldown -= 1
        elif self.utilisation > self.threshold:
            self.holding = True
            self._lonely = 0
        return self.holding

    def window_closed(self, requests: int) -> None:
        """A holding window ended with ``requests`` requests in its batch."""
        if requests > 1:
            self._lonely = 0
            self._next_cooldown = MIN_COOLDOWN
            return
        self._lonely += 1
        if self._lonely >= LONELY_WINDOWS:
            self.holding = False
            self.utilisation = 0.0
            self._wall_ns = 0
            self._cooldown = self._next_cooldown
            self._next_cooldown = min(2 * self._next_cooldown, MAX_COOLDOWN)

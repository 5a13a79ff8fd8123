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

A busy loop does not prove that holding pays. One client on a fast network keeps the
loop busy too, and so do two clients that alternate: each one's request arrives while
the loop serves the other's, the loop is never idle, yet a window can only ever gather
those two, and every window costs both of them latency (a window closes once arrivals
pause, see ``window``, but the loop idles for that pause and the two no longer overlap).
So holding is a trial that the windows themselves judge. A window paid for itself if
arrivals never paused in it (it filled up or ran its whole delay: the loop was taking
requests all along, so holding cost it nothing), or if it gathered MIN_COMPANY rows or
more (or a full batch, if that is smaller) before the pause. LONELY_WINDOWS windows in
a row that did neither end holding. Holding makes the loop idle while it waits, so
utilisation says nothing once holding has started. After each ending holding may start
again only after twice as many arrivals as the last time, up to MAX_COOLDOWN, so that
a loop whose windows never pay spends a vanishing share of its requests on trials; a
window that paid resets that.
"""

from __future__ import annotations

import time
from collections.abc import Callable

SATURATED = 0.75  # loop utilisation above which batches are worth waiting for
SMOOTHING = 0.1  # weight of the newest sample in the moving average
LONELY_WINDOWS = 3  # consecutive windows that did not pay that end holding
# Rows a window that ended on a pause must have gathered to have paid for itself. Such
# a window left the loop idle for the pause, and its callers waited for one batch
# instead of overlapping with the loop's work. With fewer closed-loop clients than
# this, serving each request at once (as the echo ceiling does) keeps their median
# close to the ceiling's; holding is left to higher concurrency, where the loop spends
# its time on per-request overhead that batches share.
MIN_COMPANY = 16
MIN_COOLDOWN = 16  # arrivals after an ending before holding may start again
# The longest wait between trials. Load changes: after minutes of two alternating
# clients (every trial failed), 64 arriving clients must get batches within a fraction
# of a second; a trial at 2 clients costs three short windows every MAX_COOLDOWN
# arrivals (about 1% of requests held, by under a millisecond).
MAX_COOLDOWN = 512


class LoopLoad:
    def __init__(
        self,
        threshold: float = SATURATED,
        smoothing: float = SMOOTHING,
        *,
        company: int = MIN_COMPANY,
        wall_ns: Callable[[], int] = time.perf_counter_ns,
        cpu_ns: Callable[[], int] = time.thread_time_ns,  # the calling (loop) thread's
    ) -> None:
        self.threshold = threshold
        self.company = company
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

    def arrival(self, requests: int = 1) -> bool:
        """Record ``requests`` arriving (several: together, so one sample of the loop's
        utilisation: between them it did nothing else); True when they should be held
        for a batch."""
        if self.holding:
            return True
        wall, cpu = self._wall(), self._cpu()
        if self._wall_ns and wall > self._wall_ns:
            sample = min(1.0, (cpu - self._cpu_ns) / (wall - self._wall_ns))
            self.utilisation += self.smoothing * (sample - self.utilisation)
        self._wall_ns, self._cpu_ns = wall, cpu
        if self._cooldown:
            self._cooldown = max(0, self._cooldown - requests)
        elif self.utilisation > self.threshold:
            self.holding = True
            self._lonely = 0
        return self.holding

    def window_closed(self, rows: int, busy: bool = False) -> None:
        """A holding window ended with ``rows`` rows gathered for its batch; ``busy``:
        arrivals never paused in it."""
        if busy or rows >= self.company:
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

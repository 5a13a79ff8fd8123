"""The holding window of an inline executor: when a batch being collected goes, and
the collector that holds it open on the event loop.

On a saturated loop (see ``loopload``) an inline executor holds the first request so
that the requests behind it join its batch. They are already on their way: sent by
clients, or read by gRPC while the loop was busy, and they reach the batcher one after
another, as fast as the loop can take them. Once they stop coming, holding longer only
idles the loop: a closed-loop client whose request is held sends nothing new, so with
two clients that alternate, a window that waited its full max_queue_delay (2 ms) for
company that could not come cost each request 1-1.5 ms of queueing and halved
throughput.

So a window goes at the first of: the batch is full (the batcher's check), the
max_queue_delay since it opened, or a pause with no arrival that is several times the
usual gap between arrivals inside windows (at most a quarter of max_queue_delay): the
stream of requests behind the first has dried up. The usual gap is learnt (a moving
average), since how fast a loop takes requests depends on the machine.

A pause does not end a window while callers it just answered are still on their way
back (the batcher counts them: answered, not yet arrived again). At 64 closed-loop
clients every batch's callers turn around at once: the loop is truly idle while they
do, and windows that ended on that pause gathered a handful of rows, counted as not
paying, and holding flipped off and on (2.3 requests per execution instead of 7.7, and
less throughput than at 32 clients). Such a window waits for them up to its
max_queue_delay instead; if they did not come by then, the count was stale (callers
that left) and is dropped.

How a window ended tells whether holding cost the loop anything (``loopload`` uses
it): one that went full or at max_queue_delay saw arrivals without a pause, so the loop
spent it taking requests; one that went after a pause left the loop idle for that
pause.

Times are in seconds, from the batcher's clock (``time.perf_counter``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from warpserve.server.batching.loopload import LoopLoad

GAP_FACTOR = 4  # a pause this many usual gaps long means the arrivals have stopped
FIRST_GAP_S = 50e-6  # the usual gap before any was seen
MIN_QUIET_S = 50e-6  # never close on a pause shorter than this
SMOOTHING = 0.2  # weight of the newest gap in the moving average

# A timer that fires this early counts as on time: the event loop itself runs timers
# up to its clock resolution early, and re-arming for microseconds costs a loop pass.
_TIMER_SLACK_S = 10e-6
_LATE_TIMER_S = 1.5e-3

# A bound on the callers counted on their way back (see ``InlineCollector.returning``),
# far above any batch, so that a count inflated by callers that left stays cheap to correct.
MAX_RETURNING = 1 << 16


class HoldingWindow:
    def __init__(self, max_delay_s: float) -> None:
        self.max_delay_s = max_delay_s
        self.usual_gap_s = FIRST_GAP_S
        self.opened = 0.0
        self.last = 0.0

    @property
    def quiet_s(self) -> float:
        """How long a pause with no arrival ends the window."""
        return min(max(GAP_FACTOR * self.usual_gap_s, MIN_QUIET_S), self.max_delay_s / 4)

    def open(self, now: float) -> None:
        self.opened = self.last = now

    def arrival(self, now: float, awaited: bool = False) -> None:
        """A request joined the open window at ``now``; ``awaited``: it is one of the
        callers on their way back, so a gap longer than the quiet time before it was
        their turnaround, not the usual gap between arrivals."""
        gap = now - self.last
        if not awaited or gap <= self.quiet_s:
            self.usual_gap_s += SMOOTHING * (gap - self.usual_gap_s)
        self.last = now

    def due(self, awaited: bool = False) -> float:
        """When the window goes unless another request arrives first. ``awaited``:
        callers answered earlier are still on their way back, so a pause is no sign
        that arrivals stopped and only max_queue_delay ends the window."""
        end = self.opened + self.max_delay_s
        return end if awaited else min(self.last + self.quiet_s, end)

    def unpaused(self) -> bool:
        """Whether arrivals so far never left a pause that would end the window: its
        end is max_queue_delay after it opened. Decided by the arrivals, not by when
        the timer fired: without busy polling the event loop sleeps in whole
        milliseconds, so a timer for a short pause fires late."""
        return self.last + self.quiet_s >= self.opened + self.max_delay_s


class InlineCollector:
    """Collects the batch of a batcher whose idle executor is inline: requests queued
    before the next tick go together. The tick is the next loop pass, or, on a
    saturated loop, the end of a holding window. At the tick the batcher's ``schedule``
    forms batches; ``queued_rows`` reads how many rows it holds."""

    def __init__(
        self,
        window: HoldingWindow,
        load: LoopLoad,
        batch_limit: int,
        clock: Callable[[], float],
        queued_rows: Callable[[], int],
        schedule: Callable[[], None],
    ) -> None:
        self._window = window
        self._load = load
        self.batch_limit = batch_limit  # most rows of one batch
        # The holding window's clock, in seconds. Not loop.time(): uvloop's advances in
        # whole milliseconds, and a window's pauses are tens to hundreds of microseconds.
        self._clock = clock
        self._queued_rows = queued_rows
        self._schedule = schedule
        self._holding: asyncio.TimerHandle | None = None  # a batch being collected
        self._saturated = False  # at the last arrival
        self.tick_pending = False
        # Callers answered that have not arrived again: closed-loop clients on their way
        # back, whom a window waits for (see above). Arrivals are not told apart, so this
        # counts answers less arrivals, floored at zero: exact after a batch goes, a
        # lower bound otherwise.
        self.returning = 0
        self._awaited_arrival = False  # the last arrival was one of them

    def arrival(self, requests: int = 1) -> bool:
        """Count arriving requests (several: they arrived together); whether the loop
        is saturated (so they should be held rather than run at once)."""
        returning = self.returning
        self._awaited_arrival = returning > 0
        if returning:
            self.returning = max(0, returning - requests)
        self._saturated = self.batch_limit > 1 and self._load.arrival(requests)
        return self._saturated

    def answered(self, requests: int) -> None:
        """``requests`` callers were answered: they are on their way back."""
        self.returning = min(self.returning + requests, MAX_RETURNING)

    def collect(self) -> None:
        """A request was queued: form its batch at the next tick. A full batch goes at
        once, and one that is full when it arrives opens no window."""
        loop = asyncio.get_running_loop()
        if self._holding is not None:
            if self._queued_rows() >= self.batch_limit:
                self._holding.cancel()
                self._tick(busy=True)
            else:
                # its timer finds the window's new end, unless that end came closer:
                # the last caller awaited is back, so a pause may end the window now
                now = self._clock()
                self._window.arrival(now, self._awaited_arrival)
                if self._awaited_arrival and not self.returning:
                    self._holding.cancel()
                    self._holding = loop.call_later(self._window.due() - now, self._due)
            return
        if self.tick_pending:
            return
        self.tick_pending = True
        # A full batch gathers nothing by waiting (requests of max_batch_size rows each,
        # as batch clients send): it goes on the next loop pass like an unheld one.
        if self._saturated and self._queued_rows() < self.batch_limit:
            now = self._clock()
            self._window.open(now)
            due = self._window.due(self.returning > 0)
            self._holding = loop.call_later(due - now, self._due)
        else:
            loop.call_soon(self._tick)

    def _due(self) -> None:
        """The holding window's timer: close it unless requests kept arriving or
        answered callers are still on their way back."""
        loop = asyncio.get_running_loop()
        window = self._window
        awaited = self.returning > 0
        due, now = window.due(awaited), self._clock()
        if now + _TIMER_SLACK_S < due:
            self._holding = loop.call_later(due - now, self._due)
            return
        busy = window.unpaused()
        if awaited and not busy:
            # They did not come back within max_queue_delay while the loop idled:
            # callers that left. Only callers answered from now on are awaited.
            self.returning = 0
        # A timer later than the pause it waited for (and later than a loop that sleeps
        # in whole milliseconds makes it) means the loop thread did not run meanwhile,
        # as when the machine runs something else: requests may have arrived unread, so
        # the pause says nothing about arrivals.
        judged = now - due < max(window.quiet_s, _LATE_TIMER_S)
        self._tick(busy=busy, judged=judged)

    def _tick(self, busy: bool = False, judged: bool = True) -> None:
        """Form batches now. ``busy``: a holding window that ends here saw arrivals
        without a pause (it filled up or ran its whole delay); ``judged``: its ending
        is evidence for or against holding."""
        if self._holding is not None:
            self._holding = None
            if judged:
                self._load.window_closed(self._queued_rows(), busy)
        self.tick_pending = False
        self._schedule()

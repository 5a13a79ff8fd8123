"""The holding window of an inline executor: when a batch being collected goes.

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

GAP_FACTOR = 4  # a pause this many usual gaps long means the arrivals have stopped
FIRST_GAP_S = 50e-6  # the usual gap before any was seen
MIN_QUIET_S = 50e-6  # never close on a pause shorter than this
SMOOTHING = 0.2  # weight of the newest gap in the moving average


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

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

A pause counts only the loop's idle time. A loop that spends the time after an
arrival on the CPU (decoding the next requests, encoding the last batch's answers)
cannot read a request meanwhile, so wall time without an arrival says nothing about
whether clients stopped sending. At 64 clients on the fraud scorer the loop spends
about 300 us on each request and half a millisecond or more on a batch's answers:
measured in wall time, windows ended on those busy stretches with a handful of rows,
counted as not paying, and holding flipped off and on (2.3 requests per execution
instead of 7.7, and less throughput than at 32 clients).

How a window ended tells whether holding cost the loop anything (``loopload`` uses
it): one that went full or at max_queue_delay saw arrivals without a pause, so the loop
spent it taking requests; one that went after a pause left the loop idle for that
pause.

Times are in seconds: wall time from the batcher's clock (``time.perf_counter``), busy
time from the loop thread's CPU clock less its idle polling (``busypoll``).
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
        self.busy_at_last = 0.0  # the loop's busy time at the last arrival

    @property
    def quiet_s(self) -> float:
        """How long a pause with no arrival, in the loop's idle time, ends the window."""
        return min(max(GAP_FACTOR * self.usual_gap_s, MIN_QUIET_S), self.max_delay_s / 4)

    def open(self, now: float, busy: float = 0.0) -> None:
        self.opened = self.last = now
        self.busy_at_last = busy

    def arrival(self, now: float, busy: float = 0.0) -> None:
        """A request joined the open window at ``now``, with the loop's busy time ``busy``."""
        gap = now - self.last
        self.usual_gap_s += SMOOTHING * (gap - self.usual_gap_s)
        self.last = now
        self.busy_at_last = busy

    def busy_since_arrival(self, busy: float) -> float:
        """The loop's busy time since the last arrival (or the opening), given its busy
        time now."""
        return max(0.0, busy - self.busy_at_last)

    def due(self, busy_s: float = 0.0) -> float:
        """When the window goes unless another request arrives first, given ``busy_s``,
        the loop's busy time since the last arrival: its idle time must add up to the
        quiet time (a busy loop reads no requests, so its busy time is no pause)."""
        return min(self.last + self.quiet_s + busy_s, self.opened + self.max_delay_s)

    def unpaused(self, busy_s: float = 0.0) -> bool:
        """Whether arrivals so far never left a pause that would end the window: its
        end is max_queue_delay after it opened. Decided by the arrivals and the loop's
        busy time, not by when the timer fired: without busy polling the event loop
        sleeps in whole milliseconds, so a timer for a short pause fires late."""
        return self.last + self.quiet_s + busy_s >= self.opened + self.max_delay_s

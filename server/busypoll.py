"""Busy polling: the event loop keeps running between requests instead of sleeping.

A thread that sleeps in ``epoll_wait`` wakes up slow: its caches and TLB are cold, and on
a virtual machine its CPU may have run something else meanwhile. For a small model that
is most of a request's time. On the 2-vCPU development VM, the fraud model's ONNX
Runtime run takes 12 us in a hot loop, 58 us on a thread that slept 1 ms before it, and
14 us on one that polled for that 1 ms instead; served at concurrency 1, busy polling
halves the median latency.

So, like the kernel's ``SO_BUSY_POLL``, after each request arrives and after each batch
finishes on a worker thread the loop polls without sleeping (a callback that schedules
itself, which makes the loop poll its sockets with a zero timeout) for up to the
configured window, and then sleeps as before. It never spins while a model runs on a
worker thread, whose core it would take: only the loop's own idle time goes into
polling. The cost is up to one core while requests keep arriving within the window, so
it is on by default only where the process may use two cores or more (its affinity and
cgroup quota, see ``cpus``); ``--busy-poll-us 0`` turns it off.

It polls only for a lone caller: while a single call is in flight (``calls``, counted
by the transport from a call's start until gRPC has sent its answer), and only while
few recent calls arrived with another in flight (``crowding``, a moving share of the
arrivals, under CROWDED). Polling
pays when the loop would otherwise sleep until a lone caller's next request; with two or
more callers the others' requests keep waking the loop, and the polling core is taken
from gRPC's own threads and from clients on the same machine: on the 2-vCPU VM, with the
load generator beside the server, polling at 2 to 8 closed-loop callers held the fraud
model at about 2,900 requests/s, where the Python echo server reached 4,800 to 6,000.
Two alternating callers leave one call in flight about half the time, so the count of
calls alone does not tell them from one caller: there, polling after every lone call
cost 12 % of the throughput at the same median (2,460 against 2,806 requests/s). Their
calls find the other one in flight at 40-50 % of arrivals, four callers' at 80 %; a lone
caller's at 1.5-3 % on the loaded VM, where gRPC reports a sent answer only after the
caller's next request has arrived.

The time spent polling with nothing to do is counted (``idle_ns``), so that what
measures the loop's utilisation (``LoopLoad``) can leave it out: a polling loop is on
the CPU all the time without being busy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from warpserve.server.cpus import thread_budget

DEFAULT_WINDOW_US = 1000
# Polling takes a core; below this many the loop would take it from the model's threads
# and gRPC's own, or (under a cgroup quota) get the process throttled.
MIN_CORES = 2
# A pass through the loop that took less than this did nothing but poll.
IDLE_PASS_NS = 20_000
# Polling stops while more than this share of recent calls arrived with another in
# flight; each arrival moves the share by CROWDING_WEIGHT of the difference.
CROWDED = 0.25
CROWDING_WEIGHT = 1 / 16


def default_window_us() -> int:
    """DEFAULT_WINDOW_US where the process may use MIN_CORES or more cores (its share
    when several server processes run), else 0."""
    return DEFAULT_WINDOW_US if thread_budget() >= MIN_CORES else 0


class BusyPoller:
    def __init__(
        self,
        window_us: int = DEFAULT_WINDOW_US,
        *,
        wall_ns: Callable[[], int] = time.perf_counter_ns,
        cpu_ns: Callable[[], int] = time.thread_time_ns,  # the calling (loop) thread's
    ) -> None:
        if window_us < 0:
            raise ValueError(f"busy-poll window must be >= 0 us, got {window_us}")
        self._wall = wall_ns
        self._cpu = cpu_ns
        self.window_ns = window_us * 1000
        self.idle_ns = 0  # loop-thread time spent polling with nothing to do
        self.threads_busy = 0  # batches running on worker threads
        self.calls = 0  # inference calls in flight (the transport counts them)
        self.crowding = 0.0  # recent share of calls arriving with another in flight
        self.spinning = False
        self._until = 0
        self._last = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def arm(self) -> None:
        """Poll until ``window`` from now (call on the loop thread on activity)."""
        if not self.window_ns or self.calls > 1 or self.crowding > CROWDED:
            return
        now = self._wall()
        self._until = now + self.window_ns
        if self.spinning or self.threads_busy:
            return
        self._loop = asyncio.get_running_loop()
        self.spinning = True
        self._last = now
        self._loop.call_soon(self._spin)

    def call_started(self) -> None:
        self.calls += 1
        crowded = 1.0 if self.calls > 1 else 0.0
        self.crowding += CROWDING_WEIGHT * (crowded - self.crowding)

    def call_ended(self, *_: object) -> None:
        """A call's answer is sent (takes and ignores gRPC's done-callback argument)."""
        self.calls -= 1

    def thread_started(self) -> None:
        self.threads_busy += 1

    def thread_finished(self) -> None:
        self.threads_busy -= 1
        self.arm()

    def busy_cpu_ns(self) -> int:
        """The loop thread's CPU time without its idle polling (call on the loop thread)."""
        return self._cpu() - self.idle_ns

    def _spin(self) -> None:
        now = self._wall()
        elapsed = now - self._last
        if elapsed < IDLE_PASS_NS:
            self.idle_ns += elapsed
        self._last = now
        if now >= self._until or self.threads_busy or self.calls > 1 or self.crowding > CROWDED:
            self.spinning = False
            return
        assert self._loop is not None
        self._loop.call_soon(self._spin)

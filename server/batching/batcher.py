"""The dynamic batcher: one per model version.

Triton's semantics (max_batch_size, preferred sizes, max_queue_delay, priority levels,
queue policy) with three changes: an idle execution instance takes a request at once
instead of waiting for a fuller batch (batches form by themselves while instances are
busy); a request carrying several rows counts all of them toward max_batch_size; and
of several worker-thread instances, one that falls free takes its share of the
outstanding rows, not the whole queue (``policy.balanced_rows``).

Inline executors (tiny models run on the event loop thread) are never busy while a
request arrives, so for them "idle" means an idle loop (see ``loopload``): when the
loop is saturated, a request is held so that the requests behind it join its batch,
until they stop arriving or max_queue_delay (or INLINE_WINDOW_US) passes (see
``window``, whose collector does this for the batcher).

Everything here runs on the event loop thread; only ``Executor.run`` crosses to a
worker thread, so queue state needs no locks.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import cast

import numpy as np

from warpserve.server.batching.deadlines import Deadlines
from warpserve.server.batching.executor import BatchResult, Executor
from warpserve.server.batching.loopload import MIN_COMPANY, LoopLoad
from warpserve.server.batching.policy import BatchingPolicy, balanced_rows
from warpserve.server.batching.request import DONE, QUEUED, RUNNING, Outputs, QueuedRequest
from warpserve.server.batching.window import HoldingWindow, InlineCollector
from warpserve.server.busypoll import BusyPoller
from warpserve.server.errors import DeadlineExceeded, QueueFull, Unavailable
from warpserve.server.stats import VersionStats

# How long a saturated loop holds a request for an inline batch when the config sets
# no max_queue_delay_microseconds. On the serving benchmark's tiny MLP at 32 clients,
# 1 ms windows reached 0.69 of the ceiling's throughput, 2 ms 0.79-0.81, 4 ms 0.78.
INLINE_WINDOW_US = 2000

# Tests set this to inject a delay at a named point (race windows are hit on purpose).
Hook = Callable[[str], None]


class DynamicBatcher:
    def __init__(
        self,
        name: str,
        policy: BatchingPolicy,
        executors: list[Executor],
        stats: VersionStats,
        *,
        hook: Hook | None = None,
        load: LoopLoad | None = None,
        poller: BusyPoller | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.name = name
        self.policy = policy
        self.stats = stats
        self.executors = list(executors)
        self._idle: list[Executor] = list(executors)
        self._queues: list[deque[QueuedRequest]] = [deque() for _ in range(policy.priority_levels)]
        self._queued = [0] * policy.priority_levels
        self._running = 0
        self._closed = False
        self._delay_timer: asyncio.TimerHandle | None = None
        self._deadlines = Deadlines(self._expire)
        self._drained = asyncio.Event()
        self._drained.set()
        self._hook = hook
        self._queued_rows = 0
        self.shed = [0] * policy.priority_levels  # requests refused per level
        self._poller = poller
        cpu_ns = poller.busy_cpu_ns if poller else time.thread_time_ns
        if load is None:
            company = min(MIN_COMPANY, max(policy.batch_limit, 1))
            load = LoopLoad(company=company, cpu_ns=cpu_ns)
        window_us = policy.max_queue_delay_us or INLINE_WINDOW_US
        self._inline = InlineCollector(
            HoldingWindow(window_us / 1e6),
            load,
            policy.batch_limit,
            clock,
            lambda: self._queued_rows,
            self._schedule,
        )

    # -- public ------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return sum(self._queued)

    @property
    def in_flight(self) -> int:
        """Requests queued or executing."""
        return self.queued + self._running

    def inline_slot(self, requests: int = 1) -> Executor | None:
        """The executor to run arriving requests on at once (``requests`` that arrived
        together run as one batch), or None to queue them.

        Only an idle inline executor with nothing queued, on a loop that is not
        saturated, takes requests at once (see ``loopload``). Call once per arrival:
        it counts the requests.
        """
        if self._closed:
            raise Unavailable(f"model '{self.name}' is draining; retry the request")
        idle = self._idle
        if not idle or not idle[-1].inline:
            return None
        inline = self._inline
        if inline.arrival(requests) or inline.tick_pending or any(self._queued):
            return None
        return idle[-1]

    def keep_only(self, executor: Executor) -> list[Executor]:
        """Serve with ``executor`` alone, before any request arrives; returns the other
        executors for the caller to close."""
        assert not self.in_flight, "executors change only before serving"
        dropped = [e for e in self.executors if e is not executor]
        self.executors = [executor]
        self._idle = [executor]
        self._inline.batch_limit = self.batch_rows
        return dropped

    @property
    def batch_rows(self) -> int:
        """Most rows one batch takes: the config's limit, or an inline executor's
        ``inline_rows`` where that is lower (0: the model takes no batches)."""
        limit = self.policy.batch_limit
        executors = self.executors
        cap = executors[0].inline_rows if len(executors) == 1 and executors[0].inline else 0
        return min(limit, cap) if limit and cap else limit

    def run_inline(self, executor: Executor, inputs: dict[str, np.ndarray], rows: int) -> Outputs:
        """Run one request on the executor ``inline_slot`` gave, synchronously: nothing
        can arrive or drain meanwhile, so it needs no queue entry, future or in-flight
        accounting. Raises the error the request fails with."""
        if self._hook:
            self._hook("dispatch")
        try:
            outputs, infer_ns = executor.run_alone(inputs)
        except Exception:
            self.stats.timeline.add(0, ok=False)
            raise
        self.stats.record_inline(rows, infer_ns)
        self.stats.timeline.add(infer_ns)
        self._inline.answered(1)
        return outputs

    def run_inline_group(
        self, executor: Executor, parts: list[dict[str, np.ndarray]], rows: list[int]
    ) -> list[Outputs]:
        """Run requests that arrived together as one batch on the executor
        ``inline_slot`` gave, synchronously (see ``run_inline``). Raises what the batch
        raised; nothing is recorded then (each request is served again on its own)."""
        if len(parts) == 1:
            return [self.run_inline(executor, parts[0], rows[0])]
        if self._hook:
            self._hook("dispatch")
        result = executor.run_group(parts, rows)
        stats = self.stats
        stats.record_execution(
            result.rows, len(parts), result.input_ns, result.infer_ns, result.output_ns
        )
        compute_ns = result.input_ns + result.infer_ns + result.output_ns
        for _ in parts:
            stats.record_queued(0)
            stats.timeline.add(compute_ns)
        self._inline.answered(len(parts))
        return cast(list[Outputs], result.outcomes)  # it did not raise: all outputs

    def submit(self, request: QueuedRequest) -> None:
        """Queue ``request``; its future resolves with its outputs or an error."""
        if self._closed:
            raise Unavailable(f"model '{self.name}' is draining; retry the request")
        level = request.priority - 1
        if self.policy.shed_queue_size:
            refused = self.policy.shed(self.name, level, self.queued)
            if refused is not None:
                self.shed[level] += 1
                raise refused
        limit = self.policy.queue_for(request.priority).max_queue_size
        if limit and self._queued[level] >= limit:
            raise QueueFull(
                f"queue full: model '{self.name}' has {limit} requests waiting at priority "
                f"{request.priority} (max_queue_size); retry with backoff"
            )
        self._queues[level].append(request)
        self._queued[level] += 1
        self._queued_rows += request.rows
        self._drained.clear()
        if request.deadline_ns:
            self._deadlines.add(request, self._queued[level])
        if self._idle and self._idle[-1].inline:
            self._inline.collect()
            return
        self._schedule()

    def cancel(self, request: QueuedRequest) -> None:
        """The caller went away: take the request out of the queue if it is still there."""
        if request.state == QUEUED:
            self._leave_queue(request)
        request.state = DONE

    async def drain(self) -> None:
        """Stop taking requests; return once every queued and running one finished."""
        self._closed = True
        self._check_drained()
        await self._drained.wait()

    def close(self) -> None:
        for executor in self.executors:
            executor.close()

    # -- queue bookkeeping ---------------------------------------------------------

    def _dequeue(self, request: QueuedRequest, state: int) -> None:
        request.state = state
        self._queued[request.priority - 1] -= 1
        self._queued_rows -= request.rows

    def _leave_queue(self, request: QueuedRequest) -> None:
        self._dequeue(request, DONE)
        self._check_drained()

    def _expire(self, request: QueuedRequest) -> None:
        if request.state != QUEUED:
            return
        if request.delay_on_timeout:
            request.deadline_ns = 0  # Triton's DELAY: keep it, it just lost its deadline
            return
        self._leave_queue(request)
        if not request.future.done():
            waited = (time.monotonic_ns() - request.enqueued_ns) / 1e6
            request.future.set_exception(
                DeadlineExceeded(
                    f"model '{self.name}': request timed out after {waited:.1f} ms in the "
                    "queue; raise the timeout or reduce load"
                )
            )

    def _check_drained(self) -> None:
        if self._running == 0 and not any(self._queued):
            self._drained.set()

    # -- batch formation -----------------------------------------------------------

    def _schedule(self) -> None:
        while self._idle and self.queued:
            batch = self._form_batch()
            if batch is None:
                return
            self._dispatch(self._idle.pop(), batch)

    def _head(self) -> QueuedRequest | None:
        for queue in self._queues:
            while queue and queue[0].state != QUEUED:
                queue.popleft()
            if queue:
                return queue[0]
        return None

    def _should_wait(self, head: QueuedRequest, rows: int, limit: int) -> bool:
        """Triton mode only: hold a partial batch until max_queue_delay passes."""
        policy = self.policy
        if policy.eager or not policy.max_queue_delay_us or rows >= limit:
            return False
        if policy.preferred_batch_sizes and rows in policy.preferred_batch_sizes:
            return False
        due_ns = head.enqueued_ns + policy.max_queue_delay_us * 1000
        now = time.monotonic_ns()
        if now >= due_ns:
            return False
        if self._delay_timer is None:
            loop = asyncio.get_running_loop()
            self._delay_timer = loop.call_later((due_ns - now) / 1e9, self._delay_elapsed)
        return True

    def _delay_elapsed(self) -> None:
        self._delay_timer = None
        self._schedule()

    def _form_batch(self) -> list[QueuedRequest] | None:
        head = self._head()
        if head is None:
            return None
        limit = take = self.batch_rows
        executors = self.executors
        if limit and len(executors) > 1 and self.policy.eager and not executors[0].inline:
            running = sum(e.rows_running for e in executors)
            own = self._idle[-1].rows_running  # the instance _schedule hands the batch to
            take = balanced_rows(limit, self._queued_rows, running, own, len(executors))
        batch = self._collect(head, take) if limit else [head]
        batch = self.policy.trim_to_preferred(batch)
        rows = sum(r.rows for r in batch)
        if self._should_wait(head, rows, limit):
            return None
        for request in batch:
            self._take(request)
        return batch

    def _collect(self, head: QueuedRequest, limit: int) -> list[QueuedRequest]:
        """Same-signature requests in priority then arrival order, up to ``limit`` rows
        (a head with more rows, over an inline executor's ``inline_rows``, goes alone)."""
        if head.rows >= limit:
            return [head]
        batch, rows = [], 0
        for queue in self._queues:
            for request in queue:
                if request.state != QUEUED or request.signature != head.signature:
                    continue
                if rows + request.rows > limit:
                    continue
                batch.append(request)
                rows += request.rows
                if rows == limit:
                    return batch
        return batch

    def _take(self, request: QueuedRequest) -> None:
        self._dequeue(request, RUNNING)
        request.queue_ns = time.monotonic_ns() - request.enqueued_ns
        self.stats.record_queued(request.queue_ns)

    # -- execution -----------------------------------------------------------------

    def _dispatch(self, executor: Executor, batch: list[QueuedRequest]) -> None:
        self._running += len(batch)
        executor.running += 1
        rows = sum(r.rows for r in batch)
        executor.rows_running += rows
        if self._hook:
            self._hook("dispatch")
        if executor.inline and executor.runs_inline(rows):
            self._finish(executor, batch, executor.run(batch))
            return
        self._offer(executor)  # a free place for the next batch, behind idle instances
        loop = asyncio.get_running_loop()
        if self._poller:
            self._poller.thread_started()
        task = loop.run_in_executor(executor.pool, executor.run, batch)
        task.add_done_callback(lambda fut: self._thread_done(executor, batch, fut))

    def _offer(self, executor: Executor) -> None:
        """List ``executor`` as taking batches while it has a free place, the ones with
        the fewest batches running last (``_schedule`` takes from the end)."""
        idle = self._idle
        for i, listed in enumerate(idle):
            if listed is executor:
                del idle[i]
                break
        if executor.free:
            idle.append(executor)
            if len(idle) > 1:
                idle.sort(key=lambda e: -e.running)

    def _thread_done(
        self, executor: Executor, batch: list[QueuedRequest], done: asyncio.Future[BatchResult]
    ) -> None:
        if self._poller:
            self._poller.thread_finished()
        self._finish(executor, batch, done.result())

    def _finish(self, executor: Executor, batch: list[QueuedRequest], result: BatchResult) -> None:
        if result.executions:
            self.stats.record_execution(
                result.rows, len(batch), result.input_ns, result.infer_ns, result.output_ns
            )
        compute_ns = result.input_ns + result.infer_ns + result.output_ns
        timeline = self.stats.timeline
        for request, outcome in zip(batch, result.outcomes, strict=True):
            # The guard's view of the model: its queue and compute time, or its failure.
            failed = isinstance(outcome, BaseException)
            timeline.add(0 if failed else request.queue_ns + compute_ns, ok=not failed)
            if request.state != DONE and not request.future.done():
                if isinstance(outcome, BaseException):
                    request.future.set_exception(outcome)
                else:
                    request.future.set_result(outcome)
            request.state = DONE
        if executor.inline:
            self._inline.answered(len(batch))
        self._running -= len(batch)
        executor.running -= 1
        executor.rows_running -= sum(r.rows for r in batch)
        self._offer(executor)
        self._check_drained()
        if any(self._queued):
            self._schedule()

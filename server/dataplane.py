"""The data plane: transport-independent inference and model queries.

Servicers decode, call this, encode. Every error leaves here as a WarpserveError.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Protocol

import numpy as np

from warpserve.server import classification
from warpserve.server import fallback as fallbacks
from warpserve.server.batching.executor import Executor
from warpserve.server.batching.request import Outputs, QueuedRequest, batch_runs, signature_of
from warpserve.server.busypoll import BusyPoller
from warpserve.server.codec import InferRequest
from warpserve.server.decodepool import Inbox, decoders
from warpserve.server.errors import (
    UNKNOWN_MODEL,
    Unavailable,
    WarpserveError,
)
from warpserve.server.inflight import InFlight
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.lifecycle.version import ModelVersion
from warpserve.server.preprocessing import Inputs
from warpserve.server.validation import InputValidator

log = logging.getLogger(__name__)


class Answered(Protocol):
    """The model version that answered a request, as the transports name it."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...


# What ``infer_together`` did with a request (see there).
Together = tuple[ModelVersion, Outputs] | ModelVersion | None


class RemoteModels(Protocol):
    """Models served by another process of this server (the model owner)."""

    def owns(self, model_name: str) -> bool: ...

    async def infer(
        self, request: InferRequest, deadline_s: float | None
    ) -> tuple[Answered, Outputs]: ...


class DataPlane(fallbacks.FallbackRouting):
    def __init__(
        self,
        registry: ModelRegistry,
        poller: BusyPoller | None = None,
        owner: RemoteModels | None = None,
    ) -> None:
        self.registry = registry
        self.poller = poller
        # Requests for models placed on the model owner go there (see server/owner).
        self.owner = owner
        # Every transport admits its calls here, so that a shutdown waits for them all.
        self.calls = InFlight()
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._decoded: Inbox[Inputs] | None = None  # decoder threads' answers, on this loop

    def infer_now(self, request: InferRequest) -> tuple[ModelVersion, Outputs | None]:
        """Route ``request`` and, when its version can run it at once (a tiny model on a
        loop with idle time), serve it synchronously: no task switch, queue entry or
        future. Otherwise the outputs are None and ``infer`` queues it."""
        mv = self.registry.resolve(request.model_name, request.model_version, request.id)
        validator, batcher = mv.validator, mv.batcher
        if validator is None or batcher is None:
            return mv, None  # infer reports why
        stage = mv.stage
        if stage is not None and not stage.is_cheap(request.inputs):
            return mv, None  # decoded on a worker thread by infer
        executor = batcher.inline_slot()
        if executor is None:
            return mv, None
        start = time.perf_counter_ns()
        try:
            rows = _checked_rows(validator, request)
            if not executor.runs_inline(rows):
                return mv, None  # more rows than it runs inline: its worker thread's
            if request.parameters:
                batcher.policy.request_queue(request.parameters)  # checked, not needed
            inputs = stage.apply(request.inputs) if stage is not None else request.inputs
            outputs = batcher.run_inline(executor, inputs, rows)
        except WarpserveError as exc:
            mv.stats.record_failure(type(exc).__name__, time.perf_counter_ns() - start)
            raise
        mv.stats.record_success(rows, time.perf_counter_ns() - start)
        return mv, self._answer(mv, request, _select(outputs, request.outputs, mv))

    def infer_together(self, requests: list[InferRequest]) -> list[Together]:
        """Serve at once, synchronously, requests that arrived together: those for one
        tiny model on a loop with idle time run as one batch (``infer_now`` for a group).
        For each request: its version and outputs; or the version it was routed to,
        its arrival counted, for ``infer_queued`` to serve; or None where this did
        nothing (a model elsewhere, any error: ``infer`` serves and words it)."""
        served: list[Together] = [None] * len(requests)
        owner = self.owner
        groups: dict[int, tuple[ModelVersion, list[int], list[int]]] = {}
        for i, request in enumerate(requests):
            if owner is not None and owner.owns(request.model_name):
                continue
            try:
                mv = self.registry.resolve(request.model_name, request.model_version, request.id)
                validator, batcher, stage = mv.validator, mv.batcher, mv.stage
                if validator is None or batcher is None:
                    continue
                if stage is not None and not stage.is_cheap(request.inputs):
                    continue
                count = _checked_rows(validator, request)
                if request.parameters:
                    batcher.policy.request_queue(request.parameters)
            except WarpserveError:
                continue
            group = groups.get(id(mv))
            if group is None:
                group = groups[id(mv)] = (mv, [], [])
            group[1].append(i)
            group[2].append(count)
        for mv, indices, rows in groups.values():
            assert mv.batcher is not None and mv.validator is not None
            try:
                executor = mv.batcher.inline_slot(len(indices))
            except WarpserveError:  # draining: ``infer`` words it
                continue
            if executor is None:
                for i in indices:
                    served[i] = mv
                continue
            inputs = [requests[i].inputs for i in indices]
            limit, batched = mv.batcher.batch_rows, mv.validator.batched
            for run in batch_runs(indices, rows, inputs, limit, batched):
                if executor.runs_inline(sum(count for _, count in run)):
                    self._run_together(mv, executor, requests, run, served)
                else:  # one request over the executor's inline_rows
                    served[run[0][0]] = mv
        return served

    def _run_together(
        self,
        mv: ModelVersion,
        executor: Executor,
        requests: list[InferRequest],
        run: list[tuple[int, int]],
        served: list[Together],
    ) -> None:
        """Run ``run`` ((request index, rows) pairs) as one batch; the outputs go into
        ``served``. A batch that raises leaves its requests for ``infer`` to serve one
        by one, which words the error (or falls back) for the one that caused it."""
        assert mv.batcher is not None
        start = time.perf_counter_ns()
        stage = mv.stage
        try:
            parts = [
                stage.apply(requests[i].inputs) if stage is not None else requests[i].inputs
                for i, _ in run
            ]
            outcomes = mv.batcher.run_inline_group(executor, parts, [rows for _, rows in run])
        except WarpserveError:
            return
        elapsed = time.perf_counter_ns() - start
        for (i, rows), outputs in zip(run, outcomes, strict=True):
            request = requests[i]
            mv.stats.record_success(rows, elapsed)
            served[i] = (mv, self._answer(mv, request, _select(outputs, request.outputs, mv)))

    async def infer(
        self, request: InferRequest, deadline_s: float | None = None, *, fall_back: bool = True
    ) -> tuple[Answered, Outputs]:
        """Serve ``request``: through the model owner for a model placed there, else at
        once where ``infer_now`` can, else through its version's queue; by its model's
        fallback when the version cannot (``fallback``)."""
        owner = self.owner
        if owner is not None and owner.owns(request.model_name):
            return await owner.infer(request, deadline_s)
        if self.poller:
            self.poller.arm()
        try:
            mv, outputs = self.infer_now(request)
        except fallbacks.FALLBACK_ERRORS as exc:
            return await self.recover(request, exc, deadline_s, fall_back)
        if outputs is not None:
            return mv, outputs
        return await self.infer_queued(mv, request, deadline_s, fall_back=fall_back)

    async def infer_queued(
        self,
        mv: ModelVersion,
        request: InferRequest,
        deadline_s: float | None,
        *,
        fall_back: bool = True,
    ) -> tuple[Answered, Outputs]:
        """Serve through the queue a request that ``infer_now`` routed to ``mv`` but
        did not run."""
        try:
            queue_deadline_s = deadline_s
            if deadline_s is not None and mv.fallback is not None:
                queue_deadline_s = self._primary_deadline(mv.fallback, deadline_s)
            outputs = await self._queue(mv, request, queue_deadline_s)
        except fallbacks.FALLBACK_ERRORS as exc:
            return await self.recover(request, exc, deadline_s, fall_back)
        return mv, self._answer(mv, request, outputs)

    def _answer(self, mv: ModelVersion, request: InferRequest, outputs: Outputs) -> Outputs:
        """The outputs a request is answered with: mirrored to a shadow version first,
        then those requested as classes replaced by their top classes."""
        self._maybe_shadow(mv, request, outputs)
        if not request.classes:
            return outputs
        assert mv.validator is not None
        return classification.classified(outputs, request.classes, mv.validator.batched, mv.labels)

    async def _queue(
        self, mv: ModelVersion, request: InferRequest, deadline_s: float | None
    ) -> Outputs:
        start = time.perf_counter_ns()
        try:
            validator, batcher = mv.validator, mv.batcher
            if validator is None or batcher is None:
                raise Unavailable(
                    f"{UNKNOWN_MODEL}: '{mv.name}' version {mv.version} is not at ready state"
                )
            rows = _checked_rows(validator, request)
            priority, timeout_us = batcher.policy.request_queue(request.parameters)
            inputs = await self._prepared(mv, request.inputs)
            queued = self._queued(mv, inputs, rows, priority, timeout_us, deadline_s)
            batcher.submit(queued)
            try:
                outputs = await queued.future
            except asyncio.CancelledError:
                batcher.cancel(queued)
                mv.stats.record_failure("CANCELLED", time.perf_counter_ns() - start)
                raise
        except WarpserveError as exc:
            mv.stats.record_failure(type(exc).__name__, time.perf_counter_ns() - start)
            raise
        mv.stats.record_success(rows, time.perf_counter_ns() - start)
        return _select(outputs, request.outputs, mv)

    async def _prepared(self, mv: ModelVersion, inputs: dict[str, np.ndarray]) -> Inputs:
        """The (validated) inputs as the model takes them: raw images decoded and resized
        per request, before batching; large ones off the event loop. The busy poller
        counts a decode as a worker thread at work: spinning beside it would take the
        core it decodes on."""
        stage = mv.stage
        if stage is None:
            return inputs
        if stage.is_cheap(inputs):
            return stage.apply(inputs)
        loop = asyncio.get_running_loop()
        inbox = self._decoded
        if inbox is None or inbox.loop is not loop:
            inbox = self._decoded = Inbox(loop)
        poller = self.poller
        done = None
        if poller is not None:  # finished when the thread is, even if the caller is not
            poller.thread_started()
            done = poller.thread_finished
        return await decoders().submit(lambda: stage.apply(inputs), inbox, done)

    def _queued(
        self,
        mv: ModelVersion,
        inputs: dict[str, np.ndarray],
        rows: int,
        priority: int,
        timeout_us: int,
        deadline_s: float | None,
    ) -> QueuedRequest:
        assert mv.validator is not None and mv.batcher is not None
        deadline_ns = 0
        now = time.monotonic_ns()
        if timeout_us:
            deadline_ns = now + timeout_us * 1000
        if deadline_s is not None:
            client = now + int(deadline_s * 1e9)
            deadline_ns = min(deadline_ns, client) if deadline_ns else client
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        return QueuedRequest(
            inputs,
            rows,
            signature_of(inputs, mv.validator.batched),
            future,
            priority=priority,
            deadline_ns=deadline_ns,
            delay_on_timeout=mv.batcher.policy.queue_for(priority).delay_on_timeout,
        )

    def _maybe_shadow(self, mv: ModelVersion, request: InferRequest, outputs: Outputs) -> None:
        served = self.registry.models.get(mv.name)
        if served is None or request.model_version:
            return
        target = served.router.shadow_for(request.id)
        shadow = served.versions.get(target) if target is not None else None
        if shadow is None or not shadow.ready or shadow is mv:
            return
        if request.shared_inputs:  # the mirror runs after the client may reuse its memory
            copies = {name: np.array(array) for name, array in request.inputs.items()}
            request = dataclasses.replace(request, inputs=copies, shared_inputs=False)
        task = asyncio.get_running_loop().create_task(self._shadow(shadow, request, outputs))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, shadow: ModelVersion, request: InferRequest, served: Outputs) -> None:
        """Mirror to a candidate: record its latency and output difference, drop the reply."""
        try:
            mirrored = await self._queue(shadow, request, None)
        except (WarpserveError, asyncio.CancelledError):
            return
        diff = 0.0
        for name, array in served.items():
            other = mirrored.get(name)
            if other is not None and other.shape == array.shape and array.dtype.kind in "fiub":
                delta = np.abs(other.astype(np.float64) - array.astype(np.float64))
                diff = max(diff, float(np.max(delta, initial=0.0)))
        shadow.stats.shadow_max_abs_diff = max(shadow.stats.shadow_max_abs_diff, diff)


def _checked_rows(validator: InputValidator, request: InferRequest) -> int:
    """Validate the request's inputs and requested outputs; return its batch rows.
    Requests decoded from one wire plan (same names, dtypes and shapes) are checked
    once per validator."""
    plan = request.plan
    if plan is not None and plan.checked_by is validator:
        return int(plan.rows)
    rows = validator.check(request.inputs)
    if request.outputs:
        validator.check_outputs(request.outputs)
        if request.classes:
            classification.check_classifiable(request.classes, validator.outputs)
    if plan is not None:
        plan.checked_by, plan.rows = validator, rows
    return rows


def _select(outputs: Outputs, requested: list[str], mv: ModelVersion) -> Outputs:
    assert mv.validator is not None  # a version that answered is loaded
    names = requested or mv.validator.outputs  # config order
    return {n: outputs[n] for n in names if n in outputs}

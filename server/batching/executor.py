"""An execution instance: runs a formed batch on one model instance.

``run`` does everything between "batch formed" and "outputs per request" (gather
inputs, execute, slice outputs) in one call, so a batch costs one hop to the worker
thread. Backends such as ONNX Runtime release the GIL while they compute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from warpserve.server.batching.request import Outputs, QueuedRequest
from warpserve.server.errors import BackendError, WarpserveError

log = logging.getLogger(__name__)


class ModelInstance(Protocol):
    """What a backend hands the batcher: one loaded copy of a model."""

    def execute(self, inputs: dict[str, np.ndarray]) -> Outputs: ...

    def close(self) -> None: ...


@dataclass
class BatchResult:
    outcomes: list[Outputs | BaseException]
    rows: int = 0
    executions: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


@dataclass
class Executor:
    instance: ModelInstance
    batched: bool  # inputs carry a leading batch dimension
    label: str = ""
    # Run on the event loop thread instead of a worker: for models so small that
    # the thread hop costs more than the compute (see the serving benchmark).
    inline: bool = False
    # The most rows an inline run takes (0: any): a model whose full batch would hold
    # the loop too long runs inline up to this many rows, and a request with more rows
    # than this, which no batch may split, runs on its worker thread instead.
    inline_rows: int = 0
    # Batches handed to its worker thread at once (inline: always one; the config's
    # batches_per_instance). With two, the next batch waits on the thread while one runs
    # and starts as soon as it finishes, instead of after the finished one's round trip
    # through the event loop (a sleeping loop's wake-up and the thread's, each up to
    # hundreds of microseconds on a busy 2-core VM). The price: a request that arrives
    # just after the next batch was handed over waits one more run.
    depth: int = 1
    running: int = field(default=0, init=False)  # batches handed over, not yet finished
    rows_running: int = field(default=0, init=False)  # their rows
    # Sees the inputs of every batch run for serving (the drift monitor's sampling);
    # None, as for most models, costs one attribute check per batch.
    observer: Callable[[dict[str, np.ndarray]], None] | None = None
    pool: ThreadPoolExecutor = field(init=False)
    _buffers: dict[str, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"exec-{self.label}")
        self._buffers: dict[str, np.ndarray] = {}

    @property
    def free(self) -> bool:
        """Whether it takes another batch now."""
        return self.running < (1 if self.inline else self.depth)

    def runs_inline(self, rows: int) -> bool:
        """Whether a batch of ``rows`` runs on the loop thread."""
        return self.inline and (not self.inline_rows or rows <= self.inline_rows)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.instance.close()

    def run(self, batch: list[QueuedRequest]) -> BatchResult:
        try:
            return self._run_together(batch)
        except Exception as exc:
            if len(batch) == 1:
                return BatchResult([_as_backend_error(exc)])
            # One bad request must not fail its neighbours: run them one by one.
            return self._run_each(batch)

    def run_alone(self, inputs: dict[str, np.ndarray]) -> tuple[Outputs, int]:
        """Run one request's inputs as they are; returns its outputs and the run's ns.

        The inline fast path: no batch to gather or scatter, no request object.
        Raises the error the request should fail with.
        """
        start = time.perf_counter_ns()
        try:
            outputs = self.instance.execute(inputs)
        except Exception as exc:
            raise _as_backend_error(exc) from exc
        if self.observer is not None:
            self.observer(inputs)
        return outputs, time.perf_counter_ns() - start

    def run_group(self, parts: list[dict[str, np.ndarray]], rows: list[int]) -> BatchResult:
        """Run requests' inputs (``rows`` each) as one batch, synchronously: requests
        that arrived together on the loop and run inline. Raises what the batch raised
        (the caller serves each request on its own then)."""
        try:
            return self._together(parts, rows)
        except Exception as exc:
            raise _as_backend_error(exc) from exc

    def _run_together(self, batch: list[QueuedRequest]) -> BatchResult:
        return self._together([r.inputs for r in batch], [r.rows for r in batch])

    def _together(self, parts: list[dict[str, np.ndarray]], rows: list[int]) -> BatchResult:
        t0 = time.perf_counter_ns()
        inputs = self._gather(parts)
        t1 = time.perf_counter_ns()
        outputs = self.instance.execute(inputs)
        if self.observer is not None:
            self.observer(inputs)
        if len(parts) > 1:
            outputs = self._detach(outputs)
        t2 = time.perf_counter_ns()
        outcomes: list[Outputs | BaseException] = list(_scatter(rows, outputs))
        t3 = time.perf_counter_ns()
        return BatchResult(outcomes, sum(rows), 1, t1 - t0, t2 - t1, t3 - t2)

    def _run_each(self, batch: list[QueuedRequest]) -> BatchResult:
        outcomes: list[Outputs | BaseException] = []
        for request in batch:
            try:
                outcomes.append(self._run_together([request]).outcomes[0])
            except Exception as exc:
                outcomes.append(_as_backend_error(exc))
        return BatchResult(outcomes)

    def _gather(self, batch: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        if len(batch) == 1:
            return batch[0]
        gathered = {}
        for name, first in batch[0].items():
            parts = [inputs[name] for inputs in batch]
            rows = sum(len(p) for p in parts)
            buffer = self._buffers.get(name)
            if (
                buffer is None
                or buffer.dtype != first.dtype
                or buffer.shape[1:] != first.shape[1:]
                or len(buffer) < rows
            ):
                if first.dtype == np.object_:
                    gathered[name] = np.concatenate(parts)
                    continue
                buffer = self._buffers[name] = np.empty((rows, *first.shape[1:]), first.dtype)
            gathered[name] = np.concatenate(parts, out=buffer[:rows])
        return gathered

    def _detach(self, outputs: Outputs) -> Outputs:
        """Copy any output that views the gather buffers: the next batch overwrites them
        while this one's answers may still be on their way out."""
        buffers = self._buffers.values()
        return {
            name: array.copy() if any(np.may_share_memory(array, b) for b in buffers) else array
            for name, array in outputs.items()
        }


def _scatter(rows: list[int], outputs: Outputs) -> list[Outputs]:
    if len(rows) == 1:
        return [outputs]
    result, offset = [], 0
    for count in rows:
        end = offset + count
        result.append({n: a[offset:end] for n, a in outputs.items()})
        offset = end
    return result


def _as_backend_error(exc: Exception) -> Exception:
    if isinstance(exc, WarpserveError):
        return exc
    log.warning("model execution failed: %s", exc)
    return BackendError(f"model raised {type(exc).__name__}: {exc}")

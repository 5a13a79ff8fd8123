"""One model version: load, warm up, verify against its golden data, serve, drain.

States: LOADING -> WARMING -> READY -> DRAINING -> UNLOADED, or FAILED with a reason.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from warpserve.protos import model_config_pb2 as mc
from warpserve.server import classification, fallback, preprocessing
from warpserve.server.backends import reshape
from warpserve.server.backends import spec as formats
from warpserve.server.batching.batcher import DynamicBatcher, Hook
from warpserve.server.batching.executor import Executor
from warpserve.server.batching.policy import from_config
from warpserve.server.batching.request import Outputs
from warpserve.server.busypoll import BusyPoller
from warpserve.server.drift.monitor import DriftMonitor, monitor_for
from warpserve.server.drift.reference import read_reference
from warpserve.server.errors import GoldenMismatch, InvalidInput, ModelLoadError, WarpserveError
from warpserve.server.lifecycle import execution, warmup
from warpserve.server.lifecycle.guarding import GuardStatus
from warpserve.server.repository import config as cfg
from warpserve.server.repository import parameters as params
from warpserve.server.repository import versionfolder
from warpserve.server.stats import VersionStats
from warpserve.server.validation import InputValidator, tensor_specs

log = logging.getLogger(__name__)

# Tests inject delays at named points to hit race windows on purpose. Lifecycle
# points ("warming", "swapping", "draining") may return an awaitable, which is
# awaited; the batcher's points ("dispatch") run synchronously on the loop.
LifecycleHook = Callable[[str], "Awaitable[None] | None"]


async def at_point(hook: LifecycleHook | None, point: str) -> None:
    if hook is None:
        return
    result = hook(point)
    if inspect.isawaitable(result):
        await result


def sync_points(hook: LifecycleHook | None) -> Hook | None:
    """The hook as the batcher takes it: an awaitable returned there is a test bug."""
    if hook is None:
        return None

    def call(point: str) -> None:
        result = hook(point)
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if close is not None:
                close()
            raise TypeError(f"hook point '{point}' runs synchronously; return None there")

    return call


class VersionState(str, enum.Enum):
    LOADING = "LOADING"
    WARMING = "WARMING"
    READY = "READY"
    DRAINING = "DRAINING"
    UNLOADED = "UNLOADED"
    FAILED = "FAILED"


class ModelVersion:
    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        config: mc.ModelConfig,
        *,
        hook: LifecycleHook | None = None,
        poller: BusyPoller | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.config = config  # completed during load
        self.state = VersionState.LOADING
        self.reason = ""
        self.failure: type[ModelLoadError] = ModelLoadError  # what FAILED raises to callers
        self.stats = VersionStats()
        self.guard: GuardStatus | None = None  # set by a latency guard watching this version
        # The model that answers when this version cannot (config fallback_model).
        self.fallback: fallback.FallbackPlan | None = None
        # Live inputs against the version's drift reference; None without one.
        self.drift: DriftMonitor | None = None
        self.validator: InputValidator | None = None
        self.labels: classification.Labels = {}  # per output, from its label_filename
        # Raw images to the model's tensor, per request before batching (config parameters).
        self.stage: preprocessing.ImageStage | None = None
        self._warmup: list[warmup.WarmupSample] = []  # the config's model_warmup
        self._runs: dict[str, np.ndarray] | None = None  # inputs that ran at warm-up
        self.batcher: DynamicBatcher | None = None
        self._hook = hook
        self._poller = poller
        self._retiring: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<{self.name} v{self.version} {self.state.value}>"

    @property
    def ready(self) -> bool:
        return self.state is VersionState.READY

    def fail(self, reason: str, error: type[ModelLoadError] = ModelLoadError) -> None:
        self.state = VersionState.FAILED
        self.reason = reason
        self.failure = error
        log.error("model '%s' version %d failed: %s", self.name, self.version, reason)

    # -- load ------------------------------------------------------------------------

    async def load(self) -> None:
        """Load, warm up and verify; leaves READY or FAILED (never raises).

        If the version is unloaded meanwhile (server shutdown), it stays UNLOADED.
        """
        try:
            await self._load()
            if not self._advance(VersionState.LOADING, VersionState.WARMING):
                await self._discard()
                return
            await at_point(self._hook, "warming")
            await self._warm_up_and_verify()
            await self._choose_execution()
            self._watch_drift()  # after warm-up: its inputs are no live traffic
        except Exception as exc:
            await self._discard()
            reason = str(exc) if isinstance(exc, WarpserveError) else f"{type(exc).__name__}: {exc}"
            if self.state in (VersionState.LOADING, VersionState.WARMING):
                self.fail(reason, type(exc) if isinstance(exc, ModelLoadError) else ModelLoadError)
            return
        if not self._advance(VersionState.WARMING, VersionState.READY):
            await self._discard()
            return
        log.info("model '%s' version %d is ready", self.name, self.version)

    def _advance(self, expected: VersionState, state: VersionState) -> bool:
        if self.state is not expected:
            return False
        self.state = state
        return True

    async def _load(self) -> None:
        self.config = await asyncio.to_thread(cfg.complete, self.config, self.path)
        self.validator = InputValidator(self.config)
        self.fallback = fallback.plan_of(self.config)
        self.labels = await asyncio.to_thread(
            classification.read_labels, self.path.parent, self.config
        )
        self._warmup = await asyncio.to_thread(
            warmup.configured_samples, self.config, self.path.parent, self.validator
        )
        source = str(self.path.parent / cfg.CONFIG_FILE)
        self.stage = preprocessing.plan(self.config, source)
        # The backend sees the image input as the model's tensor, not the client's.
        inner = self.stage.model_config(self.config) if self.stage else self.config
        loader = formats.loader_for(inner)
        reshapes = reshape.plan(inner, source)
        count = sum(g.count for g in self.config.instance_group)
        batched = self.config.max_batch_size > 0
        mode = params.EXECUTION.read(self.config)
        depth = params.BATCHES_PER_INSTANCE.read(self.config)
        executors = []
        for index in range(count):
            loaded = await asyncio.to_thread(loader, inner, self.path, index, count)
            instance = reshapes.wrap(loaded)
            label = f"{self.name}-{self.version}-{index}"
            executor = Executor(instance, batched, label, inline=mode == "inline", depth=depth)
            executors.append(executor)
        try:
            reference = await asyncio.to_thread(read_reference, self.path)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        self.drift = monitor_for(self.config, reference, f"'{self.name}' version {self.version}")
        self.batcher = DynamicBatcher(
            f"{self.name}:{self.version}",
            from_config(self.config),
            executors,
            self.stats,
            hook=sync_points(self._hook),
            poller=self._poller,
        )

    def _watch_drift(self) -> None:
        if self.drift is None or self.batcher is None:
            return
        for executor in self.batcher.executors:
            executor.observer = self.drift.observe

    async def _warm_up_and_verify(self) -> None:
        """Run the config's warm-up samples and the golden check; with neither, a run
        that may fail (see ``warmup``). Notes inputs known to run, for timing."""
        for sample in self._warmup:
            where = f"model_warmup sample '{sample.name}'"
            inputs = await self._model_inputs(sample.inputs, where)
            for _ in range(sample.count):
                try:
                    await self.run_direct(inputs)
                except ModelLoadError as exc:
                    raise ModelLoadError(f"{where}: {exc}") from exc
            self._runs = self._runs or inputs
        golden = versionfolder.read_golden(self.path)
        if golden is not None:
            inputs = await self._model_inputs(golden.inputs, "golden inputs")
            outputs = await self.run_direct(inputs)
            self._check(outputs, golden.outputs)
            self._runs = inputs
        elif not self._warmup:
            await self._warm_up_unasked()

    async def _warm_up_unasked(self) -> None:
        assert self.validator is not None
        rows = [1, self.config.max_batch_size] if self.validator.batched else [None]
        specs = self.validator.inputs
        if self.stage is not None:  # zeros in the model's tensor: an empty string is no image
            specs = tensor_specs(self.stage.model_config(self.config).input)
        for n in rows:
            inputs = warmup.default_inputs(specs, n)
            try:
                await self.run_direct(inputs)
            except ModelLoadError as exc:
                log.warning(
                    "model '%s' version %d: a warm-up run on zeros and empty strings failed "
                    "(%s); loading anyway, as no model_warmup or golden data asked for it",
                    self.name,
                    self.version,
                    exc,
                )
                return
            self._runs = self._runs or inputs

    async def _choose_execution(self) -> None:
        """execution=auto: run tiny models on the event loop, skipping the thread hop.

        Measured on the serving benchmark: for a model whose batch-1 run takes a few
        microseconds, handing each batch to a worker thread costs more than the model
        (thread wake-ups and GIL hand-offs), and throughput at 32 concurrent clients
        drops to a third. The rule and its limits are in ``execution``: models slower
        than INLINE_THRESHOLD_NS keep worker threads so they never stall the loop; one
        whose full batch passes INLINE_BATCH_LIMIT_NS runs inline batches of the rows
        that stay under it (``Executor.inline_rows``) and larger requests on its worker
        thread (the image classifier's 64 rows take 1.6 ms on a quiet 2-core VM and 2 to
        7 ms under load; on worker threads its raw JPEGs were served about 10 % slower).
        Formats whose spec does not offer inline execution (a GPU run waits on its
        device; torch keeps its own thread pools) always keep them.
        """
        assert self.batcher is not None and self.validator is not None
        executors = self.batcher.executors
        if params.EXECUTION.read(self.config) != "auto":
            return
        if not formats.spec_for(self.config).capabilities.inline:
            log.info(
                "model '%s' version %d: executing on worker threads (%s does not run inline)",
                self.name,
                self.version,
                self.config.platform,
            )
            return
        known = self._runs
        if known is None:
            log.info(
                "model '%s' version %d: no warm-up input ran, so its run time is unknown; "
                "executing on worker threads",
                self.name,
                self.version,
            )
            return
        timing = await execution.measure(
            executors[0], known, self.validator.batched, self.config.max_batch_size
        )
        executors[0].inline = timing.inline
        if timing.inline and timing.rows < self.config.max_batch_size:
            executors[0].inline_rows = timing.rows
        dropped = []
        if executors[0].inline:
            # Inline runs take turns on the one loop thread: a second instance could
            # never run beside the first, so only the first stays loaded.
            dropped = self.batcher.keep_only(executors[0])
            for executor in dropped:
                await asyncio.to_thread(executor.close)
            await self._use_single_threaded(executors[0])
        capped = executors[0].inline_rows
        log.info(
            "model '%s' version %d: a batch-1 run takes %.0f us%s; executing %s%s",
            self.name,
            self.version,
            timing.one_ns / 1000,
            f", a batch of {timing.rows} {timing.rows_ns / 1000:.0f} us" if timing.rows > 1 else "",
            (
                f"inline on the event loop up to {capped} rows (more on a worker thread)"
                if capped
                else "inline on the event loop"
            )
            if executors[0].inline
            else "on worker threads",
            f" (1 of {len(dropped) + 1} configured instances)" if dropped else "",
        )

    async def _use_single_threaded(self, executor: Executor) -> None:
        """Inline execution runs one batch at a time on the loop thread; a backend that
        can run without its own thread pool does so (see its ``single_threaded``)."""
        make = getattr(executor.instance, "single_threaded", None)
        replacement = await asyncio.to_thread(make) if make is not None else None
        if replacement is None:
            return
        previous, executor.instance = executor.instance, replacement
        await asyncio.to_thread(previous.close)
        await self._warm_up_and_verify()  # the new session answers as the old one did

    async def _model_inputs(self, inputs: dict[str, np.ndarray], where: str) -> Outputs:
        """Warm-up or golden inputs as the model takes them (see ``preprocessing``)."""
        stage = self.stage
        if stage is None:
            return inputs
        try:
            return await asyncio.to_thread(stage.for_warmup, inputs)
        except InvalidInput as exc:
            raise ModelLoadError(f"{where}: {exc}") from exc

    async def run_direct(self, inputs: dict[str, np.ndarray]) -> Outputs:
        """Run inputs on the first instance, bypassing the queue, in chunks that fit."""
        assert self.batcher is not None and self.validator is not None
        executor = self.batcher.executors[0]
        limit = self.config.max_batch_size
        rows = next(iter(inputs.values())).shape[0] if self.validator.batched else 1
        step = limit if limit > 0 else rows
        chunks = []
        for start in range(0, rows, step):
            part = {k: v[start : start + step] for k, v in inputs.items()} if limit else inputs
            request = execution.direct_request(part, min(step, rows - start))
            result = await asyncio.to_thread(executor.run, [request])
            outcome = result.outcomes[0]
            if isinstance(outcome, BaseException):
                raise ModelLoadError(f"warm-up run failed: {outcome}")
            chunks.append(outcome)
        if not limit:
            return chunks[0]
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

    def _check(self, outputs: Outputs, expected: dict[str, np.ndarray]) -> None:
        atol = params.GOLDEN_ATOL.read(self.config)
        rtol = params.GOLDEN_RTOL.read(self.config)
        result = versionfolder.compare(outputs, expected, atol, rtol)
        if not result.ok:
            raise GoldenMismatch(
                f"golden check: {'; '.join(result.failures())}; the version computes "
                f"something else: fix the model or its {versionfolder.GOLDEN_DIR}/"
                f"{versionfolder.OUTPUTS_FILE}, or loosen the tolerance"
            )

    async def _discard(self) -> None:
        # Taken before the await so that two callers never close one session twice.
        batcher, self.batcher = self.batcher, None
        if batcher is not None:
            await asyncio.to_thread(batcher.close)

    # -- retire ------------------------------------------------------------------------

    async def drain_and_unload(self) -> None:
        """Finish every queued and running request, then release the model.

        Safe to call from several tasks: they share one drain, and cancelling a
        caller (a retire timer, say) does not interrupt it halfway.
        """
        if self._retiring is None:
            if self.state in (VersionState.UNLOADED, VersionState.FAILED):
                return
            self._retiring = asyncio.ensure_future(self._drain_and_unload())
        await asyncio.shield(self._retiring)

    async def _drain_and_unload(self) -> None:
        self.state = VersionState.DRAINING
        await at_point(self._hook, "draining")
        if self.batcher is not None:
            await self.batcher.drain()
        await self._discard()
        self.state = VersionState.UNLOADED
        log.info("model '%s' version %d unloaded", self.name, self.version)

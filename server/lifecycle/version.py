"""One model version: load, warm up, verify against its golden data, serve, drain.

States: LOADING -> WARMING -> READY -> DRAINING -> UNLOADED, or FAILED with a reason.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from pathlib import Path

import numpy as np

from warpserve.protos import model_config_pb2 as mc
from warpserve.server import backends
from warpserve.server.batching.batcher import DynamicBatcher, Hook
from warpserve.server.batching.executor import Executor
from warpserve.server.batching.policy import from_config
from warpserve.server.batching.request import Outputs, QueuedRequest, signature_of
from warpserve.server.errors import ModelLoadError, WarpserveError
from warpserve.server.repository import config as cfg
from warpserve.server.stats import VersionStats
from warpserve.server.validation import InputValidator

log = logging.getLogger(__name__)

GOLDEN_DIR = "golden"


class VersionState(str, enum.Enum):
    LOADING = "LOADING"
    WARMING = "WARMING"
    READY = "READY"
    DRAINING = "DRAINING"
    UNLOADED = "UNLOADED"
    FAILED = "FAILED"


def _float_param(config: mc.ModelConfig, key: str, default: float) -> float:
    if key in config.parameters:
        return float(config.parameters[key].string_value)
    return default


def _inline(config: mc.ModelConfig) -> bool:
    return "execution" in config.parameters and config.parameters["execution"].string_value == "inline"


class ModelVersion:
    def __init__(
        self, name: str, version: int, path: Path, config: mc.ModelConfig,
        *, hook: Hook | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.config = config           # completed during load
        self.state = VersionState.LOADING
        self.reason = ""
        self.stats = VersionStats()
        self.validator: InputValidator | None = None
        self.batcher: DynamicBatcher | None = None
        self.loaded_at = 0.0
        self._hook = hook

    def __repr__(self) -> str:
        return f"<{self.name} v{self.version} {self.state.value}>"

    @property
    def ready(self) -> bool:
        return self.state is VersionState.READY

    def fail(self, reason: str) -> None:
        self.state = VersionState.FAILED
        self.reason = reason
        log.error("model '%s' version %d failed: %s", self.name, self.version, reason)

    # -- load ------------------------------------------------------------------------

    async def load(self) -> None:
        """Load, warm up and verify; leaves READY or FAILED (never raises)."""
        try:
            await self._load()
            self.state = VersionState.WARMING
            if self._hook:
                self._hook("warming")
            await self._warm_up_and_verify()
        except WarpserveError as exc:
            await self._discard()
            self.fail(str(exc))
            return
        except Exception as exc:
            await self._discard()
            self.fail(f"{type(exc).__name__}: {exc}")
            return
        self.state = VersionState.READY
        self.loaded_at = time.time()
        log.info("model '%s' version %d is ready", self.name, self.version)

    async def _load(self) -> None:
        self.config = await asyncio.to_thread(cfg.complete, self.config, self.path)
        self.validator = InputValidator(self.config)
        loader = backends.loader_for(self.config)
        count = sum(g.count for g in self.config.instance_group)
        batched = self.config.max_batch_size > 0
        executors = []
        for index in range(count):
            instance = await asyncio.to_thread(loader, self.config, self.path, index, count)
            label = f"{self.name}-{self.version}-{index}"
            executors.append(Executor(instance, batched, label, inline=_inline(self.config)))
        self.batcher = DynamicBatcher(
            f"{self.name}:{self.version}", from_config(self.config), executors, self.stats,
            hook=self._hook,
        )

    async def _warm_up_and_verify(self) -> None:
        golden = self._read_golden()
        if golden is None:
            await self._warm_up_random()
            return
        inputs, expected = golden
        outputs = await self.run_direct(inputs)
        self._compare(outputs, expected)

    def _read_golden(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        folder = self.path / GOLDEN_DIR
        if not (folder / "inputs.npz").is_file() or not (folder / "outputs.npz").is_file():
            return None
        with np.load(folder / "inputs.npz", allow_pickle=False) as f:
            inputs = {k: f[k] for k in f.files}
        with np.load(folder / "outputs.npz", allow_pickle=False) as f:
            outputs = {k: f[k] for k in f.files}
        return inputs, outputs

    async def _warm_up_random(self) -> None:
        assert self.validator is not None
        rng = np.random.default_rng(0)
        rows = [1, self.config.max_batch_size] if self.validator.batched else [None]
        for n in rows:
            inputs = {}
            for spec in self.validator.inputs.values():
                dims = [d if d > 0 else 1 for d in spec.dims]
                shape = [n, *dims] if n is not None else dims
                if spec.dtype.wire == "BYTES":
                    inputs[spec.name] = np.full(shape, b"warmup", dtype=np.object_)
                else:
                    inputs[spec.name] = rng.random(shape).astype(spec.dtype.numpy)
            await self.run_direct(inputs)

    async def run_direct(self, inputs: dict[str, np.ndarray]) -> Outputs:
        """Run inputs on the first instance, bypassing the queue, in chunks that fit."""
        assert self.batcher is not None and self.validator is not None
        executor = self.batcher.executors[0]
        limit = self.config.max_batch_size
        rows = next(iter(inputs.values())).shape[0] if self.validator.batched else 1
        step = limit if limit > 0 else rows
        chunks = []
        for start in range(0, rows, step):
            part = {k: v[start:start + step] for k, v in inputs.items()} if limit else inputs
            request = QueuedRequest(part, min(step, rows - start), (), asyncio.Future())
            result = await asyncio.to_thread(executor.run, [request])
            outcome = result.outcomes[0]
            if isinstance(outcome, BaseException):
                raise ModelLoadError(f"warm-up run failed: {outcome}")
            chunks.append(outcome)
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]} if limit else chunks[0]

    def _compare(self, outputs: Outputs, expected: dict[str, np.ndarray]) -> None:
        atol = _float_param(self.config, "golden_atol", 1e-4)
        rtol = _float_param(self.config, "golden_rtol", 1e-3)
        for name, want in expected.items():
            got = outputs.get(name)
            if got is None:
                raise ModelLoadError(f"golden check: the model produced no output '{name}'")
            if got.shape != want.shape:
                raise ModelLoadError(
                    f"golden check: output '{name}' has shape {list(got.shape)}, the golden "
                    f"data {list(want.shape)}"
                )
            if not np.allclose(got, want, atol=atol, rtol=rtol, equal_nan=True):
                worst = float(np.max(np.abs(got.astype(np.float64) - want)))
                raise ModelLoadError(
                    f"golden check: output '{name}' differs from the golden outputs by up to "
                    f"{worst:.3g} (atol {atol}, rtol {rtol}); the version computes something else"
                )

    async def _discard(self) -> None:
        if self.batcher is not None:
            await asyncio.to_thread(self.batcher.close)
            self.batcher = None

    # -- serve -------------------------------------------------------------------------

    def signature(self, inputs: dict[str, np.ndarray]) -> tuple:  # type: ignore[type-arg]
        return signature_of(inputs, self.config.max_batch_size > 0)

    # -- retire ------------------------------------------------------------------------

    async def drain_and_unload(self) -> None:
        """Finish every queued and running request, then release the model."""
        if self.state in (VersionState.UNLOADED, VersionState.FAILED):
            return
        self.state = VersionState.DRAINING
        if self.batcher is not None:
            await self.batcher.drain()
        await self._discard()
        self.state = VersionState.UNLOADED
        log.info("model '%s' version %d unloaded", self.name, self.version)

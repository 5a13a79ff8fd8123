"""ModelRegistry in-process: hot swap under load, failed loads, unload with requests in
flight, canary and shadow traffic, load/unload stress with a leak check.

Version v of the affine model computes x @ W * v + b, so each answer names its version.
Race windows are held open with the registry's hook at named points ("warming",
"swapping", "draining"), never with sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.models import affine_model, affine_reference, write_affine, write_golden, write_mlp
from tests.server.progress import GatedModel, until
from warpserve.server.backends.onnxruntime import OnnxRuntimeInstance
from warpserve.server.batching.executor import ModelInstance
from warpserve.server.codec import InferRequest
from warpserve.server.cpus import usable_cores
from warpserve.server.dataplane import DataPlane
from warpserve.server.errors import (
    FailedPrecondition,
    GoldenMismatch,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    Unavailable,
)
from warpserve.server.grpc import reports
from warpserve.server.lifecycle.execution import MIN_INLINE_ROWS
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.lifecycle.version import VersionState
from warpserve.server.repository.repository import ModelRepository

MODEL = "affine"
X = (np.arange(8, dtype=np.float32).reshape(2, 4) - 3) / 4


# --- helpers ----------------------------------------------------------------------------


def expected(version: int, x: np.ndarray = X) -> np.ndarray:
    return affine_reference(x, scale=float(version)).astype(np.float32)


def version_of(output: np.ndarray, x: np.ndarray = X) -> int | None:
    """Which affine version computed ``output`` (None when none or several match)."""
    matches = [v for v in range(1, 6) if np.allclose(output, expected(v, x), atol=1e-4)]
    return matches[0] if len(matches) == 1 else None


def add_version(repo: Path, version: int) -> Path:
    return write_affine(repo, MODEL, (version,), config=False) / str(version)


# Worker threads instead of the event loop: a gated model must not block the loop.
ON_THREADS = 'parameters { key: "execution" value: { string_value: "thread" } }'


async def start(
    repo: Path, versions: tuple[int, ...] = (1,), extra: str = "", **kw: Any
) -> tuple[ModelRegistry, DataPlane]:
    write_affine(repo, MODEL, versions, extra=extra)
    registry = ModelRegistry(ModelRepository(repo), **kw)
    await registry.load(MODEL)
    return registry, DataPlane(registry)


async def infer(dp: DataPlane, *, version: str = "", rid: str = "", x: np.ndarray = X) -> int:
    """One request; checks that the version that answered computed the numbers."""
    mv, outputs = await dp.infer(InferRequest(MODEL, version, rid, {"INPUT0": x}))
    assert version_of(outputs["OUTPUT0"], x) == mv.version, "answer and version disagree"
    return mv.version


def runs(sequence: list[int]) -> list[int]:
    """[1, 1, 2, 2, 1] -> [1, 2, 1]."""
    return [v for i, v in enumerate(sequence) if i == 0 or sequence[i - 1] != v]


class Client:
    """One caller sending requests back to back, recording who answered."""

    def __init__(self, dp: DataPlane, seed: int) -> None:
        self.dp = dp
        self.rng = np.random.default_rng(seed)
        self.versions: list[int] = []
        self.errors: list[BaseException] = []

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            x = self.rng.uniform(-2, 2, (1, 4)).astype(np.float32)
            try:
                self.versions.append(await infer(self.dp, x=x))
            except Exception as exc:
                self.errors.append(exc)
            # A tiny model may run inline on the loop: its answer is ready at once and
            # awaiting a finished future does not yield, so yield here.
            await asyncio.sleep(0)


async def progressed(clients: list[Client], by: int) -> None:
    marks = [len(c.versions) for c in clients]
    await until(lambda: all(len(c.versions) >= m + by for c, m in zip(clients, marks, strict=True)))


# --- hot swap under load ------------------------------------------------------------------


def test_swap_and_rollback_under_load_switch_each_stream_once_each_way(tmp_path: Path) -> None:
    async def main() -> None:
        registry, dp = await start(tmp_path)
        clients = [Client(dp, seed) for seed in range(4)]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(c.run(stop)) for c in clients]
        await progressed(clients, 5)

        async def hold(point: str) -> None:
            # While version 2 warms up and just before the flip, every caller must
            # still be served (by version 1).
            await progressed(clients, 3)

        registry.hook = lambda point: hold(point) if point in ("warming", "swapping") else None
        add_version(tmp_path, 2)
        await registry.load(MODEL)
        await progressed(clients, 5)
        assert registry.rollback(MODEL, "test") == 1
        await progressed(clients, 5)
        stop.set()
        await asyncio.gather(*tasks)
        await registry.close()
        for client in clients:
            assert client.errors == []
            assert runs(client.versions) == [1, 2, 1]
        assert registry.events.rollbacks == {(MODEL, 2, "test"): 1}

    asyncio.run(main())


def test_replaced_version_stays_loaded_for_the_grace_period(tmp_path: Path) -> None:
    async def main() -> None:
        registry, dp = await start(tmp_path, grace_period_s=300.0)
        add_version(tmp_path, 2)
        await registry.load(MODEL)
        served = registry.models[MODEL]
        assert served.versions[1].state is VersionState.READY
        assert (served.router.active, served.router.previous) == (2, 1)
        assert await infer(dp, version="1") == 1  # still pinnable
        await registry.close()

    asyncio.run(main())


def test_replaced_version_unloads_after_the_grace_period(tmp_path: Path) -> None:
    async def main() -> None:
        registry, _ = await start(tmp_path, grace_period_s=0.0)
        add_version(tmp_path, 2)
        await registry.load(MODEL)
        served = registry.models[MODEL]
        await until(lambda: served.versions[1].state is VersionState.UNLOADED)
        assert served.router.previous is None
        with pytest.raises(FailedPrecondition, match="no loaded previous version"):
            registry.rollback(MODEL)
        await registry.close()

    asyncio.run(main())


# --- failed loads -------------------------------------------------------------------------


def _corrupt_model(vdir: Path, registry: ModelRegistry) -> None:
    (vdir / "model.onnx").write_bytes(b"this is not an onnx file")


def _golden_mismatch(vdir: Path, registry: ModelRegistry) -> None:
    write_golden(vdir, 2, corrupt=True)


def _warm_up_run_fails(vdir: Path, registry: ModelRegistry) -> None:
    np.savez(vdir / "golden" / "inputs.npz", INPUT0=np.ones((3, 5), np.float32))


def _warm_up_raises(vdir: Path, registry: ModelRegistry) -> None:
    def hook(point: str) -> None:
        if point == "warming":
            raise RuntimeError("injected warm-up failure")

    registry.hook = hook


@pytest.mark.parametrize(
    ("defect", "reason"),
    [
        (_corrupt_model, "corrupt"),
        (_golden_mismatch, "golden check"),
        (_warm_up_run_fails, "warm-up run failed"),
        (_warm_up_raises, "injected warm-up failure"),
    ],
)
def test_a_failed_new_version_leaves_the_old_one_serving(
    tmp_path: Path, defect: Callable[[Path, ModelRegistry], None], reason: str
) -> None:
    async def main() -> None:
        registry, dp = await start(tmp_path)
        defect(add_version(tmp_path, 2), registry)
        with pytest.raises(ModelLoadError, match="serving version is unchanged") as info:
            await registry.load(MODEL)
        assert reason in str(info.value)
        assert [await infer(dp) for _ in range(5)] == [1] * 5
        served = registry.models[MODEL]
        assert served.versions[2].state is VersionState.FAILED
        assert served.versions[2].batcher is None  # nothing of it stays loaded
        index = {(m.version, m.state): m.reason for m in reports.index(registry, False).models}
        assert ("1", "READY") in index
        assert reason in index[("2", "FAILED")]
        assert registry.events.rollouts[(MODEL, 2, "failed")] == 1
        with pytest.raises(Unavailable, match="FAILED"):
            await infer(dp, version="2")
        await registry.close()

    asyncio.run(main())


def test_a_failed_rollout_is_retried_once_the_folder_is_fixed(tmp_path: Path) -> None:
    async def main() -> None:
        registry, dp = await start(tmp_path)
        vdir = add_version(tmp_path, 2)
        write_golden(vdir, 2, corrupt=True)
        with pytest.raises(ModelLoadError):
            await registry.rollout(MODEL, 2)
        write_golden(vdir, 2)
        await registry.rollout(MODEL, 2)
        assert await infer(dp) == 2
        await registry.close()

    asyncio.run(main())


def test_a_golden_mismatch_is_a_failed_precondition_with_its_numbers(tmp_path: Path) -> None:
    async def main() -> None:
        registry, dp = await start(tmp_path)
        write_golden(add_version(tmp_path, 2), 2, corrupt=True)  # every output off by 1.0
        with pytest.raises(GoldenMismatch) as info:
            await registry.rollout(MODEL, 2)
        assert info.value.code is grpc.StatusCode.FAILED_PRECONDITION
        message = str(info.value)
        assert "output 'OUTPUT0'" in message and "at 6 of 6 elements" in message
        assert "max abs error 1," in message and "max rel error" in message
        assert "atol 0.0001 + rtol 0.001" in message
        # Positive control: a model that cannot run is still INTERNAL, not a mismatch.
        (add_version(tmp_path, 3) / "model.onnx").write_bytes(b"not onnx")
        with pytest.raises(ModelLoadError) as raised:
            await registry.rollout(MODEL, 3)
        assert not isinstance(raised.value, GoldenMismatch)
        assert raised.value.code is grpc.StatusCode.INTERNAL
        assert await infer(dp) == 1
        await registry.close()

    asyncio.run(main())


def test_a_failed_version_can_be_unloaded(tmp_path: Path) -> None:
    async def main() -> None:
        registry, dp = await start(tmp_path)
        write_golden(add_version(tmp_path, 2), 2, corrupt=True)
        with pytest.raises(GoldenMismatch):
            await registry.rollout(MODEL, 2)
        served = registry.models[MODEL]
        assert served.versions[2].state is VersionState.FAILED and served.reason
        await registry.unload(MODEL, 2)
        assert served.versions[2].state is VersionState.UNLOADED and not served.reason
        index = {(m.version, m.state) for m in reports.index(registry, False).models}
        assert index == {("1", "READY"), ("2", "UNLOADED")}
        assert await infer(dp) == 1  # the serving version is untouched
        with pytest.raises(ModelNotFound):
            await registry.unload(MODEL, 2)  # nothing left to unload
        await registry.close()

    asyncio.run(main())


def test_a_model_whose_only_version_failed_can_be_unloaded(tmp_path: Path) -> None:
    async def main() -> None:
        vdir = write_affine(tmp_path, MODEL, (1,)) / "1"
        write_golden(vdir, 1, corrupt=True)
        registry = ModelRegistry(ModelRepository(tmp_path))
        with pytest.raises(GoldenMismatch):
            await registry.load(MODEL)
        await registry.unload(MODEL)
        assert MODEL not in registry.models
        index = {(m.name, m.state) for m in reports.index(registry, False).models}
        assert index == {(MODEL, "UNAVAILABLE")}
        await registry.close()

    asyncio.run(main())


# --- unload with requests in flight -------------------------------------------------------


def test_unload_finishes_running_and_queued_requests_and_refuses_new_ones(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        dispatched: list[str] = []
        draining = asyncio.Event()

        def hook(point: str) -> None:
            if point == "dispatch":
                dispatched.append(point)
            if point == "draining":
                draining.set()

        registry, dp = await start(tmp_path, extra=ON_THREADS, hook=hook)
        mv = registry.models[MODEL].versions[1]
        assert mv.batcher is not None
        gate = threading.Event()
        executor = mv.batcher.executors[0]
        executor.instance = GatedModel(executor.instance, gate)
        dispatched.clear()
        requests = [asyncio.create_task(infer(dp)) for _ in range(5)]
        # One batch runs (held by the gate), the other requests wait in the queue.
        await until(
            lambda: len(dispatched) == 1 and mv.batcher is not None and mv.batcher.queued == 4
        )
        unload = asyncio.create_task(registry.unload(MODEL))
        await draining.wait()
        with pytest.raises(Unavailable):
            await infer(dp)
        with pytest.raises(Unavailable):
            await infer(dp, version="1")
        assert not unload.done() and not any(r.done() for r in requests)
        gate.set()
        assert await asyncio.gather(*requests) == [1] * 5
        await unload
        assert mv.state is VersionState.UNLOADED
        with pytest.raises(Unavailable, match="not loaded"):
            await infer(dp)
        with pytest.raises(ModelNotFound):
            await dp.infer(InferRequest("no_such_model", "", "", {"INPUT0": X}))
        assert MODEL not in registry.models  # a fully unloaded model leaves ServerReady alone
        await registry.load(MODEL)
        assert await infer(dp) == 1
        await registry.close()

    asyncio.run(main())


def test_unloading_the_active_version_routes_to_the_remaining_one(tmp_path: Path) -> None:
    async def main() -> None:
        registry, dp = await start(tmp_path)
        add_version(tmp_path, 2)
        await registry.load(MODEL)
        await registry.unload(MODEL, 2)
        assert await infer(dp) == 1
        with pytest.raises(ModelNotFound, match="no loaded version 2"):
            await registry.unload(MODEL, 2)
        await registry.close()

    asyncio.run(main())


# --- load/unload stress and the leak check ------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def rss_growth_mb(cycle: Callable[[], Awaitable[None]], warmup: int, cycles: int) -> float:
    """RSS after ``cycles`` more cycles minus RSS after ``warmup`` cycles."""
    for _ in range(warmup):
        await cycle()
    gc.collect()
    before = rss_mb()
    for _ in range(cycles):
        await cycle()
    gc.collect()
    return rss_mb() - before


BOUND_MB = 24.0  # generous: a steady state moves by about 1 MB over these cycles


def test_load_unload_stress_does_not_grow_memory_and_the_check_catches_a_leak(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        registry, dp = await start(tmp_path, versions=(1, 2), grace_period_s=0.0)

        async def worker(step: int) -> None:
            try:
                if step == 0:
                    await registry.rollout(MODEL, 1)
                elif step == 1:
                    await registry.rollout(MODEL, 2, canary_percent=50)
                else:
                    await registry.unload(MODEL)
            except (Unavailable, ModelNotFound, FailedPrecondition):
                pass  # another worker unloaded or reloaded it first
            for _ in range(3):
                with contextlib.suppress(Unavailable):
                    await infer(dp, rid=uuid.uuid4().hex)

        async def cycle() -> None:
            await asyncio.gather(*(worker(step) for step in range(3)))

        growth = await rss_growth_mb(cycle, warmup=15, cycles=60)
        assert growth < BOUND_MB, f"RSS grew by {growth:.1f} MB over 60 load/unload cycles"

        leaked: list[bytes] = []

        async def leaky_cycle() -> None:
            leaked.append(b"\x01" * (1 << 20))  # 1 MB that is never released

        growth = await rss_growth_mb(leaky_cycle, warmup=15, cycles=60)
        assert growth >= BOUND_MB, f"the positive control leaked only {growth:.1f} MB"

        await registry.load(MODEL)
        assert registry.is_ready(MODEL)
        assert all(served.ready_versions() for served in registry.models.values())
        assert await infer(dp) in (1, 2)
        await registry.close()

    asyncio.run(main())


# --- canary and shadow ----------------------------------------------------------------------


def test_canary_split_converges_sticks_per_id_and_pins_bypass_it(tmp_path: Path) -> None:
    async def main() -> None:
        registry, dp = await start(tmp_path)
        add_version(tmp_path, 2)
        await registry.rollout(MODEL, 2, canary_percent=20)
        ids = [uuid.uuid4().hex for _ in range(2000)]
        seen: Counter[int] = Counter()
        for start_at in range(0, len(ids), 50):
            batch = ids[start_at : start_at + 50]
            seen.update(await asyncio.gather(*(infer(dp, rid=i) for i in batch)))
        assert abs(seen[2] / 2000 - 0.20) < 0.05
        for rid in ids[:30]:
            assert len({await infer(dp, rid=rid) for _ in range(3)}) == 1
        canary_ids = [i for i in ids if registry.resolve(MODEL, "", i).version == 2][:20]
        assert {await infer(dp, version="1", rid=i) for i in canary_ids} == {1}
        assert {await infer(dp, version="2", rid=i) for i in ids[:20]} == {2}
        assert registry.promote(MODEL) == 2
        assert {await infer(dp, rid=i) for i in ids[:50]} == {2}
        assert registry.models[MODEL].router.previous == 1
        await registry.close()

    asyncio.run(main())


def test_rollback_during_a_canary_ends_it(tmp_path: Path) -> None:
    async def main() -> None:
        registry, dp = await start(tmp_path)
        add_version(tmp_path, 2)
        await registry.rollout(MODEL, 2, canary_percent=50)
        assert registry.rollback(MODEL, "latency") == 1
        assert {await infer(dp, rid=uuid.uuid4().hex) for _ in range(40)} == {1}
        assert registry.events.rollbacks == {(MODEL, 2, "latency"): 1}
        with pytest.raises(FailedPrecondition, match="no canary"):
            registry.promote(MODEL)
        await registry.close()

    asyncio.run(main())


def test_split_normalises_weights_and_rejects_what_is_not_loaded(tmp_path: Path) -> None:
    async def main() -> None:
        registry, _ = await start(tmp_path)
        add_version(tmp_path, 2)
        await registry.load(MODEL, [2], activate=False)
        router = registry.models[MODEL].router
        assert router.active == 1  # loaded beside, not routed
        registry.set_split(MODEL, {1: 3, 2: 1})
        assert router.weights() == {1: 0.75, 2: 0.25}
        registry.set_split(MODEL, {1: 0, 2: 5})
        assert router.weights() == {2: 1.0} and router.previous == 1
        with pytest.raises(FailedPrecondition, match="version 7"):
            registry.set_split(MODEL, {7: 1})
        with pytest.raises(InvalidInput):
            registry.set_split(MODEL, {1: -1, 2: 1})
        await registry.close()

    asyncio.run(main())


def test_shadow_answers_are_never_returned_but_are_counted(tmp_path: Path) -> None:
    async def main() -> None:
        registry, dp = await start(tmp_path)
        add_version(tmp_path, 2)
        await registry.load(MODEL, [2], activate=False)
        registry.set_shadow(MODEL, 2, 100)
        answered = await asyncio.gather(*(infer(dp, rid=str(i)) for i in range(50)))
        assert answered == [1] * 50
        served = registry.models[MODEL]
        shadow, active = served.versions[2], served.versions[1]
        await until(lambda: shadow.stats.success.count == 50)
        assert active.stats.success.count == 50
        assert shadow.stats.shadow_max_abs_diff > 0.1  # version 2 computes other numbers
        with pytest.raises(FailedPrecondition, match="active version"):
            registry.set_shadow(MODEL, 1, 10)
        registry.set_shadow(MODEL, 0, 0)
        assert served.router.shadow_version is None
        await registry.close()

    asyncio.run(main())


def test_a_shadow_copies_inputs_that_live_in_client_shared_memory(tmp_path: Path) -> None:
    """The client may overwrite its shared memory once answered; the mirrored request,
    which runs later, must hold its own copy."""

    async def main() -> None:
        registry, dp = await start(tmp_path)
        add_version(tmp_path, 2)
        await registry.load(MODEL, [2], activate=False)
        registry.set_shadow(MODEL, 2, 100)
        mirrored: list[InferRequest] = []
        setattr(dp, "_shadow", lambda shadow, request, outputs: _record(mirrored, request))  # noqa: B010
        for shared in (True, False):
            x = X.copy()
            await dp.infer(InferRequest(MODEL, "", "", {"INPUT0": x}, shared_inputs=shared))
            await until(lambda: len(mirrored) == 1)
            assert np.shares_memory(mirrored.pop().inputs["INPUT0"], x) is not shared
        await registry.close()

    asyncio.run(main())


async def _record(into: list[InferRequest], request: InferRequest) -> None:
    into.append(request)


def test_rollout_validates_its_arguments(tmp_path: Path) -> None:
    async def main() -> None:
        registry, _ = await start(tmp_path)
        with pytest.raises(InvalidInput, match="canary percent"):
            await registry.rollout(MODEL, 2, canary_percent=100)
        with pytest.raises(InvalidInput, match="positive version"):
            await registry.rollout(MODEL, 0)
        with pytest.raises(ModelNotFound, match="no complete version 9"):
            await registry.rollout(MODEL, 9)
        await registry.close()

    asyncio.run(main())


def test_model_file_written_without_config_still_names_the_model(tmp_path: Path) -> None:
    # A repository model without config.pbtxt loads from the model file alone.
    (tmp_path / "bare" / "1").mkdir(parents=True)
    (tmp_path / "bare" / "1" / "model.onnx").write_bytes(affine_model(scale=1.0))

    async def main() -> None:
        registry = ModelRegistry(ModelRepository(tmp_path))
        await registry.load("bare")
        assert registry.is_ready("bare")
        await registry.close()

    asyncio.run(main())


def test_a_tiny_model_runs_inline_on_a_single_threaded_session(tmp_path: Path) -> None:
    # Inline execution keeps the ONNX Runtime pool's sleeping threads out of every run,
    # and the replacement session passes the golden check before serving.
    async def main() -> None:
        registry, plane = await start(tmp_path)
        mv = registry.resolve(MODEL)
        assert mv.batcher is not None
        executor = mv.batcher.executors[0]
        assert executor.inline
        session = _session(executor.instance)
        assert session.get_session_options().intra_op_num_threads == 1
        _, outputs = await plane.infer(InferRequest(MODEL, "", "", {"INPUT0": X}))
        np.testing.assert_allclose(outputs["OUTPUT0"], expected(1), atol=1e-5)
        await registry.close()

    asyncio.run(main())


def test_a_configured_thread_count_is_kept_for_inline_execution(tmp_path: Path) -> None:
    extra = 'parameters { key: "intra_op_thread_count" value: { string_value: "2" } }'

    async def main() -> None:
        registry, _ = await start(tmp_path, extra=extra)
        batcher = registry.resolve(MODEL).batcher
        assert batcher is not None
        executor = batcher.executors[0]
        assert executor.inline
        session = _session(executor.instance)
        assert session.get_session_options().intra_op_num_threads == 2
        await registry.close()

    asyncio.run(main())


def test_a_tiny_model_keeps_one_of_its_default_instances_inline(tmp_path: Path) -> None:
    # Triton's default gives an ONNX Runtime model two CPU instances; inline runs take
    # turns on the loop thread, so the second is closed instead of idling.
    async def main() -> None:
        write_affine(tmp_path, MODEL, instances=0)
        registry = ModelRegistry(ModelRepository(tmp_path))
        await registry.load(MODEL)
        mv = registry.resolve(MODEL)
        assert [g.count for g in mv.config.instance_group] == [2]
        assert mv.batcher is not None and len(mv.batcher.executors) == 1
        assert mv.batcher.executors[0].inline
        _, outputs = await DataPlane(registry).infer(InferRequest(MODEL, "", "", {"INPUT0": X}))
        np.testing.assert_allclose(outputs["OUTPUT0"], expected(1), atol=1e-5)
        await registry.close()

    asyncio.run(main())


def test_default_instances_on_worker_threads_split_the_cores(tmp_path: Path) -> None:
    async def main() -> None:
        write_affine(
            tmp_path,
            MODEL,
            instances=0,
            extra='parameters { key: "execution" value: { string_value: "thread" } }',
        )
        registry = ModelRegistry(ModelRepository(tmp_path))
        await registry.load(MODEL)
        batcher = registry.resolve(MODEL).batcher
        assert batcher is not None and len(batcher.executors) == 2
        threads = max(1, usable_cores() // 2)
        for executor in batcher.executors:
            assert not executor.inline
            assert _session(executor.instance).get_session_options().intra_op_num_threads == threads
        await registry.close()

    asyncio.run(main())


def _session(instance: ModelInstance) -> Any:
    assert isinstance(instance, OnnxRuntimeInstance), instance
    return instance.session


def test_a_model_whose_full_batch_would_hold_the_loop_runs_inline_up_to_fewer_rows(
    tmp_path: Path,
) -> None:
    # An MLP whose batch-1 run takes microseconds but whose 8192-row batch takes tens of
    # milliseconds: inline batches stop at the rows that stay under 2 ms, and a request
    # with more rows runs on the worker thread rather than stalling the loop.
    import onnxruntime as ort

    model_dir = write_mlp(tmp_path, MODEL, extra="dynamic_batching { }")
    config = model_dir / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 64", "max_batch_size: 8192"))
    reference = ort.InferenceSession(
        str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )

    async def main() -> None:
        registry = ModelRegistry(ModelRepository(tmp_path))
        await registry.load(MODEL)
        mv = registry.resolve(MODEL)
        assert mv.batcher is not None
        [executor] = mv.batcher.executors
        assert executor.inline and MIN_INLINE_ROWS <= executor.inline_rows < 8192
        assert mv.batcher.batch_rows == executor.inline_rows
        threads: list[str] = []
        instance = executor.instance

        class Recording:
            def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                threads.append(threading.current_thread().name)
                return instance.execute(inputs)

            def close(self) -> None:
                instance.close()

        executor.instance = Recording()
        plane = DataPlane(registry)
        rng = np.random.default_rng(5)
        for rows in (executor.inline_rows, executor.inline_rows + 1):
            x = rng.standard_normal((rows, 64)).astype(np.float32)
            _, outputs = await plane.infer(InferRequest(MODEL, "", "", {"INPUT0": x}))
            expected_y = reference.run(None, {"INPUT0": x})[0]
            np.testing.assert_allclose(outputs["OUTPUT0"], expected_y, rtol=1e-4, atol=1e-4)
        loop_thread = threading.current_thread().name
        assert threads[0] == loop_thread, "up to inline_rows: on the loop"
        assert threads[1] != loop_thread and threads[1].startswith("exec-"), threads
        await registry.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("batching", "extra", "depth"),
    [
        ("", "", 1),
        ("", 'key: "batches_per_instance" value: { string_value: "2" }', 2),
        ("priority_levels: 2", 'key: "batches_per_instance" value: { string_value: "3" }', 3),
    ],
)
def test_worker_thread_instances_take_as_many_batches_at_once_as_configured(
    tmp_path: Path, batching: str, extra: str, depth: int
) -> None:
    thread = 'key: "execution" value: { string_value: "thread" }'
    parameters = " ".join(f"parameters {{ {p} }}" for p in (thread, extra) if p)

    async def main() -> None:
        write_affine(tmp_path, MODEL, batching=batching, extra=parameters)
        registry = ModelRegistry(ModelRepository(tmp_path))
        await registry.load(MODEL)
        mv = registry.resolve(MODEL)
        assert mv.batcher is not None
        assert [e.depth for e in mv.batcher.executors] == [depth]
        _, outputs = await DataPlane(registry).infer(InferRequest(MODEL, "", "", {"INPUT0": X}))
        np.testing.assert_allclose(outputs["OUTPUT0"], expected(1), atol=1e-5)
        await registry.close()

    asyncio.run(main())

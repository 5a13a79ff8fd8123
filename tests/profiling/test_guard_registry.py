"""The guard with a real registry and data plane (in-process): a version that fails some
inputs is rolled back for its error rate; the replaced version stays loaded until the
verdict; a model without guard settings is not watched."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from tests.models import write_affine
from warpserve.profiling.guard import LatencyGuard
from warpserve.server.codec import InferRequest
from warpserve.server.dataplane import DataPlane
from warpserve.server.errors import WarpserveError
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.lifecycle.version import VersionState
from warpserve.server.repository.repository import ModelRepository

# The failing model's latency differs from the affine model's, so a latency limit no
# version reaches leaves the error rate as the only possible reason.
GUARDED = """
parameters { key: "guard.enabled" value { string_value: "true" } }
parameters { key: "guard.window_seconds" value { string_value: "5" } }
parameters { key: "guard.min_samples" value { string_value: "30" } }
parameters { key: "guard.max_error_rate" value { string_value: "0.02" } }
parameters { key: "guard.max_latency_ratio" value { string_value: "1000" } }
"""


def failing_model() -> bytes:
    """OUTPUT0 = TABLE[int(INPUT0[:, :2])]: inputs of 4 or more index past the table, and
    ONNX Runtime fails the run."""
    table = helper.make_tensor("TABLE", TensorProto.FLOAT, [4], [0.0, 1.0, 2.0, 3.0])
    starts = helper.make_tensor("S", TensorProto.INT64, [1], [0])
    ends = helper.make_tensor("E", TensorProto.INT64, [1], [2])
    axes = helper.make_tensor("A", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["INPUT0", "S", "E", "A"], ["head"]),
            helper.make_node("Cast", ["head"], ["index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["TABLE", "index"], ["OUTPUT0"]),
        ],
        "failing",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 2])],
        [table, starts, ends, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


async def until(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out waiting for the guard"
        await asyncio.sleep(0.01)


async def send(dp: DataPlane, count: int, rng: np.random.Generator) -> int:
    """``count`` requests, one in ten with inputs the failing model cannot index."""
    failed = 0
    for i in range(count):
        x = rng.uniform(0, 1, (1, 4)).astype(np.float32)
        if i % 10 == 0:
            x[0, 0] = 9.0
        try:
            await dp.infer(InferRequest("affine", "", "", {"INPUT0": x}))
        except WarpserveError:
            failed += 1
        await asyncio.sleep(0)
    return failed


def test_a_version_that_fails_some_inputs_is_rolled_back_for_its_error_rate(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        write_affine(tmp_path, "affine", (1,), extra=GUARDED)
        (tmp_path / "affine" / "2").mkdir()
        (tmp_path / "affine" / "2" / "model.onnx").write_bytes(failing_model())
        registry = ModelRegistry(ModelRepository(tmp_path), grace_period_s=0.0)
        guard = LatencyGuard(registry, tick_s=0.05)
        await registry.load("affine", [1])
        dp = DataPlane(registry)
        rng = np.random.default_rng(0)
        assert await send(dp, 100, rng) == 0  # version 1 answers every input
        await registry.rollout("affine", 2)
        served = registry.models["affine"]
        assert 1 in served.holds  # kept loaded past its (zero) grace period
        await asyncio.sleep(0.05)
        assert served.versions[1].state is VersionState.READY
        failed = 0
        while served.router.active != 1:
            failed += await send(dp, 20, rng)
            assert failed < 500, f"no rollback: {served.versions[2].guard}"
        status = served.versions[2].guard
        assert status is not None
        assert status.verdict == "regression" and status.rolled_back == "error_rate_guard"
        assert status.candidate_error_rate > 0.02 and status.baseline_error_rate == 0.0
        assert registry.events.rollbacks == {("affine", 2, "error_rate_guard"): 1}
        assert failed > 0 and await send(dp, 20, rng) == 0  # version 1 again
        await until(lambda: 1 not in served.holds)
        await guard.close()
        await registry.close()

    asyncio.run(main())


def test_a_model_without_guard_settings_is_not_watched(tmp_path: Path) -> None:
    async def main() -> None:
        write_affine(tmp_path, "affine", (1, 2))
        registry = ModelRegistry(ModelRepository(tmp_path))
        guard = LatencyGuard(registry)
        await registry.load("affine", [1])
        await registry.rollout("affine", 2)
        served = registry.models["affine"]
        assert served.versions[2].guard is None and not served.holds and not guard.tasks
        await registry.close()

    asyncio.run(main())


async def _guarded_with_failing_v2(tmp_path: Path) -> tuple[ModelRegistry, LatencyGuard, DataPlane]:
    write_affine(tmp_path, "affine", (1,), extra=GUARDED)
    (tmp_path / "affine" / "2").mkdir()
    (tmp_path / "affine" / "2" / "model.onnx").write_bytes(failing_model())
    registry = ModelRegistry(ModelRepository(tmp_path), grace_period_s=0.0)
    guard = LatencyGuard(registry, tick_s=0.05)
    await registry.load("affine", [1])
    await registry.load("affine", [2], activate=False)
    dp = DataPlane(registry)
    assert await send(dp, 100, np.random.default_rng(0)) == 0
    return registry, guard, dp


def test_a_failing_canary_is_ended_by_the_guard(tmp_path: Path) -> None:
    async def main() -> None:
        registry, guard, dp = await _guarded_with_failing_v2(tmp_path)
        await registry.rollout("affine", 2, canary_percent=50)
        served = registry.models["affine"]
        rng = np.random.default_rng(1)
        while served.router.canary:
            await send(dp, 20, rng)
            assert len(served.versions[2].stats.timeline) < 5000, served.versions[2].guard
        status = served.versions[2].guard
        assert status is not None and status.mode == "canary"
        assert status.rolled_back == "error_rate_guard" and served.router.active == 1
        await guard.close()
        await registry.close()

    asyncio.run(main())


def test_a_failing_shadow_is_stopped_by_the_guard(tmp_path: Path) -> None:
    async def main() -> None:
        registry, guard, dp = await _guarded_with_failing_v2(tmp_path)
        registry.set_shadow("affine", 2, 100)
        served = registry.models["affine"]
        rng = np.random.default_rng(2)
        while served.router.shadow_version is not None:
            assert await send(dp, 20, rng) == 0  # clients never see the shadow's failures
            assert len(served.versions[2].stats.timeline) < 5000, served.versions[2].guard
        status = served.versions[2].guard
        assert status is not None and status.mode == "shadow"
        assert status.rolled_back == "error_rate_guard"
        assert registry.events.rollbacks == {("affine", 2, "error_rate_guard"): 1}
        await guard.close()
        await registry.close()

    asyncio.run(main())

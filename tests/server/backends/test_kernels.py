"""The kernel backend: plans load, run through the kernels, and refuse what does not fit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from warpserve.kernels.mlp import fused_linear_reference
from warpserve.protos import model_config_pb2 as mc
from warpserve.server.backends import spec as formats
from warpserve.server.backends.kernel_plan import Plan, PlanTensor, Step, write_plan
from warpserve.server.backends.kernels import KernelInstance, load_instance
from warpserve.server.codec import InferRequest
from warpserve.server.dataplane import DataPlane
from warpserve.server.errors import InvalidInput, ModelLoadError
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.lifecycle.version import ModelVersion
from warpserve.server.repository import config as cfg
from warpserve.server.repository.repository import ModelRepository

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def mlp_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"w0": (32, 16), "b0": (32,), "w1": (1, 32), "b1": (1,)}
    return {k: rng.standard_normal(s).astype(np.float32) * 0.3 for k, s in shapes.items()}


def mlp_plan() -> Plan:
    return Plan(
        PlanTensor("TRANSACTION", "FP32", (16,)),
        (
            Step("linear", {"weight": "w0", "bias": "b0", "activation": "relu"}),
            Step("linear", {"weight": "w1", "bias": "b1", "activation": "sigmoid"}),
        ),
        (PlanTensor("FRAUD_PROBABILITY", "FP32", (1,)),),
    )


def mlp_reference(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    hidden = fused_linear_reference(x, w["w0"], w["b0"], "relu")
    return fused_linear_reference(hidden, w["w1"], w["b1"], "sigmoid")


def topk_plan(k: int = 5) -> tuple[Plan, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    weights = {
        "tower": rng.standard_normal((8, 6)).astype(np.float32),
        "items": rng.standard_normal((300, 8)).astype(np.float32),
        "popularity": rng.standard_normal(300).astype(np.float32),
    }
    plan = Plan(
        PlanTensor("USER", "FP32", (6,)),
        (
            Step("linear", {"weight": "tower", "activation": "none"}),
            Step("score_topk", {"items": "items", "item_bias": "popularity", "k": k}),
        ),
        (
            PlanTensor("ITEM_IDS", "INT64", (k,), "ids"),
            PlanTensor("SCORES", "FP32", (k,), "scores"),
        ),
    )
    return plan, weights


def _load(folder: Path, config: mc.ModelConfig | None = None) -> KernelInstance:
    config = config or mc.ModelConfig(name="m", backend="warpserve_kernels")
    done = cfg.complete(config, folder)
    return load_instance(done, folder, 0, 1)


def test_the_format_is_found_by_backend_and_by_its_plan_file(tmp_path: Path) -> None:
    write_plan(tmp_path, mlp_plan(), mlp_weights())
    spec = formats.by_backend("warpserve_kernels")
    assert spec is not None and formats.guess(tmp_path) is spec
    done = cfg.complete(mc.ModelConfig(name="m"), tmp_path)
    assert done.platform == "warpserve_kernels"
    assert [(t.name, list(t.dims)) for t in done.input] == [("TRANSACTION", [16])]
    assert [(t.name, list(t.dims)) for t in done.output] == [("FRAUD_PROBABILITY", [1])]
    assert done.max_batch_size > 0


def test_an_mlp_plan_answers_as_the_reference(tmp_path: Path) -> None:
    weights = mlp_weights()
    write_plan(tmp_path, mlp_plan(), weights)
    instance = _load(tmp_path)
    assert instance.device == "cpu"
    x = np.random.default_rng(2).standard_normal((33, 16)).astype(np.float32)
    out = instance.execute({"TRANSACTION": x})["FRAUD_PROBABILITY"]
    np.testing.assert_allclose(out, mlp_reference(x, weights), atol=1e-5)


def test_a_scoring_plan_returns_the_best_items(tmp_path: Path) -> None:
    plan, weights = topk_plan()
    write_plan(tmp_path, plan, weights)
    user = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
    out = _load(tmp_path).execute({"USER": user})
    full = (user @ weights["tower"].T) @ weights["items"].T + weights["popularity"]
    want = np.argsort(-full, axis=1)[:, :5]
    np.testing.assert_array_equal(out["ITEM_IDS"], want)
    np.testing.assert_allclose(out["SCORES"], np.take_along_axis(full, want, 1), atol=1e-4)


def test_a_batch_the_prepared_scorer_cannot_take_goes_to_score_topk(tmp_path: Path) -> None:
    # A plan that scores its input directly: a C-ordered batch runs on the prepared
    # Numba scorer; a Fortran-ordered one goes through `score_topk`, whose refusal
    # names the argument.
    plan, weights = topk_plan()
    plan = Plan(PlanTensor("USER", "FP32", (8,)), plan.steps[1:], plan.outputs)
    write_plan(tmp_path, plan, weights)
    instance = _load(tmp_path)
    user = np.random.default_rng(4).standard_normal((5, 8)).astype(np.float32)
    full = user @ weights["items"].T + weights["popularity"]
    want = np.argsort(-full, axis=1)[:, :5]
    np.testing.assert_array_equal(instance.execute({"USER": user})["ITEM_IDS"], want)
    with pytest.raises(InvalidInput, match=r"steps\[0\] \(score_topk\): users: must be C-"):
        instance.execute({"USER": np.asfortranarray(user)})


def test_items_that_do_not_fit_the_users_fail_the_load(tmp_path: Path) -> None:
    plan, weights = topk_plan()
    weights["items"] = weights["items"][:, :7]
    write_plan(tmp_path, plan, weights)
    with pytest.raises(ModelLoadError, match=r"steps\[1\] \(score_topk\): .*7"):
        _load(tmp_path)


def test_a_preprocessing_plan_takes_uint8_images(tmp_path: Path) -> None:
    plan = Plan(
        PlanTensor("IMAGE", "UINT8", (10, 12, 3)),
        (Step("preprocess", {"size": [4, 5], "mean": MEAN, "std": STD}),),
        (PlanTensor("PIXELS", "FP32", (3, 4, 5)),),
    )
    write_plan(tmp_path, plan, {})
    images = np.full((2, 10, 12, 3), 255, np.uint8)
    out = _load(tmp_path).execute({"IMAGE": images})["PIXELS"]
    np.testing.assert_allclose(out, np.full((2, 3, 4, 5), 2.0), atol=1e-5)


def test_a_kernel_error_on_a_request_is_invalid_input(tmp_path: Path) -> None:
    plan = Plan(
        PlanTensor("IMAGE", "UINT8", (-1, -1, 3)),
        (Step("preprocess", {"size": [4, 4], "mean": MEAN, "std": STD}),),
        (PlanTensor("PIXELS", "FP32", (3, 4, 4)),),
    )
    write_plan(tmp_path, plan, {})
    instance = _load(tmp_path)
    huge = np.zeros((1, 10_000, 10_000, 3), np.uint8)  # never touched: refused first
    with pytest.raises(
        InvalidInput, match=r"input 'IMAGE' at steps\[0\] \(preprocess\): images: 10000x10000"
    ):
        instance.execute({"IMAGE": huge})


def _rewrite(folder: Path, change: dict) -> None:
    path = folder / "plan.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": [{"op": "conv2d"}]}, "op 'conv2d' is not one of"),
        ({"steps": [{"op": "linear", "weight": "nope"}]}, "names weight 'nope', not in"),
        (
            {"steps": [{"op": "linear", "weight": "w1"}]},
            r"does not fit its weights.*steps\[0:1\] \(linear\): x: has 16 features",
        ),
        (
            {"steps": [{"op": "linear", "weight": "w0"}, {"op": "linear", "weight": "w0"}]},
            r"steps\[0:2\] \(linear\): layers\[1\].weight: takes 16 inputs but the layer before",
        ),
        (
            {"outputs": [{"name": "P", "datatype": "FP32", "dims": [1], "value": "ids"}]},
            "takes value 'ids', but the last step",
        ),
        (
            {"outputs": [{"name": "P", "datatype": "INT64", "dims": [32]}]},
            "declares INT64 \\[32\\] but the plan gives float32 \\[1\\]",
        ),
        ({"input": {"name": "X", "datatype": "FP32"}}, "missing field 'dims'"),
        ({"input": {"name": "X", "datatype": "BF16", "dims": [16]}}, "BF16 is not one of"),
    ],
)
def test_a_plan_that_does_not_fit_fails_the_load_saying_why(
    tmp_path: Path, change: dict, message: str
) -> None:
    write_plan(tmp_path, mlp_plan(), mlp_weights())
    _rewrite(tmp_path, change)
    config = mc.ModelConfig(name="m", backend="warpserve_kernels", max_batch_size=8)
    config.input.add(name="X", data_type=mc.TYPE_FP32, dims=[16])
    config.output.add(name="P", data_type=mc.TYPE_FP32, dims=[1])
    with pytest.raises(ModelLoadError, match=message):
        _load(tmp_path, config)


def test_a_broken_plan_file_fails_the_load(tmp_path: Path) -> None:
    write_plan(tmp_path, mlp_plan(), mlp_weights())
    (tmp_path / "plan.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot be read"):
        cfg.complete(mc.ModelConfig(name="m", backend="warpserve_kernels"), tmp_path)


def _serve_plan(repo: Path, plan: Plan, weights: dict[str, np.ndarray], batch: int) -> None:
    folder = repo / "m"
    write_plan(folder / "1", plan, weights)
    (folder / "config.pbtxt").write_text(
        f'name: "m"\nbackend: "warpserve_kernels"\nmax_batch_size: {batch}\n'
        "dynamic_batching { }\n"
    )


def _loaded(repo: Path, check: Callable[[ModelVersion, DataPlane], Awaitable[None]]) -> None:
    async def main() -> None:
        registry = ModelRegistry(ModelRepository(repo))
        try:
            await registry.load("m")
            await check(registry.resolve("m"), DataPlane(registry))
        finally:
            await registry.close()

    asyncio.run(main())


def test_a_tiny_kernel_plan_runs_inline_and_answers_as_the_reference(tmp_path: Path) -> None:
    # The same rule as ONNX Runtime (execution=auto): a batch-1 run under 200 us and a
    # full batch under 2 ms run on the event loop instead of a worker thread.
    weights = mlp_weights()
    _serve_plan(tmp_path, mlp_plan(), weights, 16)
    x = np.random.default_rng(3).standard_normal((3, 16)).astype(np.float32)

    async def check(mv: ModelVersion, plane: DataPlane) -> None:
        assert mv.batcher is not None and [e.inline for e in mv.batcher.executors] == [True]
        _, outputs = await plane.infer(InferRequest("m", "", "", {"TRANSACTION": x}))
        np.testing.assert_allclose(outputs["FRAUD_PROBABILITY"], mlp_reference(x, weights), 1e-5)

    _loaded(tmp_path, check)


def test_a_kernel_plan_whose_full_batch_takes_milliseconds_runs_fewer_rows_inline(
    tmp_path: Path,
) -> None:
    # Positive control for the test above: the same kind of plan, but 4096 rows through
    # 16 -> 256 -> 256 -> 1 take far more than 2 ms, so the loop runs only the batches
    # that stay under it, and a full one goes to the worker thread.
    rng = np.random.default_rng(4)
    shapes = {"w0": (256, 16), "w1": (256, 256), "w2": (1, 256)}
    weights = {k: rng.standard_normal(s).astype(np.float32) * 0.1 for k, s in shapes.items()}
    steps = tuple(Step("linear", {"weight": w, "activation": "relu"}) for w in shapes)
    plan = Plan(mlp_plan().input, steps, mlp_plan().outputs)
    _serve_plan(tmp_path, plan, weights, 4096)

    async def check(mv: ModelVersion, plane: DataPlane) -> None:
        assert mv.batcher is not None
        [executor] = mv.batcher.executors
        assert executor.inline and executor.inline_rows < 4096
        assert not executor.runs_inline(4096)

    _loaded(tmp_path, check)

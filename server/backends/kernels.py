"""Kernel backend: a plan of warpserve.kernels ops (see `kernel_plan`) run per batch.

Each step calls one op with provider "auto": Numba on the CPU, Triton-lang when the
instance group is KIND_GPU and a GPU is present (weights then live on the GPU, copied
once at load; each batch crosses to the GPU and back). Numba releases the GIL, so
instances on worker threads overlap. A load runs the plan once on a probe batch: a
weight of the wrong shape fails the load naming the step, and the JIT compilation is
done before the first request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from warpserve.kernels.errors import KernelInputError, ProviderUnavailable
from warpserve.kernels.mlp import FusedMLP, LinearLayer
from warpserve.kernels.preprocess import preprocess_images
from warpserve.kernels.registry import select
from warpserve.kernels.topk import check_topk, score_topk
from warpserve.protos import model_config_pb2 as mc
from warpserve.server.backends.kernel_plan import (
    PLAN_FILE,
    WEIGHTS_FILE,
    Plan,
    Step,
    read_plan,
    read_signature,
    read_weights,
)
from warpserve.server.backends.spec import BackendSpec, Capabilities
from warpserve.server.errors import InvalidInput, ModelLoadError

log = logging.getLogger(__name__)

Values = dict[str, Any]
Stage = Callable[[Any], Values]
_WIRE_DTYPES = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "UINT8": np.uint8}


class KernelInstance:
    def __init__(self, plan: Plan, weights: dict[str, np.ndarray], device: str) -> None:
        self.plan = plan
        self.device = device
        placed = {name: _place(array, device) for name, array in weights.items()}
        self._stages: list[tuple[str, Stage]] = []
        steps, index = plan.steps, 0
        while index < len(steps):
            end = index + 1
            if steps[index].op != "linear":
                self._stages.append(
                    (f"steps[{index}] ({steps[index].op})", _stage(steps[index], index, placed))
                )
            else:
                # Consecutive linear steps run as one FusedMLP: one kernel call per batch.
                while end < len(steps) and steps[end].op == "linear":
                    end += 1
                where = f"steps[{index}:{end}] (linear)"
                self._stages.append((where, _mlp_stage(steps[index:end], where, weights)))
            index = end

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        value = _place(inputs[self.plan.input.name], self.device)
        values: Values = {"output": value}
        for where, stage in self._stages:
            try:
                values = stage(values["output"])
            except KernelInputError as exc:
                raise InvalidInput(f"input '{self.plan.input.name}' at {where}: {exc}") from exc
        return {o.name: _to_numpy(values[o.value]) for o in self.plan.outputs}

    def probe(self) -> None:
        """Run a one-row batch of zeros; raises ModelLoadError naming what does not fit."""
        dims = tuple(8 if d == -1 else d for d in self.plan.input.dims)
        dtype = _WIRE_DTYPES.get(self.plan.input.datatype)
        if dtype is None:
            raise ModelLoadError(
                f"kernel plan input '{self.plan.input.name}': datatype "
                f"{self.plan.input.datatype} is not one of {sorted(_WIRE_DTYPES)}"
            )
        try:
            outputs = self.execute({self.plan.input.name: np.zeros((1, *dims), dtype)})
        except InvalidInput as exc:
            raise ModelLoadError(f"kernel plan does not fit its weights: {exc}") from exc
        for spec in self.plan.outputs:
            got = outputs[spec.name]
            if got.dtype != _WIRE_DTYPES.get(spec.datatype) or got.shape[1:] != spec.dims:
                raise ModelLoadError(
                    f"kernel plan output '{spec.name}' declares {spec.datatype} "
                    f"{list(spec.dims)} but the plan gives {got.dtype} {list(got.shape[1:])}"
                )

    def close(self) -> None:
        self._stages = []


def _weight(step: Step, where: str, weights: dict[str, Any], key: str, required: bool) -> Any:
    name = step.args.get(key)
    if name is None and not required:
        return None
    if name not in weights:
        raise ModelLoadError(
            f"kernel plan {where}: {key} names weight {name!r}, "
            f"not in {WEIGHTS_FILE} (has {sorted(weights)})"
        )
    return weights[name]


def _mlp_stage(steps: tuple[Step, ...], where: str, weights: dict[str, np.ndarray]) -> Stage:
    layers = [
        LinearLayer(
            _weight(step, where, weights, "weight", True),
            _weight(step, where, weights, "bias", False),
            str(step.args.get("activation", "none")),
        )
        for step in steps
    ]
    try:
        # One thread per batch: instances are the server's parallelism, and an OpenMP
        # team's end waits for every worker, so one the OS has parked behind the event
        # loop stalls the batch (12-24 ms on a loaded 2-core machine; bench/README.md).
        model = FusedMLP(layers, threads=1)
    except KernelInputError as exc:
        raise ModelLoadError(f"kernel plan {where}: {exc}") from None
    return lambda x: {"output": model(x)}


def _stage(step: Step, index: int, weights: dict[str, Any]) -> Stage:
    where = f"steps[{index}] ({step.op})"
    args = step.args

    def weight(key: str, required: bool = True) -> Any:
        return _weight(step, where, weights, key, required)

    try:
        if step.op == "score_topk":
            items, bias, k = weight("items"), weight("item_bias", False), int(args["k"])
            scorer = _cpu_scorer(items, k, bias)

            def best(x: Any) -> Values:
                if scorer is not None and scorer.takes(x):
                    scores, ids = scorer(x)
                else:
                    scores, ids = score_topk(x, items, k, item_bias=bias)
                return {"scores": scores, "ids": ids}

            return best
        height, width = (int(s) for s in args["size"])
        size = (height, width)
        mean, std = list(args["mean"]), list(args["std"])
        dtype = str(args.get("out_dtype", "float32"))
        return lambda x: {"output": preprocess_images(x, size, mean, std, dtype)}
    except KernelInputError as exc:
        raise ModelLoadError(f"kernel plan {where}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"kernel plan {where}: bad or missing argument {exc}") from None


def _cpu_scorer(items: Any, k: int, bias: Any) -> Any:
    """The Numba scorer with the items converted once, for float32 batches on the CPU:
    at the demo recommender's 1000 items `score_topk`'s checks and conversions per call
    cost more than the scan. None where the items live on a GPU or Numba is missing."""
    if not isinstance(items, np.ndarray) or select("topk", "cpu", "auto").name != "numba":
        return None
    check_topk(np.zeros((0, items.shape[1]), items.dtype), items, k, bias)
    from warpserve.kernels.topk_numba import TopKScorer

    return TopKScorer(items, k, bias)


def _place(array: np.ndarray, device: str) -> Any:
    if device == "cpu":
        return array
    import torch

    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    array: np.ndarray = value.cpu().numpy()
    return array


def load_instance(
    config: mc.ModelConfig, version_dir: Path, index: int, count: int
) -> KernelInstance:
    plan = read_plan(SPEC.model_path(config, version_dir))
    weights = read_weights(version_dir / WEIGHTS_FILE)
    wants_gpu = any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in config.instance_group)
    device = "cuda" if wants_gpu and gpu_available() else "cpu"
    instance = KernelInstance(plan, weights, device)
    try:
        instance.probe()
    except ProviderUnavailable as exc:
        raise ModelLoadError(f"model '{config.name}': {exc}") from exc
    log.info("loaded kernel plan %s instance %d/%d on %s", version_dir, index + 1, count, device)
    return instance


def gpu_available() -> bool:
    """A CUDA device and Triton to compile the kernels for it."""
    import importlib.util

    if importlib.util.find_spec("triton") is None or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


SPEC = BackendSpec(
    platform="warpserve_kernels",
    backend="warpserve_kernels",
    default_filename=PLAN_FILE,
    loader=load_instance,
    description="warpserve's own kernels (Numba on the CPU, Triton-lang on a GPU) run a plan",
    requires=("numba",),
    install_hint="pip install numba",
    # Inline by the server's rule (execution=auto: a batch-1 run under 200 us, a full
    # batch under 2 ms), as ONNX Runtime: a fused MLP of a few layers takes microseconds,
    # less than the hop to a worker thread and back. Its MLPs run on one thread there,
    # and its top-k scan up to 8192 items per thread.
    capabilities=Capabilities(inline=True, gpu=True),
    gpu_available=gpu_available,
    read_signature=read_signature,
)

"""The kernel backend's model file: a small plan of ops over weights kept beside it.

A version folder holds `plan.json` and `weights.npz`. The plan names the one input, the
steps in order and the outputs:

    {"input": {"name": "TRANSACTION", "datatype": "FP32", "dims": [16]},
     "steps": [{"op": "linear", "weight": "w0", "bias": "b0", "activation": "relu"},
               {"op": "linear", "weight": "w1", "bias": "b1", "activation": "sigmoid"}],
     "outputs": [{"name": "FRAUD_PROBABILITY", "datatype": "FP32", "dims": [1],
                  "value": "output"}]}

`dims` leave out the batch dimension. Ops: `linear` (weight `[out, in]`, optional bias,
activation relu/gelu/sigmoid/none), `score_topk` (items `[I, D]`, optional item_bias, k;
gives `scores` and `ids`) and `preprocess` (size, mean, std, out_dtype; uint8 HWC images
in). Each step gives `output` unless said otherwise; outputs name a value of the last step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from warpserve.server.backends.spec import Signature, TensorSignature
from warpserve.server.errors import ModelLoadError

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "weights.npz"
OPS = {"linear": ("output",), "score_topk": ("scores", "ids"), "preprocess": ("output",)}


@dataclass(frozen=True)
class PlanTensor:
    name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch dimension
    value: str = "output"


@dataclass(frozen=True)
class Step:
    op: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    input: PlanTensor
    steps: tuple[Step, ...]
    outputs: tuple[PlanTensor, ...]

    def signature(self) -> Signature:
        """The config's view: the batch dimension first, as -1."""

        def tensor(t: PlanTensor) -> TensorSignature:
            return TensorSignature(t.name, t.datatype, (-1, *t.dims))

        return Signature((tensor(self.input),), tuple(tensor(o) for o in self.outputs))

    def to_json(self) -> dict[str, Any]:
        def tensor(t: PlanTensor, value: bool) -> dict[str, Any]:
            out: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "dims": list(t.dims)}
            return {**out, "value": t.value} if value else out

        return {
            "input": tensor(self.input, False),
            "steps": [{"op": s.op, **s.args} for s in self.steps],
            "outputs": [tensor(o, True) for o in self.outputs],
        }


def read_plan(path: Path) -> Plan:
    """Parse and check `plan.json`; ModelLoadError says what is wrong and where."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"kernel plan {path} cannot be read: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"kernel plan {path}: expected a JSON object")
    try:
        plan = Plan(
            _tensor(raw["input"], "input"),
            tuple(_step(s, i) for i, s in enumerate(raw["steps"])),
            tuple(_tensor(o, f"outputs[{i}]") for i, o in enumerate(raw["outputs"])),
        )
    except KeyError as exc:
        raise ModelLoadError(f"kernel plan {path}: missing field {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"kernel plan {path}: {exc}") from None
    _check_outputs(plan, path)
    return plan


def _tensor(raw: dict[str, Any], where: str) -> PlanTensor:
    dims = tuple(int(d) for d in raw["dims"])
    if any(d < -1 or d == 0 for d in dims):
        raise ValueError(f"{where}: dims {list(dims)} must be positive or -1")
    return PlanTensor(str(raw["name"]), str(raw["datatype"]), dims, str(raw.get("value", "output")))


def _step(raw: dict[str, Any], index: int) -> Step:
    op = raw.get("op")
    if op not in OPS:
        raise ValueError(f"steps[{index}]: op {op!r} is not one of {sorted(OPS)}")
    return Step(op, {k: v for k, v in raw.items() if k != "op"})


def _check_outputs(plan: Plan, path: Path) -> None:
    if not plan.steps or not plan.outputs:
        raise ModelLoadError(f"kernel plan {path}: needs at least one step and one output")
    last = plan.steps[-1].op
    for output in plan.outputs:
        if output.value not in OPS[last]:
            raise ModelLoadError(
                f"kernel plan {path}: output '{output.name}' takes value '{output.value}', "
                f"but the last step ({last}) gives {', '.join(OPS[last])}"
            )


def read_weights(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: np.ascontiguousarray(data[name]) for name in data.files}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"kernel weights {path} cannot be read: {exc}") from exc


def write_plan(version_dir: Path, plan: Plan, weights: dict[str, np.ndarray]) -> Path:
    """Write `plan.json` and `weights.npz` into `version_dir` (created if missing)."""
    version_dir.mkdir(parents=True, exist_ok=True)
    np.savez(version_dir / WEIGHTS_FILE, **weights)  # type: ignore[arg-type]
    path = version_dir / PLAN_FILE
    path.write_text(json.dumps(plan.to_json(), indent=2) + "\n")
    return path


def read_signature(path: Path) -> Signature:
    return read_plan(path).signature()

"""Lowering trained PyTorch modules onto warpserve's kernels (the kernel backend's plan).

Two structures lower by their modules: an `nn.Sequential` of `nn.Linear` layers, each
optionally followed by one supported activation (ReLU, exact GELU, Sigmoid; Identity and
eval-mode Dropout are dropped), and a recommender's scoring step (such a Sequential as
the user tower, an item embedding matrix, an optional per-item bias and k). A module
passed whole is a scoring step when it has the attributes `user_tower`,
`item_embeddings` (an `nn.Embedding` or a `[items, dim]` tensor), `top_k` and optionally
`item_bias`, and its forward returns `(item_ids, scores)` of the top k of
`user_tower(x) @ items.T + item_bias`, best first; the parity check against its forward
confirms the last part. Any other module lowers from its `torch.export` program where
that is a straight chain of such layers, with constant scaling and shifts folded into the
weights (`graph_lowering`). Anything else is refused with a `LoweringError` naming the
module by its path in the model, so a user knows what to change. The result is a
`kernel_plan.Plan` and its weights, which `kernel_plan.write_plan` puts in a version
folder; `check_parity` runs it through the kernel backend's own instance against the
module in eager PyTorch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from warpserve.server.backends.kernel_plan import Plan, PlanTensor, Step
from warpserve.server.backends.kernels import KernelInstance

Weights = dict[str, np.ndarray]
_ACTIVATIONS: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.GELU: "gelu", nn.Sigmoid: "sigmoid"}
_DROPPED = (nn.Identity, nn.Dropout)


class LoweringError(ValueError):
    """The module has a structure the kernels cannot run; the message names it."""


def lower_sequential(
    model: nn.Module, input_name: str = "INPUT", output_name: str = "OUTPUT"
) -> tuple[Plan, Weights]:
    """A plan of linear steps computing `model` (an nn.Sequential) on `[batch, in]`."""
    steps, weights, sizes = _linear_steps(model, "model")
    plan = Plan(
        PlanTensor(input_name, "FP32", (sizes[0],)),
        tuple(steps),
        (PlanTensor(output_name, "FP32", (sizes[1],)),),
    )
    return plan, weights


SCORING_ATTRIBUTES = ("user_tower", "item_embeddings", "top_k")


def lower_module(
    model: nn.Module,
    input_name: str,
    output_names: list[str],
    program: torch.export.ExportedProgram | None = None,
) -> tuple[Plan, Weights]:
    """`model` as a plan: an nn.Sequential with one output, a scoring module (see the
    module docstring) with two, item ids then scores, or, given its exported `program`,
    any other module whose graph is a straight chain of layers (`graph_lowering`)."""
    if not all(hasattr(model, a) for a in SCORING_ATTRIBUTES):
        if program is not None and not isinstance(model, nn.Sequential):
            from warpserve.compile.graph_lowering import lower_program

            if len(output_names) != 1:
                raise LoweringError(
                    f"model ({type(model).__name__}): {len(output_names)} outputs; the "
                    "kernels' linear steps give one"
                )
            return lower_program(program, input_name, output_names[0])
        if len(output_names) != 1:
            raise LoweringError(
                f"model ({type(model).__name__}): {len(output_names)} outputs; an "
                "nn.Sequential gives one, a scoring module (attributes "
                f"{', '.join(SCORING_ATTRIBUTES)}) two"
            )
        return lower_sequential(model, input_name, output_names[0])
    if len(output_names) != 2:
        raise LoweringError(
            f"model ({type(model).__name__}): a scoring module returns (item_ids, scores); "
            f"it has {len(output_names)} outputs"
        )
    embeddings = model.item_embeddings
    items = embeddings.weight if isinstance(embeddings, nn.Embedding) else embeddings
    if not isinstance(items, torch.Tensor):
        raise LoweringError(
            f"model.item_embeddings ({type(embeddings).__name__}): expected an nn.Embedding "
            "or a [items, dim] tensor"
        )
    bias = getattr(model, "item_bias", None)
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise LoweringError(f"model.item_bias ({type(bias).__name__}): expected a tensor")
    k = model.top_k
    if not isinstance(k, int) or isinstance(k, bool):
        raise LoweringError(f"model.top_k: expected an int, got {k!r}")
    tower = model.user_tower
    if not isinstance(tower, nn.Module):
        raise LoweringError(f"model.user_tower ({type(tower).__name__}): expected a module")
    names = (input_name, output_names[0], output_names[1])
    return lower_scoring(tower, items, k, bias, names)


def lower_scoring(
    user_tower: nn.Module,
    item_embeddings: torch.Tensor,
    k: int,
    item_bias: torch.Tensor | None = None,
    names: tuple[str, str, str] = ("USER_FEATURES", "ITEM_IDS", "SCORES"),
) -> tuple[Plan, Weights]:
    """The tower's steps, then `score_topk` against the items: ids and scores, best first."""
    steps, weights, (n_in, n_out) = _linear_steps(user_tower, "user_tower")
    items = _array(item_embeddings)
    if items.ndim != 2 or items.shape[1] != n_out:
        raise LoweringError(
            f"item_embeddings: shape {items.shape} does not match the tower's {n_out} outputs"
        )
    if not 1 <= k <= items.shape[0]:
        raise LoweringError(f"k: {k} must be between 1 and the item count {items.shape[0]}")
    weights["items"] = items
    args: dict[str, Any] = {"items": "items", "k": int(k)}
    if item_bias is not None:
        bias = _array(item_bias).reshape(-1)
        if bias.shape[0] != items.shape[0]:
            raise LoweringError(
                f"item_bias: {bias.shape[0]} values for {items.shape[0]} item embeddings"
            )
        weights["item_bias"] = bias
        args["item_bias"] = "item_bias"
    user, ids, scores = names
    plan = Plan(
        PlanTensor(user, "FP32", (n_in,)),
        (*steps, Step("score_topk", args)),
        (PlanTensor(ids, "INT64", (k,), "ids"), PlanTensor(scores, "FP32", (k,), "scores")),
    )
    return plan, weights


def check_parity(
    plan: Plan, weights: Weights, reference: np.ndarray | tuple[np.ndarray, ...], x: np.ndarray
) -> float:
    """Largest absolute difference between the plan's outputs on `x` and `reference`
    (the module's eager outputs, in the plan's output order)."""
    instance = KernelInstance(plan, weights, "cpu")
    outputs = instance.execute({plan.input.name: x})
    expected = reference if isinstance(reference, tuple) else (reference,)
    worst = 0.0
    for spec, want in zip(plan.outputs, expected, strict=True):
        got = outputs[spec.name].astype(np.float64)
        worst = max(worst, float(np.max(np.abs(got - want), initial=0.0)))
    return worst


def _linear_steps(model: nn.Module, path: str) -> tuple[list[Step], Weights, tuple[int, int]]:
    if not isinstance(model, nn.Sequential):
        raise LoweringError(f"{path} ({type(model).__name__}): only nn.Sequential lowers")
    steps: list[Step] = []
    weights: Weights = {}
    sizes: list[int] = []
    for name, module in model.named_children():
        where = f"{path}.{name} ({type(module).__name__})"
        if isinstance(module, nn.Linear):
            steps.append(_linear(module, len(steps), weights))
            sizes = [sizes[0] if sizes else module.in_features, module.out_features]
        elif type(module) in _ACTIVATIONS:
            _fuse_activation(steps, module, where)
        elif isinstance(module, _DROPPED) and not (
            isinstance(module, nn.Dropout) and module.training
        ):
            continue
        else:
            raise LoweringError(
                f"{where} is not supported by the kernels; supported: "
                "Linear, ReLU, GELU (exact), Sigmoid, Identity, Dropout (eval)"
            )
    if not steps:
        raise LoweringError(f"{path}: no Linear layer to lower")
    return steps, weights, (sizes[0], sizes[1])


def _linear(module: nn.Linear, index: int, weights: Weights) -> Step:
    weights[f"linear{index}.weight"] = _array(module.weight)
    args: dict[str, Any] = {"weight": f"linear{index}.weight", "activation": "none"}
    if module.bias is not None:
        weights[f"linear{index}.bias"] = _array(module.bias)
        args["bias"] = f"linear{index}.bias"
    return Step("linear", args)


def _fuse_activation(steps: list[Step], module: nn.Module, where: str) -> None:
    if isinstance(module, nn.GELU) and module.approximate != "none":
        raise LoweringError(
            f"{where}: GELU(approximate='tanh') is not supported; use the exact form"
        )
    if not steps or steps[-1].args["activation"] != "none":
        raise LoweringError(f"{where}: an activation must follow a Linear layer directly")
    steps[-1].args["activation"] = _ACTIVATIONS[type(module)]


def _array(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().float().numpy())

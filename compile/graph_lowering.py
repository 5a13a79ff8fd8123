"""Lowering an exported program's straight chain of layers onto the kernels' linear steps.

`kernel_lowering` takes an `nn.Sequential` by its children. A model written as its own
module (the demo fraud scorer standardises its raw features with buffers, runs a
Sequential, then a sigmoid in `forward`) has no such children to read, but its
`torch.export` graph is a chain of ATen ops. This walks that graph:

- `aten.linear` with constant weight and bias is a linear step, and so is a product by a
  constant matrix (`x @ W.T + b` written out: matmul, mm, addmm);
- ReLU, exact GELU and sigmoid fuse into the linear step before them;
- adding, subtracting, multiplying or dividing by a constant (a scalar or one value per
  feature) is an affine map that folds into the weights: before a linear layer into its
  input columns (``W * s`` and ``b + W @ t``), right after one into its output rows;
- dropout in eval mode, clones and aliases pass the value through;
- ops on constants alone (a lifted tensor constant's copy) are evaluated here, once.

Anything else, a value used twice (a residual branch) or a second input is refused with a
`LoweringError` naming the op and the module it came from. The parity check against eager
PyTorch still judges the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from warpserve.compile.kernel_lowering import LoweringError, Weights
from warpserve.server.backends.kernel_plan import Plan, PlanTensor, Step

aten = torch.ops.aten
_ACTIVATIONS = {
    aten.relu.default: "relu",
    aten.sigmoid.default: "sigmoid",
    aten.gelu.default: "gelu",
}
_PRODUCTS = {aten.matmul.default, aten.mm.default, aten.addmm.default}
_PASS_THROUGH = {aten.clone.default, aten.alias.default, aten.detach.default, aten.detach_.default}
_AFFINE = {
    aten.add.Tensor: "add",
    aten.add.Scalar: "add",
    aten.sub.Tensor: "sub",
    aten.sub.Scalar: "sub",
    aten.rsub.Scalar: "rsub",
    aten.rsub.Tensor: "rsub",
    aten.mul.Tensor: "mul",
    aten.mul.Scalar: "mul",
    aten.div.Tensor: "div",
    aten.div.Scalar: "div",
}
SUPPORTED = (
    "Linear layers with ReLU, GELU (exact) or Sigmoid after them, and adding, subtracting, "
    "multiplying or dividing by a constant per feature (folded into the weights)"
)


@dataclass
class _Layer:
    weight: np.ndarray  # [out, in], float64 while folding
    bias: np.ndarray  # [out]
    activation: str = "none"


@dataclass
class _Chain:
    features: int
    layers: list[_Layer] = field(default_factory=list)
    # The affine map x * scale + shift applied since the last linear layer or activation.
    scale: np.ndarray | float = 1.0
    shift: np.ndarray | float = 0.0
    pending: bool = False
    after: str = "input"  # "input", "linear" or "activation"

    def affine(self, kind: str, value: np.ndarray | float) -> None:
        if kind == "add":
            self.shift = self.shift + value
        elif kind == "sub":
            self.shift = self.shift - value
        elif kind == "rsub":
            self.scale, self.shift = -self.scale, value - self.shift
        elif kind == "mul":
            self.scale, self.shift = self.scale * value, self.shift * value
        else:
            self.scale, self.shift = self.scale / value, self.shift / value
        self.pending = True

    def linear(self, weight: np.ndarray, bias: np.ndarray) -> None:
        if self.pending:  # into the layer's input: (x*s + t) @ W.T + b
            scale = np.broadcast_to(self.scale, (weight.shape[1],))
            shift = np.broadcast_to(self.shift, (weight.shape[1],))
            weight, bias = weight * scale, bias + weight @ shift
            self._clear()
        self.layers.append(_Layer(weight, bias))
        self.features, self.after = weight.shape[0], "linear"

    def fold_into_output(self) -> None:
        """The pending map onto the last layer's output rows: (x @ W.T + b)*s + t."""
        if not self.pending:
            return
        layer = self.layers[-1]
        scale = np.broadcast_to(self.scale, (layer.weight.shape[0],))
        shift = np.broadcast_to(self.shift, (layer.weight.shape[0],))
        layer.weight, layer.bias = layer.weight * scale[:, None], layer.bias * scale + shift
        self._clear()

    def _clear(self) -> None:
        self.scale, self.shift, self.pending = 1.0, 0.0, False


def lower_program(
    program: torch.export.ExportedProgram, input_name: str, output_name: str
) -> tuple[Plan, Weights]:
    """A plan of linear steps computing `program` on `[batch, features]` rows."""
    constants = _constants(program)
    chain: _Chain | None = None
    value: torch.fx.Node | None = None  # the node holding the chain's current value
    n_in = 0
    for node in program.graph.nodes:
        if node.op == "placeholder":
            if node.name in constants:
                continue
            if chain is not None:
                raise LoweringError(f"input {node.name}: the kernels take one input")
            n_in = _features(node)
            chain, value = _Chain(n_in), node
        elif node.op == "call_function":
            if all(_is_constant(a, constants) for a in _operands(node)):
                constants[node.name] = _evaluate(node, constants)
                continue
            if chain is None or value is None:
                raise LoweringError(f"{_where(node)}: {_op(node)} before the model's input")
            _one_user(value, node)
            _step(chain, node, value, constants)
            value = node
        elif node.op == "output":
            (results,) = node.args
            outputs = results if isinstance(results, (tuple, list)) else (results,)
            if chain is None or len(outputs) != 1 or outputs[0] is not value:
                raise LoweringError(
                    f"model: {len(outputs)} outputs; the kernels' linear steps give one, "
                    "computed from the input"
                )
        else:
            raise LoweringError(f"{_where(node)}: {node.op} nodes are not supported")
    if chain is None or not chain.layers:
        raise LoweringError(f"model: no Linear layer to lower; supported: {SUPPORTED}")
    if chain.pending:
        if chain.after != "linear":
            raise LoweringError(
                "model: arithmetic after the last activation cannot fold into a Linear "
                f"layer; supported: {SUPPORTED}"
            )
        chain.fold_into_output()
    return _plan(chain, n_in, input_name, output_name)


def _step(
    chain: _Chain, node: torch.fx.Node, value: torch.fx.Node, constants: dict[str, Any]
) -> None:
    target = node.target
    if target is aten.linear.default:
        x, weight, *rest = node.args
        w = _constant_array(weight, constants)
        bias = rest[0] if rest else None
        if bias is None:
            b = None if w is None else np.zeros(w.shape[0])
        else:
            b = _constant_array(bias, constants)
        if x is not value or w is None or b is None:
            raise LoweringError(f"{_where(node)}: a linear layer whose weights are not constant")
        if w.ndim != 2 or w.shape[1] != chain.features:
            raise LoweringError(f"{_where(node)}: weight {w.shape} for {chain.features} features")
        chain.linear(w, b)
    elif target in _PRODUCTS:
        _product(chain, node, value, constants)
    elif target in _ACTIVATIONS:
        if target is aten.gelu.default and node.kwargs.get("approximate", "none") != "none":
            raise LoweringError(
                f"{_where(node)}: GELU(approximate='tanh') is not supported; use the exact form"
            )
        if chain.after != "linear":
            raise LoweringError(
                f"{_where(node)}: an activation must follow a Linear layer directly"
            )
        chain.fold_into_output()
        chain.layers[-1].activation = _ACTIVATIONS[target]
        chain.after = "activation"
    elif target in _PASS_THROUGH or (
        target is aten.dropout.default and not _dropout_training(node)
    ):
        return
    elif target in _AFFINE:
        chain.affine(_affine_kind(node, value), _affine_operand(node, value, chain, constants))
    else:
        raise LoweringError(f"{_where(node)}: {_op(node)} is not supported by the kernels; "
                            f"supported: {SUPPORTED}")  # fmt: skip


def _product(
    chain: _Chain, node: torch.fx.Node, value: torch.fx.Node, constants: dict[str, Any]
) -> None:
    """`x @ C` (matmul, mm) or `b + x @ C` (addmm): a linear layer with weight `C.T`."""
    if node.target is aten.addmm.default:
        bias_arg, x, matrix = node.args[:3]
        if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
            raise LoweringError(f"{_where(node)}: {_op(node)} with {dict(node.kwargs)}")
        bias = _constant_array(bias_arg, constants)
    else:
        x, matrix = node.args[:2]
        bias = None
    c = _constant_array(matrix, constants)
    if x is not value or c is None or (bias is None and node.target is aten.addmm.default):
        raise LoweringError(
            f"{_where(node)}: {_op(node)} of the value by a computed matrix; the kernels "
            "multiply by constant weights"
        )
    if c.ndim != 2 or c.shape[0] != chain.features:
        raise LoweringError(f"{_where(node)}: a matrix {c.shape} for {chain.features} features")
    out = c.shape[1]
    if bias is not None and bias.size not in (1, out):
        raise LoweringError(f"{_where(node)}: a bias of shape {bias.shape} for {out} outputs")
    b = np.zeros(out) if bias is None else np.broadcast_to(bias.reshape(-1), (out,)).copy()
    chain.linear(np.ascontiguousarray(c.T), b)


def _affine_kind(node: torch.fx.Node, value: torch.fx.Node) -> str:
    kind = _AFFINE[node.target]  # type: ignore[index]
    if node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("rounding_mode") is not None:
        raise LoweringError(f"{_where(node)}: {_op(node)} with {dict(node.kwargs)}")
    if node.args[0] is value:
        return kind
    # The constant comes first: c + x and c * x commute, c - x is rsub; c / x is not affine.
    if kind in ("add", "mul"):
        return kind
    if kind == "sub":
        return "rsub"
    raise LoweringError(f"{_where(node)}: dividing a constant by the value is not affine")


def _affine_operand(
    node: torch.fx.Node, value: torch.fx.Node, chain: _Chain, constants: dict
) -> np.ndarray | float:
    if sum(a is value for a in node.args) != 1:
        raise LoweringError(f"{_where(node)}: {_op(node)} of the value with itself")
    (other,) = [a for a in node.args if a is not value]
    if isinstance(other, (int, float)) and not isinstance(other, bool):
        return float(other)
    array = _constant_array(other, constants)
    if array is None:
        raise LoweringError(f"{_where(node)}: {_op(node)} of two computed values")
    if array.size == 1:
        return float(array.reshape(()))
    if array.shape[-1] != chain.features or array.size != chain.features:
        raise LoweringError(
            f"{_where(node)}: a constant of shape {tuple(array.shape)}; per-feature constants "
            f"need {chain.features} values"
        )
    return array.reshape(-1)


def _plan(chain: _Chain, n_in: int, input_name: str, output_name: str) -> tuple[Plan, Weights]:
    weights: Weights = {}
    steps = []
    for index, layer in enumerate(chain.layers):
        weights[f"linear{index}.weight"] = np.ascontiguousarray(layer.weight, np.float32)
        weights[f"linear{index}.bias"] = np.ascontiguousarray(layer.bias, np.float32)
        args: dict[str, Any] = {
            "weight": f"linear{index}.weight",
            "bias": f"linear{index}.bias",
            "activation": layer.activation,
        }
        steps.append(Step("linear", args))
    plan = Plan(
        PlanTensor(input_name, "FP32", (n_in,)),
        tuple(steps),
        (PlanTensor(output_name, "FP32", (chain.features,)),),
    )
    return plan, weights


def _constants(program: torch.export.ExportedProgram) -> dict[str, Any]:
    """Placeholder name -> tensor, for the parameters, buffers and constants."""
    signature = program.graph_signature
    found: dict[str, Any] = {}
    for table in (signature.inputs_to_parameters, signature.inputs_to_buffers):
        for name, key in table.items():
            found[name] = (
                program.state_dict[key] if key in program.state_dict else (program.constants[key])
            )
    for name, key in signature.inputs_to_lifted_tensor_constants.items():
        found[name] = program.constants[key]
    return found


def _operands(node: torch.fx.Node) -> list[torch.fx.Node]:
    return [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, torch.fx.Node)]


def _is_constant(arg: object, constants: dict[str, Any]) -> bool:
    return isinstance(arg, torch.fx.Node) and arg.name in constants


def _constant_array(arg: object, constants: dict[str, Any]) -> np.ndarray | None:
    """The float64 value of a constant node; None for a computed one."""
    if isinstance(arg, torch.fx.Node) and arg.name in constants:
        return _array(constants[arg.name])
    return None


def _evaluate(node: torch.fx.Node, constants: dict[str, Any]) -> Any:
    def real(a: object) -> object:
        return constants[a.name] if isinstance(a, torch.fx.Node) else a

    args = tuple(real(a) for a in node.args)
    kwargs = {k: real(v) for k, v in node.kwargs.items()}
    try:
        with torch.no_grad():
            return node.target(*args, **kwargs)  # type: ignore[operator]
    except Exception as exc:
        raise LoweringError(f"{_where(node)}: {_op(node)} on constants failed: {exc}") from None


def _one_user(value: torch.fx.Node, node: torch.fx.Node) -> None:
    if len(value.users) != 1:
        raise LoweringError(
            f"{_where(node)}: its input {value.name} is used {len(value.users)} times (a "
            "branch, such as a residual connection); the kernels run a straight chain of layers"
        )


def _features(node: torch.fx.Node) -> int:
    shape = getattr(node.meta.get("val"), "shape", None)
    if shape is None or len(shape) != 2:
        raise LoweringError(f"input {node.name}: the kernels take rows [batch, features]")
    return int(shape[1])


def _dropout_training(node: torch.fx.Node) -> bool:
    train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", False)
    return bool(train)


def _array(tensor: object) -> np.ndarray:
    if isinstance(tensor, torch.Tensor):
        return tensor.detach().cpu().double().numpy()
    return np.asarray(tensor, dtype=np.float64)


def _op(node: torch.fx.Node) -> str:
    name = getattr(node.target, "__name__", str(node.target))
    return f"torch op {name.split('.')[0]}"


def _where(node: torch.fx.Node) -> str:
    """The module the node came from, as a path in the model and its class."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "model"
    path, kind = list(stack.values())[-1]
    name = kind.__name__ if isinstance(kind, type) else str(kind).rsplit(".", 1)[-1]
    return f"model.{path} ({name})" if path else f"model ({name})"

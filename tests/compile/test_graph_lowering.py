"""Lowering a module from its exported graph: constants folded into the weights, parity
with eager, and refusals naming the op and the module it came from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
import torch
from torch import nn

from warpserve.compile.graph_lowering import lower_program
from warpserve.compile.kernel_lowering import LoweringError, check_parity, lower_module


def _export(model: nn.Module, features: int) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch")
    example = (torch.randn(4, features),)
    return torch.export.export(model.eval(), example, dynamic_shapes=({0: batch},))


Body = Callable[[Any, torch.Tensor], torch.Tensor]


class Chain(nn.Module):
    """Two Linear layers around a forward of the caller's choosing."""

    body: Body

    def __init__(self, forward: Body) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.first, self.second = nn.Linear(6, 8), nn.Linear(8, 3)
        self.register_buffer("shift", torch.linspace(-1.0, 2.0, 6))
        self.register_buffer("scale", torch.linspace(0.5, 3.0, 8))
        self.body = forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self, x)


def _parity(model: nn.Module, features: int) -> tuple[float, list[tuple[str, str]]]:
    plan, weights = lower_program(_export(model, features), "X", "Y")
    x = torch.randn(37, features) * 3
    with torch.no_grad():
        want = model(x).numpy()
    steps = [(s.op, s.args["activation"]) for s in plan.steps]
    return check_parity(plan, weights, want, x.numpy()), steps


def test_the_demo_fraud_scorer_lowers_with_its_standardisation_folded() -> None:
    from warpserve.server.demo.models import FraudScorer, FraudScorerConfig

    torch.manual_seed(3)
    model = FraudScorer(FraudScorerConfig()).eval()
    model.set_standardisation(torch.randn(16) * 5, torch.rand(16) * 3 + 0.2)
    plan, weights = lower_module(model, "TRANSACTION", ["FRAUD_PROBABILITY"], _export(model, 16))
    assert [(s.op, s.args["activation"]) for s in plan.steps] == [
        ("linear", "relu"),
        ("linear", "relu"),
        ("linear", "sigmoid"),
    ]
    assert (plan.input.name, plan.input.dims, plan.outputs[0].dims) == ("TRANSACTION", (16,), (1,))
    x = torch.randn(64, 16) * 5
    with torch.no_grad():
        want = model(x).numpy()
    assert check_parity(plan, weights, want, x.numpy()) < 1e-5
    # Positive control: the first layer's own weights, without the folded standardisation.
    first = model.mlp[0]
    assert isinstance(first, nn.Linear)
    weights["linear0.weight"] = first.weight.detach().numpy()
    weights["linear0.bias"] = first.bias.detach().numpy()
    assert check_parity(plan, weights, want, x.numpy()) > 1e-3


@pytest.mark.parametrize(
    ("body", "steps"),
    [
        # per-feature constants before the first layer, in either order of the operands
        (lambda m, x: m.second(m.first(2.0 * (x - m.shift))), ["none", "none"]),
        (lambda m, x: m.second(m.first(1.0 - x / 4)), ["none", "none"]),
        # scaling between a layer and its activation folds into that layer's rows
        (lambda m, x: m.second(torch.relu(m.first(x) * m.scale - 0.5)), ["relu", "none"]),
        # after an activation, into the next layer's columns
        (lambda m, x: m.second(torch.sigmoid(m.first(x)) / m.scale + 1), ["sigmoid", "none"]),
        # after the last layer, into its rows; a lifted tensor constant evaluated once
        (
            lambda m, x: 3.0 - m.second(m.first(x)) * torch.tensor([1.0, -2.0, 0.5]),
            ["none", "none"],
        ),
        (lambda m, x: torch.nn.functional.gelu(m.second(torch.relu(m.first(x)))), ["relu", "gelu"]),
        (
            lambda m, x: m.second(nn.functional.dropout(m.first(x), 0.5, training=False)),
            ["none", "none"],
        ),
        # a layer written out as a product by its weight, with and without addmm
        (lambda m, x: m.second(torch.relu(x @ m.first.weight.T + m.first.bias)), ["relu", "none"]),
        (lambda m, x: torch.addmm(m.second.bias, m.first(x), m.second.weight.T), ["none"] * 2),
        (lambda m, x: m.second(m.first(x) @ torch.diag(m.scale)), ["none"] * 3),
    ],
)
def test_constant_arithmetic_folds_into_the_linear_steps(body: Body, steps: list[str]) -> None:
    worst, got = _parity(Chain(body), 6)
    assert worst < 1e-5
    assert got == [("linear", activation) for activation in steps]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (lambda m, x: m.second(m.first(x) + torch.relu(m.first(x))), r"is used 2 times \(a branch"),
        (lambda m, x: m.second(torch.tanh(m.first(x))), r"torch op tanh is not supported"),
        (lambda m, x: torch.sigmoid(m.second(m.first(x))) * 2, "after the last activation"),
        (lambda m, x: m.second(m.first(m.shift / x)), "dividing a constant by the value"),
        (lambda m, x: m.second(m.first(1.0 / x)), "torch op reciprocal is not supported"),
        (lambda m, x: m.second(m.first(torch.relu(x))), "must follow a Linear layer directly"),
        (lambda m, x: m.second(m.first(x) * m.first(x)), r"is used 2 times"),
        (lambda m, x: m.second(x @ (m.first.weight.T * x.sum())), r"is used 2 times"),
        (
            lambda m, x: m.second(nn.functional.gelu(m.first(x), approximate="tanh")),
            r"GELU\(approximate='tanh'\)",
        ),
        (lambda m, x: m.second(m.first(x) + torch.ones(2, 1, 8)), r"constant of shape \(2, 1, 8\)"),
    ],
)
def test_what_does_not_fold_is_refused_with_the_reason(body: Body, message: str) -> None:
    with pytest.raises(LoweringError, match=message):
        lower_program(_export(Chain(body), 6), "X", "Y")


def test_a_refusal_names_the_module_the_op_came_from() -> None:
    class Normed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x)

    with pytest.raises(LoweringError, match=r"model\.head\.1 \(LayerNorm\): torch op layer_norm"):
        lower_module(Normed(), "X", ["Y"], _export(Normed(), 4))


def test_two_inputs_and_two_outputs_are_refused() -> None:
    class TwoIn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.layer(x) + self.layer(y)

    two_in = torch.export.export(TwoIn().eval(), (torch.randn(2, 4), torch.randn(2, 4)))
    with pytest.raises(LoweringError, match="the kernels take one input"):
        lower_program(two_in, "X", "Y")
    with pytest.raises(LoweringError, match="2 outputs; the kernels' linear steps give one"):
        lower_module(
            Chain(lambda m, x: m.first(x)),
            "X",
            ["A", "B"],
            _export(Chain(lambda m, x: m.first(x)), 6),
        )


def test_a_sequential_still_lowers_by_its_children() -> None:
    """Given a program too, an nn.Sequential keeps the child-by-child lowering (and its
    refusals naming the child)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    with pytest.raises(LoweringError, match=r"model\.1 \(Tanh\) is not supported"):
        lower_module(model, "X", ["Y"], _export(model, 4))
    assert np.isfinite(_parity(Chain(lambda m, x: m.second(m.first(x))), 6)[0])

"""Lowering PyTorch modules onto the kernels: parity with eager, refusals naming the module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from warpserve.compile.kernel_lowering import (  # noqa: E402
    LoweringError,
    check_parity,
    lower_module,
    lower_scoring,
    lower_sequential,
)
from warpserve.server.backends.kernel_plan import read_plan, read_weights, write_plan  # noqa: E402


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 64),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(64, 32),
        nn.GELU(),
        nn.Linear(32, 1),
        nn.Sigmoid(),
    ).eval()


def test_a_sequential_mlp_lowers_with_parity(tmp_path: Path) -> None:
    model = _mlp()
    plan, weights = lower_sequential(model, "TRANSACTION", "FRAUD_PROBABILITY")
    assert [s.args["activation"] for s in plan.steps] == ["relu", "gelu", "sigmoid"]
    x = torch.randn(33, 16)
    want = model(x).detach().numpy()
    assert check_parity(plan, weights, want, x.numpy()) < 1e-5
    write_plan(tmp_path, plan, weights)  # and it round-trips through a version folder
    again = read_plan(tmp_path / "plan.json")
    assert check_parity(again, read_weights(tmp_path / "weights.npz"), want, x.numpy()) < 1e-5


def test_parity_catches_a_wrong_lowering() -> None:
    model = _mlp()
    plan, weights = lower_sequential(model)
    weights["linear0.weight"] = weights["linear0.weight"] * 1.01  # positive control
    x = torch.randn(8, 16)
    assert check_parity(plan, weights, model(x).detach().numpy(), x.numpy()) > 1e-4


def test_the_scoring_step_lowers_to_top_k() -> None:
    torch.manual_seed(1)
    tower = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8))
    items, bias = torch.randn(200, 8), torch.randn(200)
    plan, weights = lower_scoring(tower, items, 5, bias)
    x = torch.randn(4, 6)
    scores = tower(x) @ items.T + bias
    best = torch.topk(scores, 5, dim=1)
    reference = (best.indices.numpy().astype(np.float64), best.values.detach().numpy())
    assert check_parity(plan, weights, reference, x.numpy()) < 1e-4


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (nn.Sequential(nn.Linear(4, 4), nn.Tanh()), r"model.1 \(Tanh\) is not supported"),
        (nn.Sequential(nn.Conv1d(1, 1, 1)), r"model.0 \(Conv1d\) is not supported"),
        (nn.Sequential(nn.ReLU()), r"model.0 \(ReLU\): an activation must follow a Linear"),
        (nn.Sequential(nn.Linear(4, 4), nn.GELU("tanh")), "approximate='tanh'"),
        (nn.Linear(4, 4), r"model \(Linear\): only nn.Sequential lowers"),
        (nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train(), r"model.1 \(Dropout\)"),
    ],
)
def test_unsupported_structures_are_refused_naming_the_module(
    model: nn.Module, message: str
) -> None:
    with pytest.raises(LoweringError, match=message):
        lower_sequential(model)


def test_scoring_refuses_items_that_do_not_match_the_tower() -> None:
    tower = nn.Sequential(nn.Linear(6, 8))
    with pytest.raises(LoweringError, match="does not match the tower's 8 outputs"):
        lower_scoring(tower, torch.randn(10, 7), 3)
    with pytest.raises(LoweringError, match="k: 11 must be between 1 and the item count 10"):
        lower_scoring(tower, torch.randn(10, 8), 11)


def test_a_scoring_module_passed_whole_lowers_to_the_tower_and_top_k() -> None:
    from tests.compile.models import scoring

    model = scoring().eval()
    plan, weights = lower_module(model, "USER", ["ITEM_IDS", "SCORES"])
    assert [s.op for s in plan.steps] == ["linear", "linear", "score_topk"]
    assert [o.name for o in plan.outputs] == ["ITEM_IDS", "SCORES"]
    x = torch.randn(6, 16)
    ids, scores = model(x)
    reference = (ids.numpy().astype(np.float64), scores.detach().numpy())
    assert check_parity(plan, weights, reference, x.numpy()) < 1e-4
    weights["item_bias"] = weights["item_bias"] + 1.0  # positive control: a shifted bias
    assert check_parity(plan, weights, reference, x.numpy()) > 0.5


def test_a_sequential_passed_whole_lowers_as_before() -> None:
    plan, _ = lower_module(_mlp(), "X", ["Y"])
    assert [s.op for s in plan.steps] == ["linear"] * 3


@pytest.mark.parametrize(
    ("change", "outputs", "message"),
    [
        ({}, ["IDS"], "a scoring module returns \\(item_ids, scores\\); it has 1 outputs"),
        ({"top_k": 2.5}, ["IDS", "S"], "model.top_k: expected an int"),
        ({"item_embeddings": "table"}, ["IDS", "S"], "model.item_embeddings \\(str\\)"),
        ({"item_bias": torch.zeros(7)}, ["IDS", "S"], "item_bias: 7 values for 300"),
        ({"user_tower": nn.Linear(16, 8)}, ["IDS", "S"], "user_tower \\(Linear\\): only"),
    ],
)
def test_a_scoring_module_that_does_not_fit_is_refused_naming_the_part(
    change: dict[str, object], outputs: list[str], message: str
) -> None:
    from tests.compile.models import scoring

    model = scoring()
    for name, value in change.items():
        if name in model._parameters or name in model._modules:
            delattr(model, name)
        object.__setattr__(model, name, value)
    with pytest.raises(LoweringError, match=message):
        lower_module(model, "USER", outputs)


def test_a_sequential_with_two_outputs_is_refused() -> None:
    with pytest.raises(LoweringError, match=r"2 outputs; an nn\.Sequential gives one"):
        lower_module(_mlp(), "X", ["A", "B"])

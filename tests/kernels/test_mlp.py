"""Fused linear layer and MLP: every provider against the numpy reference.

Tolerances: float32 1e-4 absolute and relative (sums of up to 300 products, summed in a
different order than BLAS); float16 outputs 2e-2 (float16 keeps 11 bits; both sides round
the same float32 accumulator once, so this bounds the accumulation-order difference).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.compare import assert_close
from tests.kernels.conftest import needs_triton
from warpserve.kernels import mlp, mlp_numba
from warpserve.kernels.errors import KernelInputError
from warpserve.kernels.mlp import FusedMLP, LinearLayer, fused_linear

TOLERANCE = {"float32": 1e-4, "float16": 2e-2}
SHAPES = [(1, 1, 1), (7, 16, 64), (33, 7, 5), (1023, 19, 33), (0, 8, 4)]


def _inputs(m: int, k: int, n: int, dtype: str, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(dtype)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("activation", mlp.ACTIVATIONS)
def test_reference_matches_torch(activation: str) -> None:
    torch = pytest.importorskip("torch")
    x, w, b = _inputs(9, 13, 11, "float32")
    act = {"none": lambda t: t, "relu": torch.relu, "sigmoid": torch.sigmoid}.get(
        activation, torch.nn.functional.gelu
    )
    want = act(torch.nn.functional.linear(*(torch.from_numpy(a) for a in (x, w, b))))
    assert_close(mlp.fused_linear_reference(x, w, b, activation), want, 1e-6, 1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", mlp.ACTIVATIONS)
def test_numba_matches_reference(shape: tuple[int, int, int], dtype: str, activation: str) -> None:
    x, w, b = _inputs(*shape, dtype)
    want = fused_linear(x, w, b, activation, provider="numpy")
    tol = TOLERANCE[dtype]
    assert_close(fused_linear(x, w, b, activation, provider="numba"), want, tol, tol)


def test_numba_many_row_blocks_and_no_bias() -> None:
    x, w, _ = _inputs(1023, 64, 130, "float32")
    assert 1023 % (mlp_numba.BLOCK_ELEMENTS // 130) != 0  # several blocks, the last one short
    want = fused_linear(x, w, None, "gelu", provider="numpy")
    assert_close(fused_linear(x, w, None, "gelu", provider="numba"), want, 1e-4, 1e-4)


def test_nan_and_inf_propagate_as_in_the_reference() -> None:
    x, w, b = _inputs(5, 4, 3, "float32")
    x[1, 2] = np.nan
    x[3, 0] = np.inf
    for activation in mlp.ACTIVATIONS:
        want = fused_linear(x, w, b, activation, provider="numpy")
        assert np.isnan(want[1]).all()  # positive control: the reference propagates NaN
        assert_close(fused_linear(x, w, b, activation, provider="numba"), want, 1e-5, 1e-5)


def test_torch_tensors_come_back_as_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    x, w, b = (torch.from_numpy(a) for a in _inputs(4, 3, 2, "float32"))
    out = fused_linear(x, w, b, "sigmoid")
    assert isinstance(out, torch.Tensor)
    assert_close(out, torch.sigmoid(torch.nn.functional.linear(x, w, b)), 1e-5, 1e-5)


@needs_triton
@pytest.mark.parametrize("config", range(4))
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 33, 5), (17, 40, 70)])
def test_triton_matches_reference_for_every_config(
    config: int, shape: tuple[int, int, int]
) -> None:
    from warpserve.kernels import mlp_triton

    x, w, b = _inputs(*shape, "float32")
    tx, tw, tb = (mlp_triton.torch.from_numpy(a) for a in (x, w, b))
    for activation in mlp.ACTIVATIONS:
        got = mlp_triton.fused_linear_triton(tx, tw, tb, activation, mlp_triton.CONFIGS[config])
        want = fused_linear(x, w, b, activation, provider="numpy")
        assert_close(got, want, 1e-4, 1e-4)


@needs_triton
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", [(0, 8, 4), (7, 16, 64), (45, 7, 3)])
def test_triton_provider_matches_reference(shape: tuple[int, int, int], dtype: str) -> None:
    x, w, b = _inputs(*shape, dtype)
    tol = TOLERANCE[dtype]
    for bias in (b, None):
        want = fused_linear(x, w, bias, "gelu", provider="numpy")
        assert_close(fused_linear(x, w, bias, "gelu", provider="triton"), want, tol, tol)


def _misaligned(n: int) -> np.ndarray:
    return np.frombuffer(bytearray(4 * n + 1), dtype=np.float32, offset=1, count=n)


@pytest.mark.parametrize(
    ("change", "argument", "message"),
    [
        ({"x": np.zeros((2, 3), np.int64)}, "x", "dtype int64 is not supported"),
        ({"x": np.zeros(3, np.float32)}, "x", "expected 2 dimensions"),
        ({"x": np.zeros((3, 2), np.float32).T}, "x", "C-contiguous"),
        ({"x": _misaligned(6).reshape(2, 3)}, "x", "misaligned"),
        ({"x": np.zeros((2, 4), np.float32)}, "x", "has 4 features but weight"),
        ({"x": [[1.0, 2.0, 3.0]]}, "x", "expected a numpy array"),
        ({"weight": np.zeros((0, 3), np.float32)}, "weight", "empty dimension"),
        ({"weight": np.zeros((5, 3), np.float16)}, "weight", "must share a dtype"),
        ({"bias": np.zeros(4, np.float32)}, "bias", "has 4 values for 5 outputs"),
        ({"activation": "tanh"}, "activation", "is not one of"),
    ],
)
def test_bad_input_names_the_argument(change: dict, argument: str, message: str) -> None:
    args = {
        "x": np.zeros((2, 3), np.float32),
        "weight": np.zeros((5, 3), np.float32),
        "bias": np.zeros(5, np.float32),
        "activation": "relu",
        **change,
    }
    with pytest.raises(KernelInputError, match=message) as raised:
        fused_linear(**args)
    assert raised.value.argument == argument


def test_mixing_numpy_and_torch_is_refused() -> None:
    torch = pytest.importorskip("torch")
    x, w, b = _inputs(2, 3, 4, "float32")
    with pytest.raises(KernelInputError, match="one kind on one device"):
        fused_linear(x, torch.from_numpy(w), b)


def test_mlp_matches_torch_sequential() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(16, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 32),
        torch.nn.GELU(),
        torch.nn.Linear(32, 1),
        torch.nn.Sigmoid(),
    )
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    acts = ["relu", "gelu", "sigmoid"]
    model = FusedMLP(
        [
            LinearLayer(lin.weight.detach().numpy(), lin.bias.detach().numpy(), act)
            for lin, act in zip(linears, acts, strict=True)
        ]
    )
    x = torch.randn(37, 16)
    want = net(x).detach()
    for provider in ("numpy", "numba"):
        assert_close(model(x.numpy(), provider), want.numpy(), 1e-5, 1e-5)
    assert isinstance(model(x), torch.Tensor)
    assert model.in_features == 16


def test_mlp_refuses_layers_that_do_not_chain() -> None:
    a = LinearLayer(np.zeros((8, 4), np.float32), None, "relu")
    b = LinearLayer(np.zeros((2, 9), np.float32), None, "none")
    with pytest.raises(KernelInputError, match="takes 9 inputs but the layer before gives 8"):
        FusedMLP([a, b])
    with pytest.raises(KernelInputError, match=r"layers\[0\].activation"):
        FusedMLP([LinearLayer(a.weight, None, "swish")])


@pytest.mark.parametrize("rows", [0, 1, 7, 1023])
def test_mlp_in_one_numba_call_matches_layer_by_layer(rows: int) -> None:
    rng = np.random.default_rng(3)
    dims, acts = [16, 64, 32, 1], ["relu", "gelu", "sigmoid"]
    layers = [
        LinearLayer(
            rng.standard_normal((o, i)).astype(np.float32) / 4,
            None if i == 64 else rng.standard_normal(o).astype(np.float32),
            act,
        )
        for i, o, act in zip(dims[:-1], dims[1:], acts, strict=True)
    ]
    model = FusedMLP(layers)
    x = rng.standard_normal((rows, 16)).astype(np.float32)
    got = model(x, "numba")
    assert model._packed is not None  # positive control: the one-call path ran
    assert 1023 % model._packed.block != 0  # several blocks, the last one short
    assert_close(got, model(x, "numpy"), 1e-5, 1e-5)


def test_numba_erf_is_within_its_stated_error_and_exactly_one_far_out() -> None:
    import math

    z = np.concatenate([np.linspace(-6, 6, 2001), [-1e30, -4.0, 4.0, 1e30]]).astype(np.float32)
    got = np.array([mlp_numba._erf(np.float32(v)) for v in z])
    want = np.array([math.erf(float(v)) for v in z])
    assert np.abs(got - want).max() <= 5e-7
    assert got[-1] == 1.0 and got[-4] == -1.0  # GELU(-inf) must stay -inf * 0 = NaN


@pytest.mark.parametrize("rows", [255, 256, 257, 1023, 4099])
@pytest.mark.parametrize("threads", [2, 3])
def test_mlp_split_over_threads_equals_one_thread(
    rows: int, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch of PARALLEL_ROWS or more goes over Numba's threads in contiguous shares;
    # every row must come out as on one thread (to rounding: where a share ends BLAS may
    # take other edge kernels).
    from warpserve.kernels import mlp_numba

    rng = np.random.default_rng(4)
    dims, acts = [16, 64, 32, 1], ["relu", "gelu", "sigmoid"]
    layers: list[tuple[np.ndarray, np.ndarray | None, str]] = [
        (
            rng.standard_normal((o, i)).astype(np.float32) / 4,
            rng.standard_normal(o).astype(np.float32),
            act,
        )
        for i, o, act in zip(dims[:-1], dims[1:], acts, strict=True)
    ]
    x = rng.standard_normal((rows, 16)).astype(np.float32)
    one = mlp_numba.PackedMLP(layers, threads=1)(x)
    split_calls: list[int] = []
    parallel = mlp_numba._mlp_parallel

    def counted(*args: object) -> None:
        split_calls.append(int(args[-1]))  # type: ignore[call-overload]
        parallel(*args)

    monkeypatch.setattr(mlp_numba, "_mlp_parallel", counted)
    assert_close(mlp_numba.PackedMLP(layers, threads=threads)(x), one, 1e-6, 1e-6)
    split = rows >= mlp_numba.PARALLEL_ROWS
    assert split_calls == ([min(threads, rows // (mlp_numba.PARALLEL_ROWS // 2))] if split else [])

"""What `bench_kernels.py` times: each op's shapes and the ways to compute it.

A `Case` prepares its inputs and returns the call to time (or None with a reason when the
provider cannot run here). Every case of one (op, shape) uses the same seeded inputs.
Baselines per op: the numpy reference; `numpy+argpartition` for top-k (the matrix
product and `np.argpartition` a numpy user writes); ONNX Runtime for the MLP (the
fraud scorer's serving backend today).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from warpserve.kernels import preprocess, topk
from warpserve.kernels.mlp import FusedMLP, LinearLayer, fused_linear
from warpserve.kernels.registry import select

Runner = Callable[[], object]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def versions() -> dict[str, str]:
    names = ("numpy", "numba", "triton", "torch", "onnxruntime", "cupy", "pillow")
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


@dataclass
class Case:
    op: str
    shape: str
    provider: str
    make: Callable[[], Runner | None]
    baselines: tuple[str, ...]
    device: str = "cpu"
    rounds: int = 15
    iterations: int = 1
    skip_reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.op}-{self.shape}-{self.provider}"

    def prepare(self) -> Runner | None:
        try:
            return self.make()
        except (ImportError, RuntimeError) as error:
            self.skip_reason = f"{self.provider}: {error}"
            return None

    def row(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "shape": self.shape,
            "provider": self.provider,
            "device": self.device,
            "baselines": list(self.baselines),
            "versions": versions(),
        }


def _kernel(op: str, name: str, device: str, call: Runner) -> Runner:
    select(op, device, name)  # raises ProviderUnavailable (a RuntimeError) with the reason
    call()  # warm-up: JIT compilation and autotuning stay out of the timings
    return call


# ------------------------------------------------------------------ preprocessing


def _photos(n: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _pillow(images: np.ndarray, size: tuple[int, int]) -> Runner:
    from PIL import Image

    scale, shift = preprocess.normalisation(MEAN, STD)

    def run() -> np.ndarray:
        resized = [
            np.asarray(Image.fromarray(i).resize(size[::-1], Image.Resampling.BILINEAR))
            for i in images
        ]
        batch = np.stack(resized).astype(np.float32) * scale + shift
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))

    return run


def _torch_preprocess(images: np.ndarray, size: tuple[int, int], compiled: bool) -> Runner:
    import torch

    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)

    def chain(x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return ((x / 255 - mean) / std).contiguous()

    fn = torch.compile(chain) if compiled else chain
    tensor = torch.from_numpy(images)
    fn(tensor)
    return lambda: fn(tensor)


def _preprocess_cases() -> list[Case]:
    n, h, w, size = 32, 256, 320, (224, 224)
    shape = f"{n}x{h}x{w}x3->224x224"
    base = ("numpy",)

    def ours(name: str) -> Callable[[], Runner | None]:
        def make() -> Runner:
            images = _photos(n, h, w)
            call = lambda: preprocess.preprocess_images(images, size, MEAN, STD, provider=name)  # noqa: E731
            return _kernel("preprocess", name, "cpu", call)

        return make

    return [
        Case("preprocess", shape, "numpy", ours("numpy"), base, rounds=8),
        Case("preprocess", shape, "numba", ours("numba"), base),
        Case("preprocess", shape, "pillow+numpy", lambda: _pillow(_photos(n, h, w), size), base),
        Case(
            "preprocess",
            shape,
            "torch",
            lambda: _torch_preprocess(_photos(n, h, w), size, False),
            base,
        ),
        Case(
            "preprocess",
            shape,
            "torch.compile",
            lambda: _torch_preprocess(_photos(n, h, w), size, True),
            base,
        ),
    ]


# ------------------------------------------------------------------ MLP


def _fraud_layers() -> list[LinearLayer]:
    rng = np.random.default_rng(0)
    dims = [16, 64, 32, 1]
    acts = ["relu", "relu", "sigmoid"]
    return [
        LinearLayer(
            (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32),
            rng.standard_normal(o).astype(np.float32) * 0.1,
            act,
        )
        for i, o, act in zip(dims[:-1], dims[1:], acts, strict=True)
    ]


def _onnx_mlp(batch: int, threads: int = 0) -> Runner:
    """ONNX Runtime's session on the fraud MLP; `threads` 0 is its default (every core)."""
    layers, x = _fraud_layers(), _fraud_input(batch)
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, name = [], [], "x"
    for index, layer in enumerate(layers):
        w, b = f"w{index}", f"b{index}"
        bias = layer.bias if layer.bias is not None else np.zeros(len(layer.weight), np.float32)
        inits += [numpy_helper.from_array(layer.weight, w), numpy_helper.from_array(bias, b)]
        nodes.append(helper.make_node("Gemm", [name, w, b], [f"g{index}"], transB=1))
        op = {"relu": "Relu", "sigmoid": "Sigmoid"}[layer.activation]
        name = f"a{index}"
        nodes.append(helper.make_node(op, [f"g{index}"], [name]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", x.shape[1]])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    run = session.run
    return lambda: run(None, {"x": x})


def _torch_mlp(batch: int, compiled: bool) -> Runner:
    run = _torch_mlp_on(batch, "cpu", compiled)
    run()
    return run


def _fraud_input(batch: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((batch, 16)).astype(np.float32)


def _fused_mlp(name: str, batch: int) -> Runner:
    model, x = FusedMLP(_fraud_layers()), _fraud_input(batch)
    return _kernel("mlp", name, "cpu", lambda: model(x, name))


# The fraud scorer's batch curve; torch eager and torch.compile only at three points.
MLP_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def mlp_shape(batch: int) -> str:
    return f"fraud 16-64-32-1 batch {batch}"


def _mlp_cases() -> list[Case]:
    cases = []
    for batch in MLP_BATCHES:
        iterations = 100 if batch < 64 else 10
        makers: dict[str, Callable[[], Runner | None]] = {
            "numpy": partial(_fused_mlp, "numpy", batch),
            "numba": partial(_fused_mlp, "numba", batch),
            "onnxruntime": partial(_onnx_mlp, batch),
            # The thread count of the Numba kernel: on a shared machine the scheduler gives
            # each runnable thread a share, so two threads get twice one thread's CPU.
            "onnxruntime/1 thread": partial(_onnx_mlp, batch, 1),
        }
        if batch in (1, 64, 1024):
            makers["torch"] = partial(_torch_mlp, batch, False)
            makers["torch.compile"] = partial(_torch_mlp, batch, True)
        base = ("numpy", "onnxruntime")
        cases += [
            Case("mlp", mlp_shape(batch), p, m, base, iterations=iterations)
            for p, m in makers.items()
        ]
    return cases + _layer_cases()


def _layer_cases() -> list[Case]:
    shape = "linear 1024x256->512 gelu"
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1024, 256)).astype(np.float32)
    w = (rng.standard_normal((512, 256)) / 16).astype(np.float32)
    b = rng.standard_normal(512).astype(np.float32)

    def ours(name: str) -> Callable[[], Runner]:
        return lambda: _kernel("mlp", name, "cpu", lambda: fused_linear(x, w, b, "gelu", name))

    def eager() -> Runner:
        import torch

        tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))
        return lambda: torch.nn.functional.gelu(torch.nn.functional.linear(tx, tw, tb))

    return [
        Case("mlp", shape, "numpy", ours("numpy"), ("numpy",)),
        Case("mlp", shape, "numba", ours("numba"), ("numpy",)),
        Case("mlp", shape, "torch", eager, ("numpy",)),
    ]


# ------------------------------------------------------------------ top-k


def _topk_cases() -> list[Case]:
    users_n, items_n, dims, k = 32, 100_000, 32, 10
    shape = f"{users_n} users x {items_n} items x {dims}, k={k}"
    base = ("numpy+argpartition", "numpy")
    rng = np.random.default_rng(3)
    users = rng.standard_normal((users_n, dims)).astype(np.float32)
    items = rng.standard_normal((items_n, dims)).astype(np.float32)

    def argpartition() -> Runner:
        def run() -> tuple[np.ndarray, np.ndarray]:
            scores = users @ items.T
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            best = np.take_along_axis(scores, part, 1)
            order = np.argsort(-best, axis=1)
            return np.take_along_axis(best, order, 1), np.take_along_axis(part, order, 1)

        return run

    def ours(name: str) -> Callable[[], Runner]:
        return lambda: _kernel("topk", name, "cpu", lambda: topk.score_topk(users, items, k, name))

    def torch_topk(compiled: bool) -> Runner:
        import torch

        tu, ti = torch.from_numpy(users), torch.from_numpy(items)
        fn = lambda u, i: torch.topk(u @ i.T, k, dim=1)  # noqa: E731
        fn = torch.compile(fn) if compiled else fn
        fn(tu, ti)
        return lambda: fn(tu, ti)

    return [
        Case("topk", shape, "numpy+argpartition", argpartition, base),
        Case("topk", shape, "numpy", ours("numpy"), base),
        Case("topk", shape, "numba", ours("numba"), base),
        Case("topk", shape, "torch", lambda: torch_topk(False), base),
        Case("topk", shape, "torch.compile", lambda: torch_topk(True), base),
    ]


CASES: list[Case] = _preprocess_cases() + _mlp_cases() + _topk_cases()


# ------------------------------------------------------------------ batch assembly


def _requests(count: int, row_shape: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(4)
    return [rng.standard_normal((1, *row_shape)).astype(np.float32) for _ in range(count)]


def _numpy_gather(count: int, row_shape: tuple[int, ...]) -> Runner:
    """What the batcher does today: np.concatenate into a reused buffer."""
    parts = _requests(count, row_shape)
    buffer = np.empty((count, *row_shape), np.float32)
    return lambda: np.concatenate(parts, out=buffer)


def _numba_gather(count: int, row_shape: tuple[int, ...]) -> Runner:
    """A parallel copy of each request into the buffer; the typed list is built per call,
    as the batcher would have to."""
    import numba
    from numba.typed import List

    @numba.njit(nogil=True, parallel=True, cache=False)
    def gather(parts, out):
        for i in numba.prange(len(parts)):
            out[i] = parts[i].reshape(out[i].shape)

    flat = [p.reshape(-1) for p in _requests(count, row_shape)]
    buffer = np.empty((count, int(np.prod(row_shape))), np.float32)

    def run() -> np.ndarray:
        typed = List(flat)
        gather(typed, buffer)
        return buffer

    run()
    return run


def _batch_cases() -> list[Case]:
    cases = []
    for count, row_shape, label in (
        (32, (16,), "32 x [1,16]"),
        (8, (3, 224, 224), "8 x [1,3,224,224]"),
    ):
        for name, make in (("numpy", _numpy_gather), ("numba", _numba_gather)):
            maker = partial(make, count, row_shape)
            cases.append(Case("batch", f"gather {label}", name, maker, ("numpy",), iterations=20))
    return cases


CASES += _batch_cases()


# ------------------------------------------------------------------ the GPU
# Each op's CUDA providers beside torch eager and torch.compile on the same CUDA tensors;
# every call ends in torch.cuda.synchronize() so that a timing covers the GPU's work. Built
# only where torch sees a GPU (bench/gpu_check.sh runs them on a lent one).


def gpu_name() -> str:
    import torch

    return str(torch.cuda.get_device_name()) if _cuda() else ""


def _synced(call: Runner) -> Runner:
    import torch

    def run() -> object:
        out = call()
        torch.cuda.synchronize()
        return out

    run()  # compilation and autotuning stay out of the timings
    return run


def _gpu_preprocess_cases() -> list[Case]:
    n, h, w, size = 32, 256, 320, (224, 224)
    shape = f"gpu {n}x{h}x{w}x3->224x224"

    def images() -> Any:
        import torch

        return torch.from_numpy(_photos(n, h, w)).cuda()

    def ours(name: str) -> Callable[[], Runner]:
        def make() -> Runner:
            select("preprocess", "cuda", name)
            x = images()
            return _synced(lambda: preprocess.preprocess_images(x, size, MEAN, STD, provider=name))

        return make

    def torch_chain(compiled: bool) -> Callable[[], Runner]:
        def make() -> Runner:
            import torch

            x = images()
            mean = torch.tensor(MEAN, device="cuda").view(1, 3, 1, 1)
            std = torch.tensor(STD, device="cuda").view(1, 3, 1, 1)

            def chain(t: torch.Tensor) -> torch.Tensor:
                t = t.permute(0, 3, 1, 2).float()
                t = torch.nn.functional.interpolate(
                    t, size=size, mode="bilinear", align_corners=False
                )
                return ((t / 255 - mean) / std).contiguous()

            fn = torch.compile(chain) if compiled else chain
            return _synced(lambda: fn(x))

        return make

    base = ("torch",)
    return [
        Case("preprocess", shape, "torch", torch_chain(False), base, device="cuda"),
        Case("preprocess", shape, "torch.compile", torch_chain(True), base, device="cuda"),
        *[
            Case("preprocess", shape, name, ours(name), base, device="cuda")
            for name in ("triton", "cupy", "numba")
        ],
    ]


def _gpu_mlp_cases() -> list[Case]:
    cases = []
    for batch in (1, 64, 1024, 16384):
        shape = f"gpu fraud 16-64-32-1 batch {batch}"

        def triton(batch: int = batch) -> Runner:
            import torch

            select("mlp", "cuda", "triton")
            model = FusedMLP(_fraud_layers())
            x = torch.from_numpy(_fraud_input(batch)).cuda()
            return _synced(lambda: model(x, "triton"))

        def eager(batch: int = batch, compiled: bool = False) -> Runner:
            return _synced(_torch_mlp_on(batch, "cuda", compiled))

        cases += [
            Case("mlp", shape, "torch", eager, ("torch",), device="cuda", iterations=10),
            Case(
                "mlp",
                shape,
                "torch.compile",
                partial(eager, compiled=True),
                ("torch",),
                device="cuda",
                iterations=10,
            ),
            Case("mlp", shape, "triton", triton, ("torch",), device="cuda", iterations=10),
        ]
    return cases


def _torch_mlp_on(batch: int, device: str, compiled: bool) -> Runner:
    import torch

    modules: list[torch.nn.Module] = []
    for layer in _fraud_layers():
        linear = torch.nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
        linear.weight.data = torch.from_numpy(layer.weight)
        linear.bias.data = torch.from_numpy(layer.bias)
        modules += [linear, torch.nn.ReLU() if layer.activation == "relu" else torch.nn.Sigmoid()]
    net = torch.nn.Sequential(*modules).eval().to(device)
    fn = torch.compile(net) if compiled else net
    tensor = torch.from_numpy(_fraud_input(batch)).to(device)

    def run() -> object:
        with torch.inference_mode():
            return fn(tensor)

    return run


def _gpu_topk_cases() -> list[Case]:
    users_n, items_n, dims, k = 32, 100_000, 32, 10
    shape = f"gpu {users_n} users x {items_n} items x {dims}, k={k}"

    def inputs() -> tuple[Any, Any]:
        import torch

        rng = np.random.default_rng(3)
        users = torch.from_numpy(rng.standard_normal((users_n, dims)).astype(np.float32))
        items = torch.from_numpy(rng.standard_normal((items_n, dims)).astype(np.float32))
        return users.cuda(), items.cuda()

    def triton() -> Runner:
        select("topk", "cuda", "triton")
        users, items = inputs()
        return _synced(lambda: topk.score_topk(users, items, k, "triton"))

    def full(compiled: bool) -> Callable[[], Runner]:
        def make() -> Runner:
            import torch

            users, items = inputs()
            fn = lambda u, i: torch.topk(u @ i.T, k, dim=1)  # noqa: E731
            fn = torch.compile(fn) if compiled else fn
            return _synced(lambda: fn(users, items))

        return make

    base = ("torch",)
    return [
        Case("topk", shape, "torch", full(False), base, device="cuda"),
        Case("topk", shape, "torch.compile", full(True), base, device="cuda"),
        Case("topk", shape, "triton", triton, base, device="cuda"),
    ]


GPU_CASES: list[Case] = (
    _gpu_preprocess_cases() + _gpu_mlp_cases() + _gpu_topk_cases() if _cuda() else []
)
CASES += GPU_CASES

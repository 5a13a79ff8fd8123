"""Fused image preprocessing against torch's bilinear resize and the numpy reference.

Tolerances: float32 outputs 1e-4 absolute (the blend runs in another order than torch's,
which moves the last float32 bits of values up to 255 before normalising); float16
outputs 2e-3 absolute (values within ±3 carry 11 bits).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

from tests.kernels.compare import assert_close
from tests.kernels.conftest import CUDA, needs_cuda, needs_numba_cuda, needs_triton
from warpserve.kernels.errors import KernelInputError
from warpserve.kernels.preprocess import preprocess_images

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TOLERANCE = {"float32": 1e-4, "float16": 2e-3}
# (n, h, w, H, W): one pixel, upscaling by odd factors, downscaling, identity, an empty
# batch, and outputs of 255 and 300 pixels (no multiple of the GPU block of 256).
SHAPES = [
    (1, 1, 1, 1, 1),
    (2, 7, 5, 3, 11),
    (3, 33, 17, 8, 8),
    (1, 10, 10, 10, 10),
    (0, 5, 5, 4, 4),
    (1, 40, 30, 15, 17),
    (2, 9, 13, 20, 15),
    # Over the Numba kernel's one-thread size (SERIAL_PIXELS): its parallel kernel.
    (2, 70, 90, 64, 48),
    (1, 5, 7, 70, 65),
]


def _images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _torch_chain(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """What a torch user writes: to float NCHW, interpolate, scale, normalise."""
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(
        x, size=size, mode="bilinear", align_corners=False, antialias=False
    )
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((x / 255 - mean) / std).numpy()


@pytest.mark.parametrize("shape", [s for s in SHAPES if s[0]])
def test_reference_matches_torch_interpolate(shape: tuple[int, ...]) -> None:
    n, h, w, height, width = shape
    images = _images(n, h, w)
    got = preprocess_images(images, (height, width), MEAN, STD, provider="numpy")
    assert_close(got, _torch_chain(images, (height, width)), 1e-4, 0)


def _check_provider(provider: str, shape: tuple[int, ...], out_dtype: str) -> None:
    n, h, w, height, width = shape
    images = _images(n, h, w, seed=1)
    want = preprocess_images(images, (height, width), MEAN, STD, out_dtype, "numpy")
    got = preprocess_images(images, (height, width), MEAN, STD, out_dtype, provider)
    assert_close(got, want, TOLERANCE[out_dtype], 0)


@pytest.mark.parametrize("out_dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", SHAPES)
def test_numba_matches_reference(shape: tuple[int, ...], out_dtype: str) -> None:
    _check_provider("numba", shape, out_dtype)


@needs_triton
@pytest.mark.parametrize("out_dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_reference(shape: tuple[int, ...], out_dtype: str) -> None:
    _check_provider("triton", shape, out_dtype)


# The simulator runs one Python thread per GPU thread: a few small shapes, two blocks at most.
CUDA_SIM_SHAPES = [(1, 1, 1, 1, 1), (2, 7, 5, 3, 11), (0, 5, 5, 4, 4), (1, 9, 13, 20, 15)]


@needs_numba_cuda
@pytest.mark.parametrize("out_dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", CUDA_SIM_SHAPES)
def test_numba_cuda_matches_reference(shape: tuple[int, ...], out_dtype: str) -> None:
    import torch

    from warpserve.kernels.cuda_probe import numba_cuda_reason

    if numba_cuda_reason():
        pytest.skip(str(numba_cuda_reason()))
    from warpserve.kernels import preprocess, preprocess_numba_cuda

    n, h, w, height, width = shape
    images = _images(n, h, w, seed=2)
    scale, shift = preprocess.normalisation(MEAN, STD)
    device = "cuda" if CUDA else "cpu"  # on the CPU, numba's simulator
    got = preprocess_numba_cuda.preprocess_numba_cuda(
        torch.from_numpy(images).to(device), (height, width), scale, shift, out_dtype
    )
    assert got.device.type == device
    want = preprocess_images(images, (height, width), MEAN, STD, out_dtype, "numpy")
    assert_close(got, want, TOLERANCE[out_dtype], 0)


def test_numba_names_the_cpu_kernel_on_the_cpu_and_the_cuda_one_on_the_gpu() -> None:
    from warpserve.kernels.cuda_probe import numba_cuda_reason
    from warpserve.kernels.registry import select

    assert select("preprocess", "cpu", "numba").module.endswith("preprocess_numba")
    # The CUDA kernel takes and returns torch CUDA tensors, so without torch it is not offered.
    if numba_cuda_reason() is None and importlib.util.find_spec("torch") is not None:
        assert select("preprocess", "cuda", "numba").module.endswith("preprocess_numba_cuda")


@needs_cuda
@pytest.mark.parametrize("provider", ["triton", "cupy", "numba"])
@pytest.mark.parametrize("out_dtype", ["float32", "float16"])
def test_gpu_providers_keep_cuda_tensors_on_the_gpu(provider: str, out_dtype: str) -> None:
    pytest.importorskip({"cupy": "cupy", "triton": "triton", "numba": "numba"}[provider])
    if provider == "numba":
        from warpserve.kernels.cuda_probe import numba_cuda_reason

        if numba_cuda_reason():
            pytest.skip(str(numba_cuda_reason()))
    import torch

    images = _images(3, 33, 17)
    gpu = torch.from_numpy(images).cuda()
    got = preprocess_images(gpu, (8, 9), MEAN, STD, out_dtype, provider)
    assert got.is_cuda
    want = preprocess_images(images, (8, 9), MEAN, STD, out_dtype, "numpy")
    assert_close(got, want, TOLERANCE[out_dtype], 0)


def test_torch_tensors_come_back_as_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    images = torch.from_numpy(_images(2, 6, 6))
    got = preprocess_images(images, (4, 4), MEAN, STD)
    assert isinstance(got, torch.Tensor)
    assert_close(got, _torch_chain(images.numpy(), (4, 4)), 1e-4, 0)


@pytest.mark.parametrize(
    ("change", "argument", "message"),
    [
        ({"images": np.zeros((1, 4, 4, 3), np.float32)}, "images", "dtype float32"),
        ({"images": np.zeros((4, 4, 3), np.uint8)}, "images", "expected 4 dimensions"),
        ({"images": np.zeros((1, 4, 4, 4), np.uint8)}, "images", r"\[N, height, width, 3\]"),
        ({"images": np.zeros((1, 0, 4, 3), np.uint8)}, "images", "0x4 pixels is empty"),
        ({"images": np.zeros((1, 4, 3, 3), np.uint8).transpose(0, 2, 1, 3)}, "images", "C-cont"),
        ({"images": np.zeros((1, 10000, 10000, 3), np.uint8)}, "images", "over the limit"),
        ({"images": np.zeros((1, 10, 11, 3), np.uint8), "max_pixels": 100}, "images", "110"),
        ({"size": (0, 5)}, "size", "expected"),
        ({"size": (5,)}, "size", "expected"),
        ({"size": (2.5, 3)}, "size", "expected"),
        ({"size": (9000, 10)}, "size", "expected"),
        ({"mean": (0.5, 0.5)}, "mean", "3 finite numbers"),
        ({"mean": (0.5, float("nan"), 0.5)}, "mean", "3 finite numbers"),
        ({"mean": "abc"}, "mean", "3 numbers"),
        ({"std": (0.2, 0.0, 0.2)}, "std", "must be positive"),
        ({"out_dtype": "int8"}, "out_dtype", "is not one of"),
    ],
)
def test_bad_input_names_the_argument(change: dict, argument: str, message: str) -> None:
    args: dict[str, Any] = {"images": np.zeros((1, 4, 4, 3), np.uint8), "size": (2, 2)}
    args |= {"mean": MEAN, "std": STD, **change}
    with pytest.raises(KernelInputError, match=message) as raised:
        preprocess_images(**args)
    assert raised.value.argument == argument


@pytest.mark.parametrize(
    "shape", [(1, 240, 320, 32, 32), (4, 240, 320, 32, 32), (1, 40, 40, 70, 65)]
)
def test_numba_does_a_small_output_on_one_thread(
    shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Starting the parallel kernel's threads costs more than a small output's whole work.
    from warpserve.kernels import preprocess_numba

    n, h, w, out_h, out_w = shape
    ran: list[str] = []

    def counting(name: str) -> Any:
        kernel = getattr(preprocess_numba, name)

        def counted(*args: object) -> None:
            ran.append(name)
            kernel(*args)

        return counted

    for name in ("_preprocess_kernel", "_preprocess_serial"):
        monkeypatch.setattr(preprocess_numba, name, counting(name))
    images = _images(n, h, w)
    got = preprocess_images(images, (out_h, out_w), MEAN, STD, provider="numba")
    assert_close(
        got, preprocess_images(images, (out_h, out_w), MEAN, STD, provider="numpy"), 1e-4, 1e-5
    )
    small = n * out_h * out_w <= preprocess_numba.SERIAL_PIXELS
    assert ran == ["_preprocess_serial" if small else "_preprocess_kernel"]

"""The image preprocessing stage: raw pixels of any size and encoded JPEG/PNG rows become
the model's fixed [N, 3, H, W] tensor; anything that is not a usable image is
INVALID_ARGUMENT naming the tensor."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image

from warpserve.kernels.preprocess import preprocess_images
from warpserve.protos import model_config_pb2 as mc
from warpserve.server import preprocessing
from warpserve.server.errors import InvalidInput, ModelLoadError

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _config(data_type: str, dims: str, extra: str = "", batch: int = 8) -> mc.ModelConfig:
    text = f"""
name: "m" max_batch_size: {batch}
input [{{ name: "IMAGE" data_type: {data_type} dims: [ {dims} ] }}]
output [{{ name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] }}]
parameters {{ key: "image_input" value {{ string_value: "IMAGE" }} }}
parameters {{ key: "image_size" value {{ string_value: "8,6" }} }}
parameters {{ key: "image_mean" value {{ string_value: "0.5,0.4,0.3" }} }}
parameters {{ key: "image_std" value {{ string_value: "0.2,0.25,0.3" }} }}
{extra}
"""
    return text_format.Parse(text, mc.ModelConfig())


def _stage(data_type: str = "TYPE_STRING", dims: str = "1", batch: int = 8):
    stage = preprocessing.plan(_config(data_type, dims, batch=batch), "config.pbtxt")
    assert stage is not None
    return stage


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _expected(pixels: np.ndarray) -> np.ndarray:
    return preprocess_images(pixels[np.newaxis], (8, 6), MEAN, STD, provider="numpy")


def _pixels(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_no_parameter_no_stage() -> None:
    config = _config("TYPE_FP32", "3, 8, 6")
    config.parameters.clear()
    assert preprocessing.plan(config, "c") is None


def test_the_backend_sees_the_models_tensor() -> None:
    config = _config("TYPE_STRING", "1")
    inner = _stage().model_config(config)
    assert inner.input[0].data_type == mc.TYPE_FP32 and list(inner.input[0].dims) == [3, 8, 6]
    assert config.input[0].data_type == mc.TYPE_STRING  # the client's view is untouched


@pytest.mark.parametrize(
    ("data_type", "dims", "extra", "says"),
    [
        ("TYPE_FP32", "-1, -1, 3", "", "TYPE_UINT8"),
        ("TYPE_UINT8", "-1, -1", "", "TYPE_UINT8"),
        ("TYPE_STRING", "2", "", "has dims"),
        (
            "TYPE_UINT8",
            "-1, -1, 3",
            'parameters { key: "image_std" value { string_value: "1,0,1" } }',
            "positive",
        ),
        (
            "TYPE_UINT8",
            "-1, -1, 3",
            'parameters { key: "image_size" value { string_value: "8" } }',
            "image_size",
        ),
    ],
)
def test_declarations_that_cannot_work_fail_the_load(
    data_type: str, dims: str, extra: str, says: str
) -> None:
    config = _config(data_type, dims)
    if extra:
        override = text_format.Parse(extra, mc.ModelConfig())
        for key, value in override.parameters.items():
            config.parameters[key].CopyFrom(value)
    with pytest.raises(ModelLoadError, match=says):
        preprocessing.plan(config, "c")


def test_an_unknown_input_name_fails_the_load() -> None:
    config = _config("TYPE_STRING", "1")
    config.parameters["image_input"].string_value = "PICTURE"
    with pytest.raises(ModelLoadError, match=r"PICTURE.*IMAGE"):
        preprocessing.plan(config, "c")


@pytest.mark.parametrize(("h", "w"), [(1, 1), (8, 6), (17, 29), (300, 7)])
def test_pixels_of_any_size(h: int, w: int) -> None:
    stage = _stage("TYPE_UINT8", "-1, -1, 3")
    batch = np.stack([_pixels(h, w, 0), _pixels(h, w, 1)])
    out = stage.apply({"IMAGE": batch, "OTHER": np.ones(2)})["IMAGE"]
    assert out.shape == (2, 3, 8, 6) and out.dtype == np.float32
    want = np.concatenate([_expected(batch[0]), _expected(batch[1])])
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


def test_png_rows_of_different_sizes_decode_exactly() -> None:
    images = [_pixels(20, 30, 0), _pixels(5, 9, 1), _pixels(64, 48, 2)]
    rows = np.array([[_encode(p, "PNG")] for p in images], dtype=np.object_)
    out = _stage().apply({"IMAGE": rows})["IMAGE"]
    assert out.shape == (3, 3, 8, 6)
    for got, pixels in zip(out, images, strict=True):
        np.testing.assert_allclose(got, _expected(pixels)[0], rtol=1e-5, atol=1e-4)


def test_jpeg_greyscale_and_rgba_become_rgb() -> None:
    colour = np.zeros((24, 40, 3), dtype=np.uint8)
    colour[...] = (200, 30, 90)
    grey = Image.fromarray(np.full((10, 10), 77, dtype=np.uint8))
    rgba = Image.fromarray(np.full((10, 10, 4), 150, dtype=np.uint8))
    encoded = [_encode(colour, "JPEG")]
    for image, fmt in ((grey, "JPEG"), (rgba, "PNG")):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        encoded.append(buffer.getvalue())
    rows = np.array([[e] for e in encoded], dtype=np.object_)
    out = _stage().apply({"IMAGE": rows})["IMAGE"]
    # JPEG is lossy: a flat colour comes back within a few levels.
    np.testing.assert_allclose(out[0], _expected(colour)[0], atol=4 / 255 / 0.2)
    np.testing.assert_allclose(out[1], _expected(np.full((10, 10, 3), 77, np.uint8))[0], atol=0.1)
    np.testing.assert_allclose(out[2], _expected(np.full((10, 10, 3), 150, np.uint8))[0], atol=1e-4)


def test_a_model_without_batching_takes_one_image() -> None:
    stage = _stage("TYPE_UINT8", "-1, -1, 3", batch=0)
    out = stage.apply({"IMAGE": _pixels(13, 11)})["IMAGE"]
    np.testing.assert_allclose(out, _expected(_pixels(13, 11))[0], rtol=1e-5, atol=1e-4)
    encoded = _stage(batch=0).apply({"IMAGE": np.array([_encode(_pixels(5, 5), "PNG")], object)})
    assert encoded["IMAGE"].shape == (3, 8, 6)


def _huge_png(width: int, height: int) -> bytes:
    """A valid PNG header for a huge image with a few bytes of data: refusing it must not
    need the pixels (the refusal comes before decoding)."""
    small = _encode(np.zeros((1, 1, 3), np.uint8), "PNG")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    patched = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return small[:8] + patched + small[8 + 25 :]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    ("item", "says"),
    [
        (b"this is not an image", "not an image"),
        (b"", "empty"),
        ("text", "empty"),
        (_encode(_pixels(64, 64), "JPEG")[:300], "cannot be decoded"),
        (_huge_png(10_000, 10_000), "100,000,000 pixels"),
    ],
)
def test_bad_images_are_invalid_input_naming_the_tensor(item: object, says: str) -> None:
    rows = np.array([[_encode(_pixels(4, 4), "PNG")], [item]], dtype=np.object_)
    with pytest.raises(InvalidInput, match=f"input 'IMAGE' row 1.*{says}"):
        _stage().apply({"IMAGE": rows})


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_the_huge_header_is_a_real_png() -> None:
    # Positive control for the bomb test: the patched file opens with the huge size.
    assert Image.open(io.BytesIO(_huge_png(10_000, 10_000))).size == (10_000, 10_000)


def test_huge_pixels_are_refused() -> None:
    stage = _stage("TYPE_UINT8", "-1, -1, 3")
    huge = np.lib.stride_tricks.as_strided(np.zeros(3, np.uint8), (1, 9000, 9000, 3), (0, 0, 0, 1))
    with pytest.raises(InvalidInput, match=r"input 'IMAGE'.*over the limit"):
        stage.apply({"IMAGE": huge})


def test_warmup_inputs_empty_strings_and_the_models_tensor() -> None:
    stage = _stage()
    out = stage.for_warmup({"IMAGE": np.full((2, 1), b"", dtype=np.object_)})["IMAGE"]
    np.testing.assert_allclose(
        out, np.broadcast_to(_expected(np.zeros((1, 1, 3), np.uint8)), out.shape), atol=1e-5
    )
    golden = np.ones((2, 3, 8, 6), np.float32)
    assert stage.for_warmup({"IMAGE": golden})["IMAGE"] is golden


def test_cost_decides_inline_or_thread() -> None:
    stage = _stage("TYPE_UINT8", "-1, -1, 3")
    assert stage.is_cheap({"IMAGE": _pixels(32, 32)[np.newaxis]})
    assert not stage.is_cheap({"IMAGE": np.zeros((1, 480, 640, 3), np.uint8)})


@pytest.mark.parametrize("size", [(80, 72), (32, 32)])
def test_outputs_large_and_small_match_the_reference(size: tuple[int, int]) -> None:
    # 80x72 is over the Numba kernel's one-thread size (SERIAL_PIXELS), 32x32 under it.
    from warpserve.kernels.preprocess_numba import SERIAL_PIXELS

    config = _config("TYPE_UINT8", "-1, -1, 3")
    config.parameters["image_size"].string_value = f"{size[0]},{size[1]}"
    stage = preprocessing.plan(config, "c")
    assert stage is not None and (size[0] * size[1] > SERIAL_PIXELS) == (size == (80, 72))
    batch = np.stack([_pixels(50, 90, 3)])
    out = stage.apply({"IMAGE": batch})["IMAGE"]
    want = preprocess_images(batch, size, MEAN, STD, provider="numpy")
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)

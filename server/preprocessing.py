"""An image input's preprocessing stage, declared in config.pbtxt ``parameters``.

A model whose graph takes a fixed-size normalised ``[3, H, W]`` float tensor can serve raw
images: ``image_input`` names the config input that receives them, declared as either

- ``TYPE_UINT8`` ``dims: [ -1, -1, 3 ]``: HWC RGB pixels of any size (one size per
  request: a batch of rows shares its shape), or
- ``TYPE_STRING`` ``dims: [ 1 ]``: one encoded JPEG or PNG per row, decoded with Pillow.

Each request's images are decoded, resized (bilinear, half-pixel centres) and normalised
by ``warpserve.kernels.preprocess`` into the model's tensor *before* batching: requests
with different image sizes cannot be concatenated, their model tensors can. Validation
and the model's metadata see the client's tensor; the backend, batcher, golden data and
timing see the model's. Decoding a photo takes milliseconds (Pillow releases the GIL), so
requests carrying more than ``INLINE_LIMIT_BYTES`` are prepared on a decoder thread
(``server/decodepool.py``) rather than on the event loop.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from warpserve.kernels.errors import KernelInputError
from warpserve.kernels.preprocess import MAX_IMAGE_PIXELS, preprocess_images
from warpserve.protos import model_config_pb2 as mc
from warpserve.server.errors import InvalidInput, ModelLoadError
from warpserve.server.repository import parameters as params

Inputs = dict[str, np.ndarray]

# Measured on a 2-core VM: Pillow decodes a 32x32 JPEG in ~0.25 ms and a 640x480 one in
# ~3.3 ms (a 64 KiB file is ~1 ms). Requests above this many bytes of pixels or encoded
# images go to a worker thread (Pillow and Numba release the GIL), so the loop keeps
# answering others.
INLINE_LIMIT_BYTES = 64 * 1024


def _name(text: str) -> str:
    if not text:
        raise ValueError(text)
    return text


def _size(text: str) -> tuple[int, int]:
    parts = [int(part) for part in text.split(",")]
    if len(parts) != 2 or not all(1 <= p <= 8192 for p in parts):
        raise ValueError(text)
    return parts[0], parts[1]


def _triple(text: str) -> tuple[float, float, float]:
    parts = [float(part) for part in text.split(",")]
    if len(parts) != 3 or not all(np.isfinite(parts)):
        raise ValueError(text)
    return parts[0], parts[1], parts[2]


IMAGE_INPUT = params.Parameter(
    "image_input", _name, "", "the name of a config input", "the input that takes raw images"
)
IMAGE_SIZE = params.Parameter(
    "image_size", _size, (0, 0), "height,width in 1..8192", "the model's image size"
)
IMAGE_MEAN = params.Parameter(
    "image_mean", _triple, (0.0, 0.0, 0.0), "three numbers r,g,b", "per-channel mean, 0..1 scale"
)
IMAGE_STD = params.Parameter(
    "image_std", _triple, (1.0, 1.0, 1.0), "three numbers r,g,b", "per-channel std, 0..1 scale"
)
IMAGE_DTYPE = params.choice("image_dtype", "float32", ("float32", "float16"), "the model's type")
PARAMETERS = (IMAGE_INPUT, IMAGE_SIZE, IMAGE_MEAN, IMAGE_STD, IMAGE_DTYPE)


@dataclass(frozen=True)
class ImageStage:
    """Turns one input's raw images into the model's ``[N, 3, H, W]`` tensor."""

    model: str
    input: str
    encoded: bool  # BYTES of JPEG/PNG, else uint8 HWC pixels
    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dtype: str
    batched: bool

    def model_config(self, config: mc.ModelConfig) -> mc.ModelConfig:
        """``config`` as the backend sees it: the image input as the model's tensor."""
        inner = mc.ModelConfig()
        inner.CopyFrom(config)
        for tensor in inner.input:
            if tensor.name == self.input:
                tensor.data_type = mc.TYPE_FP16 if self.dtype == "float16" else mc.TYPE_FP32
                del tensor.dims[:]
                tensor.dims.extend((3, *self.size))
        return inner

    def is_cheap(self, inputs: Inputs) -> bool:
        """Whether preparing ``inputs`` is quick enough to do on the event loop."""
        array = inputs.get(self.input)
        if array is None:
            return True
        if array.dtype != np.object_:
            return array.nbytes <= INLINE_LIMIT_BYTES
        total = 0
        for item in array.flat:
            total += len(item) if isinstance(item, bytes) else 0
        return total <= INLINE_LIMIT_BYTES

    def apply(self, inputs: Inputs) -> Inputs:
        """The inputs with the (validated) image input replaced by the model's tensor;
        raises InvalidInput naming the tensor for anything that is not a usable image."""
        array = inputs.get(self.input)
        if array is None:
            return inputs
        prepared = self._encoded(array) if self.encoded else self._pixels(array)
        return {**inputs, self.input: prepared}

    def for_warmup(self, inputs: Inputs) -> Inputs:
        """``apply`` for warm-up samples and golden inputs, which may already hold the
        model's tensor, and whose empty strings (Triton's zero and random BYTES data)
        stand for a black image rather than failing the load."""
        array = inputs.get(self.input)
        if array is None or array.dtype == np.dtype(self.dtype):
            return inputs
        if array.dtype == np.object_:
            black = _encode_black(self.size)
            array = np.vectorize(lambda item: item or black, otypes=[object])(array)
        return self.apply({**inputs, self.input: array})

    def _pixels(self, array: np.ndarray) -> np.ndarray:
        images = array if self.batched else array[np.newaxis]
        prepared = self._preprocess(np.ascontiguousarray(images))
        return prepared if self.batched else prepared[0]

    def _encoded(self, array: np.ndarray) -> np.ndarray:
        rows = array.reshape(-1)  # [N, 1] (or [1] unbatched): one encoded image per row
        decoded = (self._decode(item, row)[np.newaxis] for row, item in enumerate(rows))
        out = np.concatenate([self._preprocess(image) for image in decoded])
        return out if self.batched else out[0]

    def _preprocess(self, images: np.ndarray) -> np.ndarray:
        # "auto": Numba where installed, which does a small output (one 32x32 image from a
        # 320x240 photo: 30 µs, the numpy reference 135) on this thread and a large one
        # over its threads.
        try:
            return preprocess_images(images, self.size, self.mean, self.std, self.dtype)
        except KernelInputError as exc:
            raise InvalidInput(f"{self._where()}: {exc}") from exc

    def _decode(self, item: object, row: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        where = f"{self._where()} row {row}"
        if not isinstance(item, bytes) or not item:
            raise InvalidInput(f"{where}: empty; send the encoded JPEG or PNG file's bytes")
        try:
            # Pillow warns past its own limit and refuses twice that; this limit is lower.
            image = Image.open(io.BytesIO(item))
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise InvalidInput(
                    f"{where}: {width}x{height} is {width * height:,} pixels, over the "
                    f"limit of {MAX_IMAGE_PIXELS:,}; downscale it before sending"
                )
            image.load()
            # convert() copies even when the mode already is RGB; asarray copies anyway.
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        except UnidentifiedImageError:
            raise InvalidInput(
                f"{where}: {len(item)} bytes that are not an image Pillow can read; send "
                "a JPEG or PNG file's bytes"
            ) from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise InvalidInput(f"{where}: the image cannot be decoded ({exc})") from None

    def _where(self) -> str:
        return f"model '{self.model}' input '{self.input}'"


def _encode_black(size: tuple[int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size[1], size[0])).save(buffer, format="PNG")
    return buffer.getvalue()


def plan(config: mc.ModelConfig, source: str) -> ImageStage | None:
    """The config's image stage, or None without ``image_input``; raises ModelLoadError
    naming the parameter or tensor when the declaration cannot work."""
    if not IMAGE_INPUT.is_set(config):
        return None
    name = IMAGE_INPUT.read(config)
    tensor = next((t for t in config.input if t.name == name), None)
    where = f"{source}: model '{config.name}': parameter {IMAGE_INPUT.key}={name!r}"
    if tensor is None:
        raise ModelLoadError(
            f"{where} names no config input; the inputs are {[t.name for t in config.input]}"
        )
    dims = tuple(tensor.dims)
    encoded = tensor.data_type == mc.TYPE_STRING
    if encoded and dims != (1,):
        raise ModelLoadError(f"{where}: a TYPE_STRING image input has dims [ 1 ], not {list(dims)}")
    if not encoded and (tensor.data_type != mc.TYPE_UINT8 or len(dims) != 3 or dims[2] != 3):
        raise ModelLoadError(
            f"{where}: declare the input TYPE_UINT8 dims [ -1, -1, 3 ] (RGB pixels) or "
            "TYPE_STRING dims [ 1 ] (encoded JPEG/PNG)"
        )
    if tensor.HasField("reshape"):
        raise ModelLoadError(f"{where}: an image input takes no reshape")
    if not IMAGE_SIZE.is_set(config):
        raise ModelLoadError(f"{where}: set {IMAGE_SIZE.key} to the model's height,width")
    std = IMAGE_STD.read(config)
    if min(std) <= 0:
        raise ModelLoadError(f"{where}: every channel of {IMAGE_STD.key} must be positive")
    return ImageStage(
        config.name,
        name,
        encoded,
        IMAGE_SIZE.read(config),
        IMAGE_MEAN.read(config),
        std,
        IMAGE_DTYPE.read(config),
        config.max_batch_size > 0,
    )

"""Random ModelInfer requests shaped from a model's metadata, serialized once.

The load generator cycles through a small pool of these so that sending a request costs
the client no protobuf work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from warpserve.protos import grpc_service_pb2 as pb

POOL_SIZE = 16

_NUMPY_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


class BenchError(Exception):
    """The benchmark cannot run: server unreachable, model unknown, bad arguments."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class RequestPool:
    """Pre-serialized ModelInferRequest bytes, cycled by the workers."""

    model: str
    version: str
    batch_size: int
    payloads: list[bytes]


def shape_requests(
    metadata: pb.ModelMetadataResponse,
    batch_size: int,
    rng: np.random.Generator,
    *,
    batched: bool | None = None,
    version: str = "",
) -> bytes:
    """One serialized ModelInferRequest with random inputs shaped from ``metadata``."""
    return shaped_request(
        metadata, batch_size, rng, batched=batched, version=version
    ).SerializeToString()


def shaped_request(
    metadata: pb.ModelMetadataResponse,
    batch_size: int,
    rng: np.random.Generator,
    *,
    batched: bool | None = None,
    version: str = "",
) -> pb.ModelInferRequest:
    """A ModelInferRequest with random inputs shaped from ``metadata``.

    ``batched`` says whether each input's leading dim is the batch dim (the model's
    ``max_batch_size > 0``); ``None`` guesses it from a leading -1 on every input.
    Variable dims other than the batch dim become 1.
    """
    if batched is None:
        batched = all(len(t.shape) > 0 and t.shape[0] == -1 for t in metadata.inputs)
    if not batched and batch_size != 1:
        raise BenchError(
            f"model '{metadata.name}' does not batch (max_batch_size 0); "
            f"use --batch-size 1 instead of {batch_size}",
            exit_code=2,
        )
    request = pb.ModelInferRequest(model_name=metadata.name, model_version=version)
    for tensor in metadata.inputs:
        shape = _concrete_shape(list(tensor.shape), batch_size if batched else None)
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
        request.raw_input_contents.append(_random_raw(tensor.datatype, shape, rng))
    return request


def _concrete_shape(shape: list[int], batch_size: int | None) -> list[int]:
    dims = [1 if d < 0 else d for d in shape]
    if batch_size is not None and dims:
        dims[0] = batch_size
    return dims


def _random_raw(datatype: str, shape: Sequence[int], rng: np.random.Generator) -> bytes:
    count = int(np.prod(shape, dtype=np.int64))
    if datatype == "BYTES":
        # Triton's raw BYTES layout: each element is a 4-byte little-endian length + data.
        items = [rng.integers(97, 123, size=8, dtype=np.uint8).tobytes() for _ in range(count)]
        return b"".join(len(s).to_bytes(4, "little") + s for s in items)
    if datatype == "BF16":
        # numpy has no bfloat16: keep the upper half of float32 bit patterns.
        as_fp32 = rng.standard_normal(count).astype(np.float32)
        return (as_fp32.view(np.uint32) >> 16).astype("<u2").tobytes()
    dtype = _NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise BenchError(
            f"cannot generate data for datatype '{datatype}'; "
            f"expected one of {sorted(_NUMPY_DTYPES)}, BF16 or BYTES"
        )
    return _random_array(np.dtype(dtype), count, rng).tobytes()


def _random_array(dtype: np.dtype, count: int, rng: np.random.Generator) -> np.ndarray:
    if dtype.kind == "f":
        return rng.standard_normal(count).astype(dtype.newbyteorder("<"))
    if dtype.kind == "b":
        return rng.integers(0, 2, size=count).astype(np.bool_)
    if dtype == np.uint8:
        return rng.integers(0, 256, size=count).astype(np.uint8)
    # Small non-negative integers stay valid as ids/indices for embedding-like inputs.
    return rng.integers(0, 4, size=count).astype(dtype.newbyteorder("<"))


def build_pool(
    metadata: pb.ModelMetadataResponse,
    batch_size: int,
    *,
    batched: bool | None = None,
    version: str = "",
    size: int = POOL_SIZE,
    seed: int = 0,
) -> RequestPool:
    requests = build_requests(
        metadata, batch_size, batched=batched, version=version, size=size, seed=seed
    )
    payloads = [request.SerializeToString() for request in requests]
    return RequestPool(metadata.name, version, batch_size, payloads)


def build_requests(
    metadata: pb.ModelMetadataResponse,
    batch_size: int,
    *,
    batched: bool | None = None,
    version: str = "",
    size: int = POOL_SIZE,
    seed: int = 0,
) -> list[pb.ModelInferRequest]:
    rng = np.random.default_rng(seed)
    return [
        shaped_request(metadata, batch_size, rng, batched=batched, version=version)
        for _ in range(size)
    ]

"""Tensor data types across the wire protocol, model configs, numpy and ONNX."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from warpserve.protos import model_config_pb2 as mc


@dataclass(frozen=True)
class DType:
    wire: str  # the KServe v2 datatype string, e.g. "FP32"
    config: int  # model_config DataType enum value
    numpy: np.dtype  # numpy dtype; object for BYTES
    contents_field: str  # InferTensorContents field; "" when only raw data is allowed

    @property
    def itemsize(self) -> int:
        return 0 if self.wire == "BYTES" else self.numpy.itemsize


def _bf16() -> np.dtype:
    try:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    except ImportError:  # served as raw 16-bit words when ml_dtypes is absent
        return np.dtype(np.uint16)


_ALL = [
    DType("BOOL", mc.TYPE_BOOL, np.dtype(np.bool_), "bool_contents"),
    DType("UINT8", mc.TYPE_UINT8, np.dtype(np.uint8), "uint_contents"),
    DType("UINT16", mc.TYPE_UINT16, np.dtype(np.uint16), "uint_contents"),
    DType("UINT32", mc.TYPE_UINT32, np.dtype(np.uint32), "uint_contents"),
    DType("UINT64", mc.TYPE_UINT64, np.dtype(np.uint64), "uint64_contents"),
    DType("INT8", mc.TYPE_INT8, np.dtype(np.int8), "int_contents"),
    DType("INT16", mc.TYPE_INT16, np.dtype(np.int16), "int_contents"),
    DType("INT32", mc.TYPE_INT32, np.dtype(np.int32), "int_contents"),
    DType("INT64", mc.TYPE_INT64, np.dtype(np.int64), "int64_contents"),
    DType("FP16", mc.TYPE_FP16, np.dtype(np.float16), ""),
    DType("FP32", mc.TYPE_FP32, np.dtype(np.float32), "fp32_contents"),
    DType("FP64", mc.TYPE_FP64, np.dtype(np.float64), "fp64_contents"),
    DType("BYTES", mc.TYPE_STRING, np.dtype(np.object_), "bytes_contents"),
    DType("BF16", mc.TYPE_BF16, _bf16(), ""),
]

BY_WIRE = {d.wire: d for d in _ALL}
BY_CONFIG = {d.config: d for d in _ALL}


def from_wire(name: str) -> DType | None:
    return BY_WIRE.get(name)


def from_config(value: int) -> DType:
    return BY_CONFIG[value]


_BY_NUMPY = {d.numpy: d for d in _ALL if d.wire not in ("BYTES", "BF16")}


def from_numpy(dtype: np.dtype) -> DType:
    found = _BY_NUMPY.get(dtype)
    if found is not None:
        return found
    if dtype.kind in ("O", "S", "U"):
        return BY_WIRE["BYTES"]
    if dtype == BY_WIRE["BF16"].numpy:
        return BY_WIRE["BF16"]
    raise TypeError(f"no wire datatype for numpy dtype {dtype}")

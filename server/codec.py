"""Wire tensors <-> numpy.

Raw tensors are viewed with ``np.frombuffer`` (no copy beyond the one protobuf makes
when the field is read); typed ``contents`` are converted; BYTES elements travel as
4-byte little-endian length prefixes followed by the bytes, as in Triton.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server import dtypes
from warpserve.server.errors import InvalidInput

_LEN = struct.Struct("<I")


@dataclass
class InferRequest:
    """A decoded ModelInfer request, independent of the transport."""

    model_name: str
    model_version: str
    id: str
    inputs: dict[str, np.ndarray]
    outputs: list[str] = field(default_factory=list)  # empty: every output
    parameters: dict[str, Any] = field(default_factory=dict)


def parameter_value(param: pb.InferParameter) -> Any:
    kind = param.WhichOneof("parameter_choice")
    return None if kind is None else getattr(param, kind)


def _parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in params.items()}


def _element_count(name: str, shape: Sequence[int]) -> int:
    if shape and min(shape) < 0:
        raise InvalidInput(f"input '{name}' has shape {list(shape)}: dimensions must be >= 0")
    return math.prod(shape)


def deserialize_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    """Parse ``count`` length-prefixed BYTES elements; reject anything malformed."""
    out = np.empty(count, dtype=np.object_)
    view = memoryview(raw)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise InvalidInput(
                f"input '{name}': BYTES data ends after {i} of {count} elements; each "
                "element needs a 4-byte little-endian length prefix"
            )
        (length,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(
                f"input '{name}': BYTES element {i} claims {length} bytes but only "
                f"{len(view) - offset} remain; check the length prefixes"
            )
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidInput(
            f"input '{name}': {len(view) - offset} bytes left after {count} BYTES "
            "elements; the shape and the data disagree"
        )
    return out


def serialize_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _from_raw(name: str, dt: dtypes.DType, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    count = _element_count(name, shape)
    if dt.wire == "BYTES":
        return deserialize_bytes(name, raw, count).reshape(shape)
    expected = count * dt.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input '{name}': raw data has {len(raw)} bytes, but shape {list(shape)} of "
            f"{dt.wire} needs {expected}; send exactly shape x element size bytes"
        )
    return np.ndarray(shape, dt.numpy, raw)  # a read-only view of the request's bytes


def _from_contents(
    name: str, dt: dtypes.DType, shape: tuple[int, ...], contents: pb.InferTensorContents
) -> np.ndarray:
    if not dt.contents_field:
        raise InvalidInput(
            f"input '{name}': {dt.wire} has no typed contents field; send it in raw_input_contents"
        )
    values = getattr(contents, dt.contents_field)
    count = _element_count(name, shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': contents hold {len(values)} elements but shape "
            f"{list(shape)} needs {count}"
        )
    if dt.wire == "BYTES":
        return np.array(list(values), dtype=np.object_).reshape(shape)
    return np.asarray(values, dtype=dt.numpy).reshape(shape)


def _check_contents_unused(name: str, contents: pb.InferTensorContents) -> None:
    if contents.ListFields():
        raise InvalidInput(
            f"input '{name}' sets typed contents while the request also carries "
            "raw_input_contents; use one form for every input"
        )


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    raw = request.raw_input_contents
    tensors = request.inputs
    if raw and len(raw) != len(tensors):
        raise InvalidInput(
            f"request has {len(tensors)} inputs but {len(raw)} "
            "raw_input_contents entries; send one raw entry per input, in order"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(tensors):
        name = tensor.name
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears more than once; send it once")
        dt = dtypes.from_wire(tensor.datatype)
        if dt is None:
            raise InvalidInput(
                f"input '{name}' has unknown datatype '{tensor.datatype}'; expected one "
                f"of {', '.join(dtypes.BY_WIRE)}"
            )
        shape = tuple(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                _check_contents_unused(name, tensor.contents)
            inputs[name] = _from_raw(name, dt, shape, raw[i])
        else:
            inputs[name] = _from_contents(name, dt, shape, tensor.contents)
    return inputs


def decode_request(request: pb.ModelInferRequest) -> InferRequest:
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=decode_inputs(request),
        outputs=[o.name for o in request.outputs] if len(request.outputs) else [],
        parameters=_parameters(request.parameters) if request.parameters else {},
    )


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: Iterable[tuple[str, np.ndarray]],
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request_id
    )
    for name, array in outputs:
        dt = dtypes.from_numpy(array.dtype)
        response.outputs.add(name=name, datatype=dt.wire, shape=array.shape)
        if dt.wire == "BYTES":
            response.raw_output_contents.append(serialize_bytes(array))
        else:
            response.raw_output_contents.append(array.tobytes())  # C order, any layout
    return response

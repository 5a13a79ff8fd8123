"""numpy outputs -> the bytes of a ModelInferResponse, or of a ModelStreamInferResponse
carrying one: what ModelInfer and ModelStreamInfer answer with.

Protobuf serializes everything but the raw output tensors, which follow as
raw_output_contents fields holding the arrays' own memory; BYTES elements travel as
4-byte little-endian length prefixes followed by the bytes, as in Triton.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server import dtypes
from warpserve.server.codec import serialize_bytes
from warpserve.server.shm import OutputTarget

# ModelInferResponse.raw_output_contents: field 6, length-delimited.
RAW_OUTPUT_TAG = bytes([(6 << 3) | 2])
# ModelStreamInferResponse.infer_response: field 2, length-delimited.
_STREAM_REPLY_TAG = bytes([(2 << 3) | 2])
# Outputs from this size are sent from their own memory rather than copied first.
_VIEW_OUTPUT_FROM_BYTES = 4096
_ONE_BYTE_VARINTS = [bytes([value]) for value in range(0x80)]


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: Iterable[tuple[str, np.ndarray]],
    targets: Mapping[str, OutputTarget] | None = None,
    parameters: Mapping[str, bool | int | str] | None = None,
) -> bytes:
    """A serialized ModelInferResponse (what ModelInfer answers with). Outputs named in
    ``targets`` are written into the client's shared memory instead."""
    parts = _response_parts(model_name, model_version, request_id, outputs, targets, parameters)
    return b"".join(parts)


def encode_stream_response(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: Iterable[tuple[str, np.ndarray]],
    targets: Mapping[str, OutputTarget] | None = None,
    parameters: Mapping[str, bool | int | str] | None = None,
) -> bytes:
    """A serialized ModelStreamInferResponse carrying a successful reply."""
    parts = _response_parts(model_name, model_version, request_id, outputs, targets, parameters)
    size = sum(len(part) for part in parts)
    return b"".join([_STREAM_REPLY_TAG, encode_varint(size), *parts])


def _response_parts(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: Iterable[tuple[str, np.ndarray]],
    targets: Mapping[str, OutputTarget] | None,
    parameters: Mapping[str, bool | int | str] | None = None,
) -> list[bytes | memoryview]:
    """The response's bytes in pieces: protobuf serializes everything but the raw output
    tensors, which follow as raw_output_contents fields holding the arrays' own memory.
    (Appending them to the message would copy each one into it and again out of it when
    serialized; here the only copy is the join into the reply.) An output written to
    shared memory keeps an empty raw entry, so entries still line up with outputs."""
    outputs = list(outputs)
    if not targets and not parameters and all(a.dtype != np.object_ for _, a in outputs):
        return _planned_parts(model_name, model_version, request_id, outputs)
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request_id
    )
    if parameters:
        _set_parameters(response, parameters)
    parts: list[bytes | memoryview] = [b""]
    for name, array in outputs:
        dt = dtypes.from_numpy(array.dtype)
        response.outputs.add(name=name, datatype=dt.wire, shape=array.shape)
        data = tensor_bytes(array, dt.wire)
        target = targets.get(name) if targets else None
        if target is not None:
            target.write(data)
            parts += (RAW_OUTPUT_TAG, _ONE_BYTE_VARINTS[0])
            continue
        parts += (RAW_OUTPUT_TAG, encode_varint(len(data)), data)
    parts[0] = response.SerializeToString()
    return parts


# A reply's model name and version, and the descriptions of its outputs, repeat from
# request to request: each is serialized once and kept (up to MAX_REPLY_PLANS of each;
# past that a table starts over, so ever new shapes cost a serialization, never memory).
MAX_REPLY_PLANS = 256
_heads: dict[tuple[str, str], bytes] = {}
_descriptions: dict[tuple[tuple[str, np.dtype[Any], tuple[int, ...]], ...], bytes] = {}


def _planned_parts(
    model_name: str, model_version: str, request_id: str, outputs: list[tuple[str, np.ndarray]]
) -> list[bytes | memoryview]:
    """``_response_parts`` for outputs with no targets, parameters or BYTES tensors, from
    the tables: fields in number order, as protobuf writes them."""
    head = _heads.get((model_name, model_version))
    if head is None:
        if len(_heads) >= MAX_REPLY_PLANS:
            _heads.clear()
        head = _heads[model_name, model_version] = pb.ModelInferResponse(
            model_name=model_name, model_version=model_version
        ).SerializeToString()
    key = tuple((name, array.dtype, array.shape) for name, array in outputs)
    described = _descriptions.get(key)
    if described is None:
        described = _describe(key)
    parts: list[bytes | memoryview] = [head]
    if request_id:
        parts.append(pb.ModelInferResponse(id=request_id).SerializeToString())
    parts.append(described)
    for _, array in outputs:
        data = c_order_bytes(array)
        parts += (RAW_OUTPUT_TAG, encode_varint(len(data)), data)
    return parts


def _describe(key: tuple[tuple[str, np.dtype[Any], tuple[int, ...]], ...]) -> bytes:
    response = pb.ModelInferResponse()
    for name, dtype, shape in key:
        response.outputs.add(name=name, datatype=dtypes.from_numpy(dtype).wire, shape=shape)
    if len(_descriptions) >= MAX_REPLY_PLANS:
        _descriptions.clear()
    described = _descriptions[key] = response.SerializeToString()
    return described


def _set_parameters(
    response: pb.ModelInferResponse, parameters: Mapping[str, bool | int | str]
) -> None:
    for key, value in parameters.items():
        slot = response.parameters[key]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, int):
            slot.int64_param = value
        else:
            slot.string_param = value


def tensor_bytes(array: np.ndarray, wire: str) -> bytes | memoryview:
    """An output's bytes as the wire carries them: length-prefixed elements for BYTES,
    the elements in C order otherwise."""
    return serialize_bytes(array) if wire == "BYTES" else c_order_bytes(array)


def c_order_bytes(array: np.ndarray) -> bytes | memoryview:
    """The array's elements in C order: a flat byte view of a large C-contiguous array,
    a copy otherwise (for a small array, one call costs less than making the view)."""
    if array.nbytes < _VIEW_OUTPUT_FROM_BYTES:
        return array.tobytes()
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


def encode_varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)

"""Wire tensors -> numpy: a ModelInferRequest decoded (replies are encoded in ``replies``).

Raw tensors are numpy views of the bytes gRPC received: ``receive_infer`` finds the
``raw_input_contents`` entries of a large request in its wire bytes and parses only the
rest with protobuf, whose C parser would otherwise copy each tensor twice (into its arena,
then into a new bytes object when the field is read). Typed ``contents`` are converted;
BYTES elements travel as 4-byte little-endian length prefixes followed by the bytes, as
in Triton.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from google.protobuf.message import DecodeError

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server import classification, dtypes
from warpserve.server.errors import InvalidInput, PermissionDenied, WarpserveError
from warpserve.server.shm import DISABLED_MESSAGE, OutputTarget, SharedMemoryRegions

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
    # Requested outputs the client wants written into its shared memory.
    output_targets: dict[str, OutputTarget] = field(default_factory=dict)
    # Requested outputs to answer as their top classes (the classification extension).
    classes: dict[str, int] = field(default_factory=dict)
    # Some inputs are views of client shared memory, which the client may reuse as soon
    # as it has its answer: anything that reads them later must copy them first.
    shared_inputs: bool = False
    # Set by the data plane when the answer needs parameters (a fallback answered).
    response_parameters: dict[str, bool | int | str] | None = None
    # The plan its wire head was decoded from (``wireplans``), shared by every request
    # with that head; None for a request decoded the full way.
    plan: Any = None


# ModelInferRequest.raw_input_contents: field 7, wire type 2 (length-delimited).
_RAW_INPUT_TAG = (7 << 3) | 2
# Below this size protobuf's two copies of the raw tensors cost less than finding them
# in the wire bytes with Python.
VIEW_RAW_FROM_BYTES = 16 * 1024
# A request has a handful of top-level fields (one per tensor or parameter); past this
# many the scan stops and protobuf's C parser takes the message, so that no request can
# keep the event loop in a Python loop for long.
MAX_SCANNED_FIELDS = 1024


class ReceivedInfer(NamedTuple):
    """A ModelInferRequest as received. For a large request ``raw`` holds its
    raw_input_contents as views of the received bytes and ``message`` holds the rest;
    otherwise ``raw`` is None and the message is whole. ``error`` is set instead when
    the bytes are not a ModelInferRequest, or too many of them to parse."""

    message: pb.ModelInferRequest
    raw: Sequence[memoryview | bytes] | None = None
    error: WarpserveError | None = None
    plan: Any = None  # a ``wireplans`` plan that decodes it (then raw holds its tensors)
    head: bytes | None = None  # its wire head, for ``wireplans`` to make a plan of


def receive_infer(data: bytes) -> ReceivedInfer:
    """gRPC's request deserializer for ModelInfer and ModelStreamInfer.

    It never raises: a deserializer that raises makes gRPC answer INTERNAL with no
    detail, while a malformed request is the client's error (INVALID_ARGUMENT).
    """
    try:
        if len(data) >= VIEW_RAW_FROM_BYTES:
            split = _split_raw_inputs(data)
            if split is not None:
                head, raw = split
                return ReceivedInfer(pb.ModelInferRequest.FromString(head), raw)
        return ReceivedInfer(pb.ModelInferRequest.FromString(data))
    except DecodeError as exc:
        return ReceivedInfer(
            pb.ModelInferRequest(),
            error=InvalidInput(
                f"the request is not a valid ModelInferRequest message ({exc}); "
                "serialize it with the inference.GRPCInferenceService protobuf definitions"
            ),
        )


def _split_raw_inputs(data: bytes) -> tuple[bytes, list[memoryview]] | None:
    """The message's bytes without its raw_input_contents fields, and those fields'
    payloads as views of ``data``, in order. None when the top level holds anything but
    well-formed varint, fixed-width and length-delimited fields; protobuf then parses the
    whole message (and reports what is wrong with it)."""
    view = memoryview(data)
    rest: list[memoryview] = []
    raw: list[memoryview] = []
    kept_from = pos = 0
    end = len(data)
    try:
        for _ in range(MAX_SCANNED_FIELDS):
            if pos >= end:
                break
            field_start = pos
            tag, pos = read_varint(data, pos)
            wire_type = tag & 7
            if wire_type == 2:
                length, pos = read_varint(data, pos)
                if pos + length > end:
                    return None
                if tag == _RAW_INPUT_TAG:
                    rest.append(view[kept_from:field_start])
                    raw.append(view[pos : pos + length])
                    kept_from = pos + length
                pos += length
            elif wire_type == 0:
                _, pos = read_varint(data, pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            else:
                return None  # groups; protobuf decides
        else:
            return None  # more fields than a request has: protobuf parses it
    except IndexError:
        return None  # a varint runs past the end
    if pos != end:
        return None
    rest.append(view[kept_from:])
    return b"".join(rest), raw


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise IndexError("varint longer than 10 bytes")


def parameter_value(param: pb.InferParameter) -> Any:
    kind = param.WhichOneof("parameter_choice")
    return None if kind is None else getattr(param, kind)


def _parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in params.items()}


def element_count(name: str, shape: Sequence[int]) -> int:
    if shape and min(shape) < 0:
        raise InvalidInput(f"input '{name}' has shape {list(shape)}: dimensions must be >= 0")
    return math.prod(shape)


def deserialize_bytes(name: str, raw: bytes | memoryview, count: int) -> np.ndarray:
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


def from_raw(
    name: str, dt: dtypes.DType, shape: tuple[int, ...], raw: bytes | memoryview
) -> np.ndarray:
    count = element_count(name, shape)
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
    count = element_count(name, shape)
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


# Tensor parameters of the shared-memory extension.
SHM_REGION = "shared_memory_region"
SHM_OFFSET = "shared_memory_offset"
SHM_BYTE_SIZE = "shared_memory_byte_size"


def _shm_location(
    tensor: str, params: Mapping[str, pb.InferParameter]
) -> tuple[str, int, int] | None:
    """(region, offset, byte_size) when the tensor's parameters place it in shared
    memory, None when they do not."""
    if SHM_REGION not in params:
        if SHM_BYTE_SIZE in params or SHM_OFFSET in params:
            raise InvalidInput(
                f"tensor '{tensor}' sets a shared memory offset or byte size but no "
                f"'{SHM_REGION}'; name the region too"
            )
        return None
    region = params[SHM_REGION]
    if region.WhichOneof("parameter_choice") != "string_param" or not region.string_param:
        raise InvalidInput(f"tensor '{tensor}': '{SHM_REGION}' must be a region name string")
    if SHM_BYTE_SIZE not in params:
        raise InvalidInput(
            f"tensor '{tensor}' names shared memory region '{region.string_param}' but no "
            f"'{SHM_BYTE_SIZE}'; give both"
        )
    offset = _shm_int(tensor, params[SHM_OFFSET], SHM_OFFSET) if SHM_OFFSET in params else 0
    return region.string_param, offset, _shm_int(tensor, params[SHM_BYTE_SIZE], SHM_BYTE_SIZE)


def _shm_int(tensor: str, param: pb.InferParameter, key: str) -> int:
    value = parameter_value(param)
    if param.WhichOneof("parameter_choice") not in ("int64_param", "uint64_param") or value < 0:
        raise InvalidInput(f"tensor '{tensor}': '{key}' must be an integer >= 0")
    return int(value)


def _regions(shm: SharedMemoryRegions | None) -> SharedMemoryRegions:
    if shm is None:
        raise PermissionDenied(DISABLED_MESSAGE)
    return shm


def decode_inputs(
    request: pb.ModelInferRequest,
    raw: Sequence[Any] | None = None,
    shm: SharedMemoryRegions | None = None,
) -> dict[str, np.ndarray]:
    """The request's input tensors; ``raw`` stands for its raw_input_contents when given.
    Inputs placed in shared memory are views of ``shm``'s regions; raw entries belong,
    in order, to the other inputs (as in Triton)."""
    return _decode_inputs(request, raw, shm)[0]


def _decode_inputs(
    request: pb.ModelInferRequest,
    raw: Sequence[Any] | None,
    shm: SharedMemoryRegions | None,
) -> tuple[dict[str, np.ndarray], bool]:
    """The inputs, and whether any of them is a view of client shared memory."""
    if raw is None:
        raw = request.raw_input_contents
    tensors = request.inputs
    inputs: dict[str, np.ndarray] = {}
    next_raw = 0
    shared = False
    for tensor in tensors:
        name = tensor.name
        params = tensor.parameters
        location = _shm_location(name, params) if params else None
        if raw and location is None and next_raw == len(raw):
            raise _raw_count_error(tensors, len(raw))
        if name in inputs:
            raise duplicate_input(name)
        dt = input_dtype(name, tensor.datatype)
        shape = tuple(tensor.shape)
        if location is not None:
            if tensor.HasField("contents") and tensor.contents.ListFields():
                raise InvalidInput(
                    f"input '{name}' is in shared memory and also sets typed contents; "
                    "use one or the other"
                )
            region, offset, byte_size = location
            data = _regions(shm).region(name, region).read(name, offset, byte_size)
            inputs[name] = from_raw(name, dt, shape, data)
            shared = True
        elif raw:
            if tensor.HasField("contents"):
                _check_contents_unused(name, tensor.contents)
            inputs[name] = from_raw(name, dt, shape, raw[next_raw])
            next_raw += 1
        else:
            inputs[name] = _from_contents(name, dt, shape, tensor.contents)
    if raw and next_raw != len(raw):
        raise _raw_count_error(tensors, len(raw))
    return inputs, shared


def duplicate_input(name: str) -> InvalidInput:
    return InvalidInput(f"input '{name}' appears more than once; send it once")


def input_dtype(name: str, datatype: str) -> dtypes.DType:
    dt = dtypes.from_wire(datatype)
    if dt is None:
        raise InvalidInput(
            f"input '{name}' has unknown datatype '{datatype}'; expected one "
            f"of {', '.join(dtypes.BY_WIRE)}"
        )
    return dt


def _raw_count_error(
    tensors: Sequence[pb.ModelInferRequest.InferInputTensor], raw: int
) -> InvalidInput:
    in_request = sum(SHM_REGION not in tensor.parameters for tensor in tensors)
    which = "inputs" if in_request == len(tensors) else "inputs outside shared memory"
    return InvalidInput(
        f"request has {in_request} {which} but {raw} raw_input_contents entries; "
        "send one raw entry per input, in order (none for inputs in shared memory)"
    )


def _output_options(
    request: pb.ModelInferRequest, shm: SharedMemoryRegions | None
) -> tuple[dict[str, OutputTarget], dict[str, int]]:
    """Requested outputs to write into shared memory, and those to answer as classes."""
    targets: dict[str, OutputTarget] = {}
    classes: dict[str, int] = {}
    for output in request.outputs:
        params = output.parameters
        if not params:
            continue
        name = output.name
        location = _shm_location(name, params)
        count = classification.requested_count(name, params)
        if count and location is not None:
            raise InvalidInput(
                f"output '{name}' can't set both '{SHM_REGION}' and "
                f"'{classification.PARAMETER}'; classes come back in the response"
            )
        if count:
            classes[name] = count
        elif location is not None:
            region, offset, byte_size = location
            targets[name] = _regions(shm).region(name, region).target(name, offset, byte_size)
    return targets, classes


def decode_request(received: ReceivedInfer, shm: SharedMemoryRegions | None = None) -> InferRequest:
    if received.error is not None:
        raise received.error
    request = received.message
    outputs: list[str] = []
    targets: dict[str, OutputTarget] = {}
    classes: dict[str, int] = {}
    if len(request.outputs):
        outputs = [o.name for o in request.outputs]
        targets, classes = _output_options(request, shm)
    inputs, shared = _decode_inputs(request, received.raw, shm)
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=inputs,
        outputs=outputs,
        parameters=_parameters(request.parameters) if request.parameters else {},
        output_targets=targets,
        classes=classes,
        shared_inputs=shared,
    )

"""KServe v2 REST inference requests -> the transport-independent InferRequest.

A request is JSON, optionally followed by binary tensor data (Triton's binary tensor
extension): the ``Inference-Header-Content-Length`` header gives the JSON's size, and
each input whose parameters carry ``binary_data_size`` takes that many bytes of what
follows, in order.

The JSON is checked, then decoded straight into the request the gRPC path produces: an
input array is a view of the body's binary part (or an array of its JSON data), made by
the codec's own ``from_raw``. A request whose tensors carry parameters (shared memory,
classification, anything the codec reads from a tensor's parameters) is built into the
protobuf request the gRPC path decodes instead, so those rules stay the codec's alone.
Building that message once refused integers outside int64 and text that is not UTF-8;
the checks raise the same errors at the same points, so every refusal reads as it did.

A load generator or a client library sends the same JSON request after request, with
only the binary tensors changing. So a request whose inputs are all binary, fixed-size
tensors and which has no id and no tensor parameters leaves a plan keyed by its model,
version and JSON bytes: the next body with that JSON is decoded by slicing its binary
part, without parsing (a binary part of another size takes the full path, which words
the error). Like ``wireplans``' plans, it remembers the validator that accepted its
inputs (see the data plane).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server import codec, dtypes
from warpserve.server.codec import InferRequest
from warpserve.server.errors import InvalidInput
from warpserve.server.http.tensors import (
    BINARY_ALL,
    BINARY_OUTPUT,
    BINARY_SIZE,
    HEADER_LENGTH,
    OutputFormat,
    parse_json,
)
from warpserve.server.shm import SharedMemoryRegions

# JSON values a numeric tensor of each kind takes (numpy's dtype kinds).
_JSON_KINDS = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}
_INT64_MIN, _INT64_END = -(1 << 63), 1 << 63
# Distinct request heads kept; past this many the table starts over.
MAX_PLANS = 256


@dataclass(eq=False)
class JsonPlan:
    """How a repeated JSON head decodes: each input's offset in the binary part, dtype
    and shape. ``checked_by``/``rows`` as in ``wireplans.RequestPlan``."""

    model: str
    version: str
    inputs: tuple[tuple[str, np.dtype[Any], tuple[int, ...], int], ...]  # name, dtype, shape, at
    binary_size: int
    outputs: tuple[str, ...]
    parameters: dict[str, Any]
    fmt: OutputFormat
    checked_by: object | None = None
    rows: int = 0


_plans: dict[tuple[str, str, bytes], JsonPlan] = {}


@dataclass
class _Tensor:
    """An input or requested output as the JSON gave it, checked; ``params`` without
    the binary extension's own."""

    name: str
    params: dict[str, Any]
    datatype: str = ""
    shape: list[int] = field(default_factory=list)
    data: bytes | memoryview | None = None  # an input's; None: in shared memory
    binary: bool = False  # its data is in the binary part


@dataclass
class _Checked:
    model: str
    version: str
    id: str
    params: dict[str, Any]
    inputs: list[_Tensor]
    outputs: list[_Tensor]
    fmt: OutputFormat


def decode_infer(
    body: bytes,
    json_size: int | None,
    model: str,
    version: str,
    shm: SharedMemoryRegions | None,
) -> tuple[InferRequest, OutputFormat]:
    end = len(body) if json_size is None else json_size
    key = None
    if json_size is not None:  # only a binary part makes a plan
        key = (model, version, body[:end])
        plan = _plans.get(key)
        if plan is not None and len(body) - end == plan.binary_size:
            return _planned(plan, body, end), plan.fmt
    view = memoryview(body)
    document = parse_json(view[:end], "inference request")
    request = _check(document, model, version, view[end:])
    if any(t.params for t in request.inputs) or any(t.params for t in request.outputs):
        raw = [t.data for t in request.inputs if t.data is not None]
        return codec.decode_request(codec.ReceivedInfer(_message(request), raw), shm), request.fmt
    decoded = _direct(request)
    if key is not None and not request.id:
        _remember(key, request, decoded)
    return decoded, request.fmt


def _planned(plan: JsonPlan, body: bytes, start: int) -> InferRequest:
    inputs = {
        name: np.ndarray(shape, dtype, body, start + at) for name, dtype, shape, at in plan.inputs
    }
    return InferRequest(
        model_name=plan.model,
        model_version=plan.version,
        id="",
        inputs=inputs,
        outputs=list(plan.outputs),
        parameters=dict(plan.parameters),
        plan=plan,
    )


def _remember(key: tuple[str, str, bytes], request: _Checked, decoded: InferRequest) -> None:
    """Plan a request whose inputs are all fixed-size binary tensors (BYTES tensors
    change size, and with it the JSON, from request to request)."""
    inputs = []
    at = 0
    for tensor in request.inputs:
        array = decoded.inputs[tensor.name]
        if not tensor.binary or array.dtype == np.object_:
            return  # JSON data, or BYTES
        inputs.append((tensor.name, array.dtype, array.shape, at))
        at += array.nbytes
    if len(_plans) >= MAX_PLANS:
        _plans.clear()
    plan = JsonPlan(
        request.model,
        request.version,
        tuple(inputs),
        at,
        tuple(decoded.outputs),
        dict(request.params),
        request.fmt,
    )
    _plans[key] = decoded.plan = plan


def _direct(request: _Checked) -> InferRequest:
    """What ``codec.decode_request`` makes of a request whose tensors have no
    parameters: every input's data is in the body, no output is special."""
    inputs: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        name = tensor.name
        if name in inputs:
            raise codec.duplicate_input(name)
        dt = codec.input_dtype(name, tensor.datatype)
        assert tensor.data is not None  # only a shared-memory input has none, and params
        inputs[name] = codec.from_raw(name, dt, tuple(tensor.shape), tensor.data)
    return InferRequest(
        model_name=request.model,
        model_version=request.version,
        id=request.id,
        inputs=inputs,
        outputs=[t.name for t in request.outputs],
        parameters=request.params,
    )


def _check(document: Any, model: str, version: str, binary: memoryview) -> _Checked:
    if not isinstance(document, dict):
        raise InvalidInput("the inference request must be a JSON object with 'inputs'")
    _text(model)
    _text(version)
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {request_id!r}")
    _text(request_id)
    params = _object(document.get("parameters", {}), "the request's 'parameters'")
    binary_default = params.pop(BINARY_ALL, False)
    if not isinstance(binary_default, bool):
        raise InvalidInput(f"'{BINARY_ALL}' must be true or false, got {binary_default!r}")
    _check_parameters(params, "request")
    inputs = _inputs(document.get("inputs"), binary)
    outputs, binary_outputs = _outputs(document.get("outputs", []))
    fmt = OutputFormat(binary_default, binary_outputs)
    return _Checked(model, version, request_id, params, inputs, outputs, fmt)


def _text(value: str) -> None:
    """Refuse text protobuf cannot carry (a lone surrogate from a JSON escape), with
    its error."""
    if not value.isascii():
        value.encode()


def _int64(value: int) -> None:
    if not _INT64_MIN <= value < _INT64_END:
        raise ValueError(f"Value out of range: {value}")  # protobuf's words


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {value!r}")
    return dict(value)


def _check_parameters(params: dict[str, Any], owner: str) -> None:
    for key, value in params.items():
        _text(key)
        if isinstance(value, (bool, float)):
            continue
        if isinstance(value, int):
            _int64(value)
        elif isinstance(value, str):
            _text(value)
        else:
            raise InvalidInput(
                f"{owner} parameter '{key}' must be a boolean, number or string, got {value!r}"
            )


def _inputs(inputs: Any, binary: memoryview) -> list[_Tensor]:
    """The input tensors with their data (views of the body's binary part, or the JSON
    data as bytes), in order; no data for those in shared memory."""
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("the inference request needs 'inputs': a list of tensors")
    tensors: list[_Tensor] = []
    offset = 0
    for entry in inputs:
        entry = _object(entry, "each input")
        name, datatype, shape = _tensor_header(entry)
        params = _object(entry.get("parameters", {}), f"input '{name}' parameters")
        size = params.pop(BINARY_SIZE, None)
        _text(name)
        _text(datatype)
        for dim in shape:
            _int64(dim)
        _check_parameters(params, f"input '{name}'")
        tensor = _Tensor(name, params, datatype, shape)
        tensors.append(tensor)
        if codec.SHM_REGION in params:
            continue  # the codec reads it from the region
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidInput(f"input '{name}': '{BINARY_SIZE}' must be an integer >= 0")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input '{name}' claims {size} bytes of binary data from byte {offset}, "
                    f"but the body holds {len(binary)} after the JSON; check "
                    f"'{BINARY_SIZE}' and {HEADER_LENGTH}"
                )
            tensor.data, tensor.binary = binary[offset : offset + size], True
            offset += size
        elif "data" in entry:
            tensor.data = _json_data(name, datatype, shape, entry["data"])
        else:
            raise InvalidInput(
                f"input '{name}' has no 'data', no '{BINARY_SIZE}' parameter and no shared "
                "memory region; send its values one of these ways"
            )
    if offset != len(binary):
        raise InvalidInput(
            f"the body holds {len(binary)} bytes after the JSON but the inputs' "
            f"'{BINARY_SIZE}' parameters add up to {offset}; check {HEADER_LENGTH}"
        )
    return tensors


def _tensor_header(entry: dict[str, Any]) -> tuple[str, str, list[int]]:
    name, datatype, shape = entry.get("name"), entry.get("datatype"), entry.get("shape")
    if not isinstance(name, str) or not name:
        raise InvalidInput("every input needs a 'name' string")
    if not isinstance(datatype, str):
        raise InvalidInput(f"input '{name}' needs a 'datatype' string such as \"FP32\"")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InvalidInput(f"input '{name}' needs a 'shape': a list of integers")
    return name, datatype, shape


def _json_data(name: str, datatype: str, shape: list[int], data: Any) -> bytes | memoryview:
    """JSON tensor values as the bytes the codec takes (row-major; nested or flat)."""
    dt = dtypes.from_wire(datatype)
    if dt is None:
        return b""  # the codec names the unknown datatype
    count = math.prod(shape) if min(shape, default=0) >= 0 else -1
    if dt.wire == "BYTES":
        items: Any = np.array(data, dtype=np.object_).reshape(-1) if data != [] else []
        if not all(isinstance(item, str) for item in items):
            raise InvalidInput(f"input '{name}': BYTES data in JSON must be strings")
        _check_count(name, len(items), count, shape)
        return codec.serialize_bytes(np.array([s.encode() for s in items], dtype=np.object_))
    kinds = _JSON_KINDS.get(dt.numpy.kind)
    if kinds is None:
        raise InvalidInput(
            f"input '{name}': {dt.wire} cannot be sent as JSON; send it as binary data "
            f"('{BINARY_SIZE}')"
        )
    try:
        values = np.asarray(data)
    except ValueError as exc:  # ragged nesting
        raise InvalidInput(f"input '{name}': its 'data' is not a regular array: {exc}") from None
    if values.size and values.dtype.kind not in kinds:
        raise InvalidInput(
            f"input '{name}': its 'data' holds {values.dtype.kind!r}-kind values "
            f"({values.reshape(-1)[0]!r}), which {dt.wire} does not take"
        )
    _check_count(name, values.size, count, shape)
    return np.ascontiguousarray(values, dtype=dt.numpy).reshape(-1).view(np.uint8).data


def _check_count(name: str, size: int, count: int, shape: list[int]) -> None:
    if count >= 0 and size != count:
        raise InvalidInput(
            f"input '{name}': 'data' holds {size} elements but shape {shape} needs {count}"
        )


def _outputs(outputs: Any) -> tuple[list[_Tensor], dict[str, bool]]:
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list of {\"name\": ...} objects")
    tensors: list[_Tensor] = []
    binary: dict[str, bool] = {}
    for entry in outputs:
        entry = _object(entry, "each requested output")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput("every requested output needs a 'name' string")
        params = _object(entry.get("parameters", {}), f"output '{name}' parameters")
        wants = params.pop(BINARY_OUTPUT, None)
        if wants is not None:
            if not isinstance(wants, bool):
                raise InvalidInput(f"output '{name}': '{BINARY_OUTPUT}' must be true or false")
            binary[name] = wants
        _text(name)
        _check_parameters(params, f"output '{name}'")
        tensors.append(_Tensor(name, params))
    return tensors, binary


def _message(request: _Checked) -> pb.ModelInferRequest:
    """The checked request as the protobuf message the codec decodes."""
    message = pb.ModelInferRequest(
        model_name=request.model, model_version=request.version, id=request.id
    )
    _set_parameters(message.parameters, request.params)
    for tensor in request.inputs:
        added = message.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        _set_parameters(added.parameters, tensor.params)
    for tensor in request.outputs:
        _set_parameters(message.outputs.add(name=tensor.name).parameters, tensor.params)
    return message


def _set_parameters(target: Mapping[str, pb.InferParameter], params: dict[str, Any]) -> None:
    for key, value in params.items():
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = value

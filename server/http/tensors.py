"""KServe v2 REST inference bodies <-> the transport-independent InferRequest.

A request is JSON, optionally followed by binary tensor data (Triton's binary tensor
extension): the ``Inference-Header-Content-Length`` header gives the JSON's size, and
each input whose parameters carry ``binary_data_size`` takes that many bytes of what
follows, in order. The JSON becomes the same protobuf request the gRPC path decodes (the
tensors stay views of the body), so shared memory, classification and every check on
tensors are the codec's, not a second copy of them.

An answer carries an output as JSON ``data`` or, when the request asks for it
(``binary_data`` on the output, ``binary_data_output`` on the request), as binary data
after the JSON, with ``binary_data_size`` in the output's parameters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server import codec, dtypes
from warpserve.server.batching.request import Outputs
from warpserve.server.codec import InferRequest
from warpserve.server.errors import InvalidInput
from warpserve.server.shm import SharedMemoryRegions

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"
BINARY_OUTPUT = "binary_data"
BINARY_ALL = "binary_data_output"

# JSON values a numeric tensor of each kind takes (numpy's dtype kinds).
_JSON_KINDS = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}


@dataclass(frozen=True)
class OutputFormat:
    """Which outputs go back as binary data."""

    binary_default: bool
    binary: Mapping[str, bool]

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.binary_default)


def header_length(value: str | None, body_size: int) -> int | None:
    """The JSON part's size from the header (None: the whole body is JSON)."""
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        length = -1
    if not 0 <= length <= body_size:
        raise InvalidInput(
            f"{HEADER_LENGTH} is {value!r}, but it must be the size in bytes of the JSON "
            f"at the start of the body, between 0 and the body's {body_size} bytes"
        )
    return length


def parse_json(data: bytes | memoryview, what: str) -> Any:
    try:
        return json.loads(bytes(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"the {what} is not valid JSON: {exc}") from None


def decode_infer(
    body: bytes,
    json_size: int | None,
    model: str,
    version: str,
    shm: SharedMemoryRegions | None,
) -> tuple[InferRequest, OutputFormat]:
    view = memoryview(body)
    end = len(body) if json_size is None else json_size
    document = parse_json(view[:end], "inference request")
    if not isinstance(document, dict):
        raise InvalidInput("the inference request must be a JSON object with 'inputs'")
    message = pb.ModelInferRequest(model_name=model, model_version=version)
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {request_id!r}")
    message.id = request_id
    params = _object(document.get("parameters", {}), "the request's 'parameters'")
    binary_default = params.pop(BINARY_ALL, False)
    if not isinstance(binary_default, bool):
        raise InvalidInput(f"'{BINARY_ALL}' must be true or false, got {binary_default!r}")
    _set_parameters(message.parameters, params, "request")
    raw = _inputs(message, document.get("inputs"), view[end:])
    binary = _outputs(message, document.get("outputs", []))
    decoded = codec.decode_request(codec.ReceivedInfer(message, raw), shm)
    return decoded, OutputFormat(binary_default, binary)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {value!r}")
    return dict(value)


def _set_parameters(
    target: Mapping[str, pb.InferParameter], params: dict[str, Any], owner: str
) -> None:
    for key, value in params.items():
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        elif isinstance(value, str):
            param.string_param = value
        else:
            raise InvalidInput(
                f"{owner} parameter '{key}' must be a boolean, number or string, got {value!r}"
            )


def _inputs(message: pb.ModelInferRequest, inputs: Any, binary: memoryview) -> list[Any]:
    """Fill the message's input tensors; return the data of those not in shared memory
    (views of the body's binary part, or the JSON data as arrays), in order."""
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("the inference request needs 'inputs': a list of tensors")
    raw: list[Any] = []
    offset = 0
    for entry in inputs:
        entry = _object(entry, "each input")
        name, datatype, shape = _tensor_header(entry)
        params = _object(entry.get("parameters", {}), f"input '{name}' parameters")
        size = params.pop(BINARY_SIZE, None)
        tensor = message.inputs.add(name=name, datatype=datatype, shape=shape)
        _set_parameters(tensor.parameters, params, f"input '{name}'")
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
            raw.append(binary[offset : offset + size])
            offset += size
        elif "data" in entry:
            raw.append(_json_data(name, datatype, shape, entry["data"]))
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
    return raw


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


def _outputs(message: pb.ModelInferRequest, outputs: Any) -> dict[str, bool]:
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list of {\"name\": ...} objects")
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
        tensor = message.outputs.add(name=name)
        _set_parameters(tensor.parameters, params, f"output '{name}'")
    return binary


def encode_infer(
    model: str, version: str, request: InferRequest, outputs: Outputs, fmt: OutputFormat
) -> tuple[list[bytes | memoryview], int | None]:
    """The answer's body in pieces, and the JSON's size when binary data follows it."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes | memoryview] = []
    targets = request.output_targets
    for name, array in outputs.items():
        dt = dtypes.from_numpy(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": dt.wire, "shape": list(array.shape)}
        target = targets.get(name) if targets else None
        if target is not None:
            # Only the shape and type come back, with no parameters, as from Triton: its
            # C++ client (perf_analyzer) reads any output parameters as binary data.
            target.write(codec.tensor_bytes(array, dt.wire))
        elif fmt.is_binary(name) or dt.wire == "BF16":
            data = codec.tensor_bytes(array, dt.wire)
            entry["parameters"] = {
                BINARY_SIZE: len(data) if isinstance(data, bytes) else data.nbytes
            }
            blobs.append(data)
        else:
            entry["data"] = _json_values(name, array, dt.wire)
        entries.append(entry)
    reply: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": entries}
    if request.id:
        reply["id"] = request.id
    if request.response_parameters:  # a fallback's answer says so, as over gRPC
        reply["parameters"] = dict(request.response_parameters)
    head = json.dumps(reply, separators=(",", ":")).encode()
    return [head, *blobs], len(head) if blobs else None


def _size(data: bytes | memoryview) -> int:
    return len(data) if isinstance(data, bytes) else data.nbytes


def _json_values(name: str, array: np.ndarray, wire: str) -> list[Any]:
    flat = array.reshape(-1)
    if wire != "BYTES":
        return flat.tolist()
    try:
        return [item.decode() if isinstance(item, bytes) else str(item) for item in flat]
    except UnicodeDecodeError:
        raise InvalidInput(
            f"output '{name}' holds bytes that are not UTF-8 text, which JSON cannot carry; "
            f"request it with '{BINARY_OUTPUT}': true"
        ) from None

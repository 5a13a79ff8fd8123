"""KServe v2 REST inference bodies: the binary tensor extension's names, the JSON part's
size, and answers (requests are decoded in ``decoding``).

An answer carries an output as JSON ``data`` or, when the request asks for it
(``binary_data`` on the output, ``binary_data_output`` on the request), as binary data
after the JSON, with ``binary_data_size`` in the output's parameters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from warpserve.server import dtypes, replies
from warpserve.server.batching.request import Outputs
from warpserve.server.codec import InferRequest
from warpserve.server.errors import InvalidInput

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"
BINARY_OUTPUT = "binary_data"
BINARY_ALL = "binary_data_output"


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
            target.write(replies.tensor_bytes(array, dt.wire))
        elif fmt.is_binary(name) or dt.wire == "BF16":
            data = replies.tensor_bytes(array, dt.wire)
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

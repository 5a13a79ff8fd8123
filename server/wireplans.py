"""Request heads that repeat from request to request, parsed once.

A client sends the same request shape over and over: the model name, the input names,
datatypes and shapes, the requested outputs and parameters are byte for byte the same,
and only the raw tensors differ. Parsing those fields with protobuf and turning them
into numpy arrays costs more per request than a tiny model's run, so a small request
whose raw_input_contents come last is split into that head and its raw tensors, and
the head is looked up in a table of plans made from the first request that carried it:
the decoded fields, how each raw tensor becomes an array, and the validator that last
accepted the shapes. (Answers repeat too: the codec serializes their model name and
version and output descriptions once per output shape.)

Only heads with no request id (an id makes every head unique), no shared-memory
tensors (regions come and go) and no typed contents get a plan; anything else, or a
raw tensor whose size does not match its plan, takes the codec's full path, which also
words the errors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server import codec, dtypes
from warpserve.server.shm import SharedMemoryRegions

# Top-level fields of a ModelInferRequest: 1 model_name ... 7 raw_input_contents, all
# length-delimited, so a head is a run of one-byte tags each followed by a length.
_ID_TAG = (3 << 3) | 2
_RAW_TAG = (7 << 3) | 2
_MAX_HEAD_FIELDS = 64
# Distinct heads kept; past this many the table starts over (a client sending ever
# new shapes costs one extra parse per request, never unbounded memory).
MAX_PLANS = 256


@dataclass(frozen=True)
class RawInput:
    name: str
    dtype: dtypes.DType
    shape: tuple[int, ...]
    nbytes: int  # -1: BYTES, parsed per request


@dataclass(eq=False)
class RequestPlan:
    """A head's decoded fields. ``checked_by``/``rows``: the validator that accepted
    these inputs and outputs last, and the batch rows it found (see the data plane)."""

    message: pb.ModelInferRequest  # the head alone, for error messages
    model_name: str
    model_version: str
    inputs: tuple[RawInput, ...]
    outputs: tuple[str, ...]
    parameters: dict[str, Any]
    classes: dict[str, int]
    checked_by: object | None = field(default=None)
    rows: int = 0


_plans: dict[bytes, RequestPlan] = {}


def receive(data: bytes) -> codec.ReceivedInfer:
    """gRPC's request deserializer: a planned request where its head has a plan,
    else ``codec.receive_infer`` (noting the head for ``decode_request`` to plan)."""
    if len(data) >= codec.VIEW_RAW_FROM_BYTES:
        return codec.receive_infer(data)
    split = _raw_tail(data)
    if split is None:
        return codec.receive_infer(data)
    head_end, spans = split
    head = data[:head_end]
    plan = _plans.get(head)
    if plan is None or len(spans) != len(plan.inputs):
        return codec.receive_infer(data)._replace(head=head)
    raw = [data[start:end] for start, end in spans]
    return codec.ReceivedInfer(plan.message, raw, plan=plan)


def decode_request(
    received: codec.ReceivedInfer, shm: SharedMemoryRegions | None = None
) -> codec.InferRequest:
    plan = received.plan
    if isinstance(plan, RequestPlan):
        decoded = _planned(plan, received.raw or ())
        if decoded is not None:
            return decoded
        return codec.decode_request(received._replace(plan=None), shm)
    decoded = codec.decode_request(received, shm)
    if received.head is not None:
        _remember(received.head, decoded)
    return decoded


def _planned(plan: RequestPlan, raw: Iterable[bytes | memoryview]) -> codec.InferRequest | None:
    inputs: dict[str, np.ndarray] = {}
    for spec, data in zip(plan.inputs, raw, strict=True):
        if spec.nbytes < 0:
            inputs[spec.name] = codec.deserialize_bytes(
                spec.name, data, codec.element_count(spec.name, spec.shape)
            ).reshape(spec.shape)
        elif len(data) == spec.nbytes:
            inputs[spec.name] = np.ndarray(spec.shape, spec.dtype.numpy, data)
        else:
            return None  # the codec words the error
    return codec.InferRequest(
        model_name=plan.model_name,
        model_version=plan.model_version,
        id="",
        inputs=inputs,
        outputs=list(plan.outputs),
        parameters=dict(plan.parameters),
        classes=dict(plan.classes),
        plan=plan,
    )


def _remember(head: bytes, decoded: codec.InferRequest) -> None:
    """Make a plan of a request decoded the full way, if its kind may have one."""
    message = pb.ModelInferRequest.FromString(head)
    if decoded.id or decoded.output_targets or decoded.shared_inputs:
        return
    if any(tensor.parameters or tensor.HasField("contents") for tensor in message.inputs):
        return
    specs = []
    for name, array in decoded.inputs.items():
        dt = dtypes.from_numpy(array.dtype)
        nbytes = -1 if dt.wire == "BYTES" else array.nbytes
        specs.append(RawInput(name, dt, array.shape, nbytes))
    if len(_plans) >= MAX_PLANS:
        _plans.clear()
    _plans[head] = RequestPlan(
        message,
        decoded.model_name,
        decoded.model_version,
        tuple(specs),
        tuple(decoded.outputs),
        dict(decoded.parameters),
        dict(decoded.classes),
    )


def _raw_tail(data: bytes) -> tuple[int, list[tuple[int, int]]] | None:
    """Where the head ends and each trailing raw_input_contents payload lies, for a
    request whose raw tensors all come after its other fields; None otherwise (or
    for an id, a field of another wire type, anything malformed)."""
    pos, end = 0, len(data)
    try:
        for _ in range(_MAX_HEAD_FIELDS):
            if pos >= end:
                return None  # no raw tensors
            tag = data[pos]
            if tag == _RAW_TAG:
                break
            if tag == _ID_TAG or tag & 7 != 2 or tag >= 0x80:
                return None
            length, pos = codec.read_varint(data, pos + 1)
            pos += length
        else:
            return None
        head_end, spans = pos, []
        while pos < end:
            if data[pos] != _RAW_TAG:
                return None
            length, pos = codec.read_varint(data, pos + 1)
            spans.append((pos, pos + length))
            pos += length
    except IndexError:
        return None
    return (head_end, spans) if pos == end else None

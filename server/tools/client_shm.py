"""The client side of system shared memory, for ``warpserve bench --shared-memory system``:
a request pool's tensors moved into one POSIX shared memory object that is registered
with the server as a region for as long as the benchmark runs."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Sequence
from multiprocessing import shared_memory
from typing import Any

import grpc

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc
from warpserve.server.codec import SHM_BYTE_SIZE, SHM_OFFSET, SHM_REGION
from warpserve.server.tools.shaping import BenchError

# perf_analyzer's default room for each output in shared memory.
DEFAULT_OUTPUT_SHM_BYTES = 100 * 1024
CALL_TIMEOUT_S = 10.0


# Tensors in a shared memory region start on cache-line boundaries.
_ALIGN = 64


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def move_to_region(
    requests: Sequence[pb.ModelInferRequest],
    outputs: Sequence[str],
    output_bytes: int,
    region: str,
) -> bytearray:
    """Rewrite ``requests`` to pass every tensor through the shared memory region
    ``region`` (Triton's shared-memory parameters) and return the region's contents:
    each request's input data, then room for each of its outputs (``output_bytes``
    apiece). Requests get ranges of their own, so concurrent ones never share memory."""
    block = bytearray()

    def reserve(params: Any, size: int) -> int:
        offset = _aligned(len(block))
        block.extend(bytes(offset - len(block) + size))
        params[SHM_REGION].string_param = region
        params[SHM_BYTE_SIZE].int64_param = size
        params[SHM_OFFSET].int64_param = offset
        return offset

    for request in requests:
        for tensor, data in zip(request.inputs, request.raw_input_contents, strict=True):
            offset = reserve(tensor.parameters, len(data))
            block[offset : offset + len(data)] = data
        del request.raw_input_contents[:]
        for name in outputs:
            reserve(request.outputs.add(name=name).parameters, output_bytes)
    return block


_region_ids = itertools.count()


class ClientRegion:
    """A POSIX shared memory object holding a request pool's tensors, registered with
    the server as one region for as long as the benchmark runs."""

    def __init__(self, output_bytes: int = DEFAULT_OUTPUT_SHM_BYTES) -> None:
        self.output_bytes = output_bytes
        self.name = f"warpserve-bench-{os.getpid()}-{next(_region_ids)}"
        self._block: shared_memory.SharedMemory | None = None
        self._stub: pb_grpc.GRPCInferenceServiceStub | None = None

    async def hold(
        self,
        channel: grpc.aio.Channel,
        requests: Sequence[pb.ModelInferRequest],
        outputs: Sequence[str],
    ) -> list[bytes]:
        """Move the requests' tensors into a new object, register it; the payloads."""
        data = move_to_region(requests, outputs, self.output_bytes, self.name)
        self._block = shared_memory.SharedMemory(create=True, size=len(data))
        buf = self._block.buf
        assert buf is not None  # None only after close()
        buf[: len(data)] = data
        del buf  # close() refuses while a view is alive
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        register = pb.SystemSharedMemoryRegisterRequest(
            name=self.name, key="/" + self._block.name, offset=0, byte_size=len(data)
        )
        try:
            await stub.SystemSharedMemoryRegister(register, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            raise BenchError(_describe_register_error(e)) from e
        self._stub = stub
        return [request.SerializeToString() for request in requests]

    async def release(self) -> None:
        if self._stub is not None:
            # A server that went away has nothing left to unregister.
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._stub.SystemSharedMemoryUnregister(
                    pb.SystemSharedMemoryUnregisterRequest(name=self.name),
                    timeout=CALL_TIMEOUT_S,
                )
            self._stub = None
        if self._block is not None:
            self._block.close()
            self._block.unlink()
            self._block = None


def _describe_register_error(e: grpc.aio.AioRpcError) -> str:
    if e.code() == grpc.StatusCode.PERMISSION_DENIED:
        return (
            "the server does not take client shared memory; start it with "
            "--allow-client-shm, or leave out --shared-memory"
        )
    if e.code() == grpc.StatusCode.NOT_FOUND:
        return (
            "the server cannot open this machine's shared memory: --shared-memory needs "
            f"the server on the same host ({e.details()})"
        )
    return f"registering shared memory failed: {e.code().name}: {e.details()}"

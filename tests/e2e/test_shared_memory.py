"""Triton's system shared-memory extension through tritonclient, as its users call it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from multiprocessing import shared_memory

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import AFFINE, PAIR, SLOW, health, reference, rows
from tests.e2e.harness import ServerProcess
from warpserve.server.tools import loadgen

pytestmark = pytest.mark.e2e


@pytest.fixture
def block() -> Iterator[shared_memory.SharedMemory]:
    """A POSIX shared memory object of 64 KiB, made the way a client makes one."""
    made = shared_memory.SharedMemory(create=True, size=64 * 1024)
    yield made
    made.close()
    made.unlink()


def key_of(made: shared_memory.SharedMemory) -> str:
    return "/" + made.name


def array_at(made: shared_memory.SharedMemory, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.ndarray(shape, np.float32, made.buf, offset)


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(InferenceServerException) as caught:
        call()  # type: ignore[operator]
    return grpc.StatusCode[caught.value.status().replace("StatusCode.", "")]


def test_infer_through_shared_memory(
    client: grpcclient.InferenceServerClient,
    server: ServerProcess,
    block: shared_memory.SharedMemory,
) -> None:
    assert "system_shared_memory" in client.get_server_metadata().extensions
    x = rows(3, seed=1)
    array_at(block, 0, x.shape)[:] = x
    client.register_system_shared_memory("inputs", key_of(block), 4096, 0)
    client.register_system_shared_memory("outputs", key_of(block), 8192, 8192)
    try:
        status = client.get_system_shared_memory_status()
        assert {name: (r.key, r.offset, r.byte_size) for name, r in status.regions.items()} == {
            "inputs": (key_of(block), 0, 4096),
            "outputs": (key_of(block), 8192, 8192),
        }
        tensor = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        tensor.set_shared_memory("inputs", x.nbytes)
        out0 = grpcclient.InferRequestedOutput("OUTPUT0")
        out0.set_shared_memory("outputs", 1024, offset=256)
        out1 = grpcclient.InferRequestedOutput("OUTPUT1")  # this one over the wire
        result = client.infer(PAIR, [tensor], outputs=[out0, out1])
        meta = result.get_output("OUTPUT0")
        assert meta.datatype == "FP32" and list(meta.shape) == [3, 2]
        written = array_at(block, 8192 + 256, (3, 2))
        np.testing.assert_allclose(written, reference(x), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), x)
    finally:
        client.unregister_system_shared_memory()
    assert not client.get_system_shared_memory_status().regions
    # Once unregistered, the name means nothing: the client's error, not the server's.
    assert code_of(lambda: client.infer(AFFINE, [tensor])) == grpc.StatusCode.INVALID_ARGUMENT
    assert health(server.url) == "SERVING"


def test_batched_requests_each_read_and_write_their_own_range(
    server: ServerProcess, block: shared_memory.SharedMemory
) -> None:
    """Concurrent requests batched together, each reading its rows from and writing its
    outputs to its own part of one region, unary and streamed."""
    n = 12
    inputs = [rows(2, seed=100 + i) for i in range(n)]
    for i, x in enumerate(inputs):
        array_at(block, 64 * i, x.shape)[:] = x  # 32 bytes each

    def request(i: int) -> dict[str, object]:
        tensor = aioclient.InferInput("INPUT0", [2, 4], "FP32")
        tensor.set_shared_memory("in", 32, offset=64 * i)
        output = aioclient.InferRequestedOutput("OUTPUT0")
        output.set_shared_memory("out", 16, offset=16 * i)
        return {"model_name": SLOW, "inputs": [tensor], "outputs": [output], "request_id": str(i)}

    async def main() -> int:
        async with aioclient.InferenceServerClient(server.url) as triton:
            await triton.register_system_shared_memory("in", key_of(block), 4096)
            await triton.register_system_shared_memory("out", key_of(block), 4096, 32768)
            try:
                await asyncio.gather(*(triton.infer(**request(i)) for i in range(n)))
                for i, x in enumerate(inputs):
                    got = array_at(block, 32768 + 16 * i, (2, 2))
                    np.testing.assert_allclose(got, reference(x), rtol=1e-4, atol=1e-4)
                    got[:] = 0

                async def stream_requests():
                    for i in range(n):
                        yield request(i)

                answered = 0
                async for _result, error in triton.stream_infer(stream_requests()):
                    assert error is None, error
                    answered += 1
                for i, x in enumerate(inputs):
                    got = array_at(block, 32768 + 16 * i, (2, 2))
                    np.testing.assert_allclose(got, reference(x), rtol=1e-4, atol=1e-4)
                return answered
            finally:
                await triton.unregister_system_shared_memory()

    assert asyncio.run(main()) == n


def test_bad_shared_memory_calls(
    client: grpcclient.InferenceServerClient,
    server: ServerProcess,
    block: shared_memory.SharedMemory,
) -> None:
    key = key_of(block)
    assert (
        code_of(lambda: client.register_system_shared_memory("r", "/warpserve-missing", 64))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code_of(lambda: client.register_system_shared_memory("r", "/../../etc/passwd", 64))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code_of(lambda: client.register_system_shared_memory("r", key, 128 * 1024))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code_of(lambda: client.get_system_shared_memory_status("nope")) == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code_of(lambda: client.register_cuda_shared_memory("c", b"\0" * 64, 0, 64))
        == grpc.StatusCode.UNIMPLEMENTED
    )
    client.register_system_shared_memory("r", key, 1024)
    try:
        assert (
            code_of(lambda: client.register_system_shared_memory("r", key, 1024))
            == grpc.StatusCode.ALREADY_EXISTS
        )
        x = rows(1, seed=3)
        tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_shared_memory("r", 16, offset=1020)  # runs past the region's end
        assert code_of(lambda: client.infer(AFFINE, [tensor])) == grpc.StatusCode.INVALID_ARGUMENT
        tensor.set_data_from_numpy(x)
        small = grpcclient.InferRequestedOutput("OUTPUT0")
        small.set_shared_memory("r", 4)  # the output needs 8 bytes
        with pytest.raises(InferenceServerException, match="needs 8 bytes"):
            client.infer(AFFINE, [tensor], outputs=[small])
    finally:
        client.unregister_system_shared_memory("r")
    assert health(server.url) == "SERVING"


def test_off_without_the_flag(explicit_server: ServerProcess) -> None:
    """The server that was not started with --allow-client-shm refuses every use."""
    with grpcclient.InferenceServerClient(explicit_server.url) as triton:
        assert "system_shared_memory" not in triton.get_server_metadata().extensions
        with pytest.raises(InferenceServerException, match="--allow-client-shm") as caught:
            triton.register_system_shared_memory("r", "/anything", 64)
        assert "PERMISSION_DENIED" in str(caught.value.status())
        tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_shared_memory("r", 16)
        with pytest.raises(InferenceServerException, match="--allow-client-shm"):
            triton.infer(AFFINE, [tensor])
    assert health(explicit_server.url) == "SERVING"


def test_bench_through_shared_memory(
    client: grpcclient.InferenceServerClient, server: ServerProcess
) -> None:
    """``warpserve bench --shared-memory system`` against the real server: every request
    answered, its region gone afterwards."""
    result = asyncio.run(
        loadgen.measure(
            server.url,
            SLOW,
            4,
            duration_s=0.5,
            warmup_s=0.1,
            batch_size=2,
            shared_memory="system",
        )
    )
    assert result.requests > 0 and result.errors == 0, result.first_error
    assert not client.get_system_shared_memory_status().regions

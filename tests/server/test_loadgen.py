"""The load generator against an in-process fake server (no timings asserted)."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc
from warpserve.server import codec
from warpserve.server.grpc.status import maps_errors
from warpserve.server.shm import SHM_ROOT, SharedMemoryRegions
from warpserve.server.tools import client_shm, loadgen, shaping

DURATION_S, WARMUP_S = 0.3, 0.05


def _metadata(name: str, inputs: list[tuple[str, str, list[int]]]) -> pb.ModelMetadataResponse:
    meta = pb.ModelMetadataResponse(name=name, versions=["1"], platform="onnxruntime_onnx")
    for tensor_name, datatype, shape in inputs:
        meta.inputs.add(name=tensor_name, datatype=datatype, shape=shape)
    meta.outputs.add(name="OUT", datatype="FP32", shape=[-1, 1])
    return meta


MIXED = _metadata(
    "mixed",
    [
        ("DENSE", "FP32", [-1, 4]),
        ("IDS", "INT64", [-1, -1]),
        ("TEXT", "BYTES", [-1, 2]),
        ("MASK", "BOOL", [-1, 3]),
        ("HALF", "FP16", [-1, 2]),
    ],
)


@dataclass
class FakeState:
    metadata: pb.ModelMetadataResponse
    max_batch_size: int = 8
    fail_every: int = 0  # 1: every request fails
    hold_until: int = 0  # park requests until this many are in flight at once
    requests: list[pb.ModelInferRequest] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    seen: int = 0
    # Client shared memory, served by the server's own region registry and codec.
    regions: SharedMemoryRegions = field(default_factory=lambda: SharedMemoryRegions(False))
    keys: list[str] = field(default_factory=list)
    decoded: list[codec.InferRequest] = field(default_factory=list)


class FakeServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: FakeState) -> None:
        self.state = state
        self.gathered = asyncio.Event()

    async def ModelMetadata(self, request, context):
        if request.name != self.state.metadata.name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.name}'")
        return self.state.metadata

    async def ModelConfig(self, request, context):
        response = pb.ModelConfigResponse()
        response.config.name = request.name
        response.config.max_batch_size = self.state.max_batch_size
        return response

    @maps_errors
    async def SystemSharedMemoryRegister(self, request, context):
        self.state.regions.register(request.name, request.key, request.offset, request.byte_size)
        self.state.keys.append(request.key)
        return pb.SystemSharedMemoryRegisterResponse()

    @maps_errors
    async def SystemSharedMemoryUnregister(self, request, context):
        self.state.regions.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def ModelInfer(self, request, context):
        s = self.state
        s.seen += 1
        if len(s.requests) < 50:
            s.requests.append(request)
            if s.regions.allowed:
                s.decoded.append(codec.decode_request(codec.ReceivedInfer(request), s.regions))
        s.in_flight += 1
        s.max_in_flight = max(s.max_in_flight, s.in_flight)
        try:
            await self._hold()
        finally:
            s.in_flight -= 1
        if s.fail_every and s.seen % s.fail_every == 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "input 'DENSE' is poisoned")
        return pb.ModelInferResponse(model_name=request.model_name)

    async def _hold(self) -> None:
        if self.state.in_flight >= self.state.hold_until:
            self.gathered.set()
        # Bounded so that a load generator keeping too few requests in flight fails the
        # max_in_flight assertion instead of hanging the test.
        try:
            await asyncio.wait_for(self.gathered.wait(), timeout=5)
        except asyncio.TimeoutError:
            self.gathered.set()


@contextmanager
def fake_server(state: FakeState) -> Iterator[str]:
    """Serve ``state`` from a grpc.aio server on its own loop thread, so that code under
    test can call ``asyncio.run`` itself."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(FakeServicer(state), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _measure(
    url: str, model: str, concurrency: int = 1, batch_size: int = 1
) -> loadgen.BenchResult:
    return asyncio.run(
        loadgen.measure(
            url, model, concurrency, batch_size=batch_size, duration_s=DURATION_S, warmup_s=WARMUP_S
        )
    )


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    loadgen.add_arguments(parser)
    return parser.parse_args(list(argv))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ request shaping


def test_requests_are_shaped_from_metadata() -> None:
    state = FakeState(MIXED)
    with fake_server(state) as url:
        result = _measure(url, "mixed", batch_size=3)
    assert result.requests > 0 and result.errors == 0
    expected = {  # name: (datatype, shape, raw bytes)
        "DENSE": ("FP32", [3, 4], 3 * 4 * 4),
        "IDS": ("INT64", [3, 1], 3 * 8),
        "TEXT": ("BYTES", [3, 2], 6 * (4 + 8)),
        "MASK": ("BOOL", [3, 3], 9),
        "HALF": ("FP16", [3, 2], 6 * 2),
    }
    for request in state.requests:
        assert request.model_name == "mixed"
        got = {
            t.name: (t.datatype, list(t.shape), len(raw))
            for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        assert got == expected


def test_pool_requests_differ_but_are_reused() -> None:
    pool = shaping.build_pool(MIXED, 2, batched=True, size=4)
    assert len(pool.payloads) == 4 and len(set(pool.payloads)) == 4
    assert pool.payloads == shaping.build_pool(MIXED, 2, batched=True, size=4).payloads


def test_unbatched_model_keeps_its_leading_dim() -> None:
    meta = _metadata("plain", [("X", "UINT8", [4, -1])])
    raw = shaping.shape_requests(meta, 1, np.random.default_rng(0), batched=False)
    request = pb.ModelInferRequest.FromString(raw)
    assert list(request.inputs[0].shape) == [4, 1]
    assert len(request.raw_input_contents[0]) == 4
    with pytest.raises(loadgen.BenchError, match="does not batch"):
        shaping.shape_requests(meta, 2, np.random.default_rng(0), batched=False)


def test_bytes_elements_carry_length_prefixes() -> None:
    meta = _metadata("text", [("TEXT", "BYTES", [-1, 3])])
    request = pb.ModelInferRequest.FromString(
        shaping.shape_requests(meta, 1, np.random.default_rng(0))
    )
    raw, offset, lengths = request.raw_input_contents[0], 0, []
    while offset < len(raw):
        n = int.from_bytes(raw[offset : offset + 4], "little")
        lengths.append(n)
        offset += 4 + n
    assert offset == len(raw) and len(lengths) == 3


def test_tensors_through_shared_memory() -> None:
    """--shared-memory system: the requests carry no tensor bytes, and the server's own
    codec finds each input, and room for each output, in the registered region."""
    if not SHM_ROOT.is_dir():
        pytest.skip(f"{SHM_ROOT} does not exist on this system")
    state = FakeState(MIXED, regions=SharedMemoryRegions(allowed=True))
    with fake_server(state) as url:
        result = asyncio.run(
            loadgen.measure(
                url, "mixed", 2, DURATION_S, 3, warmup_s=WARMUP_S, shared_memory="system"
            )
        )
    assert result.requests > 0 and result.errors == 0
    assert state.decoded
    for request, decoded in zip(state.requests, state.decoded, strict=True):
        assert not request.raw_input_contents
        assert {t.name: list(t.shape) for t in request.inputs} == {
            name: list(decoded.inputs[name].shape) for name in decoded.inputs
        }
        assert decoded.inputs["DENSE"].shape == (3, 4) and decoded.inputs["TEXT"].shape == (3, 2)
        assert list(decoded.output_targets) == ["OUT"]
        assert decoded.output_targets["OUT"].byte_size == loadgen.DEFAULT_OUTPUT_SHM_BYTES
    assert state.regions.status("") == []  # unregistered at the end
    assert state.keys and not (SHM_ROOT / state.keys[0].lstrip("/")).exists()  # unlinked


def test_shared_memory_on_a_server_without_it(capsys: pytest.CaptureFixture[str]) -> None:
    with fake_server(FakeState(MIXED)) as url:
        code = loadgen.run(_args("-u", url, "-m", "mixed", "--shared-memory", "system"))
    assert code == 1
    assert "--allow-client-shm" in capsys.readouterr().err


def test_region_layout() -> None:
    requests = shaping.build_requests(MIXED, 2, batched=True, size=2)
    raw = [list(r.raw_input_contents) for r in requests]
    block = client_shm.move_to_region(requests, ["OUT", "EXTRA"], 100, "r")
    for request, data in zip(requests, raw, strict=True):
        assert not request.raw_input_contents
        for tensor, expected in zip(request.inputs, data, strict=True):
            params = tensor.parameters
            offset = params["shared_memory_offset"].int64_param
            size = params["shared_memory_byte_size"].int64_param
            assert params["shared_memory_region"].string_param == "r"
            assert offset % 64 == 0 and size == len(expected)
            assert block[offset : offset + size] == expected
        assert [o.name for o in request.outputs] == ["OUT", "EXTRA"]
    ranges = sorted(
        (p["shared_memory_offset"].int64_param, p["shared_memory_byte_size"].int64_param)
        for r in requests
        for p in [*(t.parameters for t in r.inputs), *(o.parameters for o in r.outputs)]
    )
    assert all(a + n <= b for (a, n), (b, _) in itertools.pairwise(ranges))  # none overlap
    assert ranges[-1][0] + ranges[-1][1] == len(block)


# ------------------------------------------------------------------ the closed loop


@pytest.mark.parametrize("concurrency", [1, 8])
def test_concurrency_n_keeps_n_in_flight(concurrency: int) -> None:
    state = FakeState(MIXED, hold_until=concurrency)
    with fake_server(state) as url:
        result = _measure(url, "mixed", concurrency=concurrency)
    assert result.concurrency == concurrency
    assert state.max_in_flight == concurrency


def test_errors_are_counted_and_the_first_is_kept() -> None:
    state = FakeState(MIXED, fail_every=2)
    with fake_server(state) as url:
        result = _measure(url, "mixed", concurrency=2)
    assert result.errors > 0 and result.requests > 0
    assert "INVALID_ARGUMENT" in result.first_error and "poisoned" in result.first_error
    assert result.failures == {result.first_error: result.failed}
    assert result.failed >= result.errors  # warm-up failures count there too


def test_failing_calls_back_off() -> None:
    """A server refusing every call is not flooded: each worker's waits double (1 ms,
    2 ms, ... up to 100 ms), so in 0.35 s of load it can make at most about ten calls,
    where retrying at once makes hundreds."""
    state = FakeState(MIXED, fail_every=1)
    with fake_server(state) as url:
        result = _measure(url, "mixed", concurrency=2)
    assert result.failed > 0 and result.requests == 0  # the calls really failed
    assert state.seen <= 2 * 12, state.seen
    assert state.seen == result.failed


def test_distinct_messages_are_kept_up_to_a_limit() -> None:
    tally = loadgen._Tally()
    for i in range(loadgen.MAX_DISTINCT_ERRORS + 3):
        tally.failure(f"UNAVAILABLE: reason {i}")
        tally.failure("UNAVAILABLE: reason 0")
    assert tally.first_error == "UNAVAILABLE: reason 0"
    assert tally.failures["UNAVAILABLE: reason 0"] == loadgen.MAX_DISTINCT_ERRORS + 4
    assert tally.failures[loadgen.OTHER_ERRORS] == 3
    assert len(tally.failures) == loadgen.MAX_DISTINCT_ERRORS + 1


def test_batch_size_over_max_is_a_usage_error() -> None:
    with (
        fake_server(FakeState(MIXED, max_batch_size=4)) as url,
        pytest.raises(loadgen.BenchError, match="max_batch_size 4") as info,
    ):
        _measure(url, "mixed", batch_size=5)
    assert info.value.exit_code == 2


# ------------------------------------------------------------------ the command


def test_run_prints_json_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with fake_server(FakeState(MIXED)) as url:
        code = loadgen.run(
            _args(
                "-u",
                url,
                "-m",
                "mixed",
                "--concurrency",
                "1,2",
                "--duration",
                "0.2",
                "--warmup",
                "0",
                "--json",
            )
        )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "mixed"
    assert [r["concurrency"] for r in report["results"]] == [1, 2]
    assert all(r["requests"] > 0 and r["p99_ms"] is not None for r in report["results"])


def test_run_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    with fake_server(FakeState(MIXED)) as url:
        code = loadgen.run(
            _args(
                "-u", url, "-m", "mixed", "--concurrency", "3", "--duration", "0.2", "--warmup", "0"
            )
        )
    out = capsys.readouterr().out
    assert code == 0
    assert "req/s" in out and out.strip().splitlines()[-1].split()[0] == "3"


def test_run_exits_one_when_some_requests_fail(capsys: pytest.CaptureFixture[str]) -> None:
    with fake_server(FakeState(MIXED, fail_every=3)) as url:
        code = loadgen.run(
            _args(
                "-u", url, "-m", "mixed", "--concurrency", "2", "--duration", "0.2", "--warmup", "0"
            )
        )
    assert code == 1
    err = capsys.readouterr().err
    assert "requests failed" in err
    assert re.search(r"\d+ x INVALID_ARGUMENT: input 'DENSE' is poisoned", err), err


def test_run_exits_one_when_every_request_fails(capsys: pytest.CaptureFixture[str]) -> None:
    with fake_server(FakeState(MIXED, fail_every=1)) as url:
        code = loadgen.run(
            _args(
                "-u", url, "-m", "mixed", "--concurrency", "1", "--duration", "0.2", "--warmup", "0"
            )
        )
    assert code == 1
    assert "poisoned" in capsys.readouterr().err


def test_run_exits_one_when_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    code = loadgen.run(_args("-u", f"127.0.0.1:{_free_port()}", "-m", "mixed"))
    assert code == 1
    assert "unreachable" in capsys.readouterr().err


def test_run_exits_one_for_an_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    with fake_server(FakeState(MIXED)) as url:
        code = loadgen.run(_args("-u", url, "-m", "nope", "--duration", "0.1"))
    assert code == 1
    assert "NOT_FOUND" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "x", "--concurrency", "0"],
        ["-m", "x", "--concurrency", "a,b"],
        ["-m", "x", "--duration", "-1"],
        ["-m", "x", "--batch-size", "0"],
        ["--concurrency", "1"],  # no model
    ],
)
def test_bad_arguments_exit_two(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _args(*argv)
    assert info.value.code == 2


def test_url_forms() -> None:
    assert loadgen.parse_url("localhost:8001") == "localhost:8001"
    assert loadgen.parse_url("grpc://example.com") == "example.com:8001"
    assert loadgen.parse_url("[::1]:9000") == "[::1]:9000"
    assert loadgen.parse_url("[::1]") == "[::1]:8001"

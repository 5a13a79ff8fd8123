"""Requests over --grpc-max-message-bytes: refused with RESOURCE_EXHAUSTED and a message
naming the flag (gRPC's own refusal names none); the server keeps serving."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper

from tests.models import write_affine
from warpserve.protos import admin_pb2 as apb
from warpserve.protos import admin_pb2_grpc as apb_grpc
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc
from warpserve.server.grpc.limits import FLAG, INT32_MAX, receive_ceiling
from warpserve.server.grpc.server import start_server
from warpserve.server.options import ServerOptions

MODEL = "affine"
LIMIT = 64 * 1024


def infer_request(rows: int) -> pb.ModelInferRequest:
    x = np.ones((rows, 4), np.float32)
    request = pb.ModelInferRequest(model_name=MODEL, id=f"rows-{rows}")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request


BIG = infer_request(2 * LIMIT // 16)  # twice the limit in raw bytes alone


async def refusal(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    raise AssertionError("the call was answered")


def test_a_request_over_the_limit_names_the_flag(tmp_path: Path) -> None:
    write_affine(tmp_path, MODEL, (1,))
    options = ServerOptions(
        model_repository=tmp_path,
        grpc_address="127.0.0.1",
        grpc_port=0,
        allow_metrics=False,
        allow_http=False,
        exit_timeout_secs=5.0,
        max_message_bytes=LIMIT,
    )

    async def main() -> None:
        running = await start_server(options)
        big_channel_options = [("grpc.max_send_message_length", -1)]
        target = f"127.0.0.1:{running.grpc_port}"
        try:
            async with grpc.aio.insecure_channel(target, options=big_channel_options) as ch:
                stub = pb_grpc.GRPCInferenceServiceStub(ch)
                code, text = await refusal(stub.ModelInfer(BIG, timeout=30))
                assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
                size = BIG.ByteSize()
                assert f"{size} bytes" in text and f"limit of {LIMIT} bytes" in text
                assert "--grpc-max-message-bytes" in text
                # Any other method of the service: the same refusal.
                load = pb.RepositoryModelLoadRequest(model_name=MODEL)
                load.parameters["config"].string_param = "x" * (2 * LIMIT)
                code, text = await refusal(stub.RepositoryModelLoad(load, timeout=30))
                assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "--grpc-max-message-bytes" in text
                # The admin API and health checks too.
                admin = apb_grpc.ModelAdminStub(ch)
                status = apb.StatusRequest(model="m" * (2 * LIMIT))
                code, text = await refusal(admin.Status(status, timeout=30))
                assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and FLAG in text
                health = health_pb2_grpc.HealthStub(ch)
                check = health_pb2.HealthCheckRequest(service="s" * (2 * LIMIT))
                code, text = await refusal(health.Check(check, timeout=30))
                assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and FLAG in text
                serving = await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
                assert serving.status == health_pb2.HealthCheckResponse.SERVING
                # In a stream, the oversized request is answered in-band; the rest go on.
                replies = [r async for r in stub.ModelStreamInfer(iter([BIG, infer_request(1)]))]
                errors = {r.infer_response.id: r.error_message for r in replies}
                assert "--grpc-max-message-bytes" in errors[""]
                assert errors["rows-1"] == ""
                # Positive control: under the limit, the size check lets the request
                # through to the usual checks (too many rows is INVALID_ARGUMENT).
                under = infer_request(LIMIT // 32)
                assert under.ByteSize() < LIMIT
                code, text = await refusal(stub.ModelInfer(under, timeout=30))
                assert code is grpc.StatusCode.INVALID_ARGUMENT and "max_batch_size" in text
                reply = await stub.ModelInfer(infer_request(2), timeout=30)
                assert reply.model_name == MODEL
        finally:
            await running.shutdown()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("limit", "ceiling"),
    [
        (64 * 1024, 64 * 1024 + 64 * 1024 * 1024),
        (256 * 1024 * 1024, 512 * 1024 * 1024),
        (1536 * 1024 * 1024, INT32_MAX),
    ],
)
def test_grpc_itself_refuses_only_past_the_ceiling(limit: int, ceiling: int) -> None:
    assert receive_ceiling(limit) == ceiling


def write_tile(repo: Path) -> None:
    """tile: OUTPUT0 [N, 4000] repeats INPUT0 [N, 4], so a few rows answer 16 KB each."""
    graph = helper.make_graph(
        [helper.make_node("Tile", ["INPUT0", "R"], ["OUTPUT0"])],
        "tile",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["N", 4000])],
        [helper.make_tensor("R", TensorProto.INT64, [2], [1, 1000])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repo / "tile" / "1").mkdir(parents=True)
    onnx.save(model, str(repo / "tile" / "1" / "model.onnx"))
    (repo / "tile" / "config.pbtxt").write_text(
        'name: "tile" platform: "onnxruntime_onnx" max_batch_size: 64\n'
        'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]\n'
        'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4000 ] }]\n'
    )


def test_an_answer_over_the_limit_names_the_flag(tmp_path: Path) -> None:
    write_tile(tmp_path)
    options = ServerOptions(
        model_repository=tmp_path,
        grpc_address="127.0.0.1",
        grpc_port=0,
        allow_metrics=False,
        allow_http=False,
        exit_timeout_secs=5.0,
        max_message_bytes=LIMIT,
    )

    def tile_request(rows: int) -> pb.ModelInferRequest:
        request = infer_request(rows)
        request.model_name = "tile"
        return request

    async def main() -> None:
        running = await start_server(options)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as ch:
                stub = pb_grpc.GRPCInferenceServiceStub(ch)
                code, text = await refusal(stub.ModelInfer(tile_request(8), timeout=30))
                assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert f"limit of {LIMIT} bytes" in text and FLAG in text
                # In a stream, only that answer is refused; the stream goes on.
                requests = iter([tile_request(8), tile_request(1)])
                replies = [r async for r in stub.ModelStreamInfer(requests)]
                errors = {r.infer_response.id: r.error_message for r in replies}
                assert FLAG in errors["rows-8"] and errors["rows-1"] == ""
                # Positive control: an answer under the limit (16 KB) comes back.
                reply = await stub.ModelInfer(tile_request(1), timeout=30)
                assert len(reply.raw_output_contents[0]) == 4000 * 4
        finally:
            await running.shutdown()

    asyncio.run(main())

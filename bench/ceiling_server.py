"""The overhead-bound ceiling: a minimal grpc.aio server that answers with fixed replies.

It copies ModelMetadata and ModelConfig from a real server, so the same load generator
drives both, and answers every ModelInfer with one pre-built response of the right output
shape. Whatever warpserve spends beyond this server is its own overhead (decode, routing,
batching, backend call, encode); a tiny model served at batch 1 cannot go faster than this.

    python bench/ceiling_server.py --port 9001 --metadata-from localhost:8001 --model fraud_scorer

It runs on the standard library's event loop, as the serving benchmark's definition of
the ceiling asks; ``--event-loop uvloop`` runs it on the loop warpserve itself defaults
to, which separates what the loop buys from what warpserve's own work costs;
``--frontend native`` puts it on warpserve's native gRPC frontend (gRPC's C++ server),
the transport warpserve itself runs on where it was built.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from dataclasses import dataclass

import grpc
import numpy as np

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc
from warpserve.server.native.transport import NativeServer

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),  # a port clash must fail loudly, not share the port
]
_ITEM_BYTES = {
    "BOOL": 1,
    "UINT8": 1,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 2,
    "FP16": 2,
    "BF16": 2,
    "UINT32": 4,
    "INT32": 4,
    "FP32": 4,
    "UINT64": 8,
    "INT64": 8,
    "FP64": 8,
}


@dataclass
class ModelAnswers:
    """What a real server said about one model; ``config`` is None if it has no ModelConfig."""

    metadata: pb.ModelMetadataResponse
    config: pb.ModelConfigResponse | None

    @property
    def batched(self) -> bool:
        if self.config is not None:
            return self.config.config.max_batch_size > 0
        return all(t.shape and t.shape[0] == -1 for t in self.metadata.inputs)


def fetch_answers(url: str, model: str, version: str = "") -> ModelAnswers:
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(
            pb.ModelMetadataRequest(name=model, version=version), timeout=10
        )
        try:
            config = stub.ModelConfig(
                pb.ModelConfigRequest(name=model, version=version), timeout=10
            )
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            config = None
    return ModelAnswers(metadata, config)


def build_response(answers: ModelAnswers, batch_size: int = 1) -> pb.ModelInferResponse:
    """Zero-filled outputs shaped from metadata: batch dim → ``batch_size``, other -1 → 1."""
    meta = answers.metadata
    response = pb.ModelInferResponse(
        model_name=meta.name, model_version=meta.versions[-1] if meta.versions else ""
    )
    for tensor in meta.outputs:
        shape = [1 if d < 0 else d for d in tensor.shape]
        if answers.batched and shape:
            shape[0] = batch_size
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
        response.raw_output_contents.append(_zeros(tensor.datatype, shape))
    return response


def _zeros(datatype: str, shape: list[int]) -> bytes:
    count = int(np.prod(shape, dtype=np.int64))
    if datatype == "BYTES":
        return b"\x00\x00\x00\x00" * count  # each element: 4-byte length 0, no data
    return bytes(count * _ITEM_BYTES[datatype])


class CeilingServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Answers from memory; the request is still parsed, as any real server must.

    With ``batch_size`` 0 each answer carries as many rows as the request's first input
    (one prebuilt response per row count), so one ceiling serves a sweep of batch sizes.
    """

    def __init__(self, answers: ModelAnswers, batch_size: int = 1) -> None:
        self._answers = answers
        self._per_rows = batch_size == 0
        self._response = build_response(answers, max(batch_size, 1))
        self._by_rows: dict[int, pb.ModelInferResponse] = {}

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=request.name == self._answers.metadata.name)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="warpserve-ceiling", version="0")

    async def ModelMetadata(self, request, context):
        return self._answers.metadata

    async def ModelConfig(self, request, context):
        if self._answers.config is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "ModelConfig not copied")
        return self._answers.config

    async def ModelInfer(self, request, context):
        if not self._per_rows:
            return self._response
        rows = request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 1
        response = self._by_rows.get(rows)
        if response is None:
            response = self._by_rows[rows] = build_response(self._answers, rows)
        return response


async def start_ceiling(
    answers: ModelAnswers,
    port: int = 0,
    host: str = "127.0.0.1",
    batch_size: int = 1,
    frontend: str = "python",
) -> tuple[grpc.aio.Server | NativeServer, int]:
    """Start the ceiling server in the running loop; returns it and its bound port.
    ``frontend`` "native": on warpserve's native gRPC frontend instead of grpc.aio."""
    servicer = CeilingServicer(answers, batch_size)
    if frontend == "native":
        native = NativeServer(MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES, reuse_port=False)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, native)
        native.listen(host, port)
        bound = await native.start()
        if bound == 0:
            raise OSError(f"cannot bind {host}:{port}; pick a free port")
        return native, bound
    server = grpc.aio.server(options=_OPTIONS)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}; pick a free port")
    await server.start()
    return server, bound


async def _serve(args: argparse.Namespace) -> None:
    answers = fetch_answers(args.metadata_from, args.model, args.model_version)
    server, port = await start_ceiling(
        answers, args.port, args.host, args.batch_size, args.frontend
    )
    print(f"ceiling server for '{args.model}' on {args.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--metadata-from", required=True, help="real server HOST:PORT")
    parser.add_argument("--model", required=True)
    parser.add_argument("--model-version", default="")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="rows in the fixed reply; 0: as many as the request carries",
    )
    parser.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument(
        "--frontend",
        choices=("python", "native"),
        default="python",
        help="the gRPC server: grpc.aio, or warpserve's native frontend (server/native)",
    )
    args = parser.parse_args()
    if args.event_loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(args))
    else:
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()

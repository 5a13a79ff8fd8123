"""The event loop's Python per request on the native frontend, without the network.

What limits a tiny model served over gRPC is the Python the event loop runs per request:
the native frontend's threads take HTTP/2 off it, and the model runs in microseconds. This
measures that Python alone: a stand-in for the C++ frontend hands the real
``NativeServer`` ``--per-wakeup`` ModelInfer calls at each wakeup (as the frontend does
with calls that arrived together), the real services decode, batch, run the model and
encode, and the stand-in collects the answers. It reports the loop thread's CPU
microseconds per request (``time.thread_time``: CPU, so a machine shared with other work
changes it far less than wall time), beside the cost of the bare call handling (an
``identity`` handler answering each call's bytes) measured in the same run.

    python bench/bench_request_path.py [--model-repository REPO] [--model fraud_scorer]
        [--per-wakeup 1 2 4 8] [--requests 20000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.server.native_standin import CALL, DONE, StandIn, attach
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server.busypoll import BusyPoller
from warpserve.server.dataplane import DataPlane
from warpserve.server.demo.build import ensure_demo_repository
from warpserve.server.grpc.inference import InferenceServicer, add_inference_service
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.lifecycle.version import ModelVersion
from warpserve.server.native import transport
from warpserve.server.repository.repository import ModelRepository

METHOD = "/inference.GRPCInferenceService/ModelInfer"
ECHO = "/bench.Echo/Call"


def _request(mv: ModelVersion) -> bytes:
    """One row of random FP32 input for each of the model's inputs."""
    assert mv.validator is not None
    request = pb.ModelInferRequest(model_name=mv.name)
    for spec in mv.config.input:
        shape = (1, *spec.dims)
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        request.inputs.add(name=spec.name, datatype="FP32", shape=shape)
        request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


async def _drive(
    server: transport.NativeServer, method: str, payload: bytes, per_wakeup: int, total: int
) -> float:
    """Loop-thread CPU seconds per request over ``total`` requests."""
    stand_in: StandIn = server.frontend
    metadata = (("grpc-timeout", "10S"),)
    next_id = 1
    done: list[int] = []
    cpu0 = time.thread_time()
    served = 0
    while served < total:
        ids = list(range(next_id, next_id + per_wakeup))
        next_id += per_wakeup
        stand_in.pending = [(DONE, i) for i in done] + [
            (CALL, i, method, payload, 10.0, metadata) for i in ids
        ]
        server._on_events()
        while len(stand_in.answered) < per_wakeup:
            await asyncio.sleep(0)
        for code, details, _ in stand_in.answered.values():
            if code != 0:
                raise RuntimeError(f"a call failed with status {code}: {details}")
        done = ids
        stand_in.answered.clear()
        served += per_wakeup
    return (time.thread_time() - cpu0) / served


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def main(args: argparse.Namespace) -> None:
    repository = ModelRepository(args.model_repository)
    poller = BusyPoller(0)
    registry = ModelRegistry(repository, poller=poller)
    await registry.load(args.model)
    dataplane = DataPlane(registry, poller)
    server = transport.NativeServer(1 << 26, 1 << 26, reuse_port=False)
    add_inference_service(InferenceServicer(dataplane, registry), server)
    echo = grpc.unary_unary_rpc_method_handler(_echo)
    server.add_registered_method_handlers("bench.Echo", {"Call": echo})
    attach(server)
    payload = _request(registry.resolve(args.model))
    print(f"# loop CPU per request (us), {args.rounds} rounds, median [min-max]")
    for k in args.per_wakeup:
        infer, bare = [], []
        for _ in range(args.rounds):
            bare.append(await _drive(server, ECHO, payload, k, args.requests // 4) * 1e6)
            infer.append(await _drive(server, METHOD, payload, k, args.requests) * 1e6)
        med, base = statistics.median(infer), statistics.median(bare)
        print(
            f"per-wakeup={k}: ModelInfer {med:.1f} [{min(infer):.1f}-{max(infer):.1f}]  "
            f"bare call {base:.1f}  ModelInfer - bare {med - base:.1f}"
        )
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        await _drive(server, METHOD, payload, args.per_wakeup[-1], args.requests)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    await registry.close()


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-repository", type=Path, default=None)
    parser.add_argument("--model", default="fraud_scorer")
    parser.add_argument("--per-wakeup", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    return parser.parse_args()


if __name__ == "__main__":
    import uvloop

    args = _parse()
    if args.model_repository is None:
        args.model_repository = ensure_demo_repository(progress=False)
    uvloop.run(main(args))

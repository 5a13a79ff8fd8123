"""Lifecycle benchmark: what a hot swap and a rollback cost callers under steady load.

A warpserve process serves an MLP (64 -> 1024 -> 1024 -> 1024 -> 2, ~2.2M weights;
version v scales the output by v, so every answer names its version). Closed-loop
callers send pre-serialized batch-1 requests the whole time while the admin API:

1. does nothing (steady state);
2. rolls out versions 2, 3, ... one after the other (each a real load, warm-up and
   golden check beside the serving version, then the flip and the drain of the old);
3. rolls back several times (each flips to the version kept loaded for the grace period).

Reports p99 latency of requests sent during a swap (from the Rollout call until 250 ms
after it returned) against the steady-state p99 measured in the same run, and for each
rollback the time from the Rollback call until the last request answered by the version
it replaced was sent (after that, every new request was served by the previous version).
Prints a table and writes bench/results/lifecycle.json. Timings are reported, never asserted.

    python bench/bench_lifecycle.py [--quick] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import serverproc
from onnx import TensorProto, helper

from warpserve.protos import admin_pb2 as apb
from warpserve.protos import admin_pb2_grpc as apb_grpc
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server.repository import versionfolder

RESULTS = Path(__file__).resolve().parent / "results" / "lifecycle.json"
MODEL = "mlp"
FEATURES, HIDDEN = 64, 1024
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
SWAP_TAIL_S = 0.25  # the old version drains after the flip: count that time as the swap
NEXT_GUARD_S = 0.1  # a rollback's window ends this long before the next one starts


# ------------------------------------------------------------------ the model repository


def mlp_model(version: int) -> bytes:
    rng = np.random.default_rng(0)
    sizes = [FEATURES, HIDDEN, HIDDEN, HIDDEN, 2]
    nodes, weights, last = [], [], "INPUT0"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        if i == len(sizes) - 2:
            w *= version
        weights.append(helper.make_tensor(f"W{i}", TensorProto.FLOAT, w.shape, w.flatten()))
        out = "OUTPUT0" if i == len(sizes) - 2 else f"H{i}"
        nodes.append(
            helper.make_node("MatMul", [last, f"W{i}"], [f"M{i}" if out != "OUTPUT0" else out])
        )
        if out != "OUTPUT0":
            nodes.append(helper.make_node("Relu", [f"M{i}"], [out]))
        last = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 2])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


CONFIG = f"""
name: "{MODEL}"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [{{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {FEATURES} ] }}]
output [{{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] }}]
dynamic_batching {{ }}
instance_group [{{ count: 1 kind: KIND_CPU }}]
version_policy {{ specific {{ versions: [ 1 ] }} }}
"""


def write_repository(root: Path, versions: int) -> None:
    (root / MODEL).mkdir(parents=True)
    (root / MODEL / "config.pbtxt").write_text(CONFIG)
    golden_in = np.random.default_rng(1).standard_normal((4, FEATURES)).astype(np.float32)
    for v in range(1, versions + 1):
        data = mlp_model(v)
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        golden_out = session.run(["OUTPUT0"], {"INPUT0": golden_in})[0]
        golden = versionfolder.Golden({"INPUT0": golden_in}, {"OUTPUT0": golden_out})
        versionfolder.write_version(root / MODEL, v, data, "model.onnx", golden=golden)


# ------------------------------------------------------------------ the server process


# ------------------------------------------------------------------ load and measurement


@dataclass
class Sample:
    sent: float
    latency_s: float
    version: int


@dataclass
class Load:
    """Closed-loop callers; every answer is kept with its send time and version."""

    channel: Any
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def caller(self, seed: int) -> None:
        call = self.channel.unary_unary(INFER_METHOD)  # bytes in, bytes out
        rng = np.random.default_rng(seed)
        payloads = [request_bytes(rng) for _ in range(64)]
        i = 0
        while not self.stop.is_set():
            payload, i = payloads[i % len(payloads)], i + 1
            sent = time.perf_counter()
            try:
                reply = await call(payload, timeout=30)
            except grpc.aio.AioRpcError as err:
                self.errors.append(f"{err.code().name}: {err.details()}")
                continue
            version = int(pb.ModelInferResponse.FromString(reply).model_version)
            self.samples.append(Sample(sent, time.perf_counter() - sent, version))

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.sent < end]


def request_bytes(rng: np.random.Generator) -> bytes:
    x = rng.standard_normal((1, FEATURES)).astype(np.float32)
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, FEATURES])
    request.raw_input_contents.append(x.tobytes())
    return bytes(request.SerializeToString())


def send_spacing_ms(samples: list[Sample]) -> float:
    sent = sorted(s.sent for s in samples)
    return float(np.median(np.diff(sent)) * 1000) if len(sent) > 1 else 0.0


def p99_ms(samples: list[Sample]) -> float:
    return float(np.percentile([s.latency_s for s in samples], 99) * 1000) if samples else 0.0


def p50_ms(samples: list[Sample]) -> float:
    return float(np.percentile([s.latency_s for s in samples], 50) * 1000) if samples else 0.0


@dataclass
class Rollback:
    start: float
    returned: float
    left: int  # the version rolled back from
    serving: int  # the version now serving
    until: float = float("inf")  # the next rollback's start (rollbacks alternate versions)


def switch_ms(load: Load, rb: Rollback) -> float:
    """From the Rollback call until the last request that the replaced version answered
    was sent: afterwards every new request went to the previous version."""
    stragglers = [s.sent for s in load.between(rb.start, rb.until) if s.version == rb.left]
    return max(0.0, (max(stragglers) - rb.start) * 1000) if stragglers else 0.0


def mixed_after(load: Load, rb: Rollback) -> int:
    """Requests sent after the Rollback call returned yet answered by the replaced version."""
    return sum(1 for s in load.between(rb.returned, rb.until) if s.version == rb.left)


async def scenario(url: str, args: argparse.Namespace) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(url) as channel:
        admin = apb_grpc.ModelAdminStub(channel)
        load = Load(channel, args.concurrency)
        callers = [asyncio.create_task(load.caller(i)) for i in range(args.concurrency)]
        await asyncio.sleep(args.warmup)
        steady_start = time.perf_counter()
        await asyncio.sleep(args.steady)
        steady = load.between(steady_start, time.perf_counter())
        swaps: list[tuple[float, float]] = []
        for version in range(2, args.swaps + 2):
            await asyncio.sleep(args.gap)
            start = time.perf_counter()
            await admin.Rollout(apb.RolloutRequest(model=MODEL, version=version))
            swaps.append((start, time.perf_counter()))
        rollbacks: list[Rollback] = []
        for _ in range(args.rollbacks):
            await asyncio.sleep(args.gap)
            status = (await admin.Status(apb.StatusRequest(model=MODEL))).models[0]
            active = next(v.version for v in status.versions if v.active)
            start = time.perf_counter()
            reply = await admin.Rollback(apb.RollbackRequest(model=MODEL, reason="bench"))
            serving = next(v.version for v in reply.status.versions if v.active)
            if rollbacks:
                # A request sent just before this rollback may reach the server after it:
                # it belongs to this rollback, not to the last one.
                rollbacks[-1].until = start - NEXT_GUARD_S
            rollbacks.append(Rollback(start, time.perf_counter(), active, serving))
        await asyncio.sleep(args.gap)
        load.stop.set()
        await asyncio.gather(*callers)
    swap_samples = [s for a, b in swaps for s in load.between(a, b + SWAP_TAIL_S)]
    return report(args, load, steady, swap_samples, swaps, rollbacks)


def report(
    args: argparse.Namespace,
    load: Load,
    steady: list[Sample],
    swap_samples: list[Sample],
    swaps: list[tuple[float, float]],
    rollbacks: list[Rollback],
) -> dict[str, Any]:
    switches = [switch_ms(load, rb) for rb in rollbacks]
    steady_p99 = p99_ms(steady)
    return {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "model": f"MLP {FEATURES}-{HIDDEN}-{HIDDEN}-{HIDDEN}-2, batch-1 requests",
        "concurrency": args.concurrency,
        "requests": len(load.samples),
        "failed_requests": len(load.errors),
        "errors": sorted(set(load.errors))[:5],
        "steady": {"requests": len(steady), "p50_ms": p50_ms(steady), "p99_ms": steady_p99},
        "swap": {
            "swaps": len(swaps),
            "requests": len(swap_samples),
            "rollout_call_ms": [round((b - a) * 1000, 1) for a, b in swaps],
            "p50_ms": p50_ms(swap_samples),
            "p99_ms": p99_ms(swap_samples),
            "p99_ratio_to_steady": p99_ms(swap_samples) / steady_p99 if steady_p99 else None,
        },
        "rollback": {
            "rollbacks": len(rollbacks),
            "call_ms": [round((rb.returned - rb.start) * 1000, 2) for rb in rollbacks],
            "switch_ms": [round(ms, 2) for ms in switches],
            "switch_ms_median": statistics.median(switches) if switches else None,
            "switch_ms_max": max(switches) if switches else None,
            # No finer than the spacing between sends: a switch below it reads as 0.
            "resolution_ms": send_spacing_ms(steady),
            "answered_by_replaced_version_after_call_returned": sum(
                mixed_after(load, rb) for rb in rollbacks
            ),
        },
    }


def print_table(result: dict[str, Any]) -> None:
    steady, swap, rb = result["steady"], result["swap"], result["rollback"]
    rows = [
        (
            "steady state",
            f"{steady['requests']}",
            f"{steady['p50_ms']:.2f}",
            f"{steady['p99_ms']:.2f}",
            "1.00",
        ),
        (
            f"during {swap['swaps']} swaps",
            f"{swap['requests']}",
            f"{swap['p50_ms']:.2f}",
            f"{swap['p99_ms']:.2f}",
            f"{swap['p99_ratio_to_steady']:.2f}",
        ),
    ]
    print(
        f"{result['model']}, concurrency {result['concurrency']}, "
        f"{result['requests']} requests, {result['failed_requests']} failed"
    )
    print(f"{'phase':<16} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99/steady':>11}")
    for row in rows:
        print(f"{row[0]:<16} {row[1]:>9} {row[2]:>8} {row[3]:>8} {row[4]:>11}")
    print(f"rollout call ms: {swap['rollout_call_ms']}")
    print(
        f"rollback: call ms {rb['call_ms']}; rollback -> all new requests on the previous "
        f"version: median {rb['switch_ms_median']:.2f} ms, max {rb['switch_ms_max']:.2f} ms "
        f"(resolution {rb['resolution_ms']:.2f} ms); "
        f"answers from the replaced version after the call returned: "
        f"{rb['answered_by_replaced_version_after_call_returned']}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases, fewer swaps")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.warmup, args.steady, args.gap = (0.5, 2.0, 0.5) if args.quick else (1.0, 5.0, 1.0)
    args.swaps, args.rollbacks = (2, 3) if args.quick else (5, 6)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        repo = Path(work) / "repo"
        write_repository(repo, versions=args.swaps + 1)
        # Without the token variable the admin API needs no credentials on loopback.
        env = {k: v for k, v in os.environ.items() if k != "WARPSERVE_ADMIN_TOKEN"}
        log = Path(work) / "server.log"
        flags = ("--rollback-grace-secs", "600")
        with serverproc.warpserve(repo, log, *flags, model=MODEL, env=env) as url:
            result = asyncio.run(scenario(url, args))
    result["quick"] = args.quick
    print_table(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

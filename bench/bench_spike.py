"""Load shedding by priority under a 10x spike of low-priority traffic.

One warpserve process serves two copies of an MLP (64 -> 1024 x4 -> 4, on a worker
thread, max batch 64, two priority levels; compute-bound: a full batch takes tens of
ms). ``shed`` refuses priority-2 requests while ``--shed-at`` requests are queued
(``shed_queue_size``); ``noshed`` has no shedding (Triton's priority queues alone).
Each copy runs three phases per round, in rounds that alternate between the copies:

- ``alone``: the high-priority clients only (the ceiling for their latency);
- ``base``: the high-priority clients plus ``--low`` low-priority ones;
- ``spike``: the high-priority clients plus 10x ``--low`` low-priority ones.

Closed-loop clients: high priority sends one-row requests (interactive), low priority
8-row ones (bulk scoring), so the model, not the event loop, is what saturates and the
queue is where requests wait. A low-priority client that is refused (UNAVAILABLE,
retryable) backs off ``--backoff-ms`` (100, the initial backoff of gRPC's retry-policy
examples) before its next request: every refusal still costs the server's event loop a
decode and an answer, and on two cores that time comes out of everyone's latency.
Reported per copy and phase (median over rounds): high-priority p50/p99 and
their ratio to ``alone`` of the same round, low-priority answers/s and the share
refused, rows per execution and queue time per request (from ModelStatistics).
Timings are reported, never asserted; writes bench/results/spike.json.

    python bench/bench_spike.py [--rounds 3] [--seconds 4] [--high 2] [--low 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import serverproc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.models import write_mlp
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc

METHOD = "/inference.GRPCInferenceService/ModelInfer"
MODELS = ("noshed", "shed")
PHASES = ("alone", "base", "spike")
SPIKE = 10


def _param(key: str, value: object) -> str:
    return f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'


def build(repo: Path, shed_at: int, width: int) -> None:
    for name in MODELS:
        extra = (
            "dynamic_batching { priority_levels: 2 default_priority_level: 1 }\n"
            + _param("execution", "thread")
            + (_param("shed_queue_size", f"0,{shed_at}") if name == "shed" else "")
        )
        write_mlp(repo, name, width=width, extra=extra)


def payload(model: str, priority: int, rows: int = 1) -> bytes:
    x = np.random.default_rng(priority).standard_normal((rows, 64)).astype(np.float32)
    request = pb.ModelInferRequest(model_name=model, id="spike")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[rows, 64])
    request.raw_input_contents.append(x.tobytes())
    request.parameters["priority"].int64_param = priority
    return request.SerializeToString()


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    refused: int = 0
    errors: Counter[str] = field(default_factory=Counter)


async def client(
    call: grpc.aio.UnaryUnaryMultiCallable,
    body: bytes,
    stop: asyncio.Event,
    tally: Tally,
    backoff_s: float,
) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        try:
            await call(body, timeout=30)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                tally.refused += 1
                await asyncio.sleep(backoff_s)
            else:
                tally.errors[f"{err.code().name}: {err.details()}"] += 1
            continue
        tally.latencies.append(time.perf_counter() - start)
        tally.ok += 1


async def phase(
    channel: grpc.aio.Channel,
    model: str,
    high: int,
    low: int,
    seconds: float,
    backoff_s: float,
    low_rows: int = 1,
) -> dict[str, float]:
    call = channel.unary_unary(METHOD)
    stop = asyncio.Event()
    hi, lo = Tally(), Tally()
    tasks = [client(call, payload(model, 1), stop, hi, backoff_s) for _ in range(high)]
    low_body = payload(model, 2, low_rows)
    tasks += [client(call, low_body, stop, lo, backoff_s) for _ in range(low)]
    before = await _counters(channel, model)
    running = [asyncio.ensure_future(t) for t in tasks]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*running)
    after = await _counters(channel, model)
    rows, executions, queue_ns, answered = (a - b for a, b in zip(after, before, strict=True))
    if hi.errors or lo.errors:
        raise RuntimeError(f"unexpected errors: {dict(hi.errors + lo.errors)}")
    p50, p99 = np.percentile(np.array(hi.latencies) * 1000, [50, 99])
    sent_low = lo.ok + lo.refused
    return {
        "high_p50_ms": float(p50),
        "high_p99_ms": float(p99),
        "high_per_s": hi.ok / seconds,
        "low_per_s": lo.ok / seconds,
        "low_refused_share": lo.refused / sent_low if sent_low else 0.0,
        "rows_per_execution": rows / executions if executions else 0.0,
        "queue_ms": queue_ns / answered / 1e6 if answered else 0.0,
    }


async def _counters(channel: grpc.aio.Channel, model: str) -> tuple[int, int, int, int]:
    """(rows, executions, queue ns, requests answered) from ModelStatistics."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    reply = await stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30)
    stats = reply.model_stats[0]
    queue = stats.inference_stats.queue
    return stats.inference_count, stats.execution_count, queue.ns, queue.count


async def measure(url: str, args: argparse.Namespace) -> dict[str, dict[str, list[dict]]]:
    lows = {"alone": 0, "base": args.low, "spike": SPIKE * args.low}
    results: dict[str, dict[str, list[dict]]] = {m: {p: [] for p in PHASES} for m in MODELS}
    async with grpc.aio.insecure_channel(url) as channel:
        for model in MODELS:  # warm both copies up
            await phase(channel, model, args.high, args.low, 1.0, args.backoff_ms / 1000)
        for round_ in range(args.rounds):
            order = MODELS if round_ % 2 == 0 else MODELS[::-1]
            for model in order:
                for name in PHASES:
                    row = await phase(
                        channel,
                        model,
                        args.high,
                        lows[name],
                        args.seconds,
                        args.backoff_ms / 1000,
                        args.low_rows,
                    )
                    results[model][name].append(row)
                alone = results[model]["alone"][-1]
                for name in PHASES:
                    row = results[model][name][-1]
                    row["high_p50_ratio"] = row["high_p50_ms"] / alone["high_p50_ms"]
                    row["high_p99_ratio"] = row["high_p99_ms"] / alone["high_p99_ms"]
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    return results


def summary(results: dict[str, dict[str, list[dict]]]) -> list[dict]:
    rows = []
    for model in MODELS:
        for name in PHASES:
            runs = results[model][name]
            rows.append(
                {"model": model, "phase": name}
                | {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            )
    return rows


def table(rows: list[dict], args: argparse.Namespace) -> str:
    head = (
        f"high priority: {args.high} clients; low: {args.low} (base), {SPIKE * args.low} "
        f"(spike); shed copy refuses priority 2 at {args.shed_at} queued; medians of "
        f"{args.rounds} rounds\n"
        "model   phase  high p50 ms  x alone  high p99 ms  x alone  high/s  low/s  low refused"
        "  rows/exec  queue ms"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['model']:<7} {r['phase']:<6} {r['high_p50_ms']:>11.2f} "
            f"{r['high_p50_ratio']:>8.2f} "
            f"{r['high_p99_ms']:>12.2f} {r['high_p99_ratio']:>8.2f} {r['high_per_s']:>7.0f} "
            f"{r['low_per_s']:>6.0f} {r['low_refused_share']:>11.1%} "
            f"{r['rows_per_execution']:>10.1f} {r['queue_ms']:>9.2f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per phase")
    parser.add_argument("--high", type=int, default=2, help="high-priority clients")
    parser.add_argument("--low", type=int, default=2, help="low-priority clients before the spike")
    parser.add_argument("--shed-at", type=int, default=2, help="shed_queue_size of level 2")
    parser.add_argument("--backoff-ms", type=float, default=100.0)
    parser.add_argument("--low-rows", type=int, default=8, help="rows per low-priority request")
    parser.add_argument("--width", type=int, default=1024, help="the MLP's hidden width")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp, "repo")
        build(repo, args.shed_at, args.width)
        with serverproc.warpserve(repo, Path(tmp, "server.log")) as url:
            results = asyncio.run(measure(url, args))
    rows = summary(results)
    print(table(rows, args))
    out = Path(__file__).parent / "results" / "spike.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "summary": rows, "runs": results}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

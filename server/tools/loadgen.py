"""Closed-loop gRPC load generator behind ``warpserve bench``.

Requests are shaped from the model's metadata, serialized once, and sent as raw bytes
through a ``grpc.aio`` channel with no (de)serializer, so the client spends as little CPU
per call as Python allows: on a 2-core machine the client competes with the server it
measures, and every microsecond it saves is one the server gets.

With ``--shared-memory system`` (perf_analyzer's option) the tensors travel through a
POSIX shared memory object registered with the server instead of inside the requests:
what a client on the server's host can do to skip copying large tensors through gRPC.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import grpc
import numpy as np

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc
from warpserve.server.tools import tls_client
from warpserve.server.tools.client_shm import DEFAULT_OUTPUT_SHM_BYTES, ClientRegion
from warpserve.server.tools.shaping import (
    BenchError,
    RequestPool,
    build_pool,
    build_requests,
)

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
DEFAULT_WARMUP_S = 2.0
CALL_TIMEOUT_S = 60.0
# After a failed call a worker waits before its next one, doubling the wait while calls
# keep failing: a server that refuses everything (shutting down, overloaded) answers in
# microseconds, and retrying at once would flood it and the log with errors.
ERROR_BACKOFF_S = 0.001
MAX_ERROR_BACKOFF_S = 0.1
# Distinct error messages kept with their counts; later new ones count under OTHER_ERRORS.
MAX_DISTINCT_ERRORS = 5
OTHER_ERRORS = "(other errors)"
METADATA_TIMEOUT_S = 10.0
TABLE_COLUMNS = (
    f"{'concurrency':>11} {'req/s':>10} {'rows/s':>10} {'p50 ms':>8} "
    f"{'p90 ms':>8} {'p99 ms':>8} {'errors':>7}"
)


@dataclass
class BenchResult:
    """One concurrency level. ``requests`` counts successes completed in the window."""

    concurrency: int
    requests: int
    errors: int
    throughput_rps: float
    rows_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    duration_s: float = 0.0
    batch_size: int = 1
    first_error: str = ""
    # Every failed call, warm-up included: "CODE: details" -> count, first seen first.
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def to_json(self) -> dict[str, Any]:
        # NaN (no successful request) is not valid JSON; null is.
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


@dataclass
class Progress:
    concurrency: int
    phase: str  # "warmup" or "measure"
    elapsed_s: float
    phase_s: float
    requests: int
    errors: int


@dataclass
class _Tally:
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0  # failed calls completed inside the measured window
    failures: dict[str, int] = field(default_factory=dict)

    def failure(self, message: str) -> None:
        if message not in self.failures and len(self.failures) >= MAX_DISTINCT_ERRORS:
            message = OTHER_ERRORS
        self.failures[message] = self.failures.get(message, 0) + 1

    @property
    def first_error(self) -> str:
        return next(iter(self.failures), "")


# --------------------------------------------------------------------- talking to the server


def parse_url(url: str) -> str:
    """``HOST:PORT`` (a ``grpc://`` prefix is tolerated; no port means Triton's 8001)."""
    target = url.split("://", 1)[-1].rstrip("/")
    if not target:
        raise BenchError("empty server URL; expected HOST:PORT, e.g. localhost:8001", exit_code=2)
    has_port = target.rsplit(":", 1)[-1].isdigit() and (
        not target.startswith("[") or "]:" in target
    )
    return target if has_port else f"{target}:8001"


def open_channel(url: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
    return tls_client.aio_channel(parse_url(url), credentials, options=CHANNEL_OPTIONS)


async def fetch_model(
    channel: grpc.aio.Channel, model: str, version: str = ""
) -> tuple[pb.ModelMetadataResponse, int | None]:
    """Metadata plus max_batch_size (None when the server has no ModelConfig RPC)."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    try:
        metadata = await stub.ModelMetadata(
            pb.ModelMetadataRequest(name=model, version=version), timeout=METADATA_TIMEOUT_S
        )
    except grpc.aio.AioRpcError as e:
        raise BenchError(_describe_metadata_error(e, model)) from e
    try:
        config = await stub.ModelConfig(
            pb.ModelConfigRequest(name=model, version=version), timeout=METADATA_TIMEOUT_S
        )
    except grpc.aio.AioRpcError as e:
        if e.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise BenchError(
                f"ModelConfig for '{model}' failed: {e.code().name}: {e.details()}"
            ) from e
        return metadata, None
    return metadata, config.config.max_batch_size


def _describe_metadata_error(e: grpc.aio.AioRpcError, model: str) -> str:
    if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return (
            f"server unreachable: {e.code().name}: {e.details()}; "
            "check that it is running, that -u names its gRPC HOST:PORT, and that the TLS "
            "options match its own (--ssl, --root-certificates; --certificate-chain and "
            "--private-key for mutual TLS)"
        )
    return f"ModelMetadata for '{model}' failed: {e.code().name}: {e.details()}"


async def prepare(
    channel: grpc.aio.Channel,
    model: str,
    batch_size: int,
    version: str = "",
    region: ClientRegion | None = None,
) -> RequestPool:
    """The pool of requests; with ``region``, their tensors go through its shared memory."""
    if batch_size < 1:
        raise BenchError(f"--batch-size must be at least 1, got {batch_size}", exit_code=2)
    metadata, max_batch = await fetch_model(channel, model, version)
    batched = None if max_batch is None else max_batch > 0
    if max_batch and batch_size > max_batch:
        raise BenchError(
            f"--batch-size {batch_size} exceeds model '{model}' "
            f"max_batch_size {max_batch}; use at most {max_batch}",
            exit_code=2,
        )
    if region is None:
        return build_pool(metadata, batch_size, batched=batched, version=version)
    requests = build_requests(metadata, batch_size, batched=batched, version=version)
    outputs = [output.name for output in metadata.outputs]
    payloads = await region.hold(channel, requests, outputs)
    return RequestPool(metadata.name, version, batch_size, payloads)


# --------------------------------------------------------------------- the closed loop


async def run_load(
    channel: grpc.aio.Channel,
    pool: RequestPool,
    concurrency: int,
    duration_s: float,
    warmup_s: float = DEFAULT_WARMUP_S,
    progress: Callable[[Progress], None] | None = None,
) -> BenchResult:
    """``concurrency`` workers each keep exactly one request in flight until time is up."""
    call = channel.unary_unary(INFER_METHOD, request_serializer=None, response_deserializer=None)
    start = time.perf_counter_ns()
    window = (start + int(warmup_s * 1e9), start + int((warmup_s + duration_s) * 1e9))
    tally = _Tally()
    workers = [
        asyncio.create_task(_worker(call, pool.payloads, i, window, tally))
        for i in range(concurrency)
    ]
    reporter = asyncio.create_task(_report(progress, concurrency, start, window, tally))
    try:
        await asyncio.gather(*workers)
    finally:
        reporter.cancel()
        for w in workers:
            w.cancel()
    return _summarize(concurrency, pool.batch_size, duration_s, tally)


async def _worker(
    call: Any, payloads: list[bytes], offset: int, window: tuple[int, int], tally: _Tally
) -> None:
    measure_from, stop_at = window
    i = offset
    backoff_s = 0.0
    while True:
        t0 = time.perf_counter_ns()
        if t0 >= stop_at:
            return
        ok = await _send(call, payloads[i % len(payloads)], tally)
        t1 = time.perf_counter_ns()
        i += 1
        # A request counts when it completes inside the window: requests straddling
        # the end are awaited but not counted, so throughput is not inflated.
        if measure_from <= t1 <= stop_at:
            if ok:
                tally.latencies_ns.append(t1 - t0)
            else:
                tally.errors += 1
        if ok:
            backoff_s = 0.0
            continue
        backoff_s = min(2 * backoff_s or ERROR_BACKOFF_S, MAX_ERROR_BACKOFF_S)
        await asyncio.sleep(min(backoff_s, max(0.0, (stop_at - t1) / 1e9)))


async def _send(call: Any, payload: bytes, tally: _Tally) -> bool:
    try:
        await call(payload, timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as e:
        tally.failure(f"{e.code().name}: {e.details()}")
        return False
    return True


async def _report(
    progress: Callable[[Progress], None] | None,
    concurrency: int,
    start: int,
    window: tuple[int, int],
    tally: _Tally,
) -> None:
    if progress is None:
        return
    while True:
        now = time.perf_counter_ns()
        warm = now < window[0]
        phase_start, phase_end = (start, window[0]) if warm else window
        progress(
            Progress(
                concurrency,
                "warmup" if warm else "measure",
                (now - phase_start) / 1e9,
                (phase_end - phase_start) / 1e9,
                len(tally.latencies_ns),
                tally.errors,
            )
        )
        await asyncio.sleep(0.25)


def _summarize(concurrency: int, batch_size: int, duration_s: float, tally: _Tally) -> BenchResult:
    lat = np.asarray(tally.latencies_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(lat, [50, 90, 99]) if lat.size else (math.nan,) * 3
    return BenchResult(
        concurrency=concurrency,
        requests=int(lat.size),
        errors=tally.errors,
        throughput_rps=lat.size / duration_s,
        rows_per_s=lat.size * batch_size / duration_s,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=float(lat.mean()) if lat.size else math.nan,
        duration_s=duration_s,
        batch_size=batch_size,
        first_error=tally.first_error,
        failures=dict(tally.failures),
    )


async def measure(
    url: str,
    model: str,
    concurrency: int,
    duration_s: float,
    batch_size: int = 1,
    version: str = "",
    warmup_s: float = DEFAULT_WARMUP_S,
    progress: Callable[[Progress], None] | None = None,
    shared_memory: str = "none",
    credentials: grpc.ChannelCredentials | None = None,
) -> BenchResult:
    """Benchmark one concurrency level; raises BenchError when the model is unusable."""
    region = ClientRegion() if shared_memory == "system" else None
    async with open_channel(url, credentials) as channel:
        try:
            pool = await prepare(channel, model, batch_size, version, region)
            return await run_load(channel, pool, concurrency, duration_s, warmup_s, progress)
        finally:
            if region is not None:
                await region.release()


# --------------------------------------------------------------------- command line


def _concurrency_list(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers like 1,8,32, got '{text}'"
        )
    return levels


def _seconds(text: str, allow_zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value >= 0 if allow_zero else value > 0):
        kind = "non-negative" if allow_zero else "positive"
        raise argparse.ArgumentTypeError(f"expected a {kind} number of seconds, got '{text}'")
    return value


def _positive_seconds(text: str) -> float:
    return _seconds(text, allow_zero=False)


def _non_negative_seconds(text: str) -> float:
    return _seconds(text, allow_zero=True)


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-u",
        "--url",
        default="localhost:8001",
        help="server gRPC address HOST:PORT (default localhost:8001)",
    )
    parser.add_argument("-m", "--model", required=True, help="model name")
    parser.add_argument("--model-version", default="", help="version (default: the server's)")
    parser.add_argument(
        "--concurrency",
        type=_concurrency_list,
        default=[1, 8, 32],
        help="requests kept in flight, one run per value (default 1,8,32)",
    )
    parser.add_argument(
        "--duration",
        type=_positive_seconds,
        default=10.0,
        help="measured seconds per concurrency level (default 10)",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative_seconds,
        default=DEFAULT_WARMUP_S,
        help=f"unmeasured seconds before each level (default {DEFAULT_WARMUP_S})",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=1,
        help="rows per request; needs max_batch_size >= N (default 1)",
    )
    parser.add_argument(
        "--shared-memory",
        choices=("none", "system"),
        default="none",
        help="system: pass tensors through a POSIX shared memory object registered with "
        "the server (which must run on this host with --allow-client-shm) instead of "
        "inside each request, as perf_analyzer's option of this name (default none)",
    )
    parser.add_argument(
        "--output-shared-memory-size",
        type=_positive_int,
        default=DEFAULT_OUTPUT_SHM_BYTES,
        metavar="BYTES",
        help="with --shared-memory system, the room reserved for each output of each "
        f"request (default {DEFAULT_OUTPUT_SHM_BYTES})",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of a table"
    )
    tls_client.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """``warpserve bench``: 0 every request succeeded, 1 unreachable or any request
    failed, 2 usage error."""
    try:
        results = asyncio.run(_run_levels(args, _progress_printer(sys.stderr)))
    except BenchError as e:
        print(f"warpserve bench: error: {e}", file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps(_json_report(args, results), indent=2))
    for r in results:
        if r.requests == 0 and not r.failed:
            print(
                f"warpserve bench: concurrency {r.concurrency}: no request completed in time",
                file=sys.stderr,
            )
        if r.failed:
            print(failure_summary(r), file=sys.stderr)
    return 0 if all(r.requests and not r.failed for r in results) else 1


def failure_summary(r: BenchResult) -> str:
    """The failed calls of one level, warm-up included, by distinct message."""
    lines = [
        f"warpserve bench: concurrency {r.concurrency}: {r.failed} requests failed"
        f" ({r.requests} succeeded in the measured window); errors by message:"
    ]
    lines += [f"  {count:>8} x {message}" for message, count in r.failures.items()]
    return "\n".join(lines)


async def _run_levels(
    args: argparse.Namespace, progress: Callable[[Progress], None]
) -> list[BenchResult]:
    results = []
    region = None
    if args.shared_memory == "system":
        region = ClientRegion(args.output_shared_memory_size)
    try:
        credentials = tls_client.channel_credentials(args)
    except tls_client.ClientTlsError as exc:
        raise BenchError(str(exc), exit_code=2) from None
    async with open_channel(args.url, credentials) as channel:
        try:
            pool = await prepare(channel, args.model, args.batch_size, args.model_version, region)
            if not args.json:
                print(_table_header(args), flush=True)
            for level in args.concurrency:
                result = await run_load(channel, pool, level, args.duration, args.warmup, progress)
                _clear_progress(sys.stderr)
                if not args.json:
                    print(format_row(result), flush=True)
                results.append(result)
        finally:
            if region is not None:
                await region.release()
    return results


def _table_header(args: argparse.Namespace) -> str:
    title = (
        f"model {args.model}{'/' + args.model_version if args.model_version else ''}"
        f" at {parse_url(args.url)}, batch {args.batch_size}, {args.duration:g}s per level"
        + (", tensors in shared memory" if args.shared_memory == "system" else "")
    )
    return f"{title}\n{TABLE_COLUMNS}"


def format_row(r: BenchResult) -> str:
    row = (
        f"{r.concurrency:>11} {r.throughput_rps:>10.1f} {r.rows_per_s:>10.1f} "
        f"{r.p50_ms:>8.2f} {r.p90_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>7}"
    )
    return f"{row}  first error: {r.first_error}" if r.errors else row


def _json_report(args: argparse.Namespace, results: list[BenchResult]) -> dict[str, Any]:
    return {
        "url": parse_url(args.url),
        "model": args.model,
        "version": args.model_version,
        "batch_size": args.batch_size,
        "shared_memory": args.shared_memory,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "results": [r.to_json() for r in results],
    }


def _progress_printer(stream: TextIO) -> Callable[[Progress], None]:
    tty = stream.isatty()
    announced: set[tuple[int, str]] = set()

    def show(p: Progress) -> None:
        line = (
            f"concurrency {p.concurrency}: {p.phase} {p.elapsed_s:5.1f}/{p.phase_s:g}s"
            f"  {p.requests} ok  {p.errors} errors"
        )
        if tty:
            stream.write(f"\r\x1b[2K{line}")
            stream.flush()
        elif (p.concurrency, p.phase) not in announced:
            # Logs and CI: one line per phase instead of four per second.
            announced.add((p.concurrency, p.phase))
            print(f"concurrency {p.concurrency}: {p.phase} for {p.phase_s:g}s", file=stream)

    return show


def _clear_progress(stream: TextIO) -> None:
    if stream.isatty():
        stream.write("\r\x1b[2K")
        stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry (``python -m warpserve.server.tools.loadgen``)."""
    parser = argparse.ArgumentParser(prog="warpserve bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

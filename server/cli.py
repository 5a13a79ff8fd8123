"""The ``warpserve`` command: serve, bench, models.

``serve`` takes Triton's flag names where they exist so a Triton command line
carries over.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from warpserve import __version__
from warpserve.server import tls
from warpserve.server.argtypes import boolean, non_negative_int, positive_int, workers_count
from warpserve.server.busypoll import DEFAULT_WINDOW_US, MIN_CORES
from warpserve.server.options import ServerOptions
from warpserve.server.ports import PortUnavailable, check_ports

# Server processes without --workers: one (the README says why).
DEFAULT_WORKERS = "1"


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the inference server",
        description="Serve a Triton-layout model repository over the KServe v2 / Triton "
        "gRPC protocol. Without --model-repository, serves the built-in demo models "
        "(trained and exported on first use, then cached).",
    )
    p.add_argument(
        "--model-repository",
        "--model-store",
        type=Path,
        default=None,
        help="Triton-layout model repository (<model>/config.pbtxt, "
        "<model>/<version>/model.onnx); default: the built-in demo repository",
    )
    p.add_argument("--grpc-address", default="0.0.0.0", help="address the gRPC server binds")
    p.add_argument(
        "--grpc-port",
        type=int,
        default=8001,
        help="gRPC port (KServe v2 inference, health, admin); 0 picks a free port",
    )
    p.add_argument(
        "--http-address", default="0.0.0.0", help="address the HTTP (KServe v2 REST) server binds"
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=8000,
        help="HTTP port: KServe v2 REST inference (JSON and Triton's binary tensor "
        "extension), health, metadata, repository and statistics endpoints, and the status "
        "page at /; 0 picks a free port",
    )
    p.add_argument(
        "--allow-http",
        type=boolean,
        default=True,
        help="serve the HTTP endpoint (true/false)",
    )
    p.add_argument(
        "--http-max-input-size",
        type=positive_int,
        default=64 * 1024 * 1024,
        metavar="BYTES",
        help="largest HTTP request body accepted, in bytes (default 64 MiB, as Triton); "
        "larger ones are refused with 413",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=8002,
        help="Prometheus metrics port (nv_inference_* and warpserve_*); 0 picks a free port",
    )
    p.add_argument("--metrics-address", default="0.0.0.0", help="address metrics bind")
    p.add_argument(
        "--allow-metrics", type=boolean, default=True, help="serve Prometheus metrics (true/false)"
    )
    p.add_argument(
        "--model-control-mode",
        choices=["none", "poll", "explicit"],
        default="none",
        help="none: load every model at start; poll: also reload on repository "
        "changes; explicit: load only --load-model and RepositoryModelLoad calls",
    )
    p.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="with --model-control-mode=explicit, a model to load at start "
        "(repeatable; '*' loads all)",
    )
    p.add_argument(
        "--repository-poll-secs",
        type=float,
        default=15.0,
        help="seconds between repository scans in poll mode",
    )
    p.add_argument(
        "--exit-timeout-secs",
        type=float,
        default=30.0,
        help="on SIGTERM/SIGINT, how long in-flight requests may take to finish",
    )
    p.add_argument(
        "--grpc-max-message-bytes",
        type=int,
        default=256 * 1024 * 1024,
        help="largest gRPC message accepted or sent, in bytes (default 256 MiB; at most "
        "2147483647); larger requests are refused with RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--rollback-grace-secs",
        type=float,
        default=300.0,
        help="how long a replaced version stays loaded so rollback needs no load",
    )
    p.add_argument(
        "--admin-token-file",
        type=Path,
        default=None,
        help="file holding the admin API token (or set WARPSERVE_ADMIN_TOKEN); admin calls "
        "must then send 'authorization: Bearer <token>'. The admin API (warpserve models) is "
        "served on a loopback --grpc-address, or on any address with a token; on a "
        "non-loopback address without one it is left off with a warning",
    )
    p.add_argument(
        "--admin",
        action="store_true",
        help="require the admin API: refuse to start (exit 2) instead of leaving it off "
        "when --grpc-address is not loopback and no admin token is set",
    )
    p.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the asyncio event loop under the gRPC server: uvloop (libuv; less per-request "
        "overhead) or the standard library's; auto takes uvloop when it is installed",
    )
    p.add_argument(
        "--grpc-frontend",
        choices=("auto", "native", "python"),
        default="auto",
        help="what runs the gRPC port: native (gRPC's C++ server; HTTP/2 and framing on its "
        "own threads, the services on the event loop, which wakes once per group of "
        "requests), python (grpcio's asyncio server), or auto: native where warpserve was "
        "built with it (it needs gRPC's C++ library at install time: libgrpc++-dev)",
    )
    p.add_argument(
        "--busy-poll-us",
        type=non_negative_int,
        default=None,
        metavar="US",
        help="after each request, the event loop polls without sleeping for up to this many "
        "microseconds (never while a model runs on a worker thread): a thread woken from "
        "sleep runs on cold caches, which costs small models much of their latency. Polls only "
        "while a single call is in flight, using up to one core while a lone client keeps "
        "sending; 0 turns it off. Default: "
        f"{DEFAULT_WINDOW_US} where the process may use {MIN_CORES} cores or more (CPU "
        "affinity and cgroup quota), else 0",
    )
    p.add_argument(
        "--allow-client-shm",
        type=boolean,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="let clients register system shared memory regions (objects under /dev/shm) "
        "and pass tensors through them instead of the request, as with Triton's flag of "
        "this name: for clients on this host, saves copying large tensors through gRPC. Any "
        "client that reaches the gRPC port can then read and write shared memory objects "
        "this server's user can open, so it is off by default",
    )
    tls.add_arguments(p, ("grpc", "http"))
    p.add_argument(
        "--workers",
        type=workers_count,
        default=DEFAULT_WORKERS,
        metavar="N|auto",
        help="server processes answering on the same ports (SO_REUSEPORT), each with its "
        "own model instances and event loop, so the request path uses more than one core; "
        "loads, routing, shared-memory regions, statistics and metrics stay server-wide. "
        "auto: one per usable core. 1: a single process, no supervisor. Default: "
        f"{DEFAULT_WORKERS}",
    )
    p.add_argument("--log-verbose", type=int, default=0, help="0: info; 1 or more: debug logging")
    p.set_defaults(func=_serve)


def _options(args: argparse.Namespace) -> ServerOptions:
    from warpserve.server.grpc.admin_auth import load_token

    return ServerOptions(
        model_repository=args.model_repository,
        grpc_address=args.grpc_address,
        grpc_port=args.grpc_port,
        http_address=args.http_address,
        http_port=args.http_port,
        allow_http=args.allow_http,
        http_max_input_bytes=args.http_max_input_size,
        metrics_address=args.metrics_address,
        metrics_port=args.metrics_port,
        allow_metrics=args.allow_metrics,
        model_control_mode=args.model_control_mode,
        load_models=args.load_model,
        repository_poll_secs=args.repository_poll_secs,
        exit_timeout_secs=args.exit_timeout_secs,
        max_message_bytes=args.grpc_max_message_bytes,
        rollback_grace_secs=args.rollback_grace_secs,
        admin_token=load_token(args.admin_token_file),
        log_verbose=args.log_verbose,
        busy_poll_us=args.busy_poll_us,
        allow_client_shm=args.allow_client_shm,
        grpc_tls=tls.from_args(args, "grpc"),
        http_tls=tls.from_args(args, "http"),
        workers=args.workers,
        grpc_frontend=args.grpc_frontend,
    )


def _serve(args: argparse.Namespace) -> int:
    from warpserve.server.grpc.admin import admin_exposure

    try:
        options = _options(args)
        admin_exposure(options.grpc_address, options.admin_token, required=args.admin)
    except (OSError, ValueError) as exc:  # a bad token file, or admin required but unsafe
        print(f"warpserve serve: error: {exc}", file=sys.stderr)
        return 2
    try:
        check_ports(options)  # before the demo models are built or any model loads
    except PortUnavailable as exc:
        print(f"warpserve serve: error: {exc}", file=sys.stderr)
        return 2
    if options.model_repository is None:
        from warpserve.server.demo.build import ensure_demo_repository

        options.model_repository = ensure_demo_repository(progress=True)
    from warpserve.server.grpc.server import run

    try:
        loop_factory = event_loop_factory(args.event_loop)
    except ImportError as exc:
        print(f"warpserve serve: error: {exc}", file=sys.stderr)
        return 2
    try:
        if options.workers > 1:
            from warpserve.server.workers.supervisor import supervise

            return supervise(options, options.workers, args.event_loop)
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            status = runner.run(run(options))
    except PortUnavailable as exc:  # taken between the check and the bind
        print(f"warpserve serve: error: {exc}", file=sys.stderr)
        return 2
    if status:
        # Requests were cut off at the exit timeout: a worker thread may still be running
        # a model, and the interpreter's orderly exit would wait for it.
        logging.shutdown()
        os._exit(status)
    return status


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for ``asyncio.Runner``; None is the standard library's loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as exc:
        if choice == "auto":
            return None
        raise ImportError(
            "--event-loop uvloop needs the uvloop package (pip install uvloop)"
        ) from exc
    return uvloop.new_event_loop


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from warpserve.server.tools import loadgen

    p = sub.add_parser(
        "bench",
        help="closed-loop load generator (throughput and latency percentiles)",
        description="Send pre-serialized random ModelInfer requests shaped from the "
        "model's metadata and report throughput and p50/p90/p99 latency per concurrency.",
    )
    loadgen.add_arguments(p)
    p.set_defaults(func=loadgen.run)


def _add_models(sub: argparse._SubParsersAction) -> None:
    try:
        from warpserve.server.tools import models_cli
    except ImportError:
        return
    p = sub.add_parser(
        "models",
        help=f"model lifecycle: {', '.join(models_cli.CALLS)}",
        description="Drive the admin API of a running warpserve.",
    )
    models_cli.add_arguments(p)
    p.set_defaults(func=models_cli.run)


def _add_profile(sub: argparse._SubParsersAction) -> None:
    # Listed here for 'warpserve -h'; main() hands its arguments to the profiling CLI,
    # which has two forms (profile, profile compare) with flags of their own.
    sub.add_parser(
        "profile",
        help="profile a model version, or compare it with another (exit 1 on a regression)",
        add_help=False,
    )


def _add_compile(sub: argparse._SubParsersAction) -> None:
    # compile/ needs torch only when it runs; its flags are plain argparse.
    from warpserve.compile import cli as compile_cli

    p = sub.add_parser(
        "compile",
        help="PyTorch model -> checked, measured variants -> the fastest written to a repository",
        description="Export a trained PyTorch model to ONNX, ONNX Runtime, TensorRT, "
        "AOTInductor and TorchScript variants, check each against eager PyTorch, measure "
        "each over a sweep of batch sizes, and write the best as a new model version. "
        "Exit 0: a version was written; 1: no variant passed; 2: usage error.",
    )
    compile_cli.add_arguments(p)
    p.set_defaults(func=compile_cli.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="warpserve", description="GPU-optimized inference server (KServe v2 / Triton gRPC)"
    )
    parser.add_argument("--version", action="version", version=f"warpserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_bench(sub)
    _add_models(sub)
    _add_profile(sub)
    _add_compile(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["profile"]:
        from warpserve.profiling.cli import main as profile_main

        return profile_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if getattr(args, "log_verbose", 0) else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname).1s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Serving benchmarks: warpserve against ceilings measured in the same run.

1. fraud_scorer (a tiny MLP), batch-1 requests at concurrency 1, 2, 4, 8, 16, 32 and 64:
   warpserve against the overhead-bound ceiling (bench/ceiling_server.py: fixed replies,
   same load generator), the whole curve side by side (see curve.py), with warpserve's
   queue time per request and requests per execution from its ModelStatistics.
   Reports throughput(ours)/throughput(ceiling) at 64 and p50(ours)/p50(ceiling) at 1
   also against the uvloop ceiling, for warpserve without busy polling and with the
   python gRPC frontend (--grpc-frontend python), and our p99
   at the highest load.
2. ResNet-18 at 224x224, 8 concurrent batch-1 requests: warpserve images/s against ONNX
   Runtime run in-process at its best batch size among 1, 2, 4, 8, in runs that alternate
   with the served ones every few seconds. The default configuration is measured twice:
   with the images in the requests, and in system shared memory (``--shared-memory
   system``).
3. ResNet-18's curve: the default configuration at every concurrency level beside
   ONNX Runtime in-process (see resnet_curve.py).

Prints a table and writes bench/results/serving.json. Timings are reported, never asserted.

    python bench/bench_serving.py [--quick] [--repo REPO] [--only fraud|resnet|resnet-curve]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import curve
import grpc
import numpy as np
import serverproc

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc
from warpserve.server.native.transport import available as native_available
from warpserve.server.tools.loadgen import TABLE_COLUMNS, BenchResult, format_row, measure

BENCH_DIR = Path(__file__).resolve().parent
FRAUD_MODEL = "fraud_scorer"
RESNET_MODEL = "resnet18"
NO_POLL = "no-busy-poll"  # warpserve with --busy-poll-us 0: the loop sleeps when idle
# warpserve with grpcio's asyncio server on its gRPC port instead of the native frontend.
PY_FRONTEND = "python-frontend"
# The fixed-reply server on the native frontend: the transport ceiling warpserve runs on.
NATIVE_CEILING = "ceiling-native"


# ------------------------------------------------------------------ processes


def serve_warpserve(
    repo: Path, log_dir: Path, model: str, *flags: str, name: str = "warpserve"
) -> contextlib.AbstractContextManager[str]:
    log_path = log_dir / f"{name}-{model}.log"
    return serverproc.warpserve(repo, log_path, *flags, model=model, metrics=True)


def serve_ceiling(
    metadata_from: str,
    log_dir: Path,
    model: str,
    event_loop: str = "asyncio",
    frontend: str = "python",
) -> contextlib.AbstractContextManager[str]:
    log_path = log_dir / f"ceiling-{event_loop}-{frontend}-{model}.log"
    # One row per answer: the requests here carry one row each.
    return serverproc.ceiling(
        metadata_from, model, log_path, event_loop=event_loop, batch_size=1, frontend=frontend
    )


# ------------------------------------------------------------------ model repositories


def fraud_repository(repo: Path | None, work: Path) -> Path:
    """--repo if given, else the demo repository, else a stand-in MLP of the same size."""
    if repo is not None:
        return repo
    try:
        from warpserve.server.demo.build import ensure_demo_repository
    except ImportError:
        print(
            "demo repository builder not available; using a stand-in fraud_scorer MLP",
            file=sys.stderr,
        )
        return _write_standin_mlp(work / "mlp-repo")
    return Path(ensure_demo_repository())


def _write_standin_mlp(repo: Path) -> Path:
    import torch
    from resnet import write_triton_model

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(16, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 1),
        torch.nn.Sigmoid(),
    ).eval()
    config = (
        f'name: "{FRAUD_MODEL}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 64\n'
        'input [ { name: "TRANSACTION" data_type: TYPE_FP32 dims: [ 16 ] } ]\n'
        'output [ { name: "FRAUD_PROBABILITY" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        "dynamic_batching { }\n"
    )
    write_triton_model(
        repo, FRAUD_MODEL, mlp, torch.zeros(1, 16), ("TRANSACTION", "FRAUD_PROBABILITY"), config
    )
    return repo


# ------------------------------------------------------------------ benchmarks


def bench_fraud(
    repo: Path,
    log_dir: Path,
    levels: list[int],
    durations: tuple[float, float],
    rounds: int = 3,
) -> dict[str, Any]:
    duration, warmup = durations
    # The uvloop ceiling only where uvloop is installed (warpserve then runs on it too).
    with_uvloop = importlib.util.find_spec("uvloop") is not None
    ceilings = ["ceiling", "ceiling-uvloop"] if with_uvloop else ["ceiling"]
    if native_available():  # the same fixed replies on the transport warpserve runs on
        ceilings.append(NATIVE_CEILING)
    names = (*ceilings, "warpserve", NO_POLL, PY_FRONTEND)
    low, high = min(levels), max(levels)
    # The whole curve for warpserve and the ceilings of grpc.aio and of the native
    # frontend; the others only at the ends, where their ratios are reported.
    curve_only = ("ceiling", NATIVE_CEILING, "warpserve")
    plan = {lv: [n for n in names if n in curve_only or lv in (low, high)] for lv in levels}
    results: dict[tuple[str, int], list[BenchResult]] = {
        (name, level): [] for level in levels for name in plan[level]
    }
    inside: dict[int, list[ServerSide]] = {level: [] for level in levels}
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(serve_warpserve(repo, log_dir, FRAUD_MODEL))
        urls = {
            "warpserve": url,
            NO_POLL: stack.enter_context(
                serve_warpserve(repo, log_dir, FRAUD_MODEL, "--busy-poll-us", "0", name=NO_POLL)
            ),
            PY_FRONTEND: stack.enter_context(
                serve_warpserve(
                    repo, log_dir, FRAUD_MODEL, "--grpc-frontend", "python", name=PY_FRONTEND
                )
            ),
            "ceiling": stack.enter_context(serve_ceiling(url, log_dir, FRAUD_MODEL)),
        }
        if with_uvloop:
            urls["ceiling-uvloop"] = stack.enter_context(
                serve_ceiling(url, log_dir, FRAUD_MODEL, "uvloop")
            )
        if NATIVE_CEILING in ceilings:
            urls[NATIVE_CEILING] = stack.enter_context(
                serve_ceiling(
                    url, log_dir, FRAUD_MODEL, "uvloop" if with_uvloop else "asyncio", "native"
                )
            )
        # Alternating short rounds: drift on a shared VM (±20-30% between runs here)
        # hits both sides alike, and the per-round ratios' median is what we report.
        for _ in range(rounds):
            for level in levels:
                for name in plan[level]:
                    before = _server_side(urls[name], FRAUD_MODEL) if name == "warpserve" else None
                    results[name, level].append(
                        _measure(urls[name], FRAUD_MODEL, level, duration, warmup, 1, name)
                    )
                    if before is not None:
                        inside[level].append(_server_side(urls[name], FRAUD_MODEL) - before)
    report: dict[str, Any] = {
        "model": FRAUD_MODEL,
        "rounds": rounds,
        **{
            name: [
                r.to_json()
                for lv in levels
                if lv in plan and name in plan[lv]
                for r in results[name, lv]
            ]
            for name in names
        },
        "p99_ms_at_highest_load": max(r.p99_ms for r in results["warpserve", high]),
        "highest_load_concurrency": high,
        "curve": curve.from_results(results, "warpserve", "ceiling"),
        **(
            {"curve_vs_native_ceiling": curve.from_results(results, "warpserve", NATIVE_CEILING)}
            if NATIVE_CEILING in names
            else {}
        ),
    }
    for row in report["curve"]["levels"]:
        sides = inside[row["concurrency"]]
        row["queue_us_per_request"] = _median([x.queue_us_per_request for x in sides])
        row["requests_per_execution"] = _median([x.requests_per_execution for x in sides])
    for ours, ceiling, suffix in (
        ("warpserve", "ceiling", ""),
        ("warpserve", "ceiling-uvloop", "_vs_uvloop_ceiling"),
        (NO_POLL, "ceiling", "_without_busy_poll"),
        (PY_FRONTEND, "ceiling", "_python_frontend"),
        ("warpserve", NATIVE_CEILING, "_vs_native_ceiling"),
    ):
        if ceiling not in names:
            continue
        throughput = [
            _ratio(o.throughput_rps, c.throughput_rps)
            for o, c in zip(results[ours, high], results[ceiling, high], strict=True)
        ]
        latency = [
            _ratio(o.p50_ms, c.p50_ms)
            for o, c in zip(results[ours, low], results[ceiling, low], strict=True)
        ]
        report[f"throughput_ratio_at_{high}{suffix}"] = _median(throughput)
        report[f"throughput_ratios_at_{high}{suffix}_per_round"] = throughput
        report[f"p50_ratio_at_{low}{suffix}"] = _median(latency)
        report[f"p50_ratios_at_{low}{suffix}_per_round"] = latency
    return report


@dataclass(frozen=True)
class ServerSide:
    """The server's own statistics for a model (ModelStatistics), and their difference."""

    requests: int = 0
    executions: int = 0
    queue_ns: int = 0

    def __sub__(self, other: ServerSide) -> ServerSide:
        return ServerSide(
            self.requests - other.requests,
            self.executions - other.executions,
            self.queue_ns - other.queue_ns,
        )

    @property
    def queue_us_per_request(self) -> float | None:
        return self.queue_ns / 1e3 / self.requests if self.requests else None

    @property
    def requests_per_execution(self) -> float | None:
        return self.requests / self.executions if self.executions else None


def _server_side(url: str, model: str) -> ServerSide:
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=10)
    stats = reply.model_stats[0]
    queue = stats.inference_stats.queue
    return ServerSide(stats.inference_stats.success.count, stats.execution_count, queue.ns)


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.median(known)) if known else None


def _measure(
    url: str,
    model: str,
    concurrency: int,
    duration: float,
    warmup: float,
    batch_size: int,
    label: str,
    shared_memory: str = "none",
) -> BenchResult:
    result = asyncio.run(
        measure(
            url,
            model,
            concurrency,
            duration,
            batch_size,
            warmup_s=warmup,
            shared_memory=shared_memory,
        )
    )
    print(f"{label:>10} {format_row(result)}", flush=True)
    return result


RESNET_CONFIGS = ("default", "one instance", "one, wait-for-8", "default, shm")


def bench_resnet(
    work: Path,
    log_dir: Path,
    durations: tuple[float, float],
    rounds: int = 3,
    only: list[str] | None = None,
) -> dict[str, Any]:
    import in_process
    from resnet import write_resnet18

    duration, warmup = durations
    repo = work / "resnet-repo"
    model_path = write_resnet18(repo) / "1" / "model.onnx"
    one = ("kind: KIND_CPU", "count: 1 kind: KIND_CPU")
    fill = ("dynamic_batching { }", FILL)
    repos = {
        "default": repo,
        "one instance": _variant_repo(repo, work / "resnet-repo-one", one),
        "one, wait-for-8": _variant_repo(repo, work / "resnet-repo-fill", one, fill),
    }
    # name: (repository, how the load generator passes the images)
    configs = {name: (name, "none") for name in repos}
    configs["default, shm"] = ("default", "system")
    assert list(configs) == list(RESNET_CONFIGS)
    if only:
        configs = {name: configs[name] for name in only}
        repos = {name: repos[name] for name in {served for served, _ in configs.values()}}
    arrangements = in_process.arrangements(model_path)
    ours: dict[str, list[list[BenchResult]]] = {name: [] for name in configs}
    # beside[config][arrangement]: in-process images/s per round, from the runs that
    # alternated with that configuration's segments.
    beside: dict[str, dict[str, list[float]]] = {
        name: {arrangement: [] for arrangement in arrangements} for name in configs
    }
    ceilings: list[dict[tuple[str, int], float]] = []
    best_per_round: list[dict[str, str]] = []
    with contextlib.ExitStack() as stack:
        urls = {
            name: stack.enter_context(
                serve_warpserve(config_repo, log_dir, RESNET_MODEL, "--allow-client-shm")
            )
            for name, config_repo in repos.items()
        }
        # Each round sweeps the in-process arrangements at each batch size, then measures
        # every configuration in segments that alternate with runs of each arrangement at
        # its best batch size of the round. The ceiling never runs beside a loaded server,
        # so the two never share the CPUs, and the two sides interleave every few seconds:
        # this VM's speed drifts by a third within seconds to minutes, which a ceiling
        # measured once per configuration (or once per round) takes into the ratio. The
        # sweep only picks the batch sizes; the ratios use the runs in between, so a sweep
        # result that was high by chance does not lower them.
        segment = duration / SEGMENTS
        for _ in range(rounds):
            sweep = in_process.sweep(arrangements, duration / 4, warmup / 2)
            ceilings.append(sweep)
            batches = {
                arrangement: max(in_process.BATCHES, key=lambda b: sweep[arrangement, b])
                for arrangement in arrangements
            }
            best_per_round.append({a: in_process.label(a, b) for a, b in batches.items()})
            for name, (served, shm) in configs.items():
                images = {arrangement: 0.0 for arrangement in arrangements}
                seconds = dict(images)
                parts = []
                for _ in range(SEGMENTS):
                    for arrangement, sessions in arrangements.items():
                        rate, elapsed = in_process.run(
                            sessions, batches[arrangement], segment / 2, warm_first=True
                        )
                        images[arrangement] += rate * elapsed
                        seconds[arrangement] += elapsed
                    parts.append(
                        _measure(urls[served], RESNET_MODEL, 8, segment, warmup / 2, 1, name, shm)
                    )
                for arrangement in arrangements:
                    beside[name][arrangement].append(images[arrangement] / seconds[arrangement])
                ours[name].append(parts)
    report: dict[str, Any] = {
        "model": RESNET_MODEL,
        "rounds": rounds,
        "in_process_images_per_s": [
            {in_process.label(*key): rate for key, rate in sweep.items()} for sweep in ceilings
        ],
        "in_process_best_batch_per_round": best_per_round,
        "configs": list(configs),
    }
    for name in configs:
        rates = [_images_per_s(parts) for parts in ours[name]]
        # The ceiling: ONNX Runtime in-process, one session at its best batch size. The
        # stricter one also counts a session per core, side by side, and takes each
        # round's faster arrangement.
        single = beside[name][in_process.ONE_SESSION]
        fastest = [max(rnd) for rnd in zip(*beside[name].values(), strict=True)]
        ratios = [_ratio(s, c) for s, c in zip(rates, single, strict=True)]
        strict = [_ratio(s, c) for s, c in zip(rates, fastest, strict=True)]
        report[name] = {
            "segments": [[r.to_json() for r in parts] for parts in ours[name]],
            "images_per_s": rates,
            "in_process_beside_images_per_s": beside[name],
            "throughput_ratio": _median(ratios),
            "throughput_ratios_per_round": ratios,
            "throughput_ratio_vs_best_arrangement": _median(strict),
            "throughput_ratios_vs_best_arrangement_per_round": strict,
        }
    return report


def bench_resnet_curve(
    work: Path, log_dir: Path, durations: tuple[float, float], rounds: int
) -> dict[str, Any]:
    """The default ResNet-18 configuration at every concurrency level (see resnet_curve)."""
    import in_process
    import resnet_curve
    from resnet import write_resnet18

    repo = work / "resnet-repo"
    model_path = write_resnet18(repo) / "1" / "model.onnx"
    sessions = in_process.arrangements(model_path)[in_process.ONE_SESSION]
    with serve_warpserve(repo, log_dir, RESNET_MODEL) as url:

        def served(level: int, duration: float, warmup: float) -> float:
            return _measure(url, RESNET_MODEL, level, duration, warmup, 1, "default").rows_per_s

        return resnet_curve.measure(served, sessions, list(curve.LEVELS), durations, rounds)


# Served and in-process runs alternate this many times per configuration and round.
SEGMENTS = 3


def _images_per_s(parts: list[BenchResult]) -> float:
    """Images/s over a round's segments: all images over all measured seconds."""
    return sum(p.rows_per_s * p.duration_s for p in parts) / sum(p.duration_s for p in parts)


# The default is Triton's for ONNX Runtime on the CPU: two instances, the cores split
# between them, eager dispatch. Two alternatives are measured beside it. One instance
# with all the cores settles, with 8 closed-loop clients, into alternating batches of
# 1 and 7 (a lone request runs while the other seven queue); Triton's wait for a
# preferred size turns that into full batches for a few ms of queueing.
FILL = (
    "dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 50000 }\n"
    'parameters { key: "batching" value { string_value: "triton" } }'
)


def _variant_repo(repo: Path, target: Path, *edits: tuple[str, str]) -> Path:
    """A copy of ``repo`` whose config has each (old, new) replacement made."""
    if not target.exists():
        shutil.copytree(repo, target)
        config = target / RESNET_MODEL / "config.pbtxt"
        text = config.read_text()
        for old, new in edits:
            assert old in text, f"{old!r} not in the ResNet config"
            text = text.replace(old, new)
        config.write_text(text)
    return target


def _ratio(ours: float, ceiling: float) -> float | None:
    """None when either side has no successful request (NaN) or the ceiling is zero."""
    if math.isnan(ours) or math.isnan(ceiling) or ceiling == 0:
        return None
    return ours / ceiling


# ------------------------------------------------------------------ report


def print_summary(report: dict[str, Any]) -> None:
    print("\nsummary")
    fraud = report.get("fraud")
    if fraud:
        for key in (k for k in fraud if "_ratio_at_" in k and not k.endswith("_per_round")):
            rounds = ", ".join(
                _fmt(v) for v in fraud[key.replace("ratio_at", "ratios_at") + "_per_round"]
            )
            print(f"  fraud {key:<28} {_fmt(fraud[key])}  (median of rounds: {rounds})")
        print(
            f"  fraud p99 ms at concurrency {fraud['highest_load_concurrency']:<6}"
            f"  {_fmt(fraud['p99_ms_at_highest_load'])}"
        )
    if fraud:
        curve.print_curve(
            f"fraud_scorer against the asyncio ceiling (median of {fraud['rounds']} rounds)",
            fraud["curve"],
        )
        if "curve_vs_native_ceiling" in fraud:
            curve.print_curve(
                "fraud_scorer against the same fixed replies on the native gRPC frontend "
                f"(median of {fraud['rounds']} rounds)",
                fraud["curve_vs_native_ceiling"],
            )
    if "resnet_curve" in report:
        curve.print_curve(
            "resnet18, default configuration, against ONNX Runtime in-process (one session, "
            f"batch {report['resnet_curve']['in_process_batch']})",
            report["resnet_curve"],
            "images/s",
        )
    resnet = report.get("resnet")
    if resnet:
        for name in resnet["configs"]:
            r = resnet[name]
            strict = r["throughput_ratios_vs_best_arrangement_per_round"]
            print(
                f"  resnet18 {name:<15} ratio {_fmt(r['throughput_ratio'])} against one "
                f"session (rounds: {_fmts(r['throughput_ratios_per_round'])}), "
                f"{_fmt(r['throughput_ratio_vs_best_arrangement'])} against the best "
                f"arrangement (rounds: {_fmts(strict)})"
            )
            print(f"  {'':>9} {'served':<18} images/s {_fmts(r['images_per_s'], '.1f')}")
            for arrangement, rates in r["in_process_beside_images_per_s"].items():
                print(f"  {'':>9} {arrangement:<18} images/s {_fmts(rates, '.1f')}")


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _fmts(values: list[float | None], spec: str = ".3f") -> str:
    return ", ".join(_fmt(v, spec) for v in values)


def _run_benchmarks(
    args: argparse.Namespace, durations: tuple[float, float], report: dict[str, Any]
) -> None:
    with tempfile.TemporaryDirectory(prefix="warpserve-bench-") as tmp:
        work = Path(tmp)
        if args.only in (None, "fraud"):
            report["fraud"] = bench_fraud(
                fraud_repository(args.repo, work), work, list(curve.LEVELS), durations, args.rounds
            )
        if args.only in (None, "resnet"):
            report["resnet"] = bench_resnet(work, work, durations, args.rounds, args.resnet_config)
        if args.only in (None, "resnet-curve"):
            report["resnet_curve"] = bench_resnet_curve(work, work, durations, args.rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (3 s, 1 s warm-up)")
    parser.add_argument("--repo", type=Path, help=f"repository holding {FRAUD_MODEL}")
    parser.add_argument("--only", choices=["fraud", "resnet", "resnet-curve"])
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating ceiling/warpserve rounds"
    )
    parser.add_argument(
        "--resnet-config",
        action="append",
        choices=RESNET_CONFIGS,
        help="measure only this ResNet configuration (repeat for several; default: all)",
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "serving.json")
    args = parser.parse_args()
    durations = (3.0, 1.0) if args.quick else (6.0, 2.0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "quick": args.quick,
        "duration_s": durations[0],
        "warmup_s": durations[1],
    }
    print(f"{'':>10} {TABLE_COLUMNS}")
    try:
        _run_benchmarks(args, durations, report)
    except RuntimeError as e:  # a server that would not start; its log tail is in e
        print(f"bench_serving: {e}", file=sys.stderr)
        return 1
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_summary(report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

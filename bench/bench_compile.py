"""Compile benchmark: the demo models built by `warpserve compile`'s pipeline, then served.

What each compile report promises and what serving delivers, from one run:

- the report's choice per demo model: the variant, its batch size, its in-process
  throughput there and its speed-up over eager PyTorch (measured side by side in rounds);
- the served curve: for every batch size of the report's sweep and every concurrency level,
  the rows/s of closed-loop clients sending pre-serialized requests of that many rows with
  the tensors inside the requests, beside two ceilings measured in the same round:
  - in-process: the same variant through the server's backend class, as the report
    measured it (the compute ceiling);
  - echo: bench/ceiling_server.py answering the same requests with prebuilt replies of the
    same size, no model at all (the transport ceiling: what a Python gRPC server carries
    at that request size on this machine, with this client beside it);
- at the largest batch, served again with the tensors in system shared memory (a client on
  the server's host), which takes their bytes out of the transport.

Every (batch, level) is measured in `--rounds` rounds, in-process, echo and served back to
back in each, and the table gives medians over rounds of the ratios. The target (served >=
0.9x in-process at the chosen batch) is read at the best level. Where echo/in-process is
itself below 0.9, no server behind this transport can meet it here; served/echo then says
how much of the gap is warpserve's own. The raw-JPEG demo model is measured by
bench_images.py. Prints tables and writes bench/results/compile.json; asserts nothing.

    python bench/bench_compile.py [--quick] [--levels 1,4,16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import perf_analyzer
import serverproc

from warpserve.compile import serving, sweep
from warpserve.compile.runners import Runner, open_runner
from warpserve.compile.specs import TensorSpec
from warpserve.server.demo.build import build_demo_repository
from warpserve.server.tools import loadgen

RESULTS = Path(__file__).resolve().parent / "results" / "compile.json"
MODELS = ("image_classifier", "fraud_scorer", "recommender")
TARGET = 0.9


@dataclass
class Cell:
    """One batch size at one concurrency level: rows/s per round."""

    batch: int
    level: int
    in_process: list[float] = field(default_factory=list)
    echo: list[float] = field(default_factory=list)
    served: list[float] = field(default_factory=list)
    served_shm: list[float] = field(default_factory=list)
    # At the chosen batch: echo and served driven by perf_analyzer.
    echo_pa: list[float] = field(default_factory=list)
    served_pa: list[float] = field(default_factory=list)
    # Cores used over each served run (CPU time / wall time), by client and by server.
    client_cores: list[float] = field(default_factory=list)
    server_cores: list[float] = field(default_factory=list)
    client_cores_pa: list[float] = field(default_factory=list)
    server_cores_pa: list[float] = field(default_factory=list)

    def ratio(self, ours: str, theirs: str) -> float | None:
        pairs = zip(getattr(self, ours), getattr(self, theirs), strict=False)
        values = [a / b for a, b in pairs if b > 0]
        return statistics.median(values) if values else None

    def median(self, name: str) -> float | None:
        values = getattr(self, name)
        return statistics.median(values) if values else None


def _tensors(entries: list[dict[str, Any]]) -> list[TensorSpec]:
    return [TensorSpec(t["name"], tuple(t["dims"]), t["dtype"]) for t in entries]


def open_chosen(version_dir: Path, report: dict[str, Any]) -> tuple[Runner, dict[str, Any]]:
    """The chosen variant through the server's backend class, and its golden rows."""
    chosen = next(v for v in report["variants"] if v["name"] == report["choice"]["variant"])
    model_file = next(p for p in version_dir.iterdir() if p.name.startswith("model."))
    runner = open_runner(
        chosen["platform"],
        model_file,
        _tensors(report["inputs"]),
        _tensors(report["outputs"]),
        report["max_batch_size"],
    )
    if chosen.get("served", {}).get("threads") == serving.ONE_THREAD:
        # Measured as the server runs it: inline, on one thread (see compile/serving.py).
        single = serving.one_thread_runner(chosen["platform"], runner)
        if single is not None:
            runner.close()
            runner = single
    with np.load(version_dir / "golden" / "inputs.npz") as golden:
        return runner, {k: golden[k] for k in golden.files}


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def served(
    url: str, model: str, cell: Cell, args: argparse.Namespace, shm: str
) -> tuple[float, float, float]:
    """Rows/s of the Python load generator, and the cores its process and the server's
    used meanwhile."""
    server, client = cpu_seconds(serverproc.pid_of(url)), time.process_time()
    started = time.perf_counter()
    result = asyncio.run(
        loadgen.measure(
            url,
            model,
            cell.level,
            args.duration,
            batch_size=cell.batch,
            warmup_s=args.warmup,
            shared_memory=shm,
        )
    )
    wall = time.perf_counter() - started
    if result.failed:
        raise RuntimeError(f"{model} batch {cell.batch} c={cell.level}: {result.failures}")
    server_cores = (cpu_seconds(serverproc.pid_of(url)) - server) / wall
    return result.rows_per_s, (time.process_time() - client) / wall, server_cores


def served_pa(
    tool: perf_analyzer.Tool, url: str, model: str, cell: Cell
) -> tuple[float, float, float]:
    """The same with perf_analyzer as the client."""
    server = cpu_seconds(serverproc.pid_of(url))
    measured = perf_analyzer.measure(tool, url, model, cell.level, batch_size=cell.batch)
    server_cores = (cpu_seconds(serverproc.pid_of(url)) - server) / measured.wall_s
    return measured.rows_per_s, measured.client_cpu_s / measured.wall_s, server_cores


def measure_model(
    urls: tuple[str, str], repo: Path, name: str, args: argparse.Namespace
) -> dict[str, Any]:
    url, echo_url = urls
    version_dir = repo / name / "1"
    report = json.loads((version_dir / "compile_report.json").read_text())
    batches = [p["batch"] for p in report["eager"]]
    cells = [Cell(b, level) for b in batches for level in args.levels]
    runner, rows = open_chosen(version_dir, report)
    try:
        for _ in range(args.rounds):
            for cell in cells:
                point = sweep.measure(runner, rows, cell.batch, args.ceiling_seconds)
                cell.in_process.append(point.throughput)
                cell.echo.append(served(echo_url, name, cell, args, "none")[0])
                rows_per_s, client_cores, server_cores = served(url, name, cell, args, "none")
                cell.served.append(rows_per_s)
                cell.client_cores.append(client_cores)
                cell.server_cores.append(server_cores)
                if cell.batch == batches[-1]:
                    cell.served_shm.append(served(url, name, cell, args, "system")[0])
                if args.perf_analyzer is not None and cell.batch == report["choice"]["batch"]:
                    tool = args.perf_analyzer
                    cell.echo_pa.append(served_pa(tool, echo_url, name, cell)[0])
                    rows_per_s, client_cores, server_cores = served_pa(tool, url, name, cell)
                    cell.served_pa.append(rows_per_s)
                    cell.client_cores_pa.append(client_cores)
                    cell.server_cores_pa.append(server_cores)
    finally:
        runner.close()
    return {"model": name, "choice": report["choice"], "cells": cells}


def target_row(result: dict[str, Any]) -> dict[str, Any]:
    """The target read at the chosen batch's best concurrency level, per client."""
    choice = result["choice"]
    at_batch = [c for c in result["cells"] if c.batch == choice["batch"]]
    best = max(at_batch, key=lambda c: c.median("served") or 0.0)
    row = {
        "model": result["model"],
        "variant": choice["variant"],
        "batch": choice["batch"],
        "speedup_vs_eager": choice["speedup_vs_eager"],
        "report_rows_per_s": choice["throughput"],
        "model_us_per_request": choice["batch"] / (best.median("in_process") or 1.0) * 1e6,
        "level": best.level,
        "served_rows_per_s": best.median("served"),
        "served_vs_report": (best.median("served") or 0.0) / choice["throughput"],
        "served_vs_in_process": best.ratio("served", "in_process"),
        "echo_vs_in_process": best.ratio("echo", "in_process"),
        "served_vs_echo": best.ratio("served", "echo"),
        "client_cores": best.median("client_cores"),
        "server_cores": best.median("server_cores"),
    }
    if any(c.served_pa for c in at_batch):
        pa = max(at_batch, key=lambda c: c.median("served_pa") or 0.0)
        row["perf_analyzer"] = {
            "level": pa.level,
            "served_rows_per_s": pa.median("served_pa"),
            "served_vs_in_process": pa.ratio("served_pa", "in_process"),
            "echo_vs_in_process": pa.ratio("echo_pa", "in_process"),
            "served_vs_echo": pa.ratio("served_pa", "echo_pa"),
            "client_cores": pa.median("client_cores_pa"),
            "server_cores": pa.median("server_cores_pa"),
        }
    return row


def print_curves(result: dict[str, Any]) -> None:
    choice = result["choice"]
    print(
        f"\n{result['model']}: {choice['variant']} chosen at batch {choice['batch']}, "
        f"{choice['throughput']:,.0f} rows/s in-process at the build, "
        f"{choice['speedup_vs_eager']:.2f}x eager"
    )
    print(
        f"  {'batch':>5} {'c':>3} {'in-proc':>11} {'echo':>10} {'served':>10} {'shm':>10} "
        f"{'srv/inproc':>10} {'echo/inproc':>11} {'srv/echo':>8} {'shm/inproc':>10}"
    )
    for c in result["cells"]:
        print(
            f"  {c.batch:>5} {c.level:>3} {_f(c.median('in_process'), ',.0f'):>11} "
            f"{_f(c.median('echo'), ',.0f'):>10} {_f(c.median('served'), ',.0f'):>10} "
            f"{_f(c.median('served_shm'), ',.0f'):>10} {_f(c.ratio('served', 'in_process')):>10} "
            f"{_f(c.ratio('echo', 'in_process')):>11} {_f(c.ratio('served', 'echo')):>8} "
            f"{_f(c.ratio('served_shm', 'in_process')):>10}"
        )


def print_targets(rows: list[dict[str, Any]]) -> None:
    print(f"\ntarget: served >= {TARGET}x in-process at the chosen batch (best level)")
    for r in rows:
        print(
            f"  {r['model']:<17} {r['variant']:<5} batch {r['batch']:>3} "
            f"(model {r['model_us_per_request']:,.0f} us/request)  x eager "
            f"{r['speedup_vs_eager']:.2f}  served/report {r['served_vs_report']:.3f}"
        )
        clients = [("python", r)]
        if "perf_analyzer" in r:
            clients.append(("perf_analyzer", r["perf_analyzer"]))
        for client, t in clients:
            print(
                f"    {client:<13} c={t['level']:<3} served/in-proc {_f(t['served_vs_in_process'])}"
                f"  echo/in-proc {_f(t['echo_vs_in_process'])}  served/echo "
                f"{_f(t['served_vs_echo'])}  cores: client {_f(t['client_cores'], '.2f')}, "
                f"server {_f(t['server_cores'], '.2f')}"
            )


def _f(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of short runs")
    parser.add_argument("--levels", default="1,4,16", help="concurrency levels")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per (batch, level)")
    parser.add_argument(
        "--echo-frontend",
        choices=("native", "python"),
        default="native",
        help="the echo ceiling's gRPC server (warpserve's own frontend where built: native)",
    )
    parser.add_argument(
        "--no-perf-analyzer", action="store_true", help="the Python load generator only"
    )
    args = parser.parse_args()
    args.perf_analyzer = None if args.no_perf_analyzer else perf_analyzer.environment()
    args.levels = [int(v) for v in args.levels.split(",")]
    args.duration, args.warmup = (1.0, 0.3) if args.quick else (2.0, 0.5)
    args.ceiling_seconds = 0.3 if args.quick else 1.0
    args.rounds = 1 if args.quick else args.rounds
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as tmp:
        repo = Path(tmp) / "repo"
        started = time.perf_counter()
        build_demo_repository(repo)
        build_s = time.perf_counter() - started
        results = []
        log = Path(tmp) / "server.log"
        with serverproc.warpserve(repo, log, "--allow-client-shm") as url:
            frontend = next(
                (
                    line.split("I warpserve: ", 1)[-1]
                    for line in log.read_text().splitlines()
                    if "gRPC frontend:" in line
                ),
                "gRPC frontend: not logged",
            )
            print(f"warpserve's {frontend}; echo ceiling on the {args.echo_frontend} frontend")
            for name in MODELS:
                with contextlib.ExitStack() as stack:
                    echo = stack.enter_context(
                        serverproc.ceiling(
                            url,
                            name,
                            Path(tmp) / f"echo-{name}.log",
                            frontend=args.echo_frontend,
                        )
                    )
                    results.append(measure_model((url, echo), repo, name, args))
                print_curves(results[-1])
        reports = {n: (repo / n / "1" / "compile_report.md").read_text() for n in MODELS}
    targets = [target_row(r) for r in results]
    print(f"\ndemo build (train + compile, 3 models): {build_s:.1f} s")
    print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    print_targets(targets)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {"cpu": platform.processor(), "cores": os.cpu_count()},
        "levels": args.levels,
        "rounds": args.rounds,
        "warpserve_frontend": frontend,
        "echo_frontend": args.echo_frontend,
        # 1, 5 and 15 minute load averages before and after the run (2 cores: above 2,
        # other work was waiting for a core).
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "demo_build_s": build_s,
        "targets": targets,
        "curves": {
            r["model"]: [
                {**asdict(c), "served_vs_in_process": c.ratio("served", "in_process")}
                for c in r["cells"]
            ]
            for r in results
        },
        "compile_reports_md": reports,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

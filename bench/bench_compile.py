"""Compile benchmark: the demo models built by `warpserve compile`'s pipeline, then served.

For each demo model it reports, from one run:

- the compile report's choice: the variant, its batch size, its in-process throughput there
  and eager PyTorch's at the same batch (the chosen variant should beat eager);
- the served throughput of that model at that batch size (closed-loop clients sending
  pre-serialized requests of that many rows) against the variant's in-process throughput,
  measured again through the server's backend class right before the served run (the
  ceiling), and against the report's number (measured during the build, earlier).

Also the wall time of the whole demo build (what a first `warpserve serve` waits for).
Prints a table and writes bench/results/compile.json. Timings are reported, never asserted.

    python bench/bench_compile.py [--quick] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import serverproc

from warpserve.compile import sweep
from warpserve.compile.runners import open_runner
from warpserve.compile.specs import TensorSpec
from warpserve.server.demo.build import MODEL_NAMES, build_demo_repository
from warpserve.server.tools import loadgen

RESULTS = Path(__file__).resolve().parent / "results" / "compile.json"


def _tensors(entries: list[dict[str, Any]]) -> list[TensorSpec]:
    return [TensorSpec(t["name"], tuple(t["dims"]), t["dtype"]) for t in entries]


def in_process(version_dir: Path, report: dict[str, Any], batch: int, seconds: float) -> float:
    """The chosen variant's rows/s at ``batch``, through the server's backend class."""
    chosen = next(v for v in report["variants"] if v["name"] == report["choice"]["variant"])
    model_file = next(p for p in version_dir.iterdir() if p.name.startswith("model."))
    runner = open_runner(
        chosen["platform"],
        model_file,
        _tensors(report["inputs"]),
        _tensors(report["outputs"]),
        report["max_batch_size"],
    )
    try:
        with np.load(version_dir / "golden" / "inputs.npz") as golden:
            rows = {k: golden[k] for k in golden.files}
        return sweep.measure(runner, rows, batch, seconds).throughput
    finally:
        runner.close()


def measure_model(url: str, repo: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    version_dir = repo / name / "1"
    report = json.loads((version_dir / "compile_report.json").read_text())
    choice = report["choice"]
    batch = choice["batch"]
    ceiling = in_process(version_dir, report, batch, args.ceiling_seconds)
    served = asyncio.run(
        loadgen.measure(url, name, args.concurrency, args.duration, batch_size=batch)
    )
    return {
        "model": name,
        "variant": choice["variant"],
        "batch": batch,
        "report_rows_per_s": choice["throughput"],
        "report_eager_rows_per_s": choice["eager_throughput"],
        "report_speedup_vs_eager": choice["speedup_vs_eager"],
        "in_process_rows_per_s": ceiling,
        "served_rows_per_s": served.rows_per_s,
        "served_p99_ms": served.p99_ms,
        "served_errors": served.errors,
        "served_vs_in_process": served.rows_per_s / ceiling,
        "served_vs_report": served.rows_per_s / choice["throughput"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter served runs")
    parser.add_argument("--concurrency", type=int, default=4, help="closed-loop clients")
    args = parser.parse_args()
    args.duration = 3.0 if args.quick else 10.0
    args.ceiling_seconds = 1.0 if args.quick else 3.0
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as tmp:
        repo = Path(tmp) / "repo"
        started = time.perf_counter()
        build_demo_repository(repo)
        build_s = time.perf_counter() - started
        rows = []
        with serverproc.warpserve(repo, Path(tmp) / "server.log") as url:
            for name in MODEL_NAMES:
                rows.append(measure_model(url, repo, name, args))
        reports = {n: (repo / n / "1" / "compile_report.md").read_text() for n in MODEL_NAMES}
    print(f"demo build (train + compile, 3 models): {build_s:.1f} s")
    header = (
        f"{'model':<17}{'variant':<8}{'batch':>6}{'report':>11}{'eager':>11}{'x eager':>8}"
        f"{'in-proc':>11}{'served':>11}{'served/in-proc':>15}{'served/report':>14}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['model']:<17}{r['variant']:<8}{r['batch']:>6}{r['report_rows_per_s']:>11,.0f}"
            f"{r['report_eager_rows_per_s']:>11,.0f}{r['report_speedup_vs_eager']:>8.2f}"
            f"{r['in_process_rows_per_s']:>11,.0f}{r['served_rows_per_s']:>11,.0f}"
            f"{r['served_vs_in_process']:>15.2f}{r['served_vs_report']:>14.2f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {"cpu": platform.processor(), "cores": os.cpu_count()},
        "concurrency": args.concurrency,
        "demo_build_s": build_s,
        "models": rows,
        "compile_reports_md": reports,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

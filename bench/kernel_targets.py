"""The kernels' CPU targets, measured interleaved: medians of same-round ratios.

On a loaded machine the sequential pytest-benchmark run (bench_kernels.py) drifts between
cases; here each round times every contender once, in turn, so a load spike hits both
sides of a round's ratio alike. A row reports the median over rounds of the baseline's
time over the contender's, with the lowest and highest round, and is met on that median.

Beside ONNX Runtime with its default threads (every core) the MLP rows also time it on
one thread, the Numba kernel's count: on a machine shared with other work the scheduler
gives each runnable thread a share of the cores, so the two-thread session gets about
twice the CPU of a one-thread kernel, whatever either computes (see bench/README.md).

    python bench/kernel_targets.py [--rounds 7] [--only mlp] [--gpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import timeit
from pathlib import Path
from typing import Any

from kernel_cases import CASES, GPU_CASES, MLP_BATCHES, Runner, gpu_name, mlp_shape, versions

# (op, shape prefix, contender, baseline, target ratio: baseline time / contender time).
# The MLP over its whole batch curve: within 1.5x of ONNX Runtime at every batch size.
TARGETS = [
    ("preprocess", "32x", "numba", "pillow+numpy", 3.0),
    ("preprocess", "32x", "numba", "numpy", 3.0),
    *[("mlp", mlp_shape(b) + " ", "numba", "onnxruntime", 1 / 1.5) for b in MLP_BATCHES],
    # One wide GELU layer, where the epilogue is as much work as a small product.
    ("mlp", "linear 1024x256->512 gelu", "numba", "torch", 1.0),
    ("mlp", "linear 1024x256->512 gelu", "numba", "numpy", 1.0),
    ("topk", "32 users", "numba", "numpy+argpartition", 2.0),
]
# On a GPU (--gpu): Triton-lang preprocessing >= 2x the torch eager chain (CuPy and
# numba.cuda beside it), the fused MLP at least as fast as torch eager, top-k >= 3x
# torch.topk over the full score matrix.
GPU_TARGETS = [
    *[("preprocess", "gpu 32x", p, "torch", 2.0) for p in ("triton", "cupy", "numba")],
    *[
        ("mlp", f"gpu fraud 16-64-32-1 batch {b} ", "triton", "torch", 1.0)
        for b in (1, 64, 1024, 16384)
    ],
    ("topk", "gpu 32 users", "triton", "torch", 3.0),
]
# Timed in the same rounds as a row's baseline, reported beside it (not a target).
BESIDE = {"onnxruntime": "onnxruntime/1 thread"}
RESULTS = Path(__file__).resolve().parent / "results" / "kernel_targets.json"


def _runner(op: str, shape: str, provider: str) -> Runner:
    case = next(
        c
        for c in CASES
        if c.op == op and (c.shape + " ").startswith(shape) and c.provider == provider
    )
    run = case.prepare()
    if run is None:
        raise SystemExit(f"{op} {provider}: {case.skip_reason}")
    return run


def _seconds(run: Runner) -> float:
    """Best of five 20 ms samples: short samples let some miss the load spikes."""
    calls, elapsed = timeit.Timer(run).autorange()
    per = max(1, round(calls * 0.02 / elapsed))
    return min(timeit.repeat(run, number=per, repeat=5)) / per


def _ratios(baseline: list[float], contender: list[float]) -> dict[str, float]:
    """Median, lowest and highest of the rounds' baseline / contender time ratios."""
    ratios = [b / c for b, c in zip(baseline, contender, strict=True)]
    return {
        "median": round(statistics.median(ratios), 2),
        "low": round(min(ratios), 2),
        "high": round(max(ratios), 2),
    }


def _row(
    op: str,
    shape: str,
    contender: str,
    baseline: str,
    target: float,
    times: dict[str, list[float]],
) -> dict[str, Any]:
    ratio = _ratios(times[baseline], times[contender])
    return {
        "op": op,
        "shape": shape.strip(),
        "contender": contender,
        "baseline": baseline,
        "rounds": len(times[contender]),
        "contender_s": statistics.median(times[contender]),
        "baseline_s": statistics.median(times[baseline]),
        "ratio": ratio["median"],
        "ratio_low": ratio["low"],
        "ratio_high": ratio["high"],
        "target": round(target, 2),
        "met": ratio["median"] >= target,
    }


def _print(row: dict[str, Any]) -> None:
    line = (
        f"{row['op']:<11}{row['shape']:<30}{row['contender']} {row['contender_s'] * 1e6:9.0f}us  "
        f"{row['baseline']} {row['baseline_s'] * 1e6:9.0f}us  ratio {row['ratio']:5.2f} "
        f"[{row['ratio_low']:.2f}-{row['ratio_high']:.2f}] (target {row['target']:.2f})"
    )
    for name, ratio in row.get("beside", {}).items():
        line += f"  vs {name} {ratio['median']:.2f} [{ratio['low']:.2f}-{ratio['high']:.2f}]"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", choices=sorted({t[0] for t in TARGETS}), help="one op's rows")
    parser.add_argument("--gpu", action="store_true", help="the GPU targets (needs CUDA)")
    args = parser.parse_args()
    if args.gpu and not GPU_CASES:
        raise SystemExit("--gpu: torch sees no CUDA GPU here")
    rows = []
    for op, shape, contender, baseline, target in GPU_TARGETS if args.gpu else TARGETS:
        if args.only and op != args.only:
            continue
        names = [contender, baseline]
        beside = BESIDE.get(baseline) if not args.gpu else None
        if beside is not None:
            names.append(beside)
        runs = {name: _runner(op, shape, name) for name in names}
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name, run in runs.items():
                times[name].append(_seconds(run))
        row = _row(op, shape, contender, baseline, target, times)
        if beside is not None:
            row["beside"] = {beside: _ratios(times[beside], times[contender])}
        rows.append(row)
        _print(row)
    RESULTS.parent.mkdir(exist_ok=True)
    out = RESULTS.with_name("kernel_targets_gpu.json") if args.gpu else RESULTS
    record = {"versions": versions(), "gpu": gpu_name(), "rows": rows}
    out.write_text(json.dumps(record, indent=2))
    if args.gpu:
        print(f"GPU: {record['gpu']}")


if __name__ == "__main__":
    main()

"""The issue's CPU targets for the kernels, measured interleaved: min of alternating rounds.

On a loaded machine the sequential pytest-benchmark run (bench_kernels.py) drifts between
cases; here each round times every contender once, in turn, and the best round of each is
compared, so a load spike hits both sides of a ratio alike.

    python bench/kernel_targets.py [--rounds 7] [--only mlp] [--gpu]
"""

from __future__ import annotations

import argparse
import json
import timeit
from pathlib import Path

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
        runs = {name: _runner(op, shape, name) for name in (contender, baseline)}
        best = {name: _seconds(run) for name, run in runs.items()}
        for _ in range(args.rounds - 1):
            for name, run in runs.items():
                best[name] = min(best[name], _seconds(run))
        ratio = best[baseline] / best[contender]
        rows.append(
            {
                "op": op,
                "shape": shape.strip(),
                "contender": contender,
                "baseline": baseline,
                "contender_s": best[contender],
                "baseline_s": best[baseline],
                "ratio": round(ratio, 2),
                "target": round(target, 2),
                "met": ratio >= target,
            }
        )
        print(
            f"{op:<11}{shape.strip():<30}{contender} {best[contender] * 1e6:9.0f}us  "
            f"{baseline} {best[baseline] * 1e6:9.0f}us  ratio {ratio:5.2f} (target {target:.2f})"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    out = RESULTS.with_name("kernel_targets_gpu.json") if args.gpu else RESULTS
    record = {"versions": versions(), "gpu": gpu_name(), "rows": rows}
    out.write_text(json.dumps(record, indent=2))
    if args.gpu:
        print(f"GPU: {record['gpu']}")


if __name__ == "__main__":
    main()

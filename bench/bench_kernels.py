"""The kernels against their references, torch eager and torch.compile, in one run.

pytest-benchmark times every (op, shape, provider) on the same inputs; each row carries
op, provider, shape, device and library versions in `extra_info`, and the session writes
`bench/results/kernels.json` with the median, spread and the ratio to the op's baseline
measured in the same run (the numpy reference; for the MLP also ONNX Runtime). Nothing
is asserted.

    python bench/bench_kernels.py            # or: python -m pytest bench/bench_kernels.py
    python bench/bench_kernels.py --quick    # fewer rounds

On a machine with a CUDA GPU the GPU cases run too (`kernel_cases.GPU_CASES`: Triton-lang,
CuPy and numba.cuda on CUDA tensors against torch eager and torch.compile); they have not
run yet, no GPU having been lent (bench/gpu_check.sh runs `kernel_targets.py --gpu`).
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kernel_cases import CASES, Case, versions

RESULTS = Path(__file__).resolve().parent / "results" / "kernels.json"
_ROWS: list[dict[str, Any]] = []


@pytest.fixture(scope="module", autouse=True)
def _write_rows() -> Iterator[None]:
    yield
    RESULTS.parent.mkdir(exist_ok=True)
    rows = _with_ratios(_ROWS)
    RESULTS.write_text(json.dumps({"machine": platform.node(), "rows": rows}, indent=2))
    _print_table(rows)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_kernel(benchmark: Any, case: Case) -> None:
    run = case.prepare()
    if run is None:
        pytest.skip(case.skip_reason or "unavailable here")
    benchmark.group = f"{case.op} {case.shape}"
    benchmark.extra_info.update(case.row())
    benchmark.pedantic(run, rounds=case.rounds, iterations=case.iterations, warmup_rounds=2)
    stats = benchmark.stats.stats
    _ROWS.append({**case.row(), "median_s": stats.median, "iqr_s": stats.iqr, "min_s": stats.min})


def _with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's speed-up over its group's baselines (median over median, same run)."""
    by_key = {(r["op"], r["shape"], r["provider"]): r["median_s"] for r in rows}
    for row in rows:
        for baseline in row["baselines"]:
            reference = by_key.get((row["op"], row["shape"], baseline))
            if reference:
                row[f"speedup_vs_{baseline}"] = round(reference / row["median_s"], 2)
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'op':<11}{'shape':<34}{'provider':<15}{'median':>11}  speed-up")
    for row in rows:
        ups = ", ".join(f"{k[11:]} {v}x" for k, v in row.items() if k.startswith("speedup_vs_"))
        print(
            f"{row['op']:<11}{row['shape']:<34}{row['provider']:<15}"
            f"{row['median_s'] * 1e6:>9.0f}us  {ups}"
        )
    print(f"versions: {versions()}")


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    args = [__file__, "-q", "-p", "no:cacheprovider", "-s", "--benchmark-disable-gc"]
    if quick:
        args.append("--benchmark-max-time=0.2")
    return pytest.main(args + [a for a in argv if a != "--quick"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

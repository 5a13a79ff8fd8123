"""What drift monitoring costs per executed batch, next to the model run it rides on.

A fraud-scorer-sized MLP (16 -> 64 x2 -> 4, ONNX Runtime, one thread, as a tiny model
runs inline on the event loop) and a drift reference of 20,000 rows of its 16 features.
For each batch size, in alternating rounds: the model's run (the ceiling), the
monitor's ``observe`` on every batch (``drift_sample_rate`` 1: the cost of one binned
batch, at most 16 of its rows) and at the default rate (0.1: the average cost per batch
served). Reports the
median over rounds of each one's best timing loop, and the ratio to the model's run.
Timings are reported, never asserted; writes bench/results/drift.json.

    python bench/bench_drift.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.models import mlp_model
from warpserve.server.drift.monitor import DriftMonitor, DriftSettings
from warpserve.server.drift.reference import build_reference

BATCHES = (1, 8, 64, 256)


def _per_call_us(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=3)) / number * 1e6


def measure(rounds: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(0)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        mlp_model(width=64, depth=2, features=16), options, providers=["CPUExecutionProvider"]
    )
    reference = build_reference({"INPUT0": rng.normal(size=(20000, 16)).astype(np.float32)})
    every = DriftMonitor(reference, DriftSettings(sample_rate=1.0))
    default = DriftMonitor(reference, DriftSettings())
    rows = []
    for batch in BATCHES:
        inputs = {"INPUT0": rng.normal(size=(batch, 16)).astype(np.float32)}
        timings: dict[str, list[float]] = {"model": [], "every": [], "default": []}
        run_model = lambda x=inputs: session.run(None, x)  # noqa: E731
        observe_every = lambda x=inputs: every.observe(x)  # noqa: E731
        observe_default = lambda x=inputs: default.observe(x)  # noqa: E731
        for _ in range(rounds):
            timings["model"].append(_per_call_us(run_model, 500))
            timings["every"].append(_per_call_us(observe_every, 500))
            timings["default"].append(_per_call_us(observe_default, 5000))
        model, one, avg = (statistics.median(timings[k]) for k in ("model", "every", "default"))
        rows.append(
            {
                "batch": batch,
                "model_us": model,
                "observe_us": one,
                "observe_ratio": one / model,
                "default_rate_us": avg,
                "default_rate_ratio": avg / model,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = measure(args.rounds)
    print("batch  model run us  observe us  x model  at rate 0.1 us  x model")
    for r in rows:
        print(
            f"{r['batch']:>5} {r['model_us']:>13.1f} {r['observe_us']:>11.1f} "
            f"{r['observe_ratio']:>8.2f} {r['default_rate_us']:>15.1f} "
            f"{r['default_rate_ratio']:>8.2f}"
        )
    out = Path(__file__).parent / "results" / "drift.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rounds": args.rounds, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Latency guard benchmark: what watching costs throughput, and how fast it rolls back.

One warpserve process serves three copies of an MLP (64 -> 512 x4 -> 4):

- ``guard_on`` and ``guard_off``: version 2 (an exact copy of 1) rolled out on both; the
  guard watches ``guard_on`` for the whole run (a one-hour window), not ``guard_off``.
  Closed-loop tritonclient callers load one model, then the other, in alternating
  segments; the ratio of their throughputs is the guard's cost (goal: under 3 %).
- ``slow``: version 2 is the same MLP computed twice. Under steady load it is rolled
  out; reported are the guard's own time from taking traffic to its verdict and the
  wall time from the Rollout call's return until status shows the rollback (goal:
  under guard.window_seconds + 1 s).

Prints a table and writes bench/results/guard.json. Timings are reported, never asserted.

    python bench/bench_guard.py [--segments 16] [--segment-s 2] [--concurrency 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as grpcclient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.harness import start_server
from tests.models import write_mlp
from warpserve.profiling.planted import write_slowed_copy
from warpserve.protos import admin_pb2 as apb
from warpserve.protos import admin_pb2_grpc as apb_grpc

WINDOW_S = 5.0


def guard_params(enabled: bool, window_s: float) -> str:
    def param(key: str, value: object) -> str:
        return f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'

    # Worker threads for all: execution=auto measures each model at load and could
    # pick inline for one copy and threads for the other.
    return (
        "version_policy: { specific: { versions: [ 1 ] } }\n"
        + param("execution", "thread")
        + param("guard.enabled", str(enabled).lower())
        + param("guard.window_seconds", window_s)
    )


def build(repo: Path) -> None:
    for name, enabled, window in (("guard_on", True, 3600), ("guard_off", False, 3600)):
        model_dir = write_mlp(repo, name, width=512, extra=guard_params(enabled, window))
        shutil.copytree(model_dir / "1", model_dir / "2")
    slow = write_mlp(repo, "slow", width=512, extra=guard_params(True, WINDOW_S))
    write_slowed_copy(slow / "1", slow / "2", factor=2)


class Callers:
    def __init__(self, url: str, model: str, count: int) -> None:
        self.url, self.model = url, model
        self.done = 0
        self.errors = 0
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(count)
        ]

    def _run(self, seed: int) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        x = np.random.default_rng(seed).standard_normal((1, 64)).astype(np.float32)
        tensor = grpcclient.InferInput("INPUT0", [1, 64], "FP32")
        tensor.set_data_from_numpy(x)
        while not self.stop.is_set():
            try:
                client.infer(self.model, [tensor])
                self.done += 1
            except Exception:
                self.errors += 1

    def __enter__(self) -> Callers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def admin(url: str) -> apb_grpc.ModelAdminStub:
    return apb_grpc.ModelAdminStub(grpc.insecure_channel(url))


def throughput(url: str, model: str, seconds: float, concurrency: int) -> float:
    with Callers(url, model, concurrency) as callers:
        time.sleep(0.5)  # connections up
        start, before = time.perf_counter(), callers.done
        time.sleep(seconds)
        return (callers.done - before) / (time.perf_counter() - start)


def guard_cost(url: str, segments: int, seconds: float, concurrency: int) -> dict[str, object]:
    stub = admin(url)
    for model in ("guard_on", "guard_off"):
        stub.Rollout(apb.RolloutRequest(model=model, version=2), timeout=120)
    rates: dict[str, list[float]] = {"guard_on": [], "guard_off": []}
    for i in range(segments):
        order = ("guard_on", "guard_off") if i % 2 == 0 else ("guard_off", "guard_on")
        for model in order:
            rates[model].append(throughput(url, model, seconds, concurrency))
    status = stub.Status(apb.StatusRequest(model="guard_on")).models[0]
    watching = {v.version: v.guard.verdict for v in status.versions if v.HasField("guard")}
    on, off = statistics.median(rates["guard_on"]), statistics.median(rates["guard_off"])
    return {"rates": rates, "on_over_off": on / off, "guard_state": watching}


def time_to_rollback(url: str, concurrency: int) -> dict[str, object]:
    stub = admin(url)
    with Callers(url, "slow", concurrency) as callers:
        time.sleep(3.0)  # the baseline's window
        stub.Rollout(apb.RolloutRequest(model="slow", version=2), timeout=120)
        rolled_out = time.perf_counter()
        while True:
            status = stub.Status(apb.StatusRequest(model="slow")).models[0]
            guard = {v.version: v for v in status.versions}[2].guard
            if guard.rolled_back or guard.verdict not in ("", "watching"):
                break
            if time.perf_counter() - rolled_out > 120:
                raise TimeoutError("the guard never decided")
            time.sleep(0.02)
        seen = time.perf_counter() - rolled_out
    return {
        "verdict": guard.verdict,
        "rolled_back": guard.rolled_back,
        "guard_seconds_to_verdict": guard.seconds_to_verdict,
        "seconds_until_status_shows_it": seen,
        "window_seconds": WINDOW_S,
        "failed_requests": callers.errors,
        "reason": guard.reason,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=16)
    parser.add_argument("--segment-s", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        build(repo)
        server = start_server(repo, log_dir=Path(tmp))
        try:
            cost = guard_cost(server.url, args.segments, args.segment_s, args.concurrency)
            rollback = time_to_rollback(server.url, args.concurrency)
        finally:
            server.stop()
    result = {"guard_cost": cost, "rollback": rollback}
    print(f"throughput guard on / off: {cost['on_over_off']:.3f} (median of {args.segments} "
          f"alternating segments each; guard state {cost['guard_state']})")  # fmt: skip
    print(f"2x regression: {rollback['verdict']} ({rollback['rolled_back']}) "
          f"{rollback['guard_seconds_to_verdict']:.2f} s after it took traffic, shown in status "
          f"{rollback['seconds_until_status_shows_it']:.2f} s after Rollout returned "
          f"(window {WINDOW_S} s); failed requests: {rollback['failed_requests']}")  # fmt: skip
    out = Path(__file__).parent / "results" / "guard.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The model owner's hop: a request served by a frontend's data plane through the owner
process (unix socket + shared memory) against the same request served in-process by
the data plane that owns the model, measured in the same run.

An identity model (FP32 in, the same tensor out) keeps the model's own time near zero,
so the difference is the hop: the request's pickle and copy into the arena (or the
message), two socket messages, the owner's decode, its answer's way back and the copy
out. Per payload size and transport (tensors inline in the message, or through shared
memory), it reports microseconds per request at one client and the frontend's CPU
per request (the frontend's event loop is what a multi-process server scales), and
throughput with 16 concurrent callers. Rounds alternate the in-process ceiling and the
hop; the medians of the rounds are reported.

    python bench/bench_owner.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from warpserve.server.cli import event_loop_factory
from warpserve.server.codec import InferRequest
from warpserve.server.dataplane import DataPlane
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.owner.launcher import OwnerProcess
from warpserve.server.owner.placement import LOCAL, PlacedRepository
from warpserve.server.owner.proxy import OwnerProxy
from warpserve.server.repository.repository import ModelRepository

BENCH_DIR = Path(__file__).resolve().parent
MODEL = "identity"
SIZES = {
    "64 B": 16,
    "4 KiB": 1024,
    "16 KiB": 4 * 1024,
    "64 KiB": 16 * 1024,
    "588 KiB": 3 * 224 * 224,
    "4 MiB": 1 << 20,
}
CONFIG = """
name: "identity"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }]
instance_group [{ count: 1 kind: KIND_CPU }]
parameters { key: "warpserve.placement" value: { string_value: "owner" } }
"""


def write_identity(repo: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "identity",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", "n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repo / MODEL / "1").mkdir(parents=True)
    (repo / MODEL / "config.pbtxt").write_text(CONFIG)
    (repo / MODEL / "1" / "model.onnx").write_bytes(model.SerializeToString())


async def sequential(plane: DataPlane, x: np.ndarray, seconds: float) -> dict[str, float]:
    """One caller, back to back: wall and this thread's CPU per request."""
    request = InferRequest(MODEL, "", "", {"INPUT0": x})
    _, outputs = await plane.infer(request)
    assert np.array_equal(outputs["OUTPUT0"], x)
    count, start, cpu = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - start < seconds:
        await plane.infer(request)
        count += 1
    wall, used = time.perf_counter() - start, time.thread_time() - cpu
    return {"us": wall / count * 1e6, "cpu_us": used / count * 1e6}


async def concurrent(plane: DataPlane, x: np.ndarray, seconds: float, callers: int) -> float:
    """Requests per second with ``callers`` concurrent back-to-back callers."""
    request = InferRequest(MODEL, "", "", {"INPUT0": x})
    done = 0
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await plane.infer(request)
            done += 1
            await asyncio.sleep(0)  # an inline answer does not yield

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return done / (time.perf_counter() - start)


async def measure(repo: Path, sockets: Path, rounds: int, seconds: float) -> list[dict[str, Any]]:
    local = ModelRegistry(ModelRepository(repo))  # the ceiling: the model in this process
    await local.load(MODEL)
    in_process = DataPlane(local)
    frontend = ModelRegistry(PlacedRepository(ModelRepository(repo), LOCAL))
    proxies = {
        "inline": OwnerProxy(sockets / "owner.sock", {MODEL}, inline_below=1 << 40),
        "shm": OwnerProxy(sockets / "owner.sock", {MODEL}, inline_below=0),
    }
    planes = {}
    for name, proxy in proxies.items():
        await proxy.start()
        await proxy.wait_connected(30)
        planes[name] = DataPlane(frontend, owner=proxy)
    rows: list[dict[str, Any]] = []
    try:
        for label, n in SIZES.items():
            x = np.random.default_rng(0).standard_normal((1, n), dtype=np.float32)
            samples: dict[str, list[dict[str, float]]] = {k: [] for k in ("local", *planes)}
            for _ in range(rounds):
                samples["local"].append(await sequential(in_process, x, seconds))
                for name, plane in planes.items():
                    samples[name].append(await sequential(plane, x, seconds))
            row: dict[str, Any] = {"payload": label, "bytes": 4 * n}
            for name, runs in samples.items():
                row[f"{name}_us"] = statistics.median(r["us"] for r in runs)
                row[f"{name}_cpu_us"] = statistics.median(r["cpu_us"] for r in runs)
            rows.append(row)
            print(_line(row), flush=True)
        x = np.zeros((1, 16), np.float32)
        rates: dict[str, list[float]] = {"local": [], "inline": []}
        for _ in range(rounds):
            rates["local"].append(await concurrent(in_process, x, seconds, 16))
            rates["inline"].append(await concurrent(planes["inline"], x, seconds, 16))
        row = {
            "payload": "64 B, 16 callers",
            **{f"{k}_rps": statistics.median(v) for k, v in rates.items()},
        }
        rows.append(row)
        print(
            f"16 concurrent callers, 64 B: in-process {row['local_rps']:.0f} req/s, through "
            f"the owner {row['inline_rps']:.0f} req/s ({row['inline_rps'] / row['local_rps']:.2f})"
        )
    finally:
        for proxy in proxies.values():
            await proxy.close()
        await local.close()
    return rows


def _line(row: dict[str, Any]) -> str:
    cells = [f"{row['payload']:>8}:"]
    for name in ("local", "inline", "shm"):
        cells.append(f"{name} {row[f'{name}_us']:7.1f} us ({row[f'{name}_cpu_us']:6.1f} cpu) |")
    hops = (row["inline_us"] - row["local_us"], row["shm_us"] - row["local_us"])
    return " ".join(cells) + f" hop inline {hops[0]:6.1f}, shm {hops[1]:6.1f} us"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter segments")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    seconds = 0.3 if args.quick else 1.0
    with tempfile.TemporaryDirectory() as tmp:
        repo, sockets = Path(tmp) / "repo", Path(tmp) / "sockets"
        write_identity(repo)
        owner = OwnerProcess(repo, sockets, ["--event-loop", "uvloop"])
        owner.start()
        try:
            owner.wait_ready(120)
            # The loop a server runs on (uvloop where installed), the frontend's here.
            with asyncio.Runner(loop_factory=event_loop_factory("auto")) as runner:
                rows = runner.run(measure(repo, sockets, args.rounds, seconds))
        finally:
            owner.stop(30)
    out = BENCH_DIR / "results" / "owner.json"
    out.parent.mkdir(exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine()}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

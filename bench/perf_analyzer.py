"""NVIDIA's perf_analyzer (C++, from the tritonclient wheel) as a load generator.

A C++ client spends less CPU per request than the Python load generator, which matters
on a machine whose cores the client shares with the server: run beside the Python
client, it shows how much of a served number is the client's. Its CPU time is read
from the operating system (``RUSAGE_CHILDREN`` around the run).
"""

from __future__ import annotations

import importlib.util
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

Tool = tuple[str, dict[str, str]]  # the binary and the environment to run it in
# Over a million it prints "2.30631e+06 infer/sec".
THROUGHPUT = re.compile(r"Throughput: ([\d.]+(?:e[+-]?\d+)?) infer/sec")


@dataclass(frozen=True)
class Measured:
    rows_per_s: float  # perf_analyzer's infer/sec: requests/s times the batch size
    p50_us: float
    client_cpu_s: float  # perf_analyzer's own CPU time over the whole run
    wall_s: float  # the whole run, start-up and warm-up windows included


def environment() -> Tool:
    """The binary and an environment with the CUDA runtime library it links even for
    CPU runs (the nvidia-cuda-runtime-cu12 wheel)."""
    found = shutil.which("perf_analyzer") or shutil.which(
        "perf_analyzer", path=str(Path(sys.executable).parent)
    )
    if found is None:
        raise SystemExit("perf_analyzer not found (it comes with the tritonclient wheel)")
    env = dict(os.environ)
    spec = importlib.util.find_spec("nvidia.cuda_runtime")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        env["LD_LIBRARY_PATH"] = f"{folder}/lib:{env.get('LD_LIBRARY_PATH', '')}"
    return os.path.realpath(found), env


def measure(
    tool: Tool,
    url: str,
    model: str,
    concurrency: int,
    *,
    batch_size: int = 1,
    protocol: str = "grpc",
    window_ms: int = 1000,
    shared_memory: str = "none",
) -> Measured:
    """One concurrency level, closed loop, random input data (perf_analyzer's default).
    ``shared_memory="system"``: the tensors travel in system shared memory regions that
    perf_analyzer registers with the server (which must allow it), not in the requests."""
    binary, env = tool
    command = [
        binary,
        *("-m", model, "-u", url, "-i", protocol, "-b", str(batch_size)),
        *("--concurrency-range", str(concurrency), "--measurement-interval", str(window_ms)),
        *("--stability-percentage", "100", "--percentile", "50"),
        *("--shared-memory", shared_memory),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{out}")
    throughput = float(THROUGHPUT.findall(out)[-1])
    p50 = float(re.findall(r"p50 latency: (\d+) usec", out)[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measured(throughput, p50, cpu, wall)

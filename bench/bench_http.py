"""The REST endpoint against gRPC, against another HTTP stack, and against real Triton.

One run, one load generator (NVIDIA's perf_analyzer, C++, binary tensors over HTTP as it
sends them by default), the peers' models (``make_models.py``: a fraud MLP with 30
features and ResNet-18 at 224x224), all servers up at once, the cases alternating
between them in rounds (``--rounds``):

- warpserve as it ships (aiohttp): fraud MLP and ResNet-18 over HTTP and over gRPC;
- warpserve with its REST endpoint on Starlette/uvicorn (``http_starlette.py``; the same
  data plane and codec, only the HTTP stack differs): fraud MLP over HTTP;
- real Triton 2.51 (``shared/peers/triton_real``, the Python backend running the same
  ONNX model with ONNX Runtime): fraud MLP over HTTP and over gRPC.

Each at concurrency 1 and 32 (``--concurrency``). Prints throughput and p50 latency per
case and round, and the ratios of the medians; writes JSON to ``bench/results/http.json``.

    python bench/bench_http.py [--models /tmp/peer-models] [--window-ms 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import perf_analyzer

from warpserve.server.ports import pick_free_port as free_port

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
READY_TIMEOUT_S = 180.0
FRAUD, RESNET = "fraud_mlp", "resnet18"
STARLETTE = [sys.executable, str(BENCH / "http_starlette.py")]


@dataclass
class Row:
    server: str
    protocol: str
    model: str
    concurrency: int
    infer_per_s: float
    p50_us: float
    p99_us: float


def peers_dir() -> Path:
    for up in (BENCH.parent.parent, BENCH.parent.parent.parent):
        candidate = up / "shared" / "peers"
        if candidate.is_dir():
            return candidate
    raise SystemExit("shared/peers not found beside the repository; pass --peers")


def perf_analyzer_env() -> tuple[str, dict[str, str]]:
    return perf_analyzer.environment()


def measure(
    pa: tuple[str, dict[str, str]], url: str, protocol: str, model: str, c: int, window_ms: int
) -> tuple[float, float, float]:
    binary, env = pa
    command = [
        binary,
        *("-m", model, "-u", url, "-i", protocol),
        *("--concurrency-range", str(c), "--measurement-interval", str(window_ms)),
        *("--stability-percentage", "100", "--percentile", "50"),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL
    )
    out = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{out}")
    throughput = float(perf_analyzer.THROUGHPUT.findall(out)[-1])
    p50 = float(re.findall(r"p50 latency: (\d+) usec", out)[-1])
    p99 = float(re.findall(r"p99 latency: (\d+) usec", out)[-1])
    return throughput, p50, p99


@contextlib.contextmanager
def started(command: list[str], http_port: int, models: list[str], log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_ready(process, http_port, models, log)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        time.sleep(1.0)


def wait_ready(process: subprocess.Popen[bytes], port: int, models: list[str], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    paths = [f"/v2/models/{m}/ready" for m in models]
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if all(_get(port, path) == 200 for path in paths):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready after {READY_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def run(args: argparse.Namespace) -> list[Row]:
    pa = perf_analyzer_env()
    peers = args.peers or peers_dir()
    work = Path(tempfile.mkdtemp(prefix="bench-http-"))
    ws_repo, triton_repo = work / "ws", work / "triton"
    subprocess.run([str(peers / "make_triton_repo.sh"), str(args.models), str(ws_repo)], check=True)
    subprocess.run(
        [str(peers / "triton_real" / "make_repo.sh"), str(args.models), str(triton_repo), "1"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    # Every server runs for the whole benchmark and the cases alternate between them,
    # round after round: on a shared machine whose speed drifts by a third within
    # minutes, servers measured one after another would be compared across the drift.
    # (An idle server costs nothing: warpserve polls only after a request.)
    ws, star, tri = (
        (free_port(), free_port()),
        (free_port(), free_port()),
        (free_port(), free_port()),
    )
    serve = [sys.executable, "-m", "warpserve.server.cli", "serve", "--model-repository"]
    local = ["--grpc-address", "127.0.0.1", "--http-address", "127.0.0.1"]
    commands = {
        "warpserve-aiohttp": (
            [*serve, str(ws_repo), *local, "--allow-metrics", "false", *_ports(ws)],
            [FRAUD, RESNET],
        ),
        "warpserve-starlette": (
            [*STARLETTE, "--model-repository", str(ws_repo), *_ports(star)],
            [FRAUD],
        ),
    }
    ports = {"warpserve-aiohttp": ws, "warpserve-starlette": star}
    if not args.no_triton:
        script = str(peers / "triton_real" / "run_triton.sh")
        metrics = str(free_port())
        commands["triton"] = (
            ["bash", script, str(triton_repo), str(tri[0]), str(tri[1]), metrics],
            [FRAUD],
        )
        ports["triton"] = tri
    cases = [
        ("warpserve-aiohttp", "http", FRAUD),
        ("warpserve-starlette", "http", FRAUD),
        ("triton", "http", FRAUD),
        ("warpserve-aiohttp", "grpc", FRAUD),
        ("triton", "grpc", FRAUD),
        ("warpserve-aiohttp", "http", RESNET),
        ("warpserve-aiohttp", "grpc", RESNET),
    ]
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        for name, (command, models) in commands.items():
            stack.enter_context(started(command, ports[name][1], models, work / f"{name}.log"))
        for _ in range(args.rounds):
            for server, protocol, model in cases:
                if server not in ports:
                    continue
                grpc_port, http_port = ports[server]
                url = f"127.0.0.1:{http_port if protocol == 'http' else grpc_port}"
                # ResNet answers tens of requests a second here: longer windows, or 32
                # clients would not complete enough requests per window to be stable.
                window = args.window_ms * (4 if model == RESNET else 1)
                for c in args.concurrency:
                    try:
                        rate, p50, p99 = measure(pa, url, protocol, model, c, window)
                    except RuntimeError as exc:
                        print(f"{server} {protocol} {model} c={c}: no stable measurement: {exc}")
                        continue
                    rows.append(Row(server, protocol, model, c, rate, p50, p99))
                    print(
                        f"{server:20} {protocol:5} {model:10} c={c:<3} {rate:9.1f}/s "
                        f"p50 {p50:.0f} us"
                    )
    return rows


def _ports(pair: tuple[int, int]) -> list[str]:
    return ["--grpc-port", str(pair[0]), "--http-port", str(pair[1])]


def summary(rows: list[Row]) -> None:
    def rate(server: str, protocol: str, model: str, c: int) -> float | None:
        found = [
            r.infer_per_s
            for r in rows
            if (r.server, r.protocol, r.model, r.concurrency) == (server, protocol, model, c)
        ]
        return statistics.median(found) if found else None

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}" if a and b else "-"

    print("\nratios of median throughputs over the rounds, same run:")
    for c in sorted({r.concurrency for r in rows}):
        ws = rate("warpserve-aiohttp", "http", FRAUD, c)
        print(
            f"c={c:<3} fraud: aiohttp/starlette "
            f"{ratio(ws, rate('warpserve-starlette', 'http', FRAUD, c))}, "
            f"warpserve http / triton http {ratio(ws, rate('triton', 'http', FRAUD, c))}, "
            f"REST/gRPC {ratio(ws, rate('warpserve-aiohttp', 'grpc', FRAUD, c))}; resnet "
            f"REST/gRPC {ratio(rate('warpserve-aiohttp', 'http', RESNET, c), rate('warpserve-aiohttp', 'grpc', RESNET, c))}"  # noqa: E501
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("/tmp/peer-models"))
    parser.add_argument("--peers", type=Path, default=None, help="shared/peers folder")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--window-ms", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2, help="passes over every case")
    parser.add_argument("--no-triton", action="store_true", help="leave real Triton out")
    args = parser.parse_args()
    if not (args.models / f"{FRAUD}.onnx").exists():
        raise SystemExit(f"{args.models} lacks the peers' models: run shared/peers/make_models.py")
    load = os.getloadavg()
    rows = run(args)
    summary(rows)
    RESULTS.mkdir(exist_ok=True)
    report = {"loadavg_at_start": load, "rows": [asdict(r) for r in rows]}
    (RESULTS / "http.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

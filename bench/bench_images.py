"""Raw JPEG requests to the demo image classifier against in-process decode+preprocess+model.

The served model is the demo's image classifier (its model.onnx, labels and golden data)
with an image stage in its config: each request carries one JPEG as BYTES, the server
decodes, resizes to 32x32 and normalises it before batching. The ceiling, measured in the
same run in alternating rounds: the same work in this process with no transport, Pillow
decode and `preprocess_images` per image on `--threads` threads (one per core), then ONNX
Runtime on batches of `--batch`, with the server's session options. Reports images/s of
each and their ratio (target >= 0.8), and CPU seconds per image: the server's, the
client's, and the in-process run's. On a machine shared with other work the throughputs
swing with its load, CPU per image much less; the server's CPU per image against the
in-process run's is the number no client changes.

The load comes from two clients, one after the other in each round: this process
(`warpserve.server.tools.loadgen`, Python on asyncio) and NVIDIA's perf_analyzer (C++,
the JPEGs as BYTES from an `--input-data` JSON file), which leaves more of a small
machine's cores to the server. `--client` picks one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_http import perf_analyzer_env

from tests.e2e.harness import ServerProcess, start_server
from warpserve.kernels.preprocess import preprocess_images
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import model_config_pb2 as mc
from warpserve.server.demo.build import ensure_demo_repository
from warpserve.server.tools import loadgen

MODEL = "image_classifier"
SIZE = (32, 32)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
STAGE = f"""
parameters {{ key: "image_input" value {{ string_value: "IMAGE" }} }}
parameters {{ key: "image_size" value {{ string_value: "{SIZE[0]},{SIZE[1]}" }} }}
parameters {{ key: "image_mean" value {{ string_value: "{",".join(map(str, MEAN))}" }} }}
parameters {{ key: "image_std" value {{ string_value: "{",".join(map(str, STD))}" }} }}
"""


def build(repo: Path) -> None:
    """The demo classifier, its IMAGE input declared as one encoded image per row."""
    from google.protobuf import text_format

    source = ensure_demo_repository(progress=False) / MODEL
    shutil.copytree(source, repo / MODEL)
    config = text_format.Parse((source / "config.pbtxt").read_text(), mc.ModelConfig())
    config.input[0].data_type = mc.TYPE_STRING
    del config.input[0].dims[:]
    config.input[0].dims.append(1)
    text_format.Merge(STAGE, config)
    (repo / MODEL / "config.pbtxt").write_text(text_format.MessageToString(config))


def photos(count: int, height: int, width: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    made = []
    for _ in range(count):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        made.append(buffer.getvalue())
    return made


def payloads(jpegs: list[bytes]) -> list[bytes]:
    made = []
    for jpeg in jpegs:
        request = pb.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="IMAGE", datatype="BYTES", shape=[1, 1])
        request.raw_input_contents.append(len(jpeg).to_bytes(4, "little") + jpeg)
        made.append(request.SerializeToString())
    return made


def served(url: str, pool: loadgen.RequestPool, concurrency: int, seconds: float) -> float:
    async def run() -> float:
        async with loadgen.open_channel(url) as channel:
            result = await loadgen.run_load(channel, pool, concurrency, seconds, warmup_s=0.5)
        if result.failed:
            raise SystemExit(f"served requests failed: {result.first_error}")
        return result.throughput_rps

    return asyncio.run(run())


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid``, all its threads (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_served(
    url: str, pool: loadgen.RequestPool, pid: int, concurrency: int, seconds: float
) -> tuple[float, float, float]:
    """Images/s served by the Python load generator, and CPU seconds per image of the
    server and of this client."""
    server0, client0, wall0 = process_cpu_s(pid), time.process_time(), time.perf_counter()
    rate = served(url, pool, concurrency, seconds)
    images = max(rate * (time.perf_counter() - wall0), 1.0)  # warm-up requests cost CPU too
    server, client = process_cpu_s(pid) - server0, time.process_time() - client0
    return rate, server / images, client / images


def perf_analyzer_input(jpegs: list[bytes], path: Path) -> Path:
    """perf_analyzer's --input-data file: one request per JPEG. A "b64" value is the
    tensor's raw content, so each holds Triton's BYTES serialisation (a 4-byte length,
    then the bytes), as the Python client sends it."""
    rows = [
        {"IMAGE": {"b64": base64.b64encode(len(j).to_bytes(4, "little") + j).decode()}}
        for j in jpegs
    ]
    path.write_text(json.dumps({"data": rows}))
    return path


def answered(server: ServerProcess) -> float:
    """Requests the server has answered successfully (its Prometheus counter)."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    found = re.findall(
        rf'^nv_inference_request_success{{[^}}]*model="{MODEL}"[^}}]*}} (\S+)', text, re.M
    )
    return sum(float(value) for value in found)


def timed_perf_analyzer(
    pa: tuple[str, dict[str, str]], server: ServerProcess, data: Path, c: int, seconds: float
) -> tuple[float, float, float]:
    """Images/s perf_analyzer measured (its last window of ``seconds``), and CPU seconds
    per image of the server and of perf_analyzer over its whole run (windows until
    stable, warm-up included), per request the server answered meanwhile."""
    binary, env = pa
    command = [
        binary,
        *("-m", MODEL, "-u", server.url, "-i", "grpc", "--input-data", str(data)),
        *("--concurrency-range", str(c), "--measurement-interval", str(int(seconds * 1000))),
        *("--stability-percentage", "100", "--max-trials", "4"),
    ]
    pid, count0 = server.process.pid, answered(server)
    server0 = process_cpu_s(pid)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu, images = process_cpu_s(pid) - server0, max(answered(server) - count0, 1.0)
    out = done.stdout + done.stderr
    if done.returncode != 0 or "Throughput:" not in out:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{out}")
    rate = float(re.findall(r"Throughput: ([\d.]+) infer/sec", out)[-1])
    client_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return rate, server_cpu / images, client_cpu / images


def _prepare(jpeg: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(jpeg))
    pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))  # as served
    return preprocess_images(pixels[np.newaxis], SIZE, MEAN, STD)  # "auto", as served


def in_process(
    jpegs: list[bytes], model: Path, batch: int, threads: int, seconds: float
) -> tuple[float, float]:
    """Images/s decoding and preprocessing on ``threads`` threads (Pillow and Numba
    release the GIL) and classifying batches of ``batch``, all in this process; and CPU
    seconds per image."""
    import onnxruntime as ort

    from warpserve.server.backends.onnxruntime import session_options

    config = mc.ModelConfig(name=MODEL)
    options = session_options(config, 1)
    session = ort.InferenceSession(str(model), options, ["CPUExecutionProvider"])
    done, start, i, cpu0 = 0, time.perf_counter(), 0, time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        while time.perf_counter() - start < seconds:
            chunk = [jpegs[(i + k) % len(jpegs)] for k in range(batch)]
            i += batch
            session.run(None, {"IMAGE": np.concatenate(list(pool.map(_prepare, chunk)))})
            done += batch
    return done / (time.perf_counter() - start), (time.process_time() - cpu0) / done


CLIENTS = ("python", "perf_analyzer")


def row(client: str, served: tuple[float, float, float], ceiling: tuple[float, float]) -> dict:
    (rate, server_cpu, client_cpu), (in_rate, in_cpu) = served, ceiling
    return {
        "client": client,
        "served": rate,
        "in_process": in_rate,
        "ratio": rate / in_rate,
        "server_cpu_ms": server_cpu * 1e3,
        "client_cpu_ms": client_cpu * 1e3,
        "in_process_cpu_ms": in_cpu * 1e3,
        "cpu_ratio": in_cpu / (server_cpu + client_cpu),  # in-process / server + client
        "server_cpu_ratio": in_cpu / server_cpu,  # in-process / server alone
    }


def report(r: dict) -> None:
    print(f"{r['client']:>13}: served {r['served']:7.1f} img/s  in-process "
          f"{r['in_process']:7.1f} img/s  ratio {r['ratio']:.2f}   CPU/image ms: server "
          f"{r['server_cpu_ms']:.2f} client {r['client_cpu_ms']:.2f} in-process "
          f"{r['in_process_cpu_ms']:.2f}; in-process / (server + client) "
          f"{r['cpu_ratio']:.2f}, / server {r['server_cpu_ratio']:.2f}", flush=True)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="in-process batch size")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--client", choices=(*CLIENTS, "both"), default="both")
    args = parser.parse_args()
    clients = CLIENTS if args.client == "both" else (args.client,)
    pa = perf_analyzer_env() if "perf_analyzer" in clients else None
    jpegs = photos(16, args.height, args.width)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        build(repo)
        pool = loadgen.RequestPool(MODEL, "", 1, payloads(jpegs))
        data = perf_analyzer_input(jpegs, Path(tmp) / "jpegs.json")
        server = start_server(repo, log_dir=Path(tmp))
        model = repo / MODEL / "1" / "model.onnx"
        try:
            for _ in range(args.rounds):
                # The ceiling beside each client's run, in the same round.
                for client in clients:
                    ceiling = in_process(jpegs, model, args.batch, args.threads, args.seconds)
                    if client == "python":
                        pid = server.process.pid
                        got = timed_served(server.url, pool, pid, args.concurrency, args.seconds)
                    else:
                        assert pa is not None
                        got = timed_perf_analyzer(pa, server, data, args.concurrency, args.seconds)
                    rows.append(row(client, got, ceiling))
                    report(rows[-1])
        finally:
            server.stop()
    summary = {}
    for client in clients:
        mine = [r for r in rows if r["client"] == client]
        summary[client] = {
            key: statistics.median(r[key] for r in mine)
            for key in ("ratio", "cpu_ratio", "server_cpu_ratio", "server_cpu_ms", "client_cpu_ms")
        }
        median = summary[client]
        print(f"{client}: median ratio served / in-process {median['ratio']:.2f} "
              f"({args.width}x{args.height} JPEGs, {args.concurrency} clients; target >= 0.8); "
              f"CPU per image in-process / (server + client) {median['cpu_ratio']:.2f}, "
              f"/ server alone {median['server_cpu_ratio']:.2f}")  # fmt: skip
    out = Path(__file__).parent / "results" / "images.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rounds": rows, "medians": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

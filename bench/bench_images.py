"""Raw JPEG requests to the demo image classifier against in-process decode+preprocess+model.

The served model is the demo's image classifier (its model.onnx, labels and golden data)
with an image stage in its config: each request carries one JPEG as BYTES, the server
decodes, resizes to 32x32 and normalises it before batching. The ceiling, measured in the
same run in alternating rounds: the same work in this process with no transport, Pillow
decode and `preprocess_images` per image on `--threads` threads (one per core), then ONNX
Runtime on batches of `--batch`, with the server's session options. Reports images/s of
each and their ratio (target >= 0.8), and each side's CPU seconds per image (the server
process and this client together against the in-process run): on a machine shared with
other work the throughputs swing with its load, CPU per image much less.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.harness import start_server
from warpserve.kernels.preprocess import preprocess_images
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import model_config_pb2 as mc
from warpserve.server.demo.build import ensure_demo_repository
from warpserve.server.preprocessing import SMALL_OUTPUT_PIXELS
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
) -> tuple[float, float]:
    """Images/s served, and CPU seconds per image of the server and this client together.

    On a machine shared with other work throughput swings with their load; CPU per image
    is what bounds it on an idle machine, and moves much less."""
    server0, client0, wall0 = process_cpu_s(pid), time.process_time(), time.perf_counter()
    rate = served(url, pool, concurrency, seconds)
    images = rate * (time.perf_counter() - wall0)  # warm-up requests cost CPU too
    cpu = process_cpu_s(pid) - server0 + time.process_time() - client0
    return rate, cpu / max(images, 1.0)


def _prepare(jpeg: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(jpeg))
    pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))  # as served
    # The provider the server's stage picks for one image (numpy for small outputs).
    small = SIZE[0] * SIZE[1] <= SMALL_OUTPUT_PIXELS
    return preprocess_images(
        pixels[np.newaxis], SIZE, MEAN, STD, provider="numpy" if small else "auto"
    )


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="in-process batch size")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    args = parser.parse_args()
    jpegs = photos(16, args.height, args.width)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        build(repo)
        pool = loadgen.RequestPool(MODEL, "", 1, payloads(jpegs))
        server = start_server(repo, log_dir=Path(tmp))
        try:
            for _ in range(args.rounds):
                model = repo / MODEL / "1" / "model.onnx"
                ceiling, ceiling_cpu = in_process(
                    jpegs, model, args.batch, args.threads, args.seconds
                )
                rate, cpu = timed_served(
                    server.url, pool, server.process.pid, args.concurrency, args.seconds
                )
                rows.append(
                    {
                        "served": rate,
                        "in_process": ceiling,
                        "ratio": rate / ceiling,
                        "served_cpu_ms": cpu * 1e3,
                        "in_process_cpu_ms": ceiling_cpu * 1e3,
                        "cpu_ratio": ceiling_cpu / cpu,
                    }
                )
                print(f"served {rate:8.1f} img/s   in-process {ceiling:8.1f} img/s   "
                      f"ratio {rate / ceiling:.2f}   CPU/image served {cpu * 1e3:.2f} ms "
                      f"(server + client) in-process {ceiling_cpu * 1e3:.2f} ms "
                      f"ratio {ceiling_cpu / cpu:.2f}")  # fmt: skip
        finally:
            server.stop()
    ratio = statistics.median(r["ratio"] for r in rows)
    cpu_ratio = statistics.median(r["cpu_ratio"] for r in rows)
    print(f"median ratio served / in-process: {ratio:.2f} ({args.width}x{args.height} JPEGs, "
          f"{args.concurrency} clients; target >= 0.8); CPU per image, in-process / "
          f"served: {cpu_ratio:.2f}")  # fmt: skip
    out = Path(__file__).parent / "results" / "images.json"
    out.parent.mkdir(exist_ok=True)
    summary = {"median_ratio": ratio, "median_cpu_ratio": cpu_ratio}
    out.write_text(json.dumps({"args": vars(args), "rounds": rows, **summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

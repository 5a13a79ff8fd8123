"""The tensor codec against one copy of the tensor's bytes, measured in the same run.

For each payload size it times, per request or reply:

- **decode**: the bytes gRPC hands the server -> numpy inputs (``codec.receive_infer`` and
  ``codec.decode_request``, what ModelInfer runs);
- **encode**: numpy outputs -> the bytes gRPC sends (``replies.encode_response``);
- **protobuf**: the same two steps with the tensors going through protobuf messages
  (the whole request parsed by ``FromString``, ``raw_input_contents`` read from it; the
  outputs appended to ``raw_output_contents`` and ``SerializeToString``), the way a
  servicer built on the generated stubs does them;
- **one copy** (the ceiling): ``bytes(memoryview)`` of a buffer of the payload's size.

A ratio of 1.0 means the step costs one copy of the tensor; a decode under 1 copies
nothing. Small payloads are dominated by per-message overhead, so their ratios are large
and say little; the microseconds are the number to read there.

    python bench/bench_codec.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server import codec, replies

BENCH_DIR = Path(__file__).resolve().parent
SIZES = {
    "fraud row (64 B)": (1, 16),
    "image 3x224x224 (588 KiB)": (1, 3, 224, 224),
    "batch of 16 MiB": (4096, 1024),
}


def _time_per_call(fn: Callable[[], object], budget_s: float) -> float:
    """Seconds per call: the best of five timed loops, each about budget_s / 5 long."""
    timer = timeit.Timer(fn)
    calls, elapsed = timer.autorange()  # enough calls for at least 0.2 s
    per_loop = max(1, round(calls * budget_s / 5 / elapsed))
    return min(timer.repeat(5, per_loop)) / per_loop


def _request_bytes(x: np.ndarray) -> bytes:
    request = pb.ModelInferRequest(model_name="m", id="r")
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


def _protobuf_decode(data: bytes) -> codec.InferRequest:
    """The codec's decode with protobuf reading raw_input_contents out of the message."""
    return codec.decode_request(codec.ReceivedInfer(pb.ModelInferRequest.FromString(data)))


def _protobuf_encode(y: np.ndarray) -> bytes:
    response = pb.ModelInferResponse(model_name="m", model_version="1", id="r")
    response.outputs.add(name="y", datatype="FP32", shape=y.shape)
    response.raw_output_contents.append(y.tobytes())
    return response.SerializeToString()


def measure(shape: tuple[int, ...], budget_s: float) -> dict[str, float]:
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    data = _request_bytes(x)
    decoded = codec.decode_request(codec.receive_infer(data)).inputs["x"]
    np.testing.assert_array_equal(decoded, x)  # the timed path gives the right tensor
    assert replies.encode_response("m", "1", "r", [("y", x)]) == _protobuf_encode(x)
    buffer = memoryview(x.tobytes())
    seconds = {
        "one_copy": _time_per_call(lambda: bytes(buffer), budget_s),
        "decode": _time_per_call(lambda: codec.decode_request(codec.receive_infer(data)), budget_s),
        "protobuf_decode": _time_per_call(lambda: _protobuf_decode(data), budget_s),
        "encode": _time_per_call(
            lambda: replies.encode_response("m", "1", "r", [("y", x)]), budget_s
        ),
        "protobuf_encode": _time_per_call(lambda: _protobuf_encode(x), budget_s),
    }
    result = {f"{k}_us": v * 1e6 for k, v in seconds.items()}
    for step in ("decode", "protobuf_decode", "encode", "protobuf_encode"):
        result[f"{step}_vs_one_copy"] = seconds[step] / seconds["one_copy"]
    result["bytes"] = float(x.nbytes)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing loops")
    parser.add_argument("--rounds", type=int, default=3, help="repeat and report the median")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "codec.json")
    args = parser.parse_args()
    budget = 0.5 if args.quick else 2.0
    report: dict[str, Any] = {"machine": platform.platform(), "sizes": {}}
    columns = ("one copy", "decode", "protobuf", "encode", "protobuf")
    print(f"{'payload':<28}" + "".join(f"{c:>10}" for c in columns) + "   (us)")
    for label, shape in SIZES.items():
        rounds = [measure(shape, budget) for _ in range(args.rounds)]
        median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        report["sizes"][label] = {"median": median, "rounds": rounds}
        cells = [f"{median['one_copy_us']:>10.1f}"]
        for step in ("decode", "protobuf_decode", "encode", "protobuf_encode"):
            cells.append(f"{median[step + '_us']:>10.1f}")
        print(f"{label:<28}" + "".join(cells))
        ratios = "  ".join(
            f"{step} {median[step + '_vs_one_copy']:.2f}"
            for step in ("decode", "protobuf_decode", "encode", "protobuf_encode")
        )
        print(f"{'':<28}  x one copy: {ratios}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

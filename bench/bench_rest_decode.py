"""REST request decoding against gRPC's, in CPU time per request, in the same run.

What the REST endpoint spends turning a KServe v2 inference body into the decoded
request the data plane takes (``decode_infer``), beside what the gRPC endpoint spends
on the same tensors (``wireplans.receive`` + ``wireplans.decode_request``, a repeated
request head as a load generator sends it, and the codec's full path for a head seen
once). Cases:

- fraud row, binary: one FP32 [1, 16] input in Triton's binary extension and a binary
  output, as ``perf_analyzer -i http`` and ``tritonclient.http`` with binary data send it;
- fraud row, JSON: the same row as JSON ``data`` (curl);
- 64 fraud rows, JSON: [64, 16] as JSON ``data``;
- gRPC planned / full: the fraud row as a ModelInferRequest.

Each round runs every case (in rotating order) for ``--calls`` calls and records process
CPU time per call, so time the machine gives to other processes is not counted; the
table shows the median and best over ``--rounds`` rounds, and each REST case's median
ratio to gRPC planned (per round, then the median). Writes JSON to
``bench/results/rest_decode.json``.

    python bench/bench_rest_decode.py [--rounds 15] [--calls 3000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server import codec, wireplans

try:  # where the decoder lives; the older layout kept it beside the encoder
    from warpserve.server.http.decoding import decode_infer
except ImportError:  # pragma: no cover - measuring an older checkout
    from warpserve.server.http.tensors import decode_infer  # type: ignore[attr-defined,no-redef]

RESULTS = Path(__file__).resolve().parent / "results"
MODEL, INPUT, OUTPUT = "fraud_scorer", "TRANSACTION", "FRAUD_PROBABILITY"
GRPC = "gRPC planned"


def rest_binary(x: np.ndarray) -> tuple[bytes, int | None]:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": INPUT,
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}],
        }
    ).encode()
    return head + x.tobytes(), len(head)


def rest_json(x: np.ndarray) -> tuple[bytes, int | None]:
    document = {
        "inputs": [{"name": INPUT, "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]
    }
    return json.dumps(document).encode(), None


def grpc_bytes(x: np.ndarray) -> bytes:
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name=INPUT, datatype="FP32", shape=x.shape)
    request.outputs.add(name=OUTPUT)
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


def cases() -> dict[str, Callable[[], Any]]:
    rng = np.random.default_rng(0)
    row = rng.standard_normal((1, 16)).astype(np.float32)
    rows = rng.standard_normal((64, 16)).astype(np.float32)
    binary, json_row, json_rows = rest_binary(row), rest_json(row), rest_json(rows)
    wire = grpc_bytes(row)

    def rest(body: tuple[bytes, int | None]) -> Callable[[], Any]:
        return lambda: decode_infer(body[0], body[1], MODEL, "", None)

    def grpc_planned() -> Any:
        return wireplans.decode_request(wireplans.receive(wire))

    def grpc_full() -> Any:
        return codec.decode_request(codec.receive_infer(wire))

    grpc_planned()  # the head's plan is made by the first request that carries it
    return {
        "REST fraud row, binary": rest(binary),
        "REST fraud row, JSON": rest(json_row),
        "REST 64 rows, JSON": rest(json_rows),
        GRPC: grpc_planned,
        "gRPC full": grpc_full,
    }


def per_call_us(fn: Callable[[], Any], calls: int) -> float:
    start = time.process_time_ns()
    for _ in range(calls):
        fn()
    return (time.process_time_ns() - start) / calls / 1000


def measure(rounds: int, calls: int) -> dict[str, list[float]]:
    table = cases()
    names = list(table)
    for fn in table.values():
        per_call_us(fn, max(1, calls // 10))  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(per_call_us(table[name], calls))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    times = measure(args.rounds, args.calls)
    print(f"{'case':<26} {'median us':>10} {'best us':>9} {'/ gRPC planned':>15}")
    rows = []
    for name, values in times.items():
        ratios = [v / g for v, g in zip(values, times[GRPC], strict=True)]
        ratio = statistics.median(ratios)
        print(f"{name:<26} {statistics.median(values):>10.2f} {min(values):>9.2f} {ratio:>15.2f}")
        rows.append(
            {
                "case": name,
                "median_us": statistics.median(values),
                "best_us": min(values),
                "ratio_to_grpc_planned": ratio,
                "per_round_us": values,
            }
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rest_decode.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

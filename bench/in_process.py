"""ResNet-18's in-process ceiling: ONNX Runtime run in this process, with the session
options warpserve's backend gives the served model, in the two arrangements the server's
instance groups use: one session with every core, or a session per core side by side."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from google.protobuf import text_format
from resnet import CONFIG_PBTXT

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.backends.onnxruntime import session_options
from warpserve.server.cpus import usable_cores

ONE_SESSION, SESSION_PER_CORE = "one session", "a session per core"
BATCHES = (1, 2, 4, 8)


def arrangements(model_path: Path) -> dict[str, list[Any]]:
    """The sessions of each arrangement: one instance of resnet18's config, or one of
    ``cores`` instances each, so the ceiling runs the same kernels the same way."""
    config = text_format.Parse(CONFIG_PBTXT, mc.ModelConfig())

    def session(instances: int) -> Any:
        options = session_options(config, instances)
        return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    cores = usable_cores()
    found = {ONE_SESSION: [session(1)]}
    if cores > 1:
        found[SESSION_PER_CORE] = [session(cores) for _ in range(cores)]
    return found


def label(arrangement: str, batch: int) -> str:
    return f"{arrangement}, batch {batch}"


def sweep(
    sessions_of: dict[str, list[Any]], duration: float, warmup: float
) -> dict[tuple[str, int], float]:
    """Images/s of each arrangement at each batch size."""
    rates = {}
    for arrangement, sessions in sessions_of.items():
        for batch in BATCHES:
            run(sessions, batch, warmup)
            rates[arrangement, batch] = run(sessions, batch, duration)[0]
            print(
                f"{'in-process':>10} {label(arrangement, batch)}: "
                f"{rates[arrangement, batch]:8.1f} images/s",
                flush=True,
            )
    return rates


def run(
    sessions: list[Any], batch: int, seconds: float, warm_first: bool = False
) -> tuple[float, float]:
    """Images/s of the sessions running side by side for ``seconds`` (the sum of each
    one's rate over its own runs), and the seconds it took. ``warm_first``: one
    unmeasured run each first, as a thread woken from sleep runs on cold caches."""
    rng = np.random.default_rng(batch)
    feed = {"INPUT": rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)}

    def rate(session: Any) -> float:
        if warm_first:
            session.run(None, feed)
        start = time.perf_counter()
        runs = 0
        while runs == 0 or time.perf_counter() - start < seconds:
            session.run(None, feed)
            runs += 1
        return runs * batch / (time.perf_counter() - start)

    start = time.perf_counter()
    if len(sessions) == 1:
        total = rate(sessions[0])
    else:
        with concurrent.futures.ThreadPoolExecutor(len(sessions)) as pool:
            total = sum(pool.map(rate, sessions))
    return total, time.perf_counter() - start

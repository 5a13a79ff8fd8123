"""Requests that arrived together run as one batch (server/arrivals.py).

The native frontend starts one task per call of a wakeup, telling each how many came
behind it. A tiny model run inline then queues such requests instead of running each
alone, so the batch forms on the next loop pass with all of them; a request with nobody
behind it still runs at once.
"""

from __future__ import annotations

import asyncio
import contextvars
from pathlib import Path

import numpy as np
import pytest

from tests.models import affine_reference, write_affine
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server import wireplans
from warpserve.server.arrivals import BEHIND
from warpserve.server.codec import InferRequest, receive_infer
from warpserve.server.dataplane import DataPlane
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.repository.repository import ModelRepository

MODEL = "affine"


def _request(x: np.ndarray) -> InferRequest:
    message = pb.ModelInferRequest(model_name=MODEL)
    message.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
    message.raw_input_contents.append(x.tobytes())
    return wireplans.decode_request(receive_infer(message.SerializeToString()))


async def _serve_together(dataplane: DataPlane, xs: list[np.ndarray], tell: bool) -> list:
    """Start one task per request in one loop pass, as the frontend does."""
    tasks = []
    for i, x in enumerate(xs):
        context = contextvars.copy_context()
        if tell:
            context.run(BEHIND.set, len(xs) - 1 - i)
        tasks.append(
            asyncio.get_running_loop().create_task(dataplane.infer(_request(x)), context=context)
        )
    return [outputs for _, outputs in await asyncio.gather(*tasks)]


@pytest.mark.timeout(60)
def test_requests_that_arrived_together_share_one_run(tmp_path: Path) -> None:
    write_affine(tmp_path, MODEL)

    async def main() -> None:
        registry = ModelRegistry(ModelRepository(tmp_path))
        await registry.load(MODEL)
        try:
            mv = registry.resolve(MODEL, "", "")
            assert mv.batcher is not None
            if not mv.batcher.executors[0].inline:
                pytest.skip("the machine is too loaded for the model to run inline")
            dataplane = DataPlane(registry)
            xs = [np.full((1, 4), i, np.float32) for i in range(6)]
            for tell, runs in ((False, len(xs)), (True, 1)):
                before = mv.stats.execution_count
                answers = await _serve_together(dataplane, xs, tell)
                assert mv.stats.execution_count - before == runs, tell
                for x, outputs in zip(xs, answers, strict=True):
                    np.testing.assert_allclose(
                        outputs["OUTPUT0"], affine_reference(x, scale=1.0), rtol=1e-5
                    )
            # Nobody behind: still at once, without a queue entry.
            before = mv.stats.execution_count
            await _serve_together(dataplane, xs[:1], tell=True)
            assert mv.stats.execution_count - before == 1
        finally:
            await registry.close()

    asyncio.run(main())

"""Dynamic batching seen from outside: concurrent clients share executions and each gets
exactly its own rows back; deadlines and queue parameters behave."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import (
    AFFINE,
    SLEEPY,
    SLOW,
    SLOW_MAX_BATCH,
    failure,
    fp32_input,
    health,
    model_stats,
    new_batch_sizes,
    pending_requests,
    reference,
    rows,
    wait_pending,
)
from tests.e2e.harness import ServerProcess

pytestmark = pytest.mark.e2e

CLIENTS = 16
REQUESTS_PER_CLIENT = 4


def test_concurrent_clients_form_batches(
    server: ServerProcess, client: grpcclient.InferenceServerClient
) -> None:
    before = model_stats(client, SLOW)
    start = threading.Barrier(CLIENTS)

    def one_client(index: int) -> list[tuple[np.ndarray, np.ndarray]]:
        pairs = []
        with grpcclient.InferenceServerClient(server.url) as triton:
            start.wait()
            for j in range(REQUESTS_PER_CLIENT):
                # 1-3 rows, values unique to (client, request): a mix-up cannot go unnoticed.
                x = rows(1 + (index + j) % 3, seed=1000 * index + j)
                result = triton.infer(SLOW, [fp32_input(x)], request_id=f"{index}-{j}")
                assert result.get_response().id == f"{index}-{j}"
                pairs.append((x, result.as_numpy("OUTPUT0")))
        return pairs

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(one_client, range(CLIENTS)))

    sent_rows = 0
    for pairs in results:
        for x, got in pairs:
            np.testing.assert_allclose(got, reference(x), rtol=1e-5, atol=1e-5)
            sent_rows += x.shape[0]
    after = model_stats(client, SLOW)
    requests = CLIENTS * REQUESTS_PER_CLIENT
    executions = after.execution_count - before.execution_count
    assert after.inference_stats.success.count - before.inference_stats.success.count == requests
    assert after.inference_count - before.inference_count == sent_rows
    assert executions < requests, f"{requests} requests ran in {executions} executions"
    sizes = new_batch_sizes(before, after)
    # A request carries at most 3 rows: a batch of more held several requests.
    assert max(sizes) > 3, f"no execution held more than one request: {sizes}"
    assert max(sizes) <= SLOW_MAX_BATCH


def test_concurrent_aio_tasks_form_batches(
    client: grpcclient.InferenceServerClient, run_aio: Any
) -> None:
    before = model_stats(client, SLOW)
    inputs = [rows(1, seed=5000 + i) for i in range(CLIENTS * 2)]

    async def burst(aio: aioclient.InferenceServerClient) -> list[np.ndarray]:
        results = await asyncio.gather(*(aio.infer(SLOW, [fp32_input(x)]) for x in inputs))
        return [r.as_numpy("OUTPUT0") for r in results]

    for x, got in zip(inputs, run_aio(burst), strict=True):
        np.testing.assert_allclose(got, reference(x), rtol=1e-5, atol=1e-5)
    after = model_stats(client, SLOW)
    assert after.execution_count - before.execution_count < len(inputs)
    assert max(new_batch_sizes(before, after)) > 1


def test_deadline_on_queued_request(
    server: ServerProcess, client: grpcclient.InferenceServerClient, run_aio: Any
) -> None:
    """``sleepy`` runs one request at a time: with three ahead of it, a request whose
    deadline is far shorter than their run time expires in the queue and never runs."""
    before = model_stats(client, SLEEPY)
    ahead = [rows(1, seed=70 + i) for i in range(3)]

    async def scenario(aio: aioclient.InferenceServerClient) -> tuple[list[Any], tuple[str, str]]:
        busy = [asyncio.ensure_future(aio.infer(SLEEPY, [fp32_input(x)])) for x in ahead]
        await asyncio.to_thread(wait_pending, server, SLEEPY, len(ahead))
        try:
            await aio.infer(SLEEPY, [fp32_input(rows(1, seed=1))], client_timeout=0.05)
        except InferenceServerException as exc:
            late = (str(exc.status()).removeprefix("StatusCode."), str(exc.message()))
        else:
            late = ("OK", "the request finished before its deadline")
        return list(await asyncio.gather(*busy)), late

    done, (code, message) = run_aio(scenario)
    assert code == "DEADLINE_EXCEEDED", message
    for x, result in zip(ahead, done, strict=True):
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), reference(x), rtol=1e-5, atol=1e-5)
    after = model_stats(client, SLEEPY)
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    assert after.execution_count - before.execution_count == 3, "the expired request ran"
    # The server keeps serving, the same model included.
    assert health(server.url) == "SERVING"
    x = rows(2, seed=3)
    result = client.infer(SLEEPY, [fp32_input(x)])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), reference(x), rtol=1e-5, atol=1e-5)


def test_cancelled_request_leaves_the_queue(
    server: ServerProcess, client: grpcclient.InferenceServerClient, run_aio: Any
) -> None:
    """A client that cancels while its request is queued behind ``sleepy``'s running
    ones takes it out of the queue: it never runs, and the others still finish."""
    before = model_stats(client, SLEEPY)
    ahead = [rows(1, seed=80 + i) for i in range(2)]

    async def scenario(aio: aioclient.InferenceServerClient) -> list[Any]:
        busy = [asyncio.ensure_future(aio.infer(SLEEPY, [fp32_input(x)])) for x in ahead]
        await asyncio.to_thread(wait_pending, server, SLEEPY, len(ahead))
        doomed = asyncio.ensure_future(aio.infer(SLEEPY, [fp32_input(rows(1, seed=2))]))
        await asyncio.to_thread(wait_pending, server, SLEEPY, len(ahead) + 1)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return list(await asyncio.gather(*busy))

    done = run_aio(scenario)
    for x, result in zip(ahead, done, strict=True):
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), reference(x), rtol=1e-5, atol=1e-5)
    # Had the cancelled request stayed queued, it would run now: wait for the queue to
    # empty before counting executions.
    deadline = time.monotonic() + 10
    while pending_requests(server.metrics_port, SLEEPY) > 0:
        assert time.monotonic() < deadline, "sleepy never went idle"
        time.sleep(0.005)
    after = model_stats(client, SLEEPY)
    assert after.execution_count - before.execution_count == len(ahead), "the cancelled one ran"
    assert health(server.url) == "SERVING"


def test_sync_client_timeout(client: grpcclient.InferenceServerClient) -> None:
    x = rows(1, seed=8)
    code, _ = failure(lambda: client.infer(SLEEPY, [fp32_input(x)], client_timeout=0.001))
    assert code == "DEADLINE_EXCEEDED"
    result = client.infer(AFFINE, [fp32_input(x)], client_timeout=10)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("model", "priority", "timeout"),
    [
        (SLOW, 1, None),
        (SLOW, 2, 5_000_000),
        (SLOW, 0, 10_000_000),
        (AFFINE, 1, 1_000_000),
    ],
)
def test_priority_and_timeout_parameters_accepted(
    client: grpcclient.InferenceServerClient, model: str, priority: int, timeout: int | None
) -> None:
    x = rows(3, seed=priority)
    result = client.infer(model, [fp32_input(x)], priority=priority, timeout=timeout)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), reference(x), rtol=1e-5, atol=1e-5)

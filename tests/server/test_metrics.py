"""The metrics endpoint: Prometheus text on /metrics (GET and HEAD), nothing elsewhere."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest

from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.metrics import serve_metrics
from warpserve.server.repository.repository import ModelRepository


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    repository = ModelRepository(tmp_path_factory.mktemp("repo"))
    server, bound = serve_metrics(ModelRegistry(repository), "127.0.0.1", 0)
    try:
        yield bound
    finally:
        server.shutdown()
        server.server_close()


def fetch(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        reply = connection.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        connection.close()


def test_get_metrics_answers_the_exposition(port: int) -> None:
    status, headers, body = fetch(port, "GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert b"# TYPE warpserve_model_version_active gauge" in body


def test_head_metrics_answers_the_headers_without_a_body(port: int) -> None:
    _, _, full = fetch(port, "GET", "/metrics")
    status, headers, body = fetch(port, "HEAD", "/metrics")
    assert status == 200 and body == b""
    assert headers["Content-Type"].startswith("text/plain")
    assert int(headers["Content-Length"]) == len(full)


@pytest.mark.parametrize("path", ["/", "/health", "/metricsx", "/metrics/x", "/favicon.ico"])
def test_other_paths_are_not_found(port: int, path: str) -> None:
    status, _, body = fetch(port, "GET", path)
    assert status == 404
    assert b"warpserve_model_version_active" not in body
    assert b"/metrics" in body  # says where the metrics are


def test_other_methods_are_not_allowed(port: int) -> None:
    status, headers, _ = fetch(port, "POST", "/metrics")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"


def test_latency_histogram_buckets_are_inclusive_upper_bounds() -> None:
    from warpserve.server.stats import LATENCY_BUCKETS_US, LatencyHistogram

    hist = LatencyHistogram()
    hist.add(1_000_000)  # exactly 1000 us: in the le="1000" bucket, as Prometheus counts
    hist.add(1_000_001, count=2)  # just above: the next bucket, twice
    hist.add(10**12)  # beyond the last bound: only +Inf
    cumulative = dict(hist.cumulative())
    assert cumulative["500"] == 0 and cumulative["1000"] == 1
    assert cumulative["2500"] == 3
    assert cumulative[str(LATENCY_BUCKETS_US[-1])] == 3 and cumulative["+Inf"] == 4
    assert hist.sum_ns == 1_000_000 + 2 * 1_000_001 + 10**12

"""The Grafana dashboard, the Prometheus rules and the autoscaler's metric read only
metrics a running server exports, and its latency histograms add up."""

from __future__ import annotations

import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.queries import all_queries, exported_names, metric_names, recorded_names
from tests.e2e.conftest import AFFINE, SLOW, fp32_input, metrics_text, rows
from tests.e2e.harness import ServerProcess

MODELS = (AFFINE, SLOW)


def _traffic(client: grpcclient.InferenceServerClient) -> None:
    for model in MODELS:
        for seed in range(3):
            client.infer(model, [fp32_input(rows(2, seed))])


def test_every_deploy_query_names_an_exported_metric(
    server: ServerProcess, client: grpcclient.InferenceServerClient
) -> None:
    _traffic(client)
    exported = exported_names(metrics_text(server.metrics_port))
    known = exported | recorded_names()
    queries = all_queries()
    assert len(queries) > 20, "the dashboard and rules were not found"
    unknown = {
        f"{query.where}: {name}" for query in queries for name in metric_names(query.expr) - known
    }
    assert not unknown, "queries read metrics the server does not export:\n" + "\n".join(
        sorted(unknown)
    )
    # Control: a name off by one letter is not among the exported ones.
    assert "nv_inference_request_sucess" not in known
    assert "warpserve_request_duration_us_bucket" in exported


def _samples(text: str, name: str, model: str) -> dict[str, float]:
    """The samples of one family for one model's version 1, keyed by sample name + le."""
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.labels.get("model") == model and sample.labels.get("version") == "1":
                out[sample.name + sample.labels.get("le", "")] = sample.value
    return out


def test_latency_histograms_count_every_request(
    server: ServerProcess, client: grpcclient.InferenceServerClient
) -> None:
    _traffic(client)
    text = metrics_text(server.metrics_port)
    success = _samples(text, "nv_inference_request_success", AFFINE)["nv_inference_request_success"]
    queued = _samples(text, "nv_inference_queue_duration_us", AFFINE)
    for family in ("request", "queue", "compute"):
        hist = _samples(text, f"warpserve_{family}_duration_us", AFFINE)
        name = f"warpserve_{family}_duration_us"
        assert hist[f"{name}_bucket+Inf"] == hist[f"{name}_count"]
        bounds = sorted(
            (float(k.removeprefix(f"{name}_bucket")), v)
            for k, v in hist.items()
            if k.startswith(f"{name}_bucket")
        )
        counts = [v for _, v in bounds]
        assert counts == sorted(counts), f"{name}: buckets are not cumulative: {bounds}"
        if family == "request":
            assert hist[f"{name}_count"] == success
        assert hist[f"{name}_count"] >= len(MODELS)  # this test's requests at least
    assert "nv_inference_queue_duration_us" in queued
    batch = _samples(text, "warpserve_batch_size", AFFINE)
    at_most_2 = next(v for k, v in batch.items() if k.startswith("warpserve_batch_size_bucket2"))
    assert at_most_2 >= 3  # this test's 2-row requests ran in batches of at most 2 rows
    assert batch["warpserve_batch_size_sum"] >= 2 * 3

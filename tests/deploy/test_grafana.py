"""deploy/grafana and deploy/prometheus, offline: every query parses as PromQL, the
dashboard covers what operators look at, and the scrape config points at the server's
metrics port. (tests/e2e/test_deploy_metrics.py checks the names against a live server.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.deploy.queries import (
    DASHBOARDS,
    DEPLOY,
    all_queries,
    dashboard_queries,
    metric_names,
)
from warpserve.server.cli import build_parser


def _serve_default(flag: str) -> object:
    return build_parser().parse_args(["serve"]).__dict__[flag]


def test_every_query_parses_and_selects_named_metrics() -> None:
    queries = all_queries()
    assert queries
    for query in queries:
        try:
            assert metric_names(query.expr), f"{query.where} reads no metric"
        except ValueError as exc:
            pytest.fail(f"{query.where}: {exc}\n{query.expr}")


def test_the_parser_refuses_broken_queries() -> None:
    """Control: the check above can fail."""
    with pytest.raises(ValueError):
        metric_names("sum(rate(nv_inference_count[$__rate_interval])")
    with pytest.raises(ValueError, match="without a metric name"):
        metric_names('sum({model="a"})')
    with pytest.raises(AssertionError, match="unsubstituted"):
        metric_names("rate(nv_inference_count[$unknown_variable])")


def test_dashboard_covers_the_operators_questions() -> None:
    (path,) = DASHBOARDS
    dashboard = json.loads(path.read_text())
    names = set().union(*(metric_names(q.expr) for q in dashboard_queries(dashboard, path.name)))
    wanted = {
        "request rate": "nv_inference_request_success",
        "failures": "nv_inference_request_failure",
        "latency percentiles": "warpserve_request_duration_us_bucket",
        "queue time": "nv_inference_queue_duration_us",
        "compute time": "nv_inference_compute_infer_duration_us",
        "batch size": "nv_inference_exec_count",
        "rollouts": "warpserve_rollouts_total",
        "rollbacks": "warpserve_rollbacks_total",
        "traffic split": "warpserve_model_version_traffic_weight",
        "drift": "warpserve_drift_psi",
        "fallbacks": "warpserve_fallback_responses_total",
        "load shedding": "warpserve_shed_requests_total",
    }
    missing = {what: name for what, name in wanted.items() if name not in names}
    assert not missing, f"the dashboard shows nothing for {missing}"
    assert any("histogram_quantile(0.99" in q.expr for q in dashboard_queries(dashboard, ""))


def test_dashboard_panels_use_the_datasource_variable() -> None:
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        assert "datasource" in variables
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_panel_ids_are_unique() -> None:
    for path in DASHBOARDS:
        ids = [p["id"] for p in json.loads(path.read_text())["panels"]]
        assert len(ids) == len(set(ids))


def test_prometheus_scrapes_the_metrics_port_and_loads_the_rules() -> None:
    folder = DEPLOY / "prometheus"
    config = yaml.safe_load((folder / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (folder / rule_file).is_file(), rule_file
    (local,) = (job for job in config["scrape_configs"] if "static_configs" in job)
    assert local["metrics_path"] == "/metrics"
    port = _serve_default("metrics_port")
    assert local["static_configs"][0]["targets"] == [f"localhost:{port}"]
    pods = next(job for job in config["scrape_configs"] if "kubernetes_sd_configs" in job)
    labels = {r.get("target_label") for r in pods["relabel_configs"]}
    # The autoscaler's metric and the recording rules group by these.
    assert {"namespace", "pod"} <= labels


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    for path in provisioning.rglob("*.yaml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1, path
    assert Path(DEPLOY / "grafana" / "warpserve.json").is_file()

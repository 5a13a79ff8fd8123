"""Every PromQL expression under deploy/, and the metric names each one reads.

Grafana's and prometheus-adapter's template variables are replaced by values of the
kind they stand for before parsing, so what is parsed is what Prometheus would run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.json"))
RULES = DEPLOY / "prometheus" / "warpserve-rules.yml"
ADAPTER = DEPLOY / "kubernetes" / "prometheus-adapter.yaml"

# Grafana's built-in and dashboard variables, and prometheus-adapter's templates.
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$model": ".*",
    "${model}": ".*",
    "<<.Series>>": "warpserve_queue_duration_us_count",
    "<<.LabelMatchers>>": 'namespace="default",pod="warpserve-0"',
    "<<.GroupBy>>": "namespace, pod",
}
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<query>.+),\s*)?(?P<label>\w+)\)$")


@dataclass(frozen=True)
class Query:
    where: str  # file and place, for failure messages
    expr: str


def substituted(expr: str) -> str:
    for variable, value in SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    if "$" in expr.replace("$labels", "").replace("$value", ""):
        raise AssertionError(f"a template variable is left unsubstituted in: {expr}")
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (raises ValueError when it does not parse)."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name or next(
                (m.value for m in node.matchers.matchers if m.name == "__name__"), None
            )
            if name is None:
                raise ValueError(f"a selector without a metric name in: {expr}")
            names.add(name)

    promql_parser.walk(promql_parser.parse(substituted(expr)), visit)
    return names


def dashboard_queries(dashboard: dict[str, Any], where: str) -> Iterator[Query]:
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            yield Query(
                f"{where}: panel '{panel.get('title')}' {target.get('refId')}", target["expr"]
            )
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            yield Query(f"{where}: annotation '{annotation['name']}'", annotation["expr"])
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = LABEL_VALUES.match(text.strip())
        expr = (match.group("query") or "") if match else text
        if expr:
            yield Query(f"{where}: variable '{variable['name']}'", expr)


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # panels inside collapsed rows


def rule_queries(path: Path = RULES) -> Iterator[Query]:
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            name = rule.get("record") or rule.get("alert")
            yield Query(f"{path.name}: {name}", rule["expr"])


def recorded_names(path: Path = RULES) -> set[str]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def adapter_queries(path: Path = ADAPTER) -> Iterator[Query]:
    """The metricsQuery and seriesQuery of each prometheus-adapter rule in its ConfigMap."""
    for document in yaml.safe_load_all(path.read_text()):
        if document and document.get("kind") == "ConfigMap":
            config = yaml.safe_load(document["data"]["config.yaml"])
            for i, rule in enumerate(config["rules"]):
                yield Query(f"{path.name}: rule {i} seriesQuery", rule["seriesQuery"])
                yield Query(f"{path.name}: rule {i} metricsQuery", rule["metricsQuery"])


def all_queries() -> list[Query]:
    queries: list[Query] = []
    for path in DASHBOARDS:
        queries += dashboard_queries(json.loads(path.read_text()), path.name)
    queries += rule_queries()
    if ADAPTER.exists():
        queries += adapter_queries()
    return queries


def exported_names(exposition: str) -> set[str]:
    """Every series name a Prometheus text exposition declares or carries.

    A family with no samples yet (no rollback has happened) is still declared by its
    TYPE line; its series names follow from its type.
    """
    from prometheus_client.parser import text_string_to_metric_families

    names: set[str] = set()
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
    }
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names

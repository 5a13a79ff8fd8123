"""deploy/kubernetes, deploy/kserve and deploy/Dockerfile, validated offline: Kubernetes'
own schemas (kubernetes-validate bundles them), a schema for KServe's runtime, and the
server's real command-line parser for every argument list a container runs."""

from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import tomllib
import yaml

from tests.deploy.kserve_schema import CLUSTER_SERVING_RUNTIME, POD_FIELDS
from tests.deploy.queries import ADAPTER, DEPLOY
from warpserve.server.backends import spec as backend_spec
from warpserve.server.cli import build_parser
from warpserve.server.grpc.health import SERVICES

ROOT = DEPLOY.parent
KUBERNETES = "1.31.0"  # the oldest release with every field used (preStop sleep)
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(path: Path, kind: str) -> dict[str, Any]:
    (document,) = (d for d in _documents(path) if d["kind"] == kind)
    return document


def _serve(args: list[str]) -> argparse.Namespace:
    """The container's arguments as `warpserve` parses them (a bad flag fails here)."""
    assert args[0] == "serve", args
    return build_parser().parse_args(args)


def _deployment() -> dict[str, Any]:
    return _one(DEPLOY / "kubernetes" / "deployment.yaml", "Deployment")


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _runtime() -> dict[str, Any]:
    return _one(DEPLOY / "kserve" / "cluster-serving-runtime.yaml", "ClusterServingRuntime")


# --- Kubernetes objects --------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_validate_against_kubernetes_schemas(path: Path) -> None:
    for document in _documents(path):
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_the_validator_refuses_a_misspelled_field() -> None:
    """Control: the check above can fail."""
    broken = _deployment()
    broken["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def _drain_budget(pod: dict[str, Any], args: argparse.Namespace) -> float:
    """What the pod needs between the kubelet's decision and SIGKILL: the preStop sleep,
    then the server's drain up to --exit-timeout-secs (its default when not given)."""
    (container,) = pod["containers"]
    sleep = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
    return float(sleep.get("seconds", 0)) + float(args.exit_timeout_secs)


def test_grace_period_exceeds_the_drain() -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    args = _serve(_container(_deployment())["args"])
    assert pod["terminationGracePeriodSeconds"] > _drain_budget(pod, args)


def test_grace_period_exceeds_the_default_exit_timeout_too() -> None:
    """Without the explicit flag the server's own default applies."""
    pod = copy.deepcopy(_deployment()["spec"]["template"]["spec"])
    container = pod["containers"][0]
    container["args"] = [a for a in container["args"] if "exit-timeout" not in a]
    args = _serve(container["args"])
    assert args.exit_timeout_secs == build_parser().parse_args(["serve"]).exit_timeout_secs
    assert pod["terminationGracePeriodSeconds"] > _drain_budget(pod, args)


def test_probes_ask_the_health_service_on_the_grpc_port() -> None:
    container = _container(_deployment())
    args = _serve(container["args"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = container[probe]["grpc"]
        assert grpc_probe["port"] == args.grpc_port, probe
        assert grpc_probe.get("service", "") in SERVICES, probe


def test_ports_and_prometheus_annotations_match_the_server_flags() -> None:
    deployment = _deployment()
    container = _container(deployment)
    args = _serve(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": args.http_port, "grpc": args.grpc_port, "metrics": args.metrics_port}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(args.metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_services_select_the_pods_and_name_their_ports() -> None:
    deployment = _deployment()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    names = {p["name"] for p in _container(deployment)["ports"]}
    services = _documents(DEPLOY / "kubernetes" / "service.yaml")
    assert len(services) == 2
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= names


def test_autoscaler_scales_the_deployment_on_the_adapters_queue_time_metric() -> None:
    hpa = _one(DEPLOY / "kubernetes" / "hpa.yaml", "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == _deployment()["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    config = yaml.safe_load(_one(ADAPTER, "ConfigMap")["data"]["config.yaml"])
    served = {rule["name"]["as"] for rule in config["rules"]}
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] in served
    # The adapter's rule reads the histogram the server exports (names are checked
    # against a live server in tests/e2e/test_deploy_metrics.py).
    (rule,) = config["rules"]
    assert "warpserve_queue_duration_us_sum" in rule["metricsQuery"]


# --- KServe ---------------------------------------------------------------------------------


def test_serving_runtime_matches_kserves_fields() -> None:
    jsonschema.validate(_runtime(), CLUSTER_SERVING_RUNTIME)


@pytest.mark.parametrize(
    "field, value",
    [
        ("protocolVersion", ["v2"]),
        ("protocolVersions", ["grpc-v3"]),
        ("supportedModelFormats", [{}]),
    ],
)
def test_the_runtime_schema_refuses_wrong_fields(field: str, value: Any) -> None:
    """Control: the schema is not vacuous."""
    broken = _runtime()
    broken["spec"][field] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, CLUSTER_SERVING_RUNTIME)


def test_serving_runtime_pod_fields_validate_as_a_pod() -> None:
    spec = _runtime()["spec"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "runtime"},
        "spec": {k: v for k, v in spec.items() if k in POD_FIELDS},
    }
    kubernetes_validate.validate(pod, KUBERNETES, strict=True)


def test_serving_runtime_speaks_v2_and_grpc_v2_on_kserves_ports() -> None:
    spec = _runtime()["spec"]
    assert set(spec["protocolVersions"]) == {"v2", "grpc-v2"}
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    args = _serve(container["args"])
    assert (args.http_port, args.grpc_port) == (8080, 9000)  # where KServe sends requests
    assert args.model_repository == Path("/mnt/models")  # where the storage initializer puts it
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(args.metrics_port)


# KServe's model format names for Triton's runtime, and the platform warpserve serves each as.
FORMAT_PLATFORMS = {
    "onnx": "onnxruntime_onnx",
    "pytorch": "pytorch_libtorch",
    "tensorrt": "tensorrt_plan",
    "triton": None,  # a whole Triton repository: each model names its own platform
}


def test_serving_runtime_lists_only_formats_warpserve_serves() -> None:
    names = [f["name"] for f in _runtime()["spec"]["supportedModelFormats"]]
    assert set(names) <= FORMAT_PLATFORMS.keys(), names
    assert "triton" in names
    for name in names:
        platform = FORMAT_PLATFORMS[name]
        assert platform is None or backend_spec.by_platform(platform) is not None, name


def test_inference_service_uses_the_runtime_within_its_grace_period() -> None:
    isvc = _one(DEPLOY / "kserve" / "inference-service.yaml", "InferenceService")
    runtime = _runtime()
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in FORMAT_PLATFORMS
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    args = _serve(runtime["spec"]["containers"][0]["args"])
    assert predictor["terminationGracePeriodSeconds"] > args.exit_timeout_secs
    (port,) = model["ports"]
    assert (port["name"], port["containerPort"]) == ("h2c", args.grpc_port)


# --- the container image --------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_image_copies_every_package_folder_pyproject_maps() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = set()
    for op, rest in _instructions():
        if op == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such path"
                copied.add(source.rstrip("/"))
    assert folders <= copied, f"not copied into the image: {folders - copied}"
    assert {"pyproject.toml", "README.md"} <= copied


def test_image_installs_as_the_readme_does() -> None:
    readme = (ROOT / "README.md").read_text()
    (torch_pin,) = set(re.findall(r"pip install torch==([\d.]+)", readme))
    args = dict(rest.split("=", 1) for op, rest in _instructions() if op == "ARG" and "=" in rest)
    assert args["TORCH_VERSION"] == torch_pin
    assert f"--index-url {args['TORCH_INDEX']}" in readme
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert set(args["EXTRAS"].split(",")) <= extras.keys()
    runs = " ".join(rest for op, rest in _instructions() if op == "RUN")
    assert 'pip install ".[${EXTRAS}]"' in runs


def test_image_runs_warpserve_with_triton_ports_and_drains_on_sigterm() -> None:
    ops = dict(_instructions())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert yaml.safe_load(ops["ENTRYPOINT"]) == list(pyproject["project"]["scripts"])
    args = _serve(yaml.safe_load(ops["CMD"]))
    assert ops["EXPOSE"].split() == [
        str(p) for p in (args.http_port, args.grpc_port, args.metrics_port)
    ]
    assert ops["STOPSIGNAL"] == "SIGTERM"
    assert ops["USER"] != "0"

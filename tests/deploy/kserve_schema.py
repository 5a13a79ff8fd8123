"""A JSON Schema for KServe's ClusterServingRuntime, written from the fields of KServe's
serving.kserve.io/v1alpha1 ServingRuntimeSpec (servingruntime_types.go): KServe's CRDs
are not among the schemas kubernetes-validate bundles. The pod-level fields that are
Kubernetes types (containers, volumes, affinity, tolerations ...) are checked
separately, against Kubernetes' own schemas, by placing them in a Pod.
"""

from __future__ import annotations

from typing import Any

# constants.InferenceServiceProtocol values a runtime may list.
PROTOCOLS = ["v1", "v2", "grpc-v1", "grpc-v2"]

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

SUPPORTED_MODEL_FORMAT: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        # "major", "major.minor" or "major.minor.patch"
        "version": {"type": "string", "pattern": r"^\d+(\.\d+){0,2}$"},
        "autoSelect": {"type": "boolean"},
        "priority": {"type": "integer", "minimum": 1},
    },
}

# ServingRuntimePodSpec: these are handed to Kubernetes' Pod schema by the test.
POD_FIELDS = (
    "containers",
    "volumes",
    "nodeSelector",
    "affinity",
    "tolerations",
    "imagePullSecrets",
    "hostIPC",
)

SPEC: dict[str, Any] = {
    "type": "object",
    "required": ["containers"],
    "additionalProperties": False,
    "properties": {
        "supportedModelFormats": {"type": "array", "items": SUPPORTED_MODEL_FORMAT},
        "multiModel": {"type": "boolean"},
        "disabled": {"type": "boolean"},
        "protocolVersions": {
            "type": "array",
            "items": {"enum": PROTOCOLS},
            "uniqueItems": True,
        },
        "workerSpec": {"type": "object"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
        "grpcEndpoint": {"type": "string"},
        "grpcDataEndpoint": {"type": "string"},
        "httpDataEndpoint": {"type": "string"},
        "replicas": {"type": "integer", "minimum": 0, "maximum": 65535},
        "storageHelper": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"disabled": {"type": "boolean"}},
        },
        "builtInAdapter": {"type": "object"},
        "containers": {"type": "array", "minItems": 1},
        "volumes": {"type": "array"},
        "nodeSelector": _STRING_MAP,
        "affinity": {"type": "object"},
        "tolerations": {"type": "array"},
        "imagePullSecrets": {"type": "array"},
        "hostIPC": {"type": "boolean"},
    },
}

CLUSTER_SERVING_RUNTIME: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1alpha1"},
        "kind": {"const": "ClusterServingRuntime"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
            },
        },
        "spec": SPEC,
    },
}

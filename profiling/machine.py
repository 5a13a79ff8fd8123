"""The machine a profile was measured on, and whether two profiles may be compared.

Latencies from different hosts, CPU models, core counts or backend library versions
say more about the difference between the machines than about the models.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
from pathlib import Path
from typing import Any

from warpserve.server.cpus import usable_cores

LIBRARIES = ("numpy", "onnxruntime", "onnxruntime-gpu", "torch", "scipy")
# Fields that must match for timings to be comparable.
COMPARABLE_FIELDS = ("hostname", "cpu_model", "usable_cores", "gpu", "libraries")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def gpu_name() -> str:
    """The first CUDA device's name where torch sees one, else ''."""
    try:
        import torch
    except ImportError:
        return ""
    if not torch.cuda.is_available():
        return ""
    return str(torch.cuda.get_device_name(0))


def describe() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "usable_cores": usable_cores(),
        "host_cores": os.cpu_count() or 0,
        "gpu": gpu_name(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
    }


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What makes timings from machines ``a`` and ``b`` incomparable (empty: nothing)."""
    diffs = []
    for key in COMPARABLE_FIELDS:
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: {a.get(key)!r} vs {b.get(key)!r}")
    return diffs

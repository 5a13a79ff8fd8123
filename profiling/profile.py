"""Profile a version, or a version and its baseline interleaved, and compare them."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from warpserve.profiling.compare import compare_versions
from warpserve.profiling.runner import Plan, profile
from warpserve.profiling.stats import Thresholds
from warpserve.profiling.versions import LoadedVersion, latest_version, load_version

TRACE_FILE = "trace.json"


def make_profile(
    repository: Path,
    model: str,
    version: int | None,
    baseline: int | None,
    plan: Plan,
    thresholds: Thresholds,
    output: Path,
) -> dict[str, Any]:
    """Profile ``version`` (default: the latest), with ``baseline`` interleaved when
    given; writes the trace into ``output`` and returns the profile."""
    subject = version if version is not None else latest_version(repository, model)
    numbers = [subject] if baseline is None or baseline == subject else [baseline, subject]
    output.mkdir(parents=True, exist_ok=True)
    loaded: list[LoadedVersion] = []
    with contextlib.ExitStack() as stack:
        for number in numbers:
            lv = load_version(repository, model, number)
            stack.callback(lv.close)
            loaded.append(lv)
        result = profile(loaded, plan, output / TRACE_FILE, subject=subject)
    result["repository"] = str(repository)
    if baseline is not None:
        records = result["versions"]
        result["comparison"] = compare_versions(
            records[str(baseline)], records[str(subject)], thresholds
        )
    return result

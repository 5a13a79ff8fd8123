"""Compare two versions' profiles: a verdict per batch size, per op, and overall."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from warpserve.profiling import machine
from warpserve.profiling.ops import compare_ops
from warpserve.profiling.runner import FORMAT
from warpserve.profiling.stats import Thresholds, Verdict, compare_latency, overall
from warpserve.profiling.versions import ProfileError


def read_profile(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ProfileError(
            f"{path} is not JSON ({exc}); pass a profile.json that 'warpserve profile' wrote"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT or "versions" not in data:
        raise ProfileError(
            f"{path} is not a warpserve profile (format {FORMAT}); pass a profile.json that "
            "'warpserve profile' wrote"
        )
    return data


def subject(profile: dict[str, Any]) -> dict[str, Any]:
    """The record of the version a profile was made for."""
    record = profile["versions"].get(str(profile.get("subject_version")))
    if not isinstance(record, dict) or "batches" not in record:
        raise ProfileError("profile has no record of its subject version")
    return record


def compare_versions(
    baseline: dict[str, Any],
    candidate: dict[str, Any],
    thresholds: Thresholds,
    *,
    machines: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Compare two version records (from one profile, or from two with ``machines``)."""
    diffs = machine.differences(*machines) if machines is not None else []
    batches: dict[str, Any] = {}
    op_changes: dict[str, Any] = {}
    for size, cand in candidate["batches"].items():
        base = baseline["batches"].get(size)
        if base is None:
            continue
        batches[size] = compare_latency(
            base["latency_ms"], cand["latency_ms"], thresholds
        ).as_dict()
        base_ops, cand_ops = (
            (baseline.get("ops") or {}).get(size),
            (candidate.get("ops") or {}).get(size),
        )
        if base_ops is not None and cand_ops is not None:
            op_changes[size] = compare_ops(base_ops, cand_ops, thresholds.max_median_ratio)
    verdicts = [Verdict(b["verdict"]) for b in batches.values()]
    result: dict[str, Any] = {
        "baseline_version": baseline["version"],
        "candidate_version": candidate["version"],
        "thresholds": thresholds.__dict__,
        "comparable": not diffs,
        "machine_differences": diffs,
        "batches": batches,
        "ops": op_changes,
    }
    if diffs:
        result["verdict"] = Verdict.INSUFFICIENT_DATA.value
        result["reason"] = (
            "not comparable: the profiles come from different machines or libraries ("
            + "; ".join(diffs)
            + "); profile both versions in one run with --baseline-version"
        )
        return result
    if not batches:
        result["verdict"] = Verdict.INSUFFICIENT_DATA.value
        result["reason"] = "the profiles share no batch size"
        return result
    verdict = overall(verdicts)
    result["verdict"] = verdict.value
    result["reason"] = _reason(verdict, batches)
    return result


def _reason(verdict: Verdict, batches: dict[str, Any]) -> str:
    named = [
        f"batch {size}: {b['reason']}"
        for size, b in batches.items()
        if b["verdict"] == verdict.value
    ]
    if verdict is Verdict.PASS:
        return "no batch size is significantly slower or faster"
    return "; ".join(named)


def compare_files(a: Path, b: Path, thresholds: Thresholds) -> dict[str, Any]:
    pa, pb = read_profile(a), read_profile(b)
    if pa.get("model") != pb.get("model"):
        raise ProfileError(
            f"{a} profiles model '{pa.get('model')}' and {b} model '{pb.get('model')}'; "
            "compare two versions of one model"
        )
    result = compare_versions(
        subject(pa),
        subject(pb),
        thresholds,
        machines=(pa.get("machine", {}), pb.get("machine", {})),
    )
    result["model"] = pa.get("model")
    result["sources"] = [str(a), str(b)]
    return result


EXIT_CODES = {
    Verdict.PASS.value: 0,
    Verdict.IMPROVEMENT.value: 0,
    Verdict.REGRESSION.value: 1,
    Verdict.INSUFFICIENT_DATA.value: 2,
}

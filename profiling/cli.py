"""``warpserve profile``: profile a version (against a baseline), or compare two profiles.

    warpserve profile --model-repository REPO --model NAME [--version N]
        [--baseline-version M] [--batch-sizes 1,8,32] [--iterations K] [--output DIR]
        [--format text|markdown|json]
    warpserve profile compare A.json B.json [--output DIR] [--format ...]

Exit status: 0 pass or improvement (or a profile without a comparison), 1 regression,
2 errors or insufficient data (argparse's own usage errors exit 2 as well).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from warpserve.profiling import report
from warpserve.profiling.compare import EXIT_CODES, compare_files
from warpserve.profiling.stats import Thresholds
from warpserve.profiling.versions import ProfileError
from warpserve.server.argtypes import non_negative_int, positive_int

ERROR = 2


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated batch sizes >= 1 such as 1,8,32, got {text!r}"
        )
    return tuple(dict.fromkeys(sizes))


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 1.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a ratio above 1 such as 1.3, got {text!r}")
    return value


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1), got {text!r}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder for profile.json, trace.json, report.md and report.html (default: "
        "none written, the report goes to the console only)",
    )
    p.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    p.add_argument("--alpha", type=_alpha, default=Thresholds.alpha, help="Mann-Whitney U level")
    p.add_argument(
        "--max-median-ratio",
        type=_ratio,
        default=Thresholds.max_median_ratio,
        help="candidate/baseline median at or above which a significant shift regresses",
    )
    p.add_argument(
        "--max-p99-ratio",
        type=_ratio,
        default=Thresholds.max_p99_ratio,
        help="candidate/baseline p99 at or above which a significant shift regresses",
    )
    p.add_argument(
        "--min-samples",
        type=positive_int,
        default=Thresholds.min_samples,
        help="samples per side below which there is no verdict",
    )


def profile_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="warpserve profile",
        description="Profile a model version through its backend on its golden inputs "
        "(torch.profiler when installed); with --baseline-version, profile both versions "
        "interleaved and compare them. 'warpserve profile compare A.json B.json' compares "
        "two stored profiles.",
    )
    p.add_argument("--model-repository", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--version", type=positive_int, default=None, help="default: the latest")
    p.add_argument("--baseline-version", type=positive_int, default=None)
    p.add_argument("--batch-sizes", type=_batch_sizes, default=(1, 8, 32))
    p.add_argument("--iterations", type=positive_int, default=100, help="timed runs each")
    p.add_argument("--warmup", type=non_negative_int, default=10, help="untimed runs first")
    _common(p)
    return p


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="warpserve profile compare",
        description="Compare the profiles of two versions: B (candidate) against A (baseline).",
    )
    p.add_argument("baseline", type=Path, metavar="A.json")
    p.add_argument("candidate", type=Path, metavar="B.json")
    _common(p)
    return p


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname).1s %(name)s: %(message)s")
    compare = argv[:1] == ["compare"]
    parser = compare_parser() if compare else profile_parser()
    try:
        args = parser.parse_args(argv[1:] if compare else argv)
    except SystemExit as exc:  # usage errors (exit 2) and --help (exit 0)
        return int(exc.code or 0)
    return run_compare(args) if compare else run_profile(args)


def _thresholds(args: argparse.Namespace) -> Thresholds:
    return Thresholds(args.alpha, args.max_median_ratio, args.max_p99_ratio, args.min_samples)


def run_profile(args: argparse.Namespace) -> int:
    from warpserve.profiling.profile import make_profile
    from warpserve.profiling.runner import Plan

    try:
        thresholds = _thresholds(args)
        plan = Plan(tuple(args.batch_sizes), args.iterations, args.warmup)
        with tempfile.TemporaryDirectory(prefix="warpserve-profile-") as scratch:
            # Without --output the trace goes to a scratch folder and only the console
            # report remains.
            profile = make_profile(
                args.model_repository,
                args.model,
                args.version,
                args.baseline_version,
                plan,
                thresholds,
                args.output or Path(scratch),
            )
    except (ProfileError, ValueError) as exc:
        print(f"warpserve profile: error: {exc}", file=sys.stderr)
        return ERROR
    return _finish(profile, args.format, args.output)


def run_compare(args: argparse.Namespace) -> int:
    try:
        comparison = compare_files(args.baseline, args.candidate, _thresholds(args))
    except (ProfileError, ValueError) as exc:
        print(f"warpserve profile compare: error: {exc}", file=sys.stderr)
        return ERROR
    profile = comparison_profile(args.baseline, args.candidate, comparison)
    return _finish(profile, args.format, args.output)


def comparison_profile(a: Path, b: Path, comparison: dict[str, Any]) -> dict[str, Any]:
    """Two stored profiles' subjects as one profile, for the same reports."""
    from warpserve.profiling.compare import read_profile, subject

    pa, pb = read_profile(a), read_profile(b)
    versions = {
        f"{comparison['baseline_version']} (baseline, {a.name})": subject(pa),
        f"{comparison['candidate_version']} (candidate, {b.name})": subject(pb),
    }
    sizes = sorted({int(s) for r in versions.values() for s in r["batches"]})
    return {
        **{k: pb[k] for k in ("model", "subject_version", "machine", "plan", "profiler", "memory")},
        "batch_sizes": sizes,
        "versions": versions,
        "comparison": comparison,
    }


def _finish(profile: dict[str, Any], fmt: str, output: Path | None) -> int:
    if output is not None:
        write_reports(profile, output)
    if fmt == "json":
        print(json.dumps(profile.get("comparison") or _summary(profile), indent=2))
    elif fmt == "markdown":
        print(report.markdown(profile))
    else:
        print(report.text(profile))
        if output is not None:
            print(f"reports in {output}/ (profile.json, trace.json, report.md, report.html)")
    comparison = profile.get("comparison")
    return EXIT_CODES[comparison["verdict"]] if comparison else 0


def _summary(profile: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": profile["model"],
        "versions": {
            v: {size: b["summary"] for size, b in r["batches"].items()}
            for v, r in profile["versions"].items()
        },
    }


def write_reports(profile: dict[str, Any], output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "profile.json").write_text(json.dumps(profile, indent=1))
    (output / "report.md").write_text(report.markdown(profile))
    (output / "report.html").write_text(report.html(profile))

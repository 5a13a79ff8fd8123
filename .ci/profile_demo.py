"""CI: the profiler must fail a deliberately slowed demo model and pass the model itself.

Copies the demo image classifier's current version into a scratch repository as
version 1, writes version 2 as the same model computed twice (same outputs, twice the
compute) and version 3 as an exact copy, then profiles 2 and 3 against 1, interleaved
in one run each. The reports stay under reports/profile-*/ (git ignores reports/);
the Markdown also goes to the CI job summary when the CI sets GITHUB_STEP_SUMMARY.
Exit 0 when both verdicts are what they must be, else 1.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from warpserve.profiling.cli import main as profile
from warpserve.profiling.planted import write_slowed_copy
from warpserve.server.demo.build import ensure_demo_repository

MODEL = "image_classifier"
FLAGS = ["--batch-sizes", "1,16", "--iterations", "80", "--warmup", "5"]


def main() -> int:
    reports = Path(__file__).resolve().parents[1] / "reports"
    demo = ensure_demo_repository(progress=False) / MODEL
    current = max(int(p.name) for p in demo.iterdir() if p.name.isdigit())
    with tempfile.TemporaryDirectory(prefix="warpserve-ci-profile-") as scratch:
        model_dir = Path(scratch) / MODEL
        model_dir.mkdir()
        shutil.copy(demo / "config.pbtxt", model_dir / "config.pbtxt")
        shutil.copytree(demo / str(current), model_dir / "1")
        write_slowed_copy(model_dir / "1", model_dir / "2", factor=2)
        shutil.copytree(model_dir / "1", model_dir / "3")
        failures = []
        for version, name, expected in ((2, "slowed", 1), (3, "same", 0)):
            out = reports / f"profile-{name}"
            shutil.rmtree(out, ignore_errors=True)
            code = profile(
                ["--model-repository", scratch, "--model", MODEL, "--version", str(version),
                 "--baseline-version", "1", *FLAGS, "--output", str(out), "--format", "markdown"]
            )  # fmt: skip
            _summarise(out / "report.md")
            print(f"{name} copy: exit {code} (expected {expected}); reports in {out}")
            if code != expected:
                failures.append(name)
    if failures:
        print(f"profile check failed for: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def _summarise(report: Path) -> None:
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target and report.is_file():
        with open(target, "a") as summary:
            summary.write(report.read_text() + "\n")


if __name__ == "__main__":
    sys.exit(main())

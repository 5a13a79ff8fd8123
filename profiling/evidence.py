"""A short profile of a version the guard rolled back, kept beside the version."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path

from warpserve.profiling import report
from warpserve.profiling.runner import Plan, profile
from warpserve.profiling.versions import load_version

EVIDENCE_FOLDER = "guard"  # inside the version folder; the repository poller skips it
PLAN = Plan(batch_sizes=(1,), iterations=20, warmup=3, traced_iterations=5, op_iterations=5)


def evidence_folder(version_dir: Path) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder = version_dir / EVIDENCE_FOLDER / stamp
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only repository: keep it in the temporary folder instead
        prefix = f"warpserve-guard-{version_dir.parent.name}-{version_dir.name}-"
        folder = Path(tempfile.mkdtemp(prefix=prefix))
    return folder


def capture_trace(repository: Path, model: str, version: int) -> Path:
    """Profile ``model`` ``version`` briefly from its files; returns the trace's path."""
    lv = load_version(repository, model, version)
    try:
        folder = evidence_folder(lv.path)
        trace = folder / "trace.json"
        result = profile([lv], PLAN, trace, subject=version)
    finally:
        lv.close()
    (folder / "profile.json").write_text(json.dumps(result, indent=1))
    (folder / "report.md").write_text(report.markdown(result))
    return trace

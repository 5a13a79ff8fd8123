"""The two ways a compile run ends early, and the exit codes they map to."""

from __future__ import annotations


class CompileError(Exception):
    """Base class; ``exit_code`` is what ``warpserve compile`` returns."""

    exit_code = 2


class UsageError(CompileError):
    """Bad flags, an unreadable model, or a model the exporter cannot handle (exit 2)."""

    exit_code = 2


class NoVariantError(CompileError):
    """Every variant was skipped, failed or rejected, or none fits the latency budget
    (exit 1). ``report`` holds what was measured, so the numbers are still shown."""

    exit_code = 1

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report

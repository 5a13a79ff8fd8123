"""Command-line value types: --workers takes a count or 'auto'."""

from __future__ import annotations

import argparse

import pytest

from warpserve.server import argtypes, cpus


def test_workers_is_a_positive_count_or_auto_for_the_usable_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert argtypes.workers_count("3") == 3
    monkeypatch.setattr(cpus, "usable_cores", lambda: 5)
    assert argtypes.workers_count("auto") == 5
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="'auto'"):
            argtypes.workers_count(bad)


def test_each_of_several_processes_sizes_its_threads_for_its_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cpus, "usable_cores", lambda: 16)
    assert cpus.thread_budget() == 16
    monkeypatch.setenv(cpus.WORKERS_ENV, "4")
    assert cpus.thread_budget() == 4
    monkeypatch.setenv(cpus.WORKERS_ENV, "32")
    assert cpus.thread_budget() == 1  # never none

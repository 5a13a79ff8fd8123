"""How many cores this process may use.

``os.cpu_count()`` counts the host's cores. In a container limited to two CPUs on a
64-core host it says 64, and thread pools sized from it oversubscribe the quota: the
kernel then throttles the whole process for the rest of each scheduling period, which
shows up as latency spikes. What the process may use is its CPU affinity, capped by a
cgroup CPU quota where one is set (cgroup v2 ``cpu.max``, or v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


# Set by the supervisor of ``warpserve serve --workers N`` in each worker's environment:
# the processes share the cores, so each sizes its thread pools for its share.
WORKERS_ENV = "WARPSERVE_WORKER_PROCESSES"


def worker_processes() -> int:
    """How many server processes share this machine's cores (1 without --workers)."""
    try:
        return max(1, int(os.environ.get(WORKERS_ENV, "1")))
    except ValueError:
        return 1


def thread_budget() -> int:
    """Cores this process may keep busy: its share when several server processes run."""
    return max(1, usable_cores() // worker_processes())


@functools.cache
def usable_cores() -> int:
    """Whole cores available to this process (at least 1)."""
    return cores_allowed(CGROUP_ROOT, Path("/proc/self/cgroup"))


def cores_allowed(cgroup_root: Path, self_cgroup: Path) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_quota(cgroup_root, self_cgroup)
    if quota is not None:
        cores = min(cores, int(quota))  # 1.5 CPUs of quota keep one thread busy, not two
    return max(1, cores)


def cgroup_quota(cgroup_root: Path, self_cgroup: Path) -> float | None:
    """The CPU quota in cores of this process's cgroup, or None when there is none."""
    for folder in _own_cgroup_folders(cgroup_root, self_cgroup):
        v2 = _read(folder / "cpu.max")
        if v2 is not None:
            quota, _, period = v2.partition(" ")
            if quota != "max" and period:
                return _cores(quota, period)
            return None
        v1_quota = _read(folder / "cpu.cfs_quota_us")
        v1_period = _read(folder / "cpu.cfs_period_us")
        if v1_quota is not None and v1_period is not None:
            return None if v1_quota.startswith("-") else _cores(v1_quota, v1_period)
    return None


def _own_cgroup_folders(cgroup_root: Path, self_cgroup: Path) -> list[Path]:
    """Where this process's cgroup CPU files may be: its own cgroup's folder (v2 unified
    or v1 ``cpu`` hierarchy), then the root of the mount (a container's own namespace)."""
    folders = []
    text = _read(self_cgroup) or ""
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":
            folders.append(cgroup_root / relative)
        elif "cpu" in controllers.split(","):
            folders.append(cgroup_root / "cpu" / relative)
            folders.append(cgroup_root / controllers / relative)
    folders += [cgroup_root, cgroup_root / "cpu"]
    return folders


def _cores(quota: str, period: str) -> float | None:
    try:
        return int(quota) / int(period) if int(period) > 0 else None
    except ValueError:
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None

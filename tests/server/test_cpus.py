"""usable_cores: CPU affinity capped by a cgroup quota, read from fake cgroup trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from warpserve.server import cpus


def _tree(tmp_path: Path, self_cgroup: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    proc = tmp_path / "self-cgroup"
    proc.write_text(self_cgroup)
    return root, proc


@pytest.mark.parametrize(
    ("self_cgroup", "files", "quota"),
    [
        ("0::/\n", {"cpu.max": "150000 100000"}, 1.5),  # v2, a container's own namespace
        ("0::/\n", {"cpu.max": "max 100000"}, None),  # v2, no limit
        (  # v2, the process's own cgroup below the mount (a pod on a host)
            "0::/kubepods/pod-a/c1\n",
            {"kubepods/pod-a/c1/cpu.max": "200000 100000", "cpu.max": "max 100000"},
            2.0,
        ),
        (  # v1, the cpu controller mounted together with cpuacct
            "4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n",
            {
                "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000",
                "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
            },
            3.0,
        ),
        (  # v1 without a quota
            "4:cpu,cpuacct:/\n",
            {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},
            None,
        ),
        ("", {}, None),  # no cgroup files at all (not Linux, or not mounted)
    ],
    ids=["v2", "v2-max", "v2-nested", "v1", "v1-unlimited", "none"],
)
def test_cgroup_quota(
    tmp_path: Path, self_cgroup: str, files: dict[str, str], quota: float | None
) -> None:
    root, proc = _tree(tmp_path, self_cgroup, files)
    assert cpus.cgroup_quota(root, proc) == quota


def test_cores_are_the_affinity_capped_by_the_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    root, proc = _tree(tmp_path, "0::/\n", {"cpu.max": "max 100000"})
    assert cpus.cores_allowed(root, proc) == affinity
    (root / "cpu.max").write_text("50000 100000\n")  # half a core still runs one thread
    assert cpus.cores_allowed(root, proc) == 1
    (root / "cpu.max").write_text(f"{(affinity + 8) * 100000} 100000\n")
    assert cpus.cores_allowed(root, proc) == affinity  # a quota above the affinity


def test_usable_cores_on_this_machine() -> None:
    assert 1 <= cpus.usable_cores() <= (os.cpu_count() or 1)

"""available_cores(): the affinity mask capped by the cgroup CPU quota, read from fake /proc and /sys trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from torchrest.cores import available_cores, cgroup_cpu_limit

AFFINITY = len(os.sched_getaffinity(0))

V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTS = (
    "31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
    "32 25 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
)


def fake_tree(tmp_path: Path, mountinfo: str, cgroup: str, files: dict[str, str]) -> Path:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text("22 1 0:21 / /proc rw - proc proc rw\n" + mountinfo)
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_v2_quota_of_own_cgroup(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, V2_MOUNT, "0::/\n", {"sys/fs/cgroup/cpu.max": "100000 100000\n"})
    assert cgroup_cpu_limit(root) == 1.0
    assert available_cores(root) == 1


def test_v2_unlimited(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, V2_MOUNT, "0::/\n", {"sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root) is None
    assert available_cores(root) == AFFINITY


def test_v2_tightest_ancestor_wins(tmp_path: Path) -> None:
    root = fake_tree(
        tmp_path,
        V2_MOUNT,
        "0::/kubepods/pod1/ctr\n",
        {
            "sys/fs/cgroup/kubepods/cpu.max": "max 100000\n",
            "sys/fs/cgroup/kubepods/pod1/cpu.max": "50000 100000\n",
            "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "300000 100000\n",
        },
    )
    assert cgroup_cpu_limit(root) == 0.5
    assert available_cores(root) == 1  # never below one thread


def test_v1_fractional_quota_rounds_down(tmp_path: Path) -> None:
    root = fake_tree(
        tmp_path,
        V1_MOUNTS,
        "5:memory:/\n4:cpu,cpuacct:/\n",
        {
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "250000\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_cpu_limit(root) == 2.5
    assert available_cores(root) == min(AFFINITY, 2)


def test_v1_host_path_not_mounted_reads_the_mount_point(tmp_path: Path) -> None:
    """Inside a container without a cgroup namespace, /proc/self/cgroup names the host's path."""
    root = fake_tree(
        tmp_path,
        V1_MOUNTS,
        "4:cpu,cpuacct:/machine.slice/libpod-abc.scope\n",
        {
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "100000\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    assert available_cores(root) == 1


def test_v1_unlimited_is_minus_one(tmp_path: Path) -> None:
    root = fake_tree(
        tmp_path,
        V1_MOUNTS,
        "4:cpu,cpuacct:/\n",
        {
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_cpu_limit(root) is None


@pytest.mark.parametrize("content", ["", "garbage", "100000", "0 100000", "100000 0"])
def test_unreadable_quota_means_no_limit(tmp_path: Path, content: str) -> None:
    root = fake_tree(tmp_path, V2_MOUNT, "0::/\n", {"sys/fs/cgroup/cpu.max": content})
    assert cgroup_cpu_limit(root) is None


def test_no_cgroup_files_at_all(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None
    assert available_cores(tmp_path) == AFFINITY


def test_this_machine() -> None:
    assert 1 <= available_cores() <= AFFINITY

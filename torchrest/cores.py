"""How many cores this process may use: the CPU affinity mask, capped by the cgroup CPU quota.

A container limited to one CPU (`podman run --cpus 1`, a Kubernetes CPU limit) still sees every core of
the node in `os.cpu_count()` and in its affinity mask; only the cgroup's CFS quota says it gets one core's
time. Threads sized to the node then fight over that slice and are throttled at every period, so default
thread counts come from `available_cores()`, which reads the quota of this process's cgroup and of each
cgroup above it (cgroup v2 `cpu.max`, cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`).

A fractional quota rounds down (1.5 CPUs -> 1 thread), never below one: a thread that cannot run every
period costs more in throttling than it brings.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class CgroupMount:
    version: int  # 1 or 2
    mount_root: str  # the cgroup path this mount shows at its mount point
    mount_point: Path


def available_cores(root: Path = Path("/")) -> int:
    """Cores this process may run on: the affinity mask, capped by the cgroup CPU quota (at least 1).

    `root` is where /proc and /sys are found; tests point it at a fake tree."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit(root)
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def cgroup_cpu_limit(root: Path = Path("/")) -> float | None:
    """The tightest CPU quota (in CPUs) over this process's cgroup and its ancestors, or None if unlimited."""
    try:
        mounts = cpu_mounts((root / "proc/self/mountinfo").read_text())
        memberships = (root / "proc/self/cgroup").read_text()
    except OSError:
        return None
    limits = []
    for mount in mounts:
        cgroup_path = own_cgroup(memberships, mount.version)
        if cgroup_path is None:
            continue
        for folder in cgroup_folders(root, mount, cgroup_path):
            limit = read_quota(folder, mount.version)
            if limit is not None:
                limits.append(limit)
    return min(limits, default=None)


def cpu_mounts(mountinfo: str) -> list[CgroupMount]:
    """The cgroup v2 mounts, and the v1 mounts of the `cpu` controller, from /proc/self/mountinfo."""
    mounts = []
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, extra = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(extra) < 3:
            continue
        fstype, super_options = extra[0], extra[2].split(",")
        if fstype == "cgroup2":
            mounts.append(CgroupMount(2, fields[3], root_relative(fields[4])))
        elif fstype == "cgroup" and "cpu" in super_options:
            mounts.append(CgroupMount(1, fields[3], root_relative(fields[4])))
    return mounts


def own_cgroup(memberships: str, version: int) -> str | None:
    """This process's cgroup path for the v2 hierarchy ("0::/path") or the v1 cpu controller."""
    for line in memberships.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if version == 2 and hierarchy == "0" and controllers == "":
            return path
        if version == 1 and "cpu" in controllers.split(","):
            return path
    return None


def cgroup_folders(root: Path, mount: CgroupMount, cgroup_path: str) -> list[Path]:
    """The folders of `cgroup_path` and its ancestors under the mount, innermost first.

    Inside a container without its own cgroup namespace the path names the host's hierarchy, which is
    not mounted there: then the mount point itself is this process's cgroup."""
    base = root / str(mount.mount_point).lstrip("/")
    relative = Path(cgroup_path).relative_to(mount.mount_root) if _is_under(cgroup_path, mount.mount_root) else None
    if relative is None or not (base / relative).is_dir():
        return [base]
    return [base / relative, *(base / parent for parent in relative.parents)]


def read_quota(folder: Path, version: int) -> float | None:
    """The quota a cgroup folder sets, in CPUs; None when it sets none or cannot be read."""
    try:
        if version == 2:
            quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1") or not period:
            return None
        return int(quota) / int(period) if int(period) > 0 and int(quota) > 0 else None
    except (OSError, ValueError):
        return None


def root_relative(mount_point: str) -> Path:
    return Path(mount_point.replace("\\040", " "))


def _is_under(path: str, ancestor: str) -> bool:
    return ancestor == "/" or path == ancestor or path.startswith(ancestor.rstrip("/") + "/")

"""How many intra-op threads torch gets on a CPU: one a physical core that the process may
run on. torch's own default counts every core of the machine, which in a container with a
CPU quota (or pinned to a few cores) means more threads than CPUs, each waiting in turn at
every op's barrier; and a hyperthread sibling only shares its core's load/store units with
memory-bound decode."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def usable_cpus() -> set[int]:
    """The logical CPUs the process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int], root: Path = Path("/")) -> int:
    """Distinct (package, core) pairs among ``cpus``; each CPU its own core where the
    topology is unreadable."""
    cores = set()
    for cpu in cpus:
        topology = root / f"sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return len(cpus)
        cores.add((package, core))
    return len(cores)


def cgroup_cpu_limit(root: Path = Path("/")) -> float | None:
    """The CPU quota (in CPUs) of the process's cgroup or any cgroup above it, v2 or v1;
    None without one."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: cpu.max holds "<quota> <period>" or "max <period>"
            for directory in _cgroup_dirs(root / "sys/fs/cgroup", path):
                fields = _read(directory / "cpu.max").split()
                if len(fields) == 2 and fields[0] != "max":
                    limits.append(int(fields[0]) / int(fields[1]))
        elif "cpu" in controllers.split(","):  # v1: a quota of -1 is none
            for directory in _cgroup_dirs(root / "sys/fs/cgroup" / controllers, path):
                quota = _read(directory / "cpu.cfs_quota_us")
                period = _read(directory / "cpu.cfs_period_us")
                if quota and period and int(quota) > 0:
                    limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def _cgroup_dirs(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory and its ancestors up to the mount. In a container the path
    names the host's hierarchy, which the container sees mounted at its own cgroup: then
    only the mount itself is there to read."""
    directory = mount / path.lstrip("/")
    if not directory.is_dir():
        return [mount]
    dirs = [directory]
    while directory != mount:
        directory = directory.parent
        dirs.append(directory)
    return dirs


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def default_num_threads(root: Path = Path("/")) -> tuple[int, str]:
    """``(threads, why)``: the physical cores among the usable CPUs, at most the cgroup
    quota (rounded down: a thread past the quota is throttled), at least one."""
    cpus = usable_cpus()
    cores = physical_cores(cpus, root)
    limit = cgroup_cpu_limit(root)
    threads = cores if limit is None else max(1, min(cores, math.floor(limit)))
    quota = "no cgroup CPU quota" if limit is None else f"a cgroup quota of {limit:g} CPUs"
    return threads, f"{cores} physical cores in {len(cpus)} usable CPUs, {quota}"


def configure_threads(requested: int | None) -> int:
    """Set torch's intra-op threads to ``requested``, or else the default; logged."""
    if requested is None:
        threads, why = default_num_threads()
    else:
        threads, why = requested, "as asked (--threads)"
    torch.set_num_threads(threads)
    logger.info("CPU: %d torch threads (%s)", threads, why)
    return threads

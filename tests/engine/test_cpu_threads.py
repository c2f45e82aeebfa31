"""torch's CPU threads: one a physical core among the CPUs the process may use, capped by
its cgroup's CPU quota (v2 and v1), on a faked /proc and /sys; --threads overrides."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from engine import EngineConfig, EngineError, cpu_threads
from engine.cpu_threads import cgroup_cpu_limit, default_num_threads, physical_cores
from server.cli import build_parser, engine_kwargs


def fake_host(root: Path, cores: dict[int, tuple[int, int]], cgroup: str, files: dict) -> Path:
    """``cores``: CPU -> (package, core); ``cgroup``: /proc/self/cgroup's text; ``files``:
    path under root -> text."""
    for cpu, (package, core) in cores.items():
        topology = root / f"sys/devices/system/cpu/cpu{cpu}/topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    files = {"proc/self/cgroup": cgroup, **files}
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


# Two packages of two cores, each core two hyperthreads (CPU n and n + 4 share a core).
HYPERTHREADED = {cpu: (cpu % 4 // 2, cpu % 2) for cpu in range(8)}


def test_hyperthreads_count_once(tmp_path):
    root = fake_host(tmp_path, HYPERTHREADED, "0::/\n", {})
    assert physical_cores(set(range(8)), root) == 4
    assert physical_cores({0, 4}, root) == 1  # pinned to one core's two threads
    assert physical_cores({0, 1, 4}, root) == 2


def test_unreadable_topology_counts_each_cpu(tmp_path):
    assert physical_cores({0, 1, 2}, tmp_path) == 3


@pytest.mark.parametrize(
    "cgroup, files, limit",
    [
        ("0::/\n", {"sys/fs/cgroup/cpu.max": "max 100000\n"}, None),
        ("0::/\n", {"sys/fs/cgroup/cpu.max": "250000 100000\n"}, 2.5),
        # the parent's quota binds its children, whose own is unlimited
        (
            "0::/box/job\n",
            {
                "sys/fs/cgroup/box/cpu.max": "150000 100000\n",
                "sys/fs/cgroup/box/job/cpu.max": "max 100000\n",
            },
            1.5,
        ),
        # a container: the host's path is not mounted, its own cgroup is the mount
        ("0::/docker/0123abcd\n", {"sys/fs/cgroup/cpu.max": "300000 100000\n"}, 3.0),
        (
            "12:memory:/\n4:cpu,cpuacct:/\n",
            {
                "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            },
            None,
        ),
        (
            "4:cpu,cpuacct:/svc\n",
            {
                "sys/fs/cgroup/cpu,cpuacct/svc/cpu.cfs_quota_us": "50000\n",
                "sys/fs/cgroup/cpu,cpuacct/svc/cpu.cfs_period_us": "100000\n",
            },
            0.5,
        ),
    ],
)
def test_cgroup_cpu_limit(tmp_path, cgroup, files, limit):
    assert cgroup_cpu_limit(fake_host(tmp_path, {}, cgroup, files)) == limit


@pytest.mark.parametrize(
    "affinity, quota, threads",
    [
        (range(8), "max 100000", 4),  # every physical core
        (range(8), "250000 100000", 2),  # the quota, rounded down
        ({1, 5}, "max 100000", 1),  # pinned to one core
        (range(8), "50000 100000", 1),  # half a CPU still runs one thread
    ],
)
def test_default_num_threads(tmp_path, monkeypatch, affinity, quota, threads):
    root = fake_host(tmp_path, HYPERTHREADED, "0::/\n", {"sys/fs/cgroup/cpu.max": quota})
    monkeypatch.setattr(cpu_threads, "usable_cpus", lambda: set(affinity))
    assert default_num_threads(root)[0] == threads


@pytest.fixture
def restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_configure_threads_sets_and_logs(restore_torch_threads, caplog):
    with caplog.at_level(logging.INFO, logger="engine.cpu_threads"):
        assert cpu_threads.configure_threads(1) == 1
    assert torch.get_num_threads() == 1
    assert "CPU: 1 torch threads (as asked (--threads))" in caplog.text
    with caplog.at_level(logging.INFO, logger="engine.cpu_threads"):
        threads = cpu_threads.configure_threads(None)
    assert threads == default_num_threads()[0] == torch.get_num_threads()
    assert "physical cores in" in caplog.text


def test_threads_flag_and_env(monkeypatch):
    parse = build_parser().parse_args
    assert engine_kwargs(parse(["serve"]))["threads"] is None
    assert engine_kwargs(parse(["serve", "--threads", "3"]))["threads"] == 3
    monkeypatch.setenv("EDGECHAT_THREADS", "5")
    assert engine_kwargs(build_parser().parse_args(["serve"]))["threads"] == 5
    with pytest.raises(EngineError, match="threads must be at least 1"):
        EngineConfig(threads=0)

"""available_cpus: the affinity mask, capped by a cgroup v2 CPU quota when there is one."""

import os

from embedding_assets.lib.cpus import available_cpus


def _affinity() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def test_no_quota_is_the_affinity_mask(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert available_cpus(cpu_max) == _affinity()
    assert available_cpus(tmp_path / "missing") == _affinity()  # no cgroup v2 file: no cap


def test_quota_caps_and_rounds_up(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("100000 100000\n")  # a Kubernetes limit of 1 CPU
    assert available_cpus(cpu_max) == 1
    cpu_max.write_text("50000 100000\n")  # 0.5 CPU: still one thread
    assert available_cpus(cpu_max) == 1
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs -> 2 threads, never more than the mask
    assert available_cpus(cpu_max) == min(2, _affinity())
    cpu_max.write_text("6400000 100000\n")  # a quota above the mask does not add cores
    assert available_cpus(cpu_max) == _affinity()


def test_unreadable_quota_is_ignored(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("garbage\n")
    assert available_cpus(cpu_max) == _affinity()

"""How many CPU cores this process may use: the one count that thread pools and tuning keys use.

The affinity mask alone overstates it in a container: a Kubernetes CPU limit is a cgroup v2
quota (`cpu.max`), and the mask still shows every core of the node. More threads than the
quota allows only thrash.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cpus(cpu_max: str | os.PathLike = CGROUP_CPU_MAX) -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (at least 1).

    `cpu_max` holds "<quota> <period>" in microseconds, or "max <period>" when there is no limit;
    a fractional quota rounds up (1.5 CPUs -> 2 threads).
    """
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        cores = max(1, os.cpu_count() or 1)
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores

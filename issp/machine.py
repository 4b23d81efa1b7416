"""The machine a result came from, and how many cores this process may really use.

In a container ``os.cpu_count()`` is the host's core count; the cores this process may
use are its CPU affinity, further capped by a cgroup CPU quota (``cpu.max``, what a
Hugging Face Space or ``docker --cpus`` sets).
"""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

import torch

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def quota_cpus(cpu_max: Path | None = None) -> int | None:
    """Cores allowed by a cgroup v2 quota (``"200000 100000"`` is 2), None without one."""
    try:
        quota, period = (cpu_max or CGROUP_CPU_MAX).read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.floor(int(quota) / int(period)))


def available_cpus() -> int:
    """Cores this process may use: its affinity, capped by the cgroup quota if any."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        cores = os.cpu_count() or 1
    quota = quota_cpus()
    return min(cores, quota) if quota else cores


def machine_description() -> str:
    """CPU model and usable core count, for result provenance."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {available_cpus()} cores, torch {torch.__version__}"


def cache_folder() -> Path:
    """Where issp keeps what it measured or built on this machine (the sparse kernel, the
    fastest inference path per checkpoint): ``$XDG_CACHE_HOME/issp``, else ``~/.cache/issp``."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "issp"

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
# Set to 1, torch's CPU allocator asks Linux for transparent huge pages for tensors of 2 MB
# and more. torch reads it at its first large allocation, so it is set at process start.
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


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


def use_huge_pages() -> None:
    """Have torch back large tensors with transparent huge pages, unless the environment
    says otherwise. A fresh 32 MB activation (edsr-tiny x2 on a 256 px tile) then cost 8 ms
    of page faults instead of 16 (AMD EPYC, 2 cores): every layer of an upscale allocates
    one, and the sparse kernel, which does little else, ran up to 2x faster with it."""
    os.environ.setdefault(HUGE_PAGES_ENV, "1")

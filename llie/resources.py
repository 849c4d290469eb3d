"""What this process may use of the machine: CPU cores and memory, as a container or job scheduler
limits them (affinity masks, cgroups), not as the host has them."""

from __future__ import annotations

import os
from pathlib import Path

_MEMINFO = Path("/proc/meminfo")
_CGROUP = Path("/sys/fs/cgroup")


def available_cpus() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """The cores shared out between ``workers`` that run side by side: more threads each would only contend."""
    return max(1, available_cpus() // workers)


def available_memory() -> int | None:
    """Bytes this process can still take before the machine (or its cgroup) runs short: the kernel's
    MemAvailable, lowered by a cgroup limit; None where neither can be read (not Linux)."""
    candidates = [_meminfo_available(), _cgroup_headroom()]
    known = [c for c in candidates if c is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the kernel gives kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_headroom() -> int | None:
    """Limit minus working set of this process's cgroup (v2, else v1); None without a limit."""
    for limit_file, usage_file, stat_file, inactive_key in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat", "total_inactive_file"),
    ):
        try:
            text = (_CGROUP / limit_file).read_text().strip()
            # "max" (v2) or a huge page-rounded number (v1) means no limit
            limit = None if text == "max" else int(text)
            usage = int((_CGROUP / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit is None or limit >= 1 << 60:
            return None
        # usage counts the page cache, which fills up to the limit and is given back on demand: the working
        # set leaves out its inactive part, as container runtimes count it
        return max(0, limit - usage + _stat(_CGROUP / stat_file, inactive_key))
    return None


def _stat(path: Path, key: str) -> int:
    """One counter of a cgroup's memory.stat; 0 when it cannot be read."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return 0
    return 0
